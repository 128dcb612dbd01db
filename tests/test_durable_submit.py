"""Durable submission: a ``DetachedExecutor``'s ``submit`` and ``map`` return only once their
calls are in the store, so a client killed by SIGKILL right after loses nothing; submitters
running at once share store writes (group commit).

The killed clients run in a separate process (``KILLED_CLIENT``) that kills itself with
SIGKILL the moment it has printed the session id, on the directory store and on SeaweedFS.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import executor_tasks as tasks
import pytest
from detached_support import subprocess_env, wait_until

from starburst_executor import DetachedExecutor, TaskResult, open_store
from starburst_executor._manager import Pacing
from starburst_executor.config import secret_key
from starburst_executor.protocol import BatchId, Codec
from starburst_executor.sessions import SessionReader

FAST = Pacing(poll_max=0.1)
POLL = 0.05

# Submits (or maps), prints the session id once the last call returned, and dies at once:
# no atexit, no detach(), no thread gets another instant.
KILLED_CLIENT = r"""
import os, signal, sys

import executor_tasks as tasks
from starburst_executor import DetachedExecutor

store, mode = sys.argv[1:3]
ex = DetachedExecutor(max_workers=2, store=store)
if mode == "submit":
    for i in range(12):
        ex.submit(tasks.square, i)
else:
    ex.map(tasks.square, range(10), chunksize=3)
print(ex.session_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def run_killed_client(store: str, mode: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_CLIENT, store, mode],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    sid = proc.stdout.strip()
    assert sid, proc.stderr
    return sid


def reader(store: str, sid: str) -> SessionReader:
    return SessionReader(open_store(store), sid, Codec(secret_key()))


def values(results: list[TaskResult]) -> list[Any]:
    return [r.value if r.ok else r.error for r in results]


# -- nothing is lost ---------------------------------------------------------------------------


def test_a_client_killed_right_after_submit_loses_nothing(
    executor_store: str, reap: list[str]
) -> None:
    """Before durable submission, 12 submits then SIGKILL left 1 task in the store."""
    sid = run_killed_client(executor_store, "submit")
    reap.append(sid)
    assert reader(executor_store, sid).status().total == 12  # in the store, every one
    ex = DetachedExecutor.attach(sid, store=executor_store, pacing=FAST)
    results = ex.collect(wait=True, timeout=90, poll_interval=POLL)
    assert values(results) == [i * i for i in range(12)]
    assert [r.index for r in results] == list(range(12))
    ex.cleanup(delete_data=True)


def test_a_client_killed_right_after_map_loses_nothing(
    executor_store: str, reap: list[str]
) -> None:
    sid = run_killed_client(executor_store, "map")
    reap.append(sid)
    ex = DetachedExecutor.attach(sid, store=executor_store, pacing=FAST)
    results = ex.collect(wait=True, timeout=90, poll_interval=POLL)
    assert values(results) == [i * i for i in range(10)]
    assert [r.index for r in results] == list(range(10))
    ex.cleanup(delete_data=True)


# -- how the writes are made -------------------------------------------------------------------


@pytest.fixture
def local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])
    return (tmp_path / "store").as_uri()


def test_submits_that_arrive_during_a_write_share_the_next_one(
    local_store: str, reap: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = DetachedExecutor(max_workers=1, store=local_store, pacing=FAST)
    reap.append(ex.session_id)
    entered, release = threading.Event(), threading.Event()
    write_batch = ex._writer.write_batch

    def slow_first_write(bid: str, calls: list[Any]) -> None:
        if not entered.is_set():
            entered.set()
            assert release.wait(30)
        write_batch(bid, calls)

    monkeypatch.setattr(ex._writer, "write_batch", slow_first_write)
    futures: dict[int, Future[Any]] = {}

    def submit(i: int) -> None:
        futures[i] = ex.submit(tasks.square, i)

    first = threading.Thread(target=submit, args=(0,))
    first.start()
    assert entered.wait(30)  # the first submit's write is in flight ...
    others = [threading.Thread(target=submit, args=(i,)) for i in range(1, 8)]
    for t in others:
        t.start()
    # ... and seven more submits wait for it, none of them returned yet.
    wait_until(lambda: len(ex._commit._pending) == 7, what="7 submits waiting")
    assert futures == {}
    release.set()
    for t in [first, *others]:
        t.join(30)
    assert sorted(futures) == list(range(8))
    # One write for the first call, then the seven waiting ones together, spread over
    # 2 x max_workers batches (4 + 3 calls) so that workers share them.
    bids = reader(local_store, ex.session_id).batch_ids()
    assert [BatchId.parse(b).ntasks for b in bids] == [1, 4, 3]
    assert [futures[i].result(timeout=60) for i in range(8)] == [i * i for i in range(8)]
    ex.cleanup(delete_data=True)


def test_map_writes_every_chunk_before_it_returns(local_store: str, reap: list[str]) -> None:
    ex = DetachedExecutor(max_workers=2, store=local_store, pacing=FAST)
    reap.append(ex.session_id)
    it = ex.map(tasks.square, range(100), chunksize=7)  # 14 chunks of 7, one of 2
    status = reader(local_store, ex.session_id).status()
    assert status.total == 15
    bids = reader(local_store, ex.session_id).batch_ids()
    assert len(bids) <= 5  # in bulk: the 14 full chunks over 4 batches, the short one alone
    assert list(it) == [i * i for i in range(100)]
    results = ex.collect(wait=True, timeout=60, poll_interval=POLL)
    assert [r.index for r in results] == list(range(100))
    assert [r.value for r in results] == [i * i for i in range(100)]
    ex.cleanup(delete_data=True)


def test_a_failed_write_fails_the_submit(local_store: str, reap: list[str]) -> None:
    from starburst_executor import StoreUnavailableError

    ex = DetachedExecutor(max_workers=1, store=local_store, pacing=FAST)
    reap.append(ex.session_id)

    def refuse(bid: str, calls: list[Any]) -> None:
        raise StoreUnavailableError("the store said no")

    ex._writer.write_batch = refuse  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailableError, match="said no"):
        ex.submit(tasks.square, 3)
    assert ex.futures == []  # nothing the session will run
    del ex._writer.write_batch  # the real one again
    assert ex.submit(tasks.square, 4).result(timeout=60) == 16  # the executor still works
    ex.cleanup(delete_data=True)


def test_map_with_an_unpicklable_chunk_writes_the_others(local_store: str, reap: list[str]) -> None:
    """As the stdlib's: the chunk that cannot be pickled raises when the iterator reaches it;
    the others are in the session, numbered without the chunk that never was."""
    ex = DetachedExecutor(max_workers=1, store=local_store, pacing=FAST)
    reap.append(ex.session_id)
    it = ex.map(tasks.square, [1, 2, threading.Lock(), 4, 5], chunksize=2)
    assert reader(local_store, ex.session_id).status().total == 2  # [1, 2] and [5]
    assert [next(it), next(it)] == [1, 4]
    with pytest.raises(TypeError, match="lock"):
        next(it)
    results = ex.collect(wait=True, timeout=60, poll_interval=POLL)
    assert [(r.index, r.value) for r in results] == [(0, 1), (1, 4), (2, 25)]
    ex.cleanup(delete_data=True)
