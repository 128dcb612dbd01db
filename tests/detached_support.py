"""Helpers shared by the detached-session, command-line and timeout tests.

- :func:`start_creator` runs a *separate* Python process that creates a ``DetachedExecutor``,
  submits work in stages (so that the test can see exact counts), prints the session id and
  then detaches (or waits to be killed).
- :func:`session_processes` finds the processes of a session by their command line (workers
  carry ``--session SID``), to prove that workers are gone.
- :func:`wait_until` polls a condition with a deadline.

Task functions come from ``executor_tasks`` (workers import it by name: the
``executor_store`` fixture puts ``tests/`` on their ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent

# The creator process. Stage 1: a task that succeeds and one that fails, both finished. Stage 2:
# two tasks blocked on gate A, both claimed (max_workers=2). Stage 3: two tasks blocked on gate
# B, which stay pending since both workers are busy. Every batch holds one task (task_timeout
# caps batches at one task), so the counts are exact: total 6, completed 1, failed 1, running
# 2, pending 2.
CREATOR = r"""
import sys, time
from concurrent.futures import wait

import executor_tasks as tasks
from starburst_executor import DetachedExecutor
from starburst_executor._manager import Pacing

store, gate_a, gate_b, mode = sys.argv[1:5]
ex = DetachedExecutor(max_workers=2, store=store, name="cycle", task_timeout=120,
                      idle_timeout=60, pacing=Pacing(poll_max=0.1))
first = [ex.submit(tasks.add, 1, 2), ex.submit(tasks.raise_at, 5, 5)]
wait(first, timeout=60)
assert all(f.done() for f in first), "stage 1 did not finish"
ex.submit(tasks.wait_for_gate, gate_a, 10)
ex.submit(tasks.wait_for_gate, gate_a, 11)
deadline = time.monotonic() + 60
while ex.status().running < 2:
    assert time.monotonic() < deadline, "stage 2 was not claimed"
    time.sleep(0.02)
ex.submit(tasks.wait_for_gate, gate_b, 20)
ex.submit(tasks.wait_for_gate, gate_b, 21)
print(ex.session_id, flush=True)
if mode == "detach":
    ex.detach()
else:  # wait to be killed
    time.sleep(120)
"""

CREATOR_COUNTS = {"total": 6, "completed": 1, "failed": 1, "running": 2, "pending": 2}


def wait_until(
    predicate: Callable[[], T], timeout: float = 30.0, what: str = "", interval: float = 0.02
) -> T:
    """Poll ``predicate`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def subprocess_env(**extra: str) -> dict[str, str]:
    """``os.environ`` (which the fixtures patched) with the working tree and ``tests/`` on
    ``PYTHONPATH``, as the worker processes get it."""
    env = dict(os.environ)
    paths = [str(REPO_DIR), str(TESTS_DIR)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def start_creator(
    store: str, gate_a: Path, gate_b: Path, mode: str
) -> tuple[subprocess.Popen[str], str]:
    """Start the creator process; return it and the session id it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CREATOR, store, str(gate_a), str(gate_b), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line:
        proc.wait(30)
        assert proc.stderr is not None
        raise AssertionError(f"the creator printed no session id; stderr:\n{proc.stderr.read()}")
    return proc, line


def session_processes(session_id: str) -> list[int]:
    """Live (non-zombie) processes whose command line names the session."""
    needle = session_id.encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:  # a zombie's cmdline is empty: it is gone
            pids.append(int(entry.name))
    return pids


def counts(status: Any) -> dict[str, int]:
    """The task counts of a ``SessionStatus`` (or its ``to_dict()``), as in CREATOR_COUNTS."""
    get: Callable[[str], Any] = (
        status.get if isinstance(status, dict) else lambda k: getattr(status, k)
    )
    return {k: get(k) for k in CREATOR_COUNTS}


def summary(results: list[Any]) -> list[tuple[Any, ...]]:
    """Comparable form of ``TaskResult`` lists: (index, task_id, value, error type, args)."""
    return [
        (
            r.index,
            r.task_id,
            r.value,
            type(r.error) if r.error is not None else None,
            r.error.args if r.error is not None else None,
        )
        for r in results
    ]
