"""Liveness with real worker processes on a directory store (issue 10, items 2, 6 and 8).

- A frozen worker (SIGSTOP) holding the only outstanding task is counted as lost once its
  lease expires, and a replacement runs the task; its late result, once thawed, changes
  nothing.
- The workers of a plain session stop within about two leases of their client's death and
  hand their batches back; a detached session's workers carry on.
- A worker killed in the middle of a batch loses only the task it was running: the retry
  runs the tasks that did not finish.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import executor_tasks as tasks
import liveness_tasks
import pytest
from detached_support import session_processes, subprocess_env, wait_until

from starburst_executor import DetachedExecutor, StarburstExecutor, WorkerLostError, open_store
from starburst_executor._session import Session
from starburst_executor.config import SECRET_ENV, secret_key
from starburst_executor.launchers import LocalLauncher
from starburst_executor.protocol import Claim, ClaimState, Codec, SessionKeys

LEASE = 2.0
RESULT_TIMEOUT = 30


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])
    return (tmp_path / "store").as_uri()


@pytest.fixture
def executors() -> Iterator[list[StarburstExecutor]]:
    made: list[StarburstExecutor] = []
    yield made
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)


def runs(mark_dir: Path) -> Counter[int]:
    """How many times each task index ran (``record_run`` leaves a file per run)."""
    return Counter(int(p.name.split("-")[0]) for p in mark_dir.iterdir())


@pytest.mark.slow
def test_frozen_only_worker_is_replaced_and_its_late_result_is_discarded(
    store_url: str, tmp_path: Path, executors: list[StarburstExecutor]
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    ex = StarburstExecutor(store=store_url, max_workers=1, lease_seconds=LEASE)
    executors.append(ex)
    fut = ex.submit(tasks.announce_and_sleep, str(marks), 1.0, True)
    (started,) = wait_until(lambda: list(marks.glob("started-*")), what="the task to start")
    frozen = int(started.name.split("-")[1])
    launcher = ex._launcher
    assert isinstance(launcher, LocalLauncher)
    os.kill(frozen, signal.SIGSTOP)
    try:
        # The only worker is frozen and no other can take its lease over: the client must
        # count it as lost and start a replacement (before: the Future never resolved).
        start = time.monotonic()
        runner = fut.result(timeout=RESULT_TIMEOUT)
        assert runner != frozen
        assert time.monotonic() - start < 6 * LEASE
    finally:
        os.kill(frozen, signal.SIGCONT)
    wait_until(lambda: (marks / f"finished-{frozen}").exists(), what="the thawed worker's run")
    done = SessionKeys(ex.session_id).done
    wait_until(lambda: len(list(ex.store.list(done))) >= 2, what="the thawed worker's delivery")
    os.kill(frozen, signal.SIGKILL)
    assert fut.result() == runner
    assert ex.submit(tasks.square, 7).result(timeout=RESULT_TIMEOUT) == 49


CLIENT = """
import sys, time
import executor_tasks as tasks
from starburst_executor import DetachedExecutor, StarburstExecutor
store, marks, kind, lease = sys.argv[1:5]
cls = DetachedExecutor if kind == "detached" else StarburstExecutor
ex = cls(store=store, max_workers=2, lease_seconds=float(lease))
futures = [ex.submit(tasks.announce_and_sleep, marks, 30.0) for _ in range(2)]
print(ex.session_id, flush=True)
time.sleep(120)
"""


def start_client(store_url: str, marks: Path, kind: str) -> tuple[subprocess.Popen[str], str]:
    """A client process whose two tasks run (each in its own worker) for 30 s."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, store_url, str(marks), kind, str(LEASE)],
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(**{SECRET_ENV: secret_key().hex()}),
    )
    assert proc.stdout is not None
    sid = proc.stdout.readline().strip()
    assert sid, "the client printed no session id"
    wait_until(lambda: len(list(marks.glob("started-*"))) == 2, what="both tasks to start")
    return proc, sid


