"""The three timeouts that protect a detached session's cost, each shown to act.

- ``idle_timeout``: a worker with nothing to do exits (and work arriving later starts one).
- ``session_timeout``: at the session's deadline it expires: workers exit, and the tasks that
  never ran come back from ``collect`` as ``SessionError`` entries.
- ``task_timeout``: a task that overruns fails with ``TimeoutError`` and its worker process is
  replaced (``exec``, same pid), so the next task runs normally.

Worker processes are found by their command line (``--session SID``); the worker records
(``SessionReader.workers()``) say why each one exited.
"""

from __future__ import annotations

import time
from pathlib import Path

import executor_tasks as tasks
import pytest
from detached_support import session_processes, subprocess_env, wait_until

from starburst_executor import DetachedExecutor, SessionError, StarburstExecutor
from starburst_executor._manager import Pacing
from starburst_executor.config import secret_key
from starburst_executor.protocol import Codec, WorkerRecord
from starburst_executor.sessions import SessionReader

FAST = Pacing(poll_max=0.1)
POLL = 0.05


def workers(ex: DetachedExecutor) -> list[WorkerRecord]:
    """The session's worker records, as any process reads them from the store."""
    return SessionReader(ex.store, ex.session_id, Codec(secret_key())).workers()


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A directory store; workers find ``executor_tasks`` on their PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])
    return (tmp_path / "store").as_uri()


# -- idle_timeout ------------------------------------------------------------------------------


@pytest.mark.slow
def test_idle_workers_exit_after_idle_timeout(store_url: str, reap: list[str]) -> None:
    ex = DetachedExecutor(max_workers=2, store=store_url, idle_timeout=1.0, pacing=FAST)
    sid = ex.session_id
    reap.append(sid)
    assert [f.result(timeout=30) for f in [ex.submit(tasks.add, i, 1) for i in range(4)]] == [
        1,
        2,
        3,
        4,
    ]
    ex.detach()
    assert session_processes(sid), "the workers should still be up right after the work"
    start = time.monotonic()
    wait_until(lambda: session_processes(sid) == [], timeout=8, what="idle workers to exit")
    assert time.monotonic() - start < 5.0
    records = workers(ex)
    assert records and all(w.state == "exited" for w in records)
    assert {w.reason for w in records} == {"idle for 1 s"}
    assert ex.status().workers == 0

    # New work after the workers left starts a worker again.
    attached = DetachedExecutor.attach(sid, store=store_url, pacing=FAST)
    assert attached.submit(tasks.add, 20, 22).result(timeout=30) == 42
    attached.cleanup(delete_data=True)


# -- session_timeout ---------------------------------------------------------------------------


@pytest.mark.slow
def test_session_timeout_expires_the_session_and_fails_the_unrun_tasks(
    store_url: str, tmp_path: Path, reap: list[str]
) -> None:
    ex = DetachedExecutor(
        max_workers=1, store=store_url, session_timeout=2.0, task_timeout=60, pacing=FAST
    )
    sid = ex.session_id
    reap.append(sid)
    gate, marks = tmp_path / "gate", tmp_path / "marks"
    marks.mkdir()
    # The first task outlasts the deadline and is stopped at it; the two queued behind it
    # never get a worker.
    first = ex.submit(tasks.announce_and_sleep, str(marks), 3.0)
    wait_until(lambda: list(marks.iterdir()), what="the first task to start")
    for i in range(2):
        ex.submit(tasks.wait_for_gate, str(gate), i)
    wait_until(lambda: ex.status().pending == 2, what="two pending tasks")
    ex.detach()

    wait_until(lambda: ex.status().state == "expired", timeout=5, what="the session to expire")
    with pytest.raises(SessionError, match="expired"):
        DetachedExecutor.attach(sid, store=store_url).submit(tasks.add, 1, 1)
    start = time.monotonic()
    results = DetachedExecutor.attach(sid, store=store_url).collect(
        wait=True, timeout=15, poll_interval=POLL
    )
    assert time.monotonic() - start < 10
    assert not first.done()  # detached: this client stopped resolving its Futures
    assert [r.index for r in results] == [0, 1, 2]
    assert isinstance(results[0].error, SessionError)
    assert "while the task ran" in str(results[0].error)
    for r in results[1:]:
        assert isinstance(r.error, SessionError) and "expired" in str(r.error)
    assert not gate.exists()
    wait_until(lambda: session_processes(sid) == [], timeout=5, what="the worker to exit")
    records = workers(ex)
    assert [(w.state, w.reason) for w in records] == [
        ("exited", "session expired (session_timeout) during a task")
    ]
    status = ex.status()
    assert (status.state, status.failed, status.cancelled, status.pending, status.running) == (
        "expired",
        1,
        2,
        0,
        0,
    )


