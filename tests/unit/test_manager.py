"""The manager (``_manager.py``) driving real workers in threads (``ThreadLauncher``) on a
memory store: batch sizing, and what happens when workers are lost or cannot start.

The store's clock is a ``FakeClock`` that never moves unless a test moves it: no lease ever
expires by itself, so work that a lost worker held can only come back through the manager's
own worker-loss handling, which is what these tests prove.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, wait
from typing import Any

import pytest

from starburst_executor import BrokenStarburstExecutor, StarburstExecutor, WorkerLostError
from starburst_executor._claims import Claims
from starburst_executor._manager import Pacing
from starburst_executor.launchers.base import WorkerExit
from starburst_executor.launchers.thread import ThreadLauncher
from starburst_executor.protocol import Codec, SessionKeys
from starburst_executor.stores.base import Store
from starburst_executor.stores.memory import FakeClock

from .fakes import RecordingStore, tasks_in, thread_launcher, use_launcher, wait_until

FAST = Pacing(linger=0.001, poll_min=0.001, poll_max=0.01, maintain_every=0.005)
RELEASE = threading.Event()  # tasks of blocking() wait for it: they run in this process


def double(x: int) -> int:
    return 2 * x


def blocking(x: int) -> int:
    if not RELEASE.wait(10):
        raise TimeoutError("the test never released the task")
    return x


def failing_initializer() -> None:
    raise ImportError("no module named 'missing_dependency'")


@pytest.fixture
def store() -> RecordingStore:
    return RecordingStore(clock=FakeClock())


@pytest.fixture
def executors() -> Iterator[list[StarburstExecutor]]:
    made: list[StarburstExecutor] = []
    yield made
    RELEASE.set()
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)
    RELEASE.clear()


def make(executors: list[StarburstExecutor], store: Store, **kwargs: Any) -> StarburstExecutor:
    kwargs.setdefault("max_workers", 2)
    ex = StarburstExecutor(store=store, pacing=FAST, **kwargs)
    executors.append(ex)
    return ex


def test_workers_in_threads_run_calls_and_maps(
    monkeypatch: pytest.MonkeyPatch, store: RecordingStore, executors: list[StarburstExecutor]
) -> None:
    launchers = use_launcher(monkeypatch, thread_launcher)
    ex = make(executors, store)
    assert [f.result(timeout=10) for f in [ex.submit(double, i) for i in range(20)]] == [
        2 * i for i in range(20)
    ]
    assert list(ex.map(double, range(100), chunksize=7, timeout=10)) == [2 * i for i in range(100)]
    ex.shutdown(wait=True)
    (launcher,) = launchers
    assert launcher.running() == 0


def test_batches_hold_one_task_until_durations_are_known_then_many(
    monkeypatch: pytest.MonkeyPatch, store: RecordingStore, executors: list[StarburstExecutor]
) -> None:
    use_launcher(monkeypatch, thread_launcher)
    ex = make(executors, store)
    # No duration measured yet: each call travels alone (and stays cancellable in the queue),
    # at most the upload window (4 batches for 2 workers) ahead of the workers.
    slow = [ex.submit(blocking, i) for i in range(10)]
    wait_until(lambda: len(store.batches) >= 4, what="the first batches")
    assert [tasks_in(b) for b in store.batches] == [1, 1, 1, 1]
    assert not any(f.done() for f in slow)
    assert sum(f.cancel() for f in slow[4:]) == 6  # still queued here: cancellable
    RELEASE.set()
    assert [f.result(timeout=10) for f in slow[:4]] == [0, 1, 2, 3]
    # Now tasks are known to take microseconds: hundreds share a batch (one request).
    before = len(store.batches)
    assert list(ex.map(double, range(1000), timeout=10)) == [2 * i for i in range(1000)]
    sizes = [tasks_in(b) for b in store.batches[before:]]
    assert sum(sizes) == 1000
    assert len(sizes) < 100
    assert max(sizes) <= 1000


def test_tasks_per_batch_are_capped_by_max_tasks_per_child(
    monkeypatch: pytest.MonkeyPatch, store: RecordingStore, executors: list[StarburstExecutor]
) -> None:
    use_launcher(monkeypatch, thread_launcher)
    ex = make(executors, store, max_tasks_per_child=5)
    assert list(ex.map(double, range(30), timeout=10)) == [2 * i for i in range(30)]
    assert {tasks_in(b) for b in store.batches} == {1}


class GhostLauncher(ThreadLauncher):
    """The first ``ghosts`` workers it starts are not threads: each claims (or takes over)
    every batch it can, then "dies" (SIGKILL) without a word, as a killed process would."""

    def __init__(self, store: Store, manifest: Any, codec: Codec, ghosts: int) -> None:
        super().__init__(store, manifest.session_id, codec)
        self.claims = Claims(
            store,
            SessionKeys(manifest.session_id),
            codec,
            lease_seconds=manifest.lease_seconds,
            max_attempts=manifest.max_attempts,
        )
        self.keys = SessionKeys(manifest.session_id)
        self.ghosts_left = ghosts
        self.ghosts: list[str] = []
        self.live_ghosts: list[str] = []

    def start(self, count: int) -> list[str]:
        started = []
        while count and self.ghosts_left:
            self.ghosts_left -= 1
            count -= 1
            ghost = f"ghost-{len(self.ghosts) + 1}"
            self.ghosts.append(ghost)
            self.live_ghosts.append(ghost)
            started.append(ghost)
        return started + super().start(count)

    def running(self) -> int:
        return super().running() + len(self.live_ghosts)

    def poll(self) -> list[WorkerExit]:
        ended = super().poll()
        for ghost in list(self.live_ghosts):
            bids = {SessionKeys.bid_of(i.key) for i in self.store.list(self.keys.batches)}
            took = [b for b in sorted(bids) if self.claims.take_over(b, ghost) is not None]
            if took:  # it holds work now: it dies with it (nothing to take yet: it waits)
                self.live_ghosts.remove(ghost)
                ended.append(WorkerExit(ghost, -9, "killed by SIGKILL"))
        return ended


def test_the_work_of_a_lost_worker_runs_again_without_waiting_for_its_lease(
    monkeypatch: pytest.MonkeyPatch, store: RecordingStore, executors: list[StarburstExecutor]
) -> None:
    launchers = use_launcher(monkeypatch, lambda s, m, c: GhostLauncher(s, m, c, ghosts=1))
    ex = make(executors, store, max_workers=1)
    future = ex.submit(double, 21)
    assert future.result(timeout=10) == 42  # the clock is frozen: no lease ever expired
    assert launchers[0].ghosts == ["ghost-1"]


def test_a_task_whose_workers_keep_dying_fails_after_max_attempts(
    monkeypatch: pytest.MonkeyPatch, store: RecordingStore, executors: list[StarburstExecutor]
) -> None:
    use_launcher(monkeypatch, lambda s, m, c: GhostLauncher(s, m, c, ghosts=2))
    ex = make(executors, store, max_workers=1, max_attempts=2)
    future = ex.submit(double, 1)
    with pytest.raises(WorkerLostError) as info:
        future.result(timeout=10)
    message = str(info.value)
    assert "ghost-1 (killed by SIGKILL)" in message
    assert "ghost-2 (killed by SIGKILL)" in message
    assert "max_attempts=2" in message


class NeverStarts:
    """Workers that exit at once without registering (a missing module, a bad image)."""

    def __init__(self) -> None:
        self.started = 0
        self._ended: list[WorkerExit] = []

    def start(self, count: int) -> list[str]:
        ids = [f"doomed-{self.started + i}" for i in range(count)]
        self.started += count
        self._ended += [WorkerExit(w, 1, "exit code 1", "ModuleNotFoundError: numpy") for w in ids]
        return ids

    def running(self) -> int:
        return 0

    def poll(self) -> list[WorkerExit]:
        ended, self._ended = self._ended, []
        return ended

    def stop(self, timeout: float = 10.0) -> None:
        pass


def test_workers_that_never_start_break_the_executor_instead_of_relaunching_forever(
    monkeypatch: pytest.MonkeyPatch, store: RecordingStore, executors: list[StarburstExecutor]
) -> None:
    launchers = use_launcher(monkeypatch, lambda s, m, c: NeverStarts())
    ex = make(executors, store, max_workers=1)
    futures: list[Future[int]] = [ex.submit(double, i) for i in range(3)]
    done, _ = wait(futures, timeout=10)
    assert len(done) == 3
    for future in futures:
        error = future.exception()
        assert isinstance(error, BrokenStarburstExecutor)
        assert "3 workers in a row exited before starting" in str(error)
        assert "ModuleNotFoundError: numpy" in str(error)
    assert launchers[0].started == 3
    with pytest.raises(BrokenStarburstExecutor):
        ex.submit(double, 1)


def test_a_failing_initializer_breaks_the_executor_with_its_traceback(
    monkeypatch: pytest.MonkeyPatch, store: RecordingStore, executors: list[StarburstExecutor]
) -> None:
    use_launcher(monkeypatch, thread_launcher)
    ex = make(executors, store, max_workers=1, initializer=failing_initializer)
    with pytest.raises(BrokenStarburstExecutor) as info:
        ex.submit(double, 1).result(timeout=10)
    assert "missing_dependency" in str(info.value)
    assert "failing_initializer" in str(info.value)
