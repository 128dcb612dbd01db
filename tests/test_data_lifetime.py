"""How long a session's data lives, and how ``status`` counts.

- A plain ``StarburstExecutor`` that shuts down cleanly deletes its session: the store's
  objects, the local worker logs and its session index entry (``keep_logs`` keeps the logs).
  A ``DetachedExecutor`` keeps everything.
- ``starburst prune`` removes what a crashed client left, and old ended sessions.
- ``status`` counts as running only tasks a live worker runs now (one per worker), and a batch
  handed back on SIGTERM as pending.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import executor_tasks as tasks
import pytest
from detached_support import session_processes, subprocess_env, wait_until

from starburst_executor import DetachedExecutor, SessionStatus, StarburstExecutor, open_store
from starburst_executor._manager import Pacing
from starburst_executor._session import Call, Session, new_session_id
from starburst_executor.config import home_dir, indexed_sessions, remembered_store, secret_key
from starburst_executor.detached import list_sessions
from starburst_executor.launchers.local import LocalLauncher
from starburst_executor.protocol import Codec, SessionManifest, runtime_versions
from starburst_executor.serialization import call_parts
from starburst_executor.stores.local import LocalStore

FAST = Pacing(poll_max=0.1)


@pytest.fixture
def store_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory store; local workers get ``tests/`` on their PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])
    return tmp_path / "store"


def _files(directory: Path) -> list[Path]:
    """Files under ``directory`` that hold anything (the directory store's lock files for
    compare-and-swap are empty and shared by design)."""
    if not directory.exists():
        return []
    return [p for p in directory.rglob("*") if p.is_file() and p.stat().st_size > 0]


# -- a plain session deletes its data when it shuts down cleanly -----------------------------


def test_a_clean_shutdown_deletes_the_sessions_store_objects_logs_and_index_entry(
    store_dir: Path,
) -> None:
    with StarburstExecutor(max_workers=2, store=store_dir.as_uri(), pacing=FAST) as ex:
        sid = ex.session_id
        futures = [ex.submit(tasks.big_result, 10 * 2**20) for _ in range(2)]  # 20 MB back
        sizes = [len(f.result(timeout=60)) for f in futures]
        assert sizes == [10 * 2**20] * 2
        assert (home_dir() / "logs" / sid).is_dir()  # the workers wrote their logs there
    store = LocalStore(store_dir)
    assert list(store.list("")) == []
    assert _files(store_dir) == []
    assert not (store_dir / "sessions" / sid).exists()
    assert list((home_dir() / "logs").iterdir()) == []
    assert remembered_store(sid) is None and indexed_sessions() == []
    assert list_sessions(store) == []


def test_keep_logs_keeps_the_worker_logs_and_what_shows_them(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STARBURST_KEEP_LOGS", "1")
    with StarburstExecutor(max_workers=1, store=store_dir.as_uri(), pacing=FAST) as ex:
        sid = ex.session_id
        assert ex.submit(tasks.big_result, 2**20).result(timeout=60)
    logs = list((home_dir() / "logs" / sid).glob("*.log"))
    assert logs and any(p.read_text() for p in logs)
    store = LocalStore(store_dir)
    kinds = {i.key.split("/")[2] for i in store.list(f"sessions/{sid}/")}
    assert kinds <= {"manifest", "control", "workers", "logs"} and "manifest" in kinds
    [status] = list_sessions(store)  # still listed, so `starburst logs SID` finds it
    assert (status.session_id, status.state) == (sid, "closed")
    assert remembered_store(sid) == store.url


def test_a_detached_session_keeps_its_data(store_dir: Path) -> None:
    with DetachedExecutor(max_workers=1, store=store_dir.as_uri(), pacing=FAST) as ex:
        sid = ex.session_id
        assert ex.submit(tasks.add, 1, 2).result(timeout=60) == 3
    assert [r.value for r in DetachedExecutor.attach(sid).collect()] == [3]
    assert remembered_store(sid) == store_dir.as_uri()


# -- prune -------------------------------------------------------------------------------------

_CRASHER = r"""
import os, sys
import executor_tasks as tasks
from starburst_executor import StarburstExecutor
from starburst_executor._manager import Pacing
ex = StarburstExecutor(max_workers=1, store=sys.argv[1], pacing=Pacing(poll_max=0.1),
                       idle_timeout=1)
