"""An idle worker's requests are bounded, and it still looks for work soon after a short
pause (issue 11, item 3). Time is fake: the worker's loop runs in the test's thread, its
waits move a ``FakeClock`` (the store's) and its pacing clock together, so an hour of idling
takes milliseconds and the request counts are exact."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from starburst_executor import DetachedExecutor
from starburst_executor._manager import Pacing
from starburst_executor.config import secret_key
from starburst_executor.protocol import Codec
from starburst_executor.stores.memory import FakeClock
from starburst_executor.worker.loop import Worker, WorkerOptions

from .fakes import RequestLogStore

LEASE = 30.0


class CountingStore(RequestLogStore):
    """Counts the requests made from one thread (the worker loop's), by kind and fake time."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.thread: threading.Thread | None = None
        self.calls: list[tuple[float, str]] = []

    def _count(self, op: str, key: str) -> None:
        if threading.current_thread() is self.thread:
            parts = key.split("/")
            self.calls.append((self.clock(), f"{op} {parts[2] if len(parts) > 2 else key}"))


class FakeTime:
    """The idle worker's clock and its stop event: each wait moves fake time (the store's
    clock too) instead of sleeping; the loop stops once ``until`` seconds have passed."""

    def __init__(self, store_clock: FakeClock, until: float) -> None:
        self.now = 0.0
        self.store_clock = store_clock
        self.until = until
        self.waits: list[tuple[float, float]] = []  # (when, how long)

    def monotonic(self) -> float:
        return self.now

    def wait(self, seconds: float | None = None) -> bool:
        assert seconds is not None
        self.waits.append((self.now, seconds))
        self.now += seconds
        self.store_clock.advance(seconds)
        return self.is_set()

    def is_set(self) -> bool:
        return self.now >= self.until

    def set(self) -> None:
        self.until = self.now


@pytest.fixture
def store() -> Iterator[CountingStore]:
    yield CountingStore(FakeClock())


def idle_worker(store: CountingStore, until: float) -> tuple[Worker, FakeTime, float]:
    """A worker of a session without work; returns it, its fake time, the store's start."""
    ex = DetachedExecutor(
        store=store, max_workers=1, lease_seconds=LEASE, idle_timeout=7200, pacing=Pacing()
    )
    ex.detach()  # nothing submitted: no worker started, no client polling
    fake = FakeTime(store.clock, until)  # type: ignore[arg-type]
    worker = Worker(
        store, ex.session_id, "idle-1", Codec(secret_key()), WorkerOptions(clock=fake.monotonic)
    )
    worker._stop = fake  # type: ignore[assignment]
    store.thread = threading.current_thread()
    return worker, fake, store.clock()


def test_an_idle_worker_makes_at_most_a_fifth_of_a_request_a_second(store: CountingStore) -> None:
    worker, fake, start = idle_worker(store, until=3600.0)
    assert worker._loop() == "stopped"
    # Backed off after two and a half minutes (idle_ratio 0.05 of 150 s: the 7.5 s ceiling).
    late = [op for t, op in store.calls if t - start >= 150.0]
    rate = len(late) / (3600.0 - 150.0)
    assert rate <= 0.2, Counter(late)
    kinds = Counter(late)
    # Each duty is still done: looks for work, control re-reads, lost-claim scans.
    assert kinds["LIST batches"] > 3600 / 10
    assert kinds["GET control"] >= (3600 - 150) / 32
    assert kinds["LIST claims"] >= (3600 - 150) / 32
    # Before: a look every 0.5 s, a control read every 2 s: 2.5 requests/s.


def test_an_idle_worker_looks_again_soon_after_a_short_pause(store: CountingStore) -> None:
    worker, fake, _ = idle_worker(store, until=600.0)
    worker._loop()
    waits = fake.waits
    # After a pause of t, it looks again within a quarter of t (doubling waits, as before,
    # left it up to t late: most of a lone call's round trip) ...
    assert all(w <= 0.25 * t + 0.005 + 1e-9 for t, w in waits if t <= 2.0)
    # ... idle for a second: it looks at least every poll_max (0.5 s) ...
    assert max(w for t, w in waits if t <= 2.5) <= 0.5
    # ... idle for ten seconds: every 2 s at most; never more than the budget's 7.5 s.
    assert max(w for t, w in waits if t <= 10.0) <= 2.0
    assert max(w for _, w in waits) <= 7.5
    assert max(w for _, w in waits) >= 7.0  # and it does back off that far


def test_the_idle_budget_holds_whatever_the_idle_duty() -> None:
    from starburst_executor.worker.pacing import Scan

    for lease in (30.0, 60.0, 600.0):
        scan = Scan(
            None,  # type: ignore[arg-type]
            0,
            WorkerOptions(),
            None,  # type: ignore[arg-type]
            lease,
            None,  # type: ignore[arg-type]
        )
        rate = 1 / scan.idle_poll_max() + 2 / scan.idle_duty
        assert rate <= 0.2 + 1e-9
