"""``ThreadLauncher``: the real worker loop in threads, ended where a process would end."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from starburst_executor import StarburstExecutor
from starburst_executor.launchers.thread import ThreadLauncher
from starburst_executor.stores.memory import FakeClock

from .fakes import RecordingStore, use_launcher, wait_until
from .test_manager import FAST, RELEASE, blocking


def test_stop_hands_the_running_batch_back_like_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    launchers = use_launcher(monkeypatch, lambda s, m, c: ThreadLauncher(s, m.session_id, c))
    store = RecordingStore(clock=FakeClock())
    ex = StarburstExecutor(store=store, max_workers=1, pacing=FAST)
    try:
        future: Future[int] = ex.submit(blocking, 7)
        wait_until(lambda: future.running() and launchers and launchers[0].running(), what="run")
        (launcher,) = launchers
        wait_until(
            lambda: any(
                "-requeue-" not in k.key for k in store.list("sessions/") if "/claims/" in k.key
            ),
            what="the claim",
        )
        launcher.stop(timeout=5)
        assert launcher.running() == 0
        (ended,) = launcher.poll()
        assert ended.code == 143  # what the process would have exited with
        requeued = [i.key for i in store.list("sessions/") if "-requeue-" in i.key]
        assert len(requeued) == 1  # handed back: another worker may run it at once
        assert launcher.poll() == []
    finally:
        RELEASE.set()
        ex.shutdown(wait=True, cancel_futures=True)
        RELEASE.clear()


def test_a_fake_clock_moves_only_forward() -> None:
    clock = FakeClock(100.0)
    assert clock() == 100.0
    assert clock.advance(2.5) == 102.5
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-1)


def test_workers_stopped_as_they_start_still_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    from starburst_executor.config import secret_key
    from starburst_executor.protocol import Codec

    use_launcher(monkeypatch, lambda s, m, c: ThreadLauncher(s, m.session_id, c))
    store = RecordingStore(clock=FakeClock())
    ex = StarburstExecutor(store=store, max_workers=1, pacing=FAST)  # writes the session
    try:
        launcher = ThreadLauncher(store, ex.session_id, Codec(secret_key()))
        launcher.start(3)
        launcher.stop(timeout=5)
        assert launcher.running() == 0
        assert [e.code for e in launcher.poll()] == [143, 143, 143]
    finally:
        ex.shutdown(wait=True)


def test_a_worker_of_a_missing_session_cannot_start() -> None:
    from starburst_executor.protocol import Codec

    launcher = ThreadLauncher(RecordingStore(), "20300101-000000-000000", Codec(b"k" * 32))
    (worker,) = launcher.start(1)
    wait_until(lambda: launcher.running() == 0, what="the worker to give up")
    (ended,) = launcher.poll()
    assert (ended.worker, ended.code) == (worker, 2)  # as `python -m ...worker` exits


def test_a_task_past_task_timeout_fails_and_its_worker_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The process would re-exec; the thread worker ends (its task's thread is abandoned
    until the task returns) and the manager starts another for the next call. About 0.5 s:
    task_timeout is real time, and the worker's watchdog looks twice a second."""
    launchers = use_launcher(monkeypatch, lambda s, m, c: ThreadLauncher(s, m.session_id, c))
    ex = StarburstExecutor(store=RecordingStore(), max_workers=1, pacing=FAST, task_timeout=0.05)
    try:
        with pytest.raises(TimeoutError, match="task_timeout"):
            ex.submit(blocking, 1).result(timeout=10)
        RELEASE.set()  # the abandoned task may return now; its late result is discarded
        assert ex.submit(blocking, 2).result(timeout=10) == 2
        (launcher,) = launchers
        assert launcher.running() == 1  # the replacement
    finally:
        RELEASE.set()
        ex.shutdown(wait=True)
        RELEASE.clear()
