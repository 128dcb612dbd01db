"""Workers that freeze, clients that die, batches cut short (issue 10, items 2, 6 and 8), on a
memory store with a ``FakeClock`` and workers in threads: leases expire only when a test moves
the clock, so each test decides exactly when a worker counts as lost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from starburst_executor import StarburstExecutor
from starburst_executor._claims import Claims
from starburst_executor._manager import Pacing
from starburst_executor._session import Session
from starburst_executor.config import secret_key
from starburst_executor.launchers.thread import ThreadLauncher
from starburst_executor.protocol import Codec, SessionKeys, TaskKind, TaskOutcome, TaskSpec
from starburst_executor.stores.base import Store
from starburst_executor.stores.memory import FakeClock
from starburst_executor.worker.liveness import ClientWatch
from starburst_executor.worker.progress import BatchProgress, fill_unfinished

from .fakes import RecordingStore, use_launcher, wait_until

FAST = Pacing(
    linger=0.001, poll_min=0.001, poll_max=0.01, maintain_every=0.005, lease_scan_every=0.005
)
LEASE = 30.0


def double(x: int) -> int:
    return 2 * x


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> RecordingStore:
    return RecordingStore(clock=clock)


@pytest.fixture
def executors() -> Iterator[list[StarburstExecutor]]:
    made: list[StarburstExecutor] = []
    yield made
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)


class FreezingLauncher(ThreadLauncher):
    """Its first worker is no thread: it claims the first batch it sees and then freezes
    (SIGSTOP): it never renews, never reports anything, and its launcher counts it as
    running for ever, as a stopped process is."""

    def __init__(self, store: Store, manifest: Any, codec: Codec) -> None:
        super().__init__(store, manifest.session_id, codec)
        self.keys = SessionKeys(manifest.session_id)
        self.claims = Claims(
            store, self.keys, codec, lease_seconds=LEASE, max_attempts=manifest.max_attempts
        )
        self.frozen: str | None = None
        self.holds: str | None = None

    def start(self, count: int) -> list[str]:
        if self.frozen is None and count:
            self.frozen = "frozen-1"
            return [self.frozen, *super().start(count - 1)]
        return super().start(count)

    def running(self) -> int:
        return super().running() + (self.frozen is not None)

    def poll(self) -> list[Any]:
        if self.frozen is not None and self.holds is None:
            for info in self.store.list(self.keys.batches):
                bid = SessionKeys.bid_of(info.key)
                if self.claims.try_claim(bid, self.frozen) is not None:
                    self.holds = bid
                    break
        return super().poll()


def test_a_frozen_worker_holding_the_only_task_is_replaced_once_its_lease_expires(
    monkeypatch: pytest.MonkeyPatch,
    clock: FakeClock,
    store: RecordingStore,
    executors: list[StarburstExecutor],
) -> None:
    launchers = use_launcher(monkeypatch, FreezingLauncher)
    ex = StarburstExecutor(store=store, pacing=FAST, max_workers=1, lease_seconds=LEASE)
    executors.append(ex)
    future = ex.submit(double, 21)
    launcher: FreezingLauncher = wait_until(lambda: launchers and launchers[0], what="launcher")
    wait_until(lambda: launcher.holds is not None, what="the frozen worker's claim")
    assert launcher.running() == 1
    assert not future.done()
    clock.advance(LEASE + 1)  # its lease expires: the worker counts as lost, not running
    assert future.result(timeout=10) == 42
    assert launcher.running() == 2  # a replacement ran it (the frozen one is still "running")


def test_a_holder_lost_after_the_batch_was_exhausted_adds_no_attempt(clock: FakeClock) -> None:
    """The worker that takes a batch over past max_attempts only reports it lost; if it is
    lost itself before it can, the next taker's error still counts exactly max_attempts."""
    keys = SessionKeys("20300101-000000-abcdef")
    claims = Claims(
        RecordingStore(clock=clock), keys, Codec(b"k" * 32), lease_seconds=LEASE, max_attempts=2
    )
    bid = "1800000000000-c0ffee-000001-1"
    assert claims.try_claim(bid, "w1") is not None
    for worker in ("w2", "w3", "w4"):
        clock.advance(LEASE + 1)
        assert claims.take_over(bid, worker) is not None
    clock.advance(LEASE + 1)
    last = claims.take_over(bid, "w5")
    assert last is not None and last.exhausted
    assert last.claim.attempt == 3  # the error says "lost attempt - 1 = 2 times"
    assert [h.split(" ")[0] for h in last.claim.history] == ["w1", "w2"]


