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
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import executor_tasks as tasks
import pytest
from detached_support import subprocess_env, wait_until

from starburst_executor import StarburstExecutor
from starburst_executor.launchers import LocalLauncher
from starburst_executor.protocol import SessionKeys

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