assert ex.submit(tasks.add, 1, 2).result(timeout=60) == 3
print(ex.session_id, flush=True)
os._exit(0)  # a crash: no shutdown, nothing deleted
"""


def _starburst(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "starburst_executor.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
        check=False,
    )


@pytest.mark.slow
def test_prune_removes_what_a_crashed_client_left_and_keeps_open_detached_sessions(
    store_dir: Path, reap: list[str]
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CRASHER, store_dir.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
        check=True,
    ).stdout
    crashed = out.strip()
    reap.append(crashed)
    detached = DetachedExecutor(max_workers=1, store=store_dir.as_uri(), pacing=FAST)
    reap.append(detached.session_id)
    assert detached.submit(tasks.add, 2, 2).result(timeout=60) == 4
    detached.detach()
    wait_until(
        lambda: session_processes(crashed) == [], what="the crashed session's worker to idle out"
    )
    assert (home_dir() / "logs" / crashed).is_dir() and remembered_store(crashed)

    dry = _starburst("prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would remove {crashed}" in dry.stdout and "client process is gone" in dry.stdout
    assert detached.session_id not in dry.stdout
    assert {s.session_id for s in list_sessions(open_store(store_dir.as_uri()))} == {
        crashed,
        detached.session_id,
    }  # a dry run changes nothing

    proc = _starburst("prune", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [p["session_id"] for p in json.loads(proc.stdout)["removed"]] == [crashed]
    store = open_store(store_dir.as_uri())
    assert [s.session_id for s in list_sessions(store)] == [detached.session_id]
    assert list(store.list(f"sessions/{crashed}/")) == []
    assert not (home_dir() / "logs" / crashed).exists()
    assert remembered_store(crashed) is None
    assert remembered_store(detached.session_id) == store.url


@pytest.mark.slow
def test_prune_removes_ended_sessions_older_than_the_age(store_dir: Path, reap: list[str]) -> None:
    ex = DetachedExecutor(max_workers=1, store=store_dir.as_uri(), pacing=FAST)
    reap.append(ex.session_id)
    assert ex.submit(tasks.add, 2, 2).result(timeout=60) == 4
    ex.cleanup()  # closed, results kept
    proc = _starburst("prune", "--older-than", "1h", "--store", store_dir.as_uri())
    assert (proc.returncode, proc.stdout.strip()) == (0, "nothing to prune"), proc.stderr
    time.sleep(1.1)  # the age is measured on the store's clock: let one second pass
    proc = _starburst("prune", "--older-than", "1s", "--store", store_dir.as_uri())
    assert proc.returncode == 0, proc.stderr
    assert f"removed {ex.session_id}" in proc.stdout and "closed" in proc.stdout
    assert list_sessions(open_store(store_dir.as_uri())) == []
    assert _starburst("prune", "--older-than", "soon").returncode == 1


# -- status counts what really runs ------------------------------------------------------------


def test_status_counts_one_running_task_per_worker_and_a_released_batch_as_pending(
    store_dir: Path, tmp_path: Path, reap: list[str]
) -> None:
    """Two batches of 7 tasks, one worker: it runs one task; the rest is pending. After
    SIGTERM the worker hands its batch back: nothing runs, all 14 are pending (before:
    "Running: 7" in both cases)."""
    store, codec = open_store(store_dir.as_uri()), Codec(secret_key())
    sid = new_session_id()
    reap.append(sid)
    manifest = SessionManifest(
        sid, store.now(), runtime_versions(), store_url=store.url, detached=True, idle_timeout=60
    )
    writer = Session(store, manifest, codec)
    writer.create()
    gate = str(tmp_path / "gate")
    for _ in range(2):
        calls = [Call("call", call_parts(tasks.wait_for_gate, (gate, i), {})) for i in range(7)]
        writer.write_batch(writer.next_bid(7), calls)
    launcher = LocalLauncher(store.url, sid, poll_max=0.1)
    launcher.start(1)
    reader = DetachedExecutor.attach(sid, store=store.url)
    status = wait_until(lambda: (s := reader.status()).running and s, what="a running task")
    assert isinstance(status, SessionStatus)  # wait_until returns only a true value
    assert (status.total, status.running, status.pending, status.workers) == (14, 1, 13, 1)

    [pid] = launcher.pids().values()
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: launcher.running() == 0, what="the worker to exit")
    status = reader.status()
    assert (status.running, status.pending, status.workers) == (0, 14, 0)
    table = dict(line.split(":", 1) for line in str(status).splitlines())
    assert (table["Running"].strip(), table["Pending"].strip()) == ("0", "14")