def test_the_client_is_judged_gone_only_when_a_stale_stamp_stays_unchanged() -> None:
    watch = ClientWatch.for_lease(3.0)  # stale past 3.75 s; confirmed 1 s later
    assert not watch.gone(None, 1000.0, 0.0)  # nobody beats (detached): nobody is judged
    assert not watch.gone(100.0, 103.0, 0.0)  # fresh
    assert not watch.gone(100.0, 104.0, 1.0)  # stale: first seen now
    assert not watch.gone(100.0, 104.5, 1.5)  # not yet confirmed
    assert not watch.gone(104.2, 104.6, 1.6)  # it beat again (back from an outage): reset
    assert not watch.gone(104.2, 110.0, 2.0)
    assert watch.gone(104.2, 111.0, 3.0)  # the same stale stamp a second later: gone


def test_a_plain_sessions_client_beats_and_a_detached_one_does_not(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, store: RecordingStore
) -> None:
    from starburst_executor import DetachedExecutor

    from .fakes import thread_launcher

    use_launcher(monkeypatch, thread_launcher)
    beat = dataclasses.replace(FAST, heartbeat_every=0.001)

    def stamp(ex: StarburstExecutor) -> float | None:
        return Session.open(store, ex.session_id, Codec(secret_key())).control().client_seen

    plain = StarburstExecutor(store=store, pacing=beat, max_workers=1)
    assert plain.submit(double, 1).result(timeout=10) == 2
    first = wait_until(lambda: stamp(plain), what="a first beat")
    clock.advance(5)  # still beating while idle (its idle workers must not think it dead)
    wait_until(lambda: stamp(plain) == first + 5, what="a new beat")
    plain.shutdown(wait=True)
    detached = DetachedExecutor(store=store, pacing=beat, max_workers=1)
    assert detached.submit(double, 1).result(timeout=10) == 2
    assert stamp(detached) is None
    detached.shutdown(wait=True)


def test_progress_is_saved_when_due_restored_on_a_retry_and_discarded(
    store: RecordingStore, executors: list[StarburstExecutor]
) -> None:
    ex = StarburstExecutor(store=store, pacing=FAST, max_workers=1)
    executors.append(ex)
    session = Session.open(store, ex.session_id, Codec(secret_key()))
    bid = "1800000000000-c0ffee-000001-3"
    done = [TaskOutcome(0, True, b"a"), TaskOutcome(1, False, b"b")]
    progress = BatchProgress(session, "w1", every=0.0)
    assert progress.restore(bid, 1) == ([], {})  # a first attempt reads nothing
    progress.save_if_due(bid, 1, done[:1], {})
    progress.save_if_due(bid, 1, done, {1: "printed"})
    retry = BatchProgress(session, "w2", every=3600.0)
    assert retry.restore(bid, 2) == (done, {1: "printed"})
    retry.save_if_due(bid, 2, [*done, TaskOutcome(2, True, b"c")], {})  # not due: no write
    assert retry.restore(bid, 2) == (done, {1: "printed"})
    retry.discard(bid)
    assert retry.restore(bid, 3) == ([], {})
    assert fill_unfinished(
        done, [TaskSpec(i, TaskKind.CALL, "fn", (), {}) for i in range(3)], b"lost"
    )[2] == (TaskOutcome(2, False, b"lost"))
