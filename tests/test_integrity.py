"""Signed records are bound to where they belong: a validly signed record copied onto another
key, or replayed from another session, is refused with ``CorruptRecordError`` naming the key
(issue 10, item 3). Real worker processes on a directory store."""

from __future__ import annotations

from concurrent.futures import wait
from pathlib import Path
from typing import Any

import executor_tasks as tasks
import pytest
from detached_support import subprocess_env
from unit.fakes import use_launcher

from starburst_executor import (
    CorruptRecordError,
    DetachedExecutor,
    ProtocolMismatchError,
    StarburstExecutor,
)
from starburst_executor._manager import _START_FAILURES_MAX, Pacing
from starburst_executor.config import secret_key
from starburst_executor.launchers.thread import ThreadLauncher
from starburst_executor.protocol import Codec, SessionKeys, SessionManifest
from starburst_executor.sessions import SessionReader
from starburst_executor.stores import open_store
from starburst_executor.stores.memory import FakeClock, MemoryStore
from starburst_executor.worker.loop import WorkerOptions

FAST = Pacing(poll_max=0.1)


@pytest.fixture
def local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A directory store; workers find ``executor_tasks`` on their PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])
    return (tmp_path / "store").as_uri()


def _reader(store: str, sid: str) -> SessionReader:
    return SessionReader(open_store(store), sid, Codec(secret_key()))


def test_a_result_copied_onto_another_batchs_key_is_refused(
    local_store: str, reap: list[str]
) -> None:
    ex = DetachedExecutor(max_workers=1, store=local_store, pacing=FAST)
    reap.append(ex.session_id)
    for x in (10, 11, 12):  # sequential: one batch each
        ex.submit(tasks.square, x).result(timeout=30)
    sid = ex.session_id
    ex.detach()
    store, keys = open_store(local_store), SessionKeys(sid)
    bids = _reader(local_store, sid).batch_ids()
    done = _reader(local_store, sid).done()
    assert len(bids) == 3
    # Task 0's validly signed result, onto every stored copy of task 2's result.
    source = store.get(keys.result(bids[0])).data
    victim = bids[2]
    for key in (keys.result(victim), done[victim].key):
        store.put(key, source)

    results = DetachedExecutor.attach(sid, store=local_store).collect()
    assert [r.value for r in results[:2]] == [100, 121]
    error = results[2].error
    assert isinstance(error, CorruptRecordError), results[2]
    assert victim in str(error) and "signature" in str(error)


def test_a_batch_replayed_from_another_session_is_not_run(
    local_store: str, tmp_path: Path, reap: list[str]
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    first = DetachedExecutor(max_workers=1, store=local_store, pacing=FAST)
    reap.append(first.session_id)
    assert first.submit(tasks.record_run, str(marks), 7).result(timeout=30) == 14
    first.cleanup(stop_workers=True)
    runs = len(list(marks.iterdir()))
    assert runs == 1
    store = open_store(local_store)
    [bid] = _reader(local_store, first.session_id).batch_ids()
    stolen = store.get(SessionKeys(first.session_id).batch(bid)).data

    second = DetachedExecutor(max_workers=1, store=local_store, pacing=FAST)
    reap.append(second.session_id)
    assert second.submit(tasks.square, 3).result(timeout=30) == 9
    # A pending key of the second session: a fresh batch id, nothing claimed or finished.
    now_ms = int(store.now() * 1000)
    replayed = f"{now_ms:013d}-replay-000000-1"
    key = SessionKeys(second.session_id).batch(replayed)
    store.put(key, stolen)
    sid = second.session_id
    second.detach()

    ex = DetachedExecutor.attach(sid, store=local_store)
    try:
        results = ex.collect(wait=True, timeout=30)
    finally:
        ex.cleanup(stop_workers=True)
    assert len(list(marks.iterdir())) == runs  # the stolen task never ran again
    assert results[0].value == 9
    error = results[1].error
    assert isinstance(error, CorruptRecordError), results[1]
    assert key in str(error)


def test_a_record_of_the_previous_protocol_version_is_a_protocol_mismatch() -> None:
    codec = Codec(b"k" * 32)
    key = SessionKeys("s").manifest
    blob = bytearray(SessionManifest("s", 1.0, {}).encode(codec, key))
    blob[3] -= 1
    with pytest.raises(ProtocolMismatchError, match="protocol version 1"):
        SessionManifest.decode(codec, bytes(blob), key)


def test_a_record_signed_for_one_key_is_refused_at_another() -> None:
    codec = Codec(b"k" * 32)
    a, b = SessionKeys("session-a"), SessionKeys("session-b")
    blob = SessionManifest("session-a", 1.0, {}).encode(codec, a.manifest)
    assert SessionManifest.decode(codec, blob, a.manifest).session_id == "session-a"
    for elsewhere in (b.manifest, a.index):
        with pytest.raises(CorruptRecordError, match=elsewhere):
            SessionManifest.decode(codec, blob, elsewhere)


# -- a corrupt control record (issue 10, item 4): in-thread workers on a memory store ------


class _CountingLauncher(ThreadLauncher):
    """Counts the workers it was asked to start."""

    started = 0

    def start(self, count: int) -> list[str]:
        type(self).started += count
        return super().start(count)


def _counting_launcher(store: Any, manifest: Any, codec: Codec) -> _CountingLauncher:
    return _CountingLauncher(
        store,
        manifest.session_id,
        codec,
        options=WorkerOptions(poll_min=0.001, poll_max=0.01, control_every=0.01),
    )


def test_a_corrupt_control_record_breaks_the_executor_with_bounded_restarts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_launcher(monkeypatch, _counting_launcher)
    store = MemoryStore(clock=FakeClock())
    fast = Pacing(linger=0.001, poll_min=0.001, poll_max=0.01, maintain_every=0.005)
    # One task per worker: every later task needs a new worker, which reads the control
    # record as it starts.
    ex = StarburstExecutor(max_workers=2, store=store, pacing=fast, max_tasks_per_child=1)
    try:
        assert ex.submit(tasks.square, 2).result(timeout=10) == 4
        key = SessionKeys(ex.session_id).control
        store.put(key, store.get(key).data[:-1] + b"!")  # damaged in the store
        before = _CountingLauncher.started
        futures = [ex.submit(tasks.square, i) for i in range(30)]
        done, pending = wait(futures, timeout=10)
        assert not pending, f"{len(pending)} of 30 Futures never resolved"
        for future in futures:
            error = future.exception()
            assert isinstance(error, CorruptRecordError), error
            assert key in str(error)
        assert _CountingLauncher.started - before <= 2 + _START_FAILURES_MAX
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
