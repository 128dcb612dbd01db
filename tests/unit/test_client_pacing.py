"""How often a waiting client asks the store (issue 11, item 3, client side), on a fake clock.

The manager's turns are driven by hand: after each turn the fake clock jumps to the moment
the manager would wake up by itself (``Manager.wait_timeout``), so ten simulated minutes of
waiting take milliseconds, and every request the client makes is counted: result polls
(direct GETs or ``done/`` listings), heartbeats (``client_seen`` writes of the control
record) and lease scans (listings of the claims).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, wait
from typing import Any

import pytest

from starburst_executor import StarburstExecutor
from starburst_executor._manager import Manager, Shared, WorkItem
from starburst_executor._session import Call, Session
from starburst_executor.executor import _default_pacing
from starburst_executor.launchers.base import WorkerExit
from starburst_executor.protocol import ResultRecord, TaskOutcome
from starburst_executor.serialization import dumps
from starburst_executor.stores.memory import FakeClock
from starburst_executor.usage import WRITE_EVERY

from .fakes import RequestLogStore


class CountingStore(RequestLogStore):
    """A memory store that counts its requests by (operation, folder of the session)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.counts: Counter[tuple[str, str]] = Counter()

    def _count(self, op: str, key: str) -> None:
        parts = key.split("/")
        self.counts[(op, parts[2] if len(parts) > 2 else key)] += 1

    def total(self) -> int:
        return sum(self.counts.values())


class BusyWorkers:
    """A launcher whose two workers run (they never finish anything by themselves)."""

    def start(self, count: int) -> list[str]:
        return []

    def running(self) -> int:
        return 2

    def poll(self) -> list[WorkerExit]:
        return []

    def stop(self, timeout: float = 10.0) -> None:
        pass


class Driver:
    """A manager on a fake clock, turned by hand."""

    def __init__(self, store: CountingStore, clock: FakeClock) -> None:
        self.clock = clock
        self.store = store
        self.executor = StarburstExecutor(max_workers=2, store=store)
        self.session: Session = self.executor._writer
        self.shared = Shared()
        self.manager = Manager(
            self.executor,
            self.shared,
            self.session,
            BusyWorkers(),
            max_workers=2,
            pacing=_default_pacing(store),
            window=4,
            batch_limit=None,
            clock=clock,
        )

    def submit(self, count: int) -> list[Future[Any]]:
        futures: list[Future[Any]] = [Future() for _ in range(count)]
        with self.shared.lock:
            for fut in futures:
                call = Call("call", {"fn": dumps(len), "args": [dumps(b"x")], "kwargs": {}})
                self.shared.queue.append(WorkItem(fut, call, queued_at=0.0))
        return futures

    def turn(self) -> None:
        """One turn, its I/O finished, then the clock moved to the next wake-up."""
        self.manager.turn()
        wait(list(self.manager._inflight))
        self.manager.turn()  # handles the finished I/O (an upload, a result read)
        wait(list(self.manager._inflight))
        timeout = self.manager.wait_timeout()
        assert timeout is not None
        self.clock.advance(max(timeout, 1e-4))

    def run_for(self, seconds: float) -> None:
        end = self.clock() + seconds
        while self.clock() < end:
            self.turn()

    def deliver(self, bid: str) -> None:
        """What a worker does when it finishes a batch of one task."""
        outcome = TaskOutcome(0, True, dumps(1))
        self.session.write_result(ResultRecord(bid, "worker-1", 1, (outcome,)), 0)

    def close(self) -> None:
        self.manager._io.shutdown(wait=True)
        self.executor.shutdown(wait=True)


@pytest.fixture
def driver() -> Iterator[Driver]:
    clock = FakeClock()
    made = Driver(CountingStore(clock), clock)
    yield made
    made.close()


@pytest.mark.parametrize("batches", [1, 3], ids=["direct-reads", "listing"])
def test_a_client_waiting_for_nothing_makes_under_a_fifth_of_a_request_per_second(
    driver: Driver, batches: int
) -> None:
    driver.submit(batches)
    driver.run_for(120.0)  # backing off
    assert len(driver.manager._outstanding) == batches
    before, start = driver.store.total(), driver.clock()
    driver.run_for(600.0)
    rate = (driver.store.total() - before) / (driver.clock() - start)
    # 0.2 at most, with room for the usage record (one PUT a minute, not counted here: this
    # store is not wrapped by count_requests).
    assert rate + 1 / WRITE_EVERY <= 0.2, f"{rate:.3f} requests/s: {driver.store.counts}"
    # ... and still every kind of request it owes: polls, heartbeats, lease scans.
    kinds = {key for key, n in driver.store.counts.items() if n}
    assert ("PUT", "control") in kinds  # heartbeats
    assert ("LIST", "claims") in kinds  # lease scans
    assert ("GET", "results") in kinds if batches == 1 else ("LIST", "done") in kinds


@pytest.mark.parametrize("waited", [0.05, 1.0, 30.0, 600.0])
def test_a_waiting_client_notices_a_result_within_half_its_wait(
    driver: Driver, waited: float
) -> None:
    (future,) = driver.submit(1)
    resolved: list[float] = []
    future.add_done_callback(lambda _: resolved.append(driver.clock()))
    driver.turn()
    (bid,) = driver.manager._outstanding
    driver.run_for(waited)
    delivered = driver.clock()
    driver.deliver(bid)
    while not future.done():
        driver.turn()
    wake_up = resolved[0] - delivered
    assert future.result() == 1
    # At most half the time it waited (poll_ratio; at least the 5 ms floor), wait_max at most.
    pacing = driver.manager._pacing
    bound = min(pacing.wait_max or pacing.poll_max, pacing.poll_ratio * (waited + 0.01))
    assert pacing.poll_ratio <= 0.5
    assert wake_up <= max(pacing.poll_min, bound) + 1e-3, wake_up


def test_a_client_polls_in_proportion_to_the_rate_results_arrive(driver: Driver) -> None:
    """The polls per result grow with the logarithm of the time between results: the
    client's request rate follows the rate results arrive."""
    per_result = {}
    for gap in (0.1, 10.0):
        futures = driver.submit(3)
        driver.turn()
        bids = sorted(driver.manager._outstanding)
        before = driver.store.counts[("LIST", "done")] + driver.store.counts[("GET", "results")]
        for bid in bids:
            driver.run_for(gap)
            driver.deliver(bid)
        while not all(f.done() for f in futures):
            driver.turn()
        polls = driver.store.counts[("LIST", "done")] + driver.store.counts[("GET", "results")]
        per_result[gap] = (polls - before) / len(bids)
    # A hundred times longer between results: a few times the polls per result, not 100x.
    assert per_result[10.0] <= 4 * per_result[0.1], per_result
    assert per_result[0.1] <= 12, per_result
