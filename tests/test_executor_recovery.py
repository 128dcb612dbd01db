"""The executor contract, continued: workers that die, freeze or race.

Each test runs once per backend (``executor_store``): a directory store, and S3 on SeaweedFS.

- A worker that dies while running a task (SIGKILL, from the task itself or from outside) is
  seen by the launcher; its claim is released and the task runs again on another worker, up
  to ``max_attempts`` starts, after which the Future fails with ``WorkerLostError``.
- A worker that stops answering without dying (SIGSTOP here; a partitioned machine in real
  life) loses its claim when its lease expires; another worker takes the batch over, and the
  frozen worker's late duplicate result cannot replace the delivered one.
- Many workers racing over the same batches run each task exactly once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import executor_tasks as tasks
import pytest

from starburst_executor import StarburstExecutor, WorkerLostError
from starburst_executor.launchers import LocalLauncher
from starburst_executor.protocol import SessionKeys

MakeExecutor = Callable[..., StarburstExecutor]
RESULT_TIMEOUT = 60
WORKER_ID = re.compile(r"local-\d+-[0-9a-f]{6}")


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.01)


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_task_that_kills_its_worker_once_completes_on_retry(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    ex = make_executor(max_workers=1, lease_seconds=2)
    marker = tmp_path / "killed-once"
    result = ex.submit(tasks.kill_worker_once, str(marker)).result(timeout=RESULT_TIMEOUT)
    killed = int(marker.read_text())
    assert result.startswith("survived in ")
    assert int(result.split()[-1]) != killed  # a fresh worker ran the retry
    assert ex.submit(tasks.square, 5).result(timeout=RESULT_TIMEOUT) == 25


@pytest.mark.slow
def test_task_that_always_kills_its_worker_fails_with_worker_lost(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    ex = make_executor(max_workers=1, max_attempts=2, lease_seconds=2)
    fut = ex.submit(tasks.kill_worker_always, str(tmp_path))
    with pytest.raises(WorkerLostError) as info:
        fut.result(timeout=RESULT_TIMEOUT)
    error = info.value
    assert isinstance(error, BrokenProcessPool)
    message = str(error)
    assert "max_attempts=2" in message and "lost 2 times" in message, message
    assert len(set(WORKER_ID.findall(message))) == 2, message  # both lost workers are named
    assert len(list(tmp_path.glob("attempt-*"))) == 2  # started exactly max_attempts times
    # One task that kills its worker does not break the pool.
    assert ex.submit(tasks.square, 4).result(timeout=RESULT_TIMEOUT) == 16


@pytest.mark.slow
def test_worker_killed_from_outside_mid_task_is_retried(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    ex = make_executor(max_workers=1, lease_seconds=2)
    fut = ex.submit(tasks.announce_and_sleep, str(tmp_path), 5.0, True)
    wait_until(lambda: any(tmp_path.glob("started-*")), what="the task to start")
    (started,) = tmp_path.glob("started-*")
    victim = int(started.name.split("-")[1])
    launcher = ex._launcher
    assert isinstance(launcher, LocalLauncher)  # the local backend: workers are processes here
    assert victim in launcher.pids().values()
    os.kill(victim, signal.SIGKILL)
    survivor = fut.result(timeout=RESULT_TIMEOUT)
    assert survivor != victim
    assert not (tmp_path / f"finished-{victim}").exists()


@pytest.mark.slow
def test_sigterm_hands_the_claim_back_before_the_lease_expires(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    lease = 30.0  # long: the retry must not wait for it
    ex = make_executor(max_workers=1, lease_seconds=lease)
    fut = ex.submit(tasks.announce_and_sleep, str(tmp_path), 5.0, True)
    wait_until(lambda: any(tmp_path.glob("started-*")), what="the task to start")
    (started,) = tmp_path.glob("started-*")
    victim = int(started.name.split("-")[1])
    start = time.monotonic()
    os.kill(victim, signal.SIGTERM)  # what ECS sends on StopTask and Spot interruption
    survivor = fut.result(timeout=RESULT_TIMEOUT)
    assert survivor != victim
    assert time.monotonic() - start < lease / 2


@pytest.mark.slow
def test_frozen_worker_loses_its_lease_and_its_late_result_is_discarded(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    ex = make_executor(max_workers=2, lease_seconds=2)
    slow = ex.submit(tasks.announce_and_sleep, str(tmp_path), 1.0, True)
    wait_until(lambda: any(tmp_path.glob("started-*")), what="the slow task to start")
    (started,) = tmp_path.glob("started-*")
    frozen = int(started.name.split("-")[1])
    os.kill(frozen, signal.SIGSTOP)
    try:
        # More work brings a second worker (the frozen one still counts as running); once
        # idle, it finds the frozen worker's lease expired and takes the batch over.
        quick = ex.submit(tasks.sleep_and_return, 0.1, "quick")
        assert quick.result(timeout=RESULT_TIMEOUT) == "quick"
        runner = slow.result(timeout=RESULT_TIMEOUT)
        assert runner != frozen
    finally:
        os.kill(frozen, signal.SIGCONT)
    # Thawed, the first worker finishes its copy of the task and tries to deliver it: the
    # duplicate must neither disturb the delivered result nor the executor.
    wait_until(lambda: (tmp_path / f"finished-{frozen}").exists(), what="the thawed worker")
    # Its delivery attempt ends with a done event of its own: the third (slow, quick, slow).
    done = SessionKeys(ex.session_id).done
    wait_until(
        lambda: len(list(ex.store.list(done))) >= 3, what="the thawed worker's late delivery"
    )
    assert slow.result() == runner
    assert ex.submit(tasks.square, 7).result(timeout=RESULT_TIMEOUT) == 49


@pytest.mark.slow
def test_racing_workers_run_each_task_exactly_once(
    make_executor: MakeExecutor, executor_store: str, tmp_path: Path
) -> None:
    ex = make_executor(max_workers=4)
    runs = tmp_path / "runs"
    runs.mkdir()
    # Extra workers for the same session, started by hand as a cluster would start them.
    logs = tmp_path / "external-logs"
    logs.mkdir()
    external = []
    for i in range(4):
        with open(logs / f"worker-{i}.log", "wb") as log:
            external.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "starburst_executor.worker",
                        "--store",
                        executor_store,
                        "--session",
                        ex.session_id,
                        "--worker-id",
                        f"external-{i}",
                        "--poll-max",
                        "0.05",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
    try:
        workers = f"sessions/{ex.session_id}/workers/"
        wait_until(lambda: len(list(ex.store.list(workers))) == 4, what="the external workers")
        delivered: Counter[int] = Counter()
        lock = threading.Lock()

        def count(index: int) -> Callable[[Future[int]], None]:
            def callback(_: Future[int]) -> None:
                with lock:
                    delivered[index] += 1

            return callback

        futures = []
        for burst in range(60):  # many small batches
            for j in range(5):
                index = burst * 5 + j
                fut = ex.submit(tasks.record_run, str(runs), index)
                fut.add_done_callback(count(index))
                futures.append(fut)
            time.sleep(0.005)  # the workload: bursts apart, so they travel as many batches
        assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == [2 * i for i in range(300)]
        wait_until(lambda: sum(delivered.values()) >= 300, what="the done callbacks")
        executions = Counter(int(p.name.split("-")[0]) for p in runs.iterdir())
        assert executions == Counter(range(300))  # every task ran, and ran once
        assert set(delivered.values()) == {1} and len(delivered) == 300
        runners = {int(p.read_text()) for p in runs.iterdir()}
        assert runners & {p.pid for p in external}, "the external workers never won a batch"
        assert len(runners) > 2
    finally:
        for proc in external:
            proc.send_signal(signal.SIGTERM)
        for proc in external:
            proc.wait(timeout=30)