def claims_of(store_url: str, sid: str) -> list[Claim]:
    session = Session.open(open_store(store_url), sid, Codec(secret_key()))
    claims = session.claims()
    found = [claims.read(bid) for bid in session.batch_ids()]
    return [c for c in found if c is not None]


@pytest.mark.slow
def test_workers_of_a_plain_session_leave_soon_after_their_client_dies(
    store_url: str, tmp_path: Path, reap: list[str]
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    client, sid = start_client(store_url, marks, "plain")
    reap.append(sid)
    assert len(session_processes(sid)) == 2
    client.kill()
    client.wait()
    killed = time.monotonic()
    # Before: they ran their 30 s tasks, then idled until idle_timeout.
    wait_until(lambda: not session_processes(sid), timeout=4 * LEASE, what="the workers to go")
    took = time.monotonic() - killed
    assert took < 2.5 * LEASE, f"the workers left {took:.1f} s after the client died"
    claims = claims_of(store_url, sid)
    assert len(claims) == 2
    for claim in claims:  # handed back: another client could attach and rerun them
        assert claim.state is ClaimState.RELEASED
        assert "client's death" in claim.ended


@pytest.mark.slow
def test_workers_of_a_detached_session_outlive_their_client(
    store_url: str, tmp_path: Path, reap: list[str]
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    client, sid = start_client(store_url, marks, "detached")
    reap.append(sid)
    workers = session_processes(sid)
    client.kill()
    client.wait()
    time.sleep(3 * LEASE)  # no event to wait for: the test is that nothing happens
    assert sorted(session_processes(sid)) == sorted(workers)
    claims = claims_of(store_url, sid)
    assert [c.state for c in claims] == [ClaimState.RUNNING] * 2


def run_batch_with_a_fatal_task(
    store_url: str, marks: Path, executors: list[StarburstExecutor], **kwargs: Any
) -> tuple[Iterator[int], str]:
    """Twenty tasks in two batches of ten on one worker; task 6 kills its worker (once,
    or on every attempt when ``max_attempts`` is given); tasks 0-5 take 0.4 s each, more
    than a sixth of the lease, so each is saved as it finishes."""
    (marks / "runs").mkdir(parents=True)
    always = kwargs.get("max_attempts") is not None
    # A detached map goes up at once, in batches of half of it per worker.
    ex = DetachedExecutor(store=store_url, max_workers=1, lease_seconds=LEASE, **kwargs)
    executors.append(ex)
    n = 20
    results = ex.map(
        liveness_tasks.run_or_die,
        [str(marks)] * n,
        range(n),
        [6] * n,
        [always] * n,
        [0.4 if i < 6 else 0.0 for i in range(n)],
        timeout=RESULT_TIMEOUT,
    )
    batches = Session.open(open_store(store_url), ex.session_id, Codec(secret_key())).batch_ids()
    assert [int(b.rsplit("-", 1)[1]) for b in batches] == [10, 10]
    return results, ex.session_id


@pytest.mark.slow
def test_a_retried_batch_reruns_only_the_tasks_that_did_not_finish(
    store_url: str, tmp_path: Path, executors: list[StarburstExecutor]
) -> None:
    marks = tmp_path / "marks"
    results, _ = run_batch_with_a_fatal_task(store_url, marks, executors)
    assert list(results) == [2 * i for i in range(20)]
    # Before: the retry ran the whole batch again (tasks 0-5 twice).
    assert runs(marks / "runs") == Counter(range(20))


@pytest.mark.slow
def test_tasks_finished_before_the_last_lost_attempt_keep_their_results(
    store_url: str, tmp_path: Path, executors: list[StarburstExecutor]
) -> None:
    marks = tmp_path / "marks"
    results, _ = run_batch_with_a_fatal_task(store_url, marks, executors, max_attempts=2)
    assert [next(results) for _ in range(6)] == [2 * i for i in range(6)]
    with pytest.raises(WorkerLostError) as info:
        next(results)
    message = str(info.value)
    assert "lost 2 times" in message and "max_attempts=2" in message, message
    first_batch = Counter({i: n for i, n in runs(marks / "runs").items() if i < 10})
    assert first_batch == Counter(range(6))  # each ran once, over the two attempts