@pytest.mark.slow
def test_session_timeout_stops_a_worker_blocked_on_a_task(
    store_url: str, tmp_path: Path, reap: list[str]
) -> None:
    ex = DetachedExecutor(max_workers=1, store=store_url, session_timeout=2.0, pacing=FAST)
    sid = ex.session_id
    reap.append(sid)
    gate = tmp_path / "gate"  # never opened: the task would block for GATE_TIMEOUT (30 s)
    ex.submit(tasks.wait_for_gate, str(gate), 0)
    wait_until(lambda: ex.status().running >= 1, what="the blocked task to start")
    ex.submit(tasks.add, 1, 1)  # queued behind it: the only worker is blocked
    ex.detach()
    try:
        # Past the deadline (2 s) plus a few seconds of grace, no worker may be left.
        wait_until(
            lambda: session_processes(sid) == [],
            timeout=8,
            what="the worker to stop at the session's deadline",
        )
        results = ex.collect(wait=True, timeout=5, poll_interval=POLL)
        assert len(results) == 2 and not any(r.ok for r in results)
    finally:
        gate.touch()


# -- task_timeout ------------------------------------------------------------------------------


@pytest.mark.slow
def test_task_timeout_fails_the_task_and_replaces_the_worker(
    store_url: str, tmp_path: Path, reap: list[str]
) -> None:
    ex = DetachedExecutor(max_workers=1, store=store_url, task_timeout=1.0, pacing=FAST)
    sid = ex.session_id
    reap.append(sid)
    marks = tmp_path / "marks"
    marks.mkdir()
    start = time.monotonic()
    stuck = ex.submit(tasks.announce_and_sleep, str(marks), 30.0)
    after = ex.submit(tasks.getpid)
    error = stuck.exception(timeout=20)
    assert isinstance(error, TimeoutError)
    assert "task_timeout=1s" in str(error)
    assert time.monotonic() - start < 6
    # The next task ran in the same process id: the worker replaced itself with exec.
    names = [p.name for p in marks.glob("started-*")]
    assert len(names) == 1, names
    (started,) = names
    assert after.result(timeout=30) == int(started.removeprefix("started-"))
    assert not (marks / f"finished-{after.result()}").exists()  # the sleep never finished
    results = ex.collect(wait=True, timeout=10, poll_interval=POLL)
    assert isinstance(results[0].error, TimeoutError) and results[1].ok
    assert [w.state for w in workers(ex)] == ["running"]  # one worker, still the same
    assert len(session_processes(sid)) == 1
    ex.cleanup(delete_data=True)
    assert session_processes(sid) == []


@pytest.mark.slow
def test_task_timeout_in_a_plain_executor(store_url: str) -> None:
    with StarburstExecutor(max_workers=1, store=store_url, task_timeout=1.0, pacing=FAST) as ex:
        stuck = ex.submit(tasks.sleep_and_return, 30.0, "never")
        assert isinstance(stuck.exception(timeout=20), TimeoutError)
        assert ex.submit(tasks.add, 2, 2).result(timeout=30) == 4
