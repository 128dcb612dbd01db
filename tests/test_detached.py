"""``DetachedExecutor``: a session outlives its client; any process reattaches by id.

The client that creates a session runs in a separate process (``detached_support.CREATOR``)
which detaches and exits, or is killed with SIGKILL; the test process then attaches to the
session. Tasks wait on gate files, so "running" and "pending" are observed exactly.
The core cycle runs on a directory store and on S3 (SeaweedFS).
"""

from __future__ import annotations

import dataclasses
import pickle
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import wait
from pathlib import Path

import executor_tasks as tasks
import pytest
from detached_support import (
    CREATOR_COUNTS,
    REPO_DIR,
    counts,
    session_processes,
    start_creator,
    subprocess_env,
    summary,
    wait_until,
)

from starburst_executor import (
    CorruptRecordError,
    DetachedExecutor,
    ProtocolMismatchError,
    SessionError,
    StarburstExecutor,
    TaskResult,
    list_sessions,
    open_store,
)
from starburst_executor._manager import Pacing
from starburst_executor._session import Session
from starburst_executor.cli import main as cli_main
from starburst_executor.config import home_dir, secret_key
from starburst_executor.errors import SessionExpiredError
from starburst_executor.protocol import Codec, SessionKeys
from starburst_executor.sessions import SessionReader

FAST = Pacing(poll_max=0.1)  # workers and the client look for work at least every 0.1 s
POLL = 0.05


def reader(store: str, sid: str) -> SessionReader:
    return SessionReader(open_store(store), sid, Codec(secret_key()))


def values(results: list[TaskResult]) -> list[object]:
    return [r.value if r.ok else type(r.error) for r in results]


# -- the whole cycle ---------------------------------------------------------------------------


@pytest.mark.slow
def test_detach_then_attach_from_another_process_full_cycle(
    executor_store: str, tmp_path: Path, reap: list[str]
) -> None:
    gate_a, gate_b = tmp_path / "gate-a", tmp_path / "gate-b"
    creator, sid = start_creator(executor_store, gate_a, gate_b, "detach")
    reap.append(sid)
    assert creator.wait(60) == 0, creator.stderr.read() if creator.stderr else ""

    # The session's store is found through the per-user index: no store= here.
    ex = DetachedExecutor.attach(sid, pacing=FAST)
    assert ex.session_id == sid
    assert ex.store.url.rstrip("/") == executor_store.rstrip("/")
    status = ex.status()
    assert counts(status) == CREATOR_COUNTS
    assert (status.state, status.name, status.workers) == ("open", "cycle", 2)
    assert sid in str(status) and "Running:" in str(status)

    # Partial collection: exactly the finished tasks, in submission order.
    partial = ex.collect(poll_interval=POLL)
    assert values(partial) == [3, ValueError]
    assert [r.index for r in partial] == [0, 1]
    failed = partial[1].error
    assert not partial[1].ok and failed is not None and failed.args == ("bad item", 5)

    gate_a.touch()  # the two running tasks finish; the two pending ones start and block
    wait_until(
        lambda: (
            counts(ex.status()) == {**CREATOR_COUNTS, "completed": 3, "running": 2, "pending": 0}
        ),
        what="gate A tasks done",
    )
    partial = ex.collect(poll_interval=POLL)
    assert values(partial) == [3, ValueError, 10, 11]
    with pytest.raises(TimeoutError):
        ex.collect(wait=True, timeout=0.3, poll_interval=POLL)

    futures = ex.futures
    assert len(futures) == 6
    assert futures[0].result(timeout=30) == 3
    assert isinstance(futures[1].exception(timeout=30), ValueError)
    assert [f.result(timeout=30) for f in futures[2:4]] == [10, 11]
    assert not futures[4].done() and not futures[5].done()

    gate_b.touch()
    results = ex.collect(wait=True, timeout=60, poll_interval=POLL)
    assert values(results) == [3, ValueError, 10, 11, 20, 21]
    assert [r.index for r in results] == list(range(6))
    assert [r.ok for r in results] == [True, False, True, True, True, True]
    assert isinstance(results[1].error, ValueError)
    with pytest.raises(ValueError):
        results[1].result()
    assert len({r.task_id for r in results}) == 6
    assert summary(ex.collect(wait=True, poll_interval=POLL)) == summary(results)
    assert summary(ex.collect(poll_interval=POLL)) == summary(results)
    assert [f.result(timeout=30) for f in futures[4:]] == [20, 21]

    # More work for the reattached session.
    more = ex.submit(tasks.add, 40, 2)
    assert more.result(timeout=60) == 42
    assert ex.futures[-1] is more and len(ex.futures) == 7
    results = ex.collect(wait=True, timeout=60, poll_interval=POLL)
    assert values(results) == [3, ValueError, 10, 11, 20, 21, 42]
    status = ex.status()
    assert (status.total, status.completed, status.failed, status.pending, status.running) == (
        7,
        6,
        1,
        0,
        0,
    )
    assert status.done and status.state == "finished"

    # cleanup(): the workers stop, the results stay.
    assert session_processes(sid), "the session's workers should still be running"
    ex.cleanup()
    assert session_processes(sid) == []
    again = DetachedExecutor.attach(sid, store=executor_store)
    assert again.status().state == "closed"
    assert summary(again.collect(wait=True, timeout=10, poll_interval=POLL)) == summary(results)

    # cleanup(delete_data=True): the data is gone, and says so.
    again.cleanup(delete_data=True)
    with pytest.raises(SessionError, match="deleted"):
        DetachedExecutor.attach(sid)
    with pytest.raises(SessionError, match="deleted"):
        again.collect()
    with pytest.raises(SessionError, match="deleted"):
        ex.collect(wait=True, timeout=5)
    assert [s.state for s in list_sessions(executor_store) if s.session_id == sid] == ["deleted"]


@pytest.mark.slow
def test_attach_after_the_creator_was_killed(
    executor_store: str, tmp_path: Path, reap: list[str]
) -> None:
    gate_a, gate_b = tmp_path / "gate-a", tmp_path / "gate-b"
    creator, sid = start_creator(executor_store, gate_a, gate_b, "kill")
    reap.append(sid)
    # It printed the id once the work was submitted; wait until the store has all of it (a
    # submit is uploaded within milliseconds), then kill it without any chance to clean up.
    wait_until(lambda: reader(executor_store, sid).status().total == 6, what="6 tasks stored")
    creator.send_signal(signal.SIGKILL)
    assert creator.wait(10) == -signal.SIGKILL

    ex = DetachedExecutor.attach(sid, store=executor_store, pacing=FAST)
    assert counts(ex.status()) == CREATOR_COUNTS
    assert values(ex.collect(poll_interval=POLL)) == [3, ValueError]
    gate_a.touch()
    gate_b.touch()
    results = ex.collect(wait=True, timeout=60, poll_interval=POLL)
    assert values(results) == [3, ValueError, 10, 11, 20, 21]
    assert [f.exception(timeout=30) is None for f in ex.futures] == [
        True,
        False,
        True,
        True,
        True,
        True,
    ]
    ex.cleanup(delete_data=True)
    assert session_processes(sid) == []


# -- collect(wait=True) never hangs ------------------------------------------------------------


@pytest.fixture
def local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A directory store; workers find ``executor_tasks`` on their PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])
    return (tmp_path / "store").as_uri()


def test_collect_with_timeout_raises_quickly(
    local_store: str, tmp_path: Path, reap: list[str]
) -> None:
    ex = DetachedExecutor(max_workers=1, store=local_store, pacing=FAST)
    reap.append(ex.session_id)
    gate = tmp_path / "gate"
    ex.submit(tasks.add, 1, 1).result(timeout=30)
    ex.submit(tasks.wait_for_gate, str(gate), 1)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="1 of 2 tasks finished"):
        ex.collect(wait=True, timeout=0.5, poll_interval=POLL)
    assert time.monotonic() - start < 2.0
    gate.touch()
    assert values(ex.collect(wait=True, timeout=30, poll_interval=POLL)) == [2, 1]
    ex.cleanup(delete_data=True)


@pytest.mark.slow
def test_collect_after_cancel_returns_the_unrun_tasks_as_errors(
    local_store: str, tmp_path: Path, reap: list[str]
) -> None:
    ex = DetachedExecutor(max_workers=1, store=local_store, task_timeout=60, pacing=FAST)
    sid = ex.session_id
    reap.append(sid)
    gate, marks = tmp_path / "gate", tmp_path / "marks"
    marks.mkdir()
    ex.submit(tasks.wait_for_gate, str(gate), 0, str(marks))
    started = wait_until(lambda: list(marks.iterdir()), what="the first task to start")
    started_at = time.monotonic()
    for i in range(1, 4):
        ex.submit(tasks.wait_for_gate, str(gate), i, str(marks))
    wait_until(lambda: ex.status().pending == 3, what="3 pending tasks")
    ex.detach()

    other = DetachedExecutor.attach(sid, store=local_store)
    other.cancel()
    assert other.status().state == "cancelled"
    with pytest.raises(SessionError, match="cancelled"):
        other.submit(tasks.add, 1, 2)
    # A worker re-reads the session's state every 2 s: let the running task outlast that, so
    # that the worker sees the cancellation when the task returns, before it claims more.
    time.sleep(max(0.0, 2.2 - (time.monotonic() - started_at)))
    gate.touch()
    results = other.collect(wait=True, timeout=30, poll_interval=POLL)
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert results[0].value == 0
    assert all(
        isinstance(r.error, SessionError) and "cancelled" in str(r.error) for r in results[1:]
    )
    assert len(started) == 1 and len(list(marks.iterdir())) == 1  # the others never ran
    status = other.status()
    assert (status.state, status.completed, status.cancelled, status.pending, status.workers) == (
        "cancelled",
        1,
        3,
        0,
        0,
    )
    wait_until(lambda: session_processes(sid) == [], timeout=10, what="workers to exit")
    other.cleanup(delete_data=True)


@pytest.mark.slow
def test_collect_numbers_results_by_submission_position(
    local_store: str, tmp_path: Path, reap: list[str]
) -> None:
    """Partial and complete, from the API and from ``starburst collect``: a result's index is
    where its call stood in submission order (each map item counts), whatever finished
    before it. A partial collect used to number the finished tasks 0, 1, 2, ..."""
    ex = DetachedExecutor(max_workers=2, store=local_store, pacing=FAST)
    sid = ex.session_id
    reap.append(sid)
    gate = tmp_path / "gate"
    ex.submit(tasks.wait_for_gate, str(gate), "first")  # 0: holds one worker until the gate
    quick = [ex.submit(tasks.square, i) for i in range(1, 6)]  # 1-5
    ex.map(tasks.raise_at, range(4), [2] * 4, chunksize=4)  # 6-9: 0, 1, ValueError; 9 never runs
    ex.submit(tasks.add, 10)  # 10
    wait_until(lambda: all(f.done() for f in ex.futures[1:]), what="all but the first task")
    assert all(f.done() for f in quick)

    # Index 0 is still running, and 9 never runs (map stops a chunk at its first error).
    expected_partial = [
        (1, 1),
        (2, 4),
        (3, 9),
        (4, 16),
        (5, 25),
        (6, 0),
        (7, 1),
        (8, ValueError),
        (10, 10),
    ]
    partial = ex.collect(poll_interval=POLL)
    assert [(r.index, r.value if r.ok else type(r.error)) for r in partial] == expected_partial
    out = tmp_path / "partial.pkl"
    assert cli_main(["collect", sid, "--store", local_store, "-o", str(out)]) == 4  # the ValueError
    from_cli = pickle.loads(out.read_bytes())
    assert [(r.index, r.value if r.ok else type(r.error)) for r in from_cli] == expected_partial

    gate.touch()
    complete = ex.collect(wait=True, timeout=60, poll_interval=POLL)
    assert [(r.index, r.value if r.ok else type(r.error)) for r in complete] == [
        (0, "first"),
        *expected_partial,
    ]
    assert summary(DetachedExecutor.attach(sid, store=local_store).collect()) == summary(complete)
    assert cli_main(["collect", sid, "--store", local_store, "-o", str(out)]) == 4
    assert summary(pickle.loads(out.read_bytes())) == summary(complete)
    ex.cleanup(delete_data=True)


def test_a_damaged_result_fails_only_its_own_entry(
    local_store: str, tmp_path: Path, reap: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    ex = DetachedExecutor(max_workers=1, store=local_store, pacing=FAST)
    sid = ex.session_id
    reap.append(sid)
    assert [ex.submit(tasks.square, i).result(timeout=60) for i in range(5)] == [0, 1, 4, 9, 16]
    ex.detach()
    store, keys, codec = open_store(local_store), SessionKeys(sid), Codec(secret_key())
    bids = reader(local_store, sid).batch_ids()
    done = reader(local_store, sid).done()
    assert len(bids) == 5  # one batch per sequential submit
    read_from = {}
    for victim, damage in ((1, "signature"), (3, "unpickle")):
        bid = bids[victim]
        event_key, size = done[bid].key, done[bid].size
        for key in (event_key, keys.result(bid)):  # every stored copy of its result
            data = store.get(key).data
            if damage == "signature":
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            else:  # correctly signed, but not a pickle
                data = codec.encode_blob(b"this is not a pickle", keys.result(bid))
            store.put(key, data)
        read_from[victim] = event_key if size else keys.result(bid)

    results = DetachedExecutor.attach(sid, store=local_store).collect()
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert [r.value for r in results if r.ok] == [0, 4, 16]
    for victim in (1, 3):
        error = results[victim].error
        assert isinstance(error, CorruptRecordError)
        assert f"task {victim} " in str(error) and read_from[victim] in str(error)
    assert "signature" in str(results[1].error)

    out = tmp_path / "results.pkl"
    assert cli_main(["collect", sid, "--store", local_store, "-o", str(out)]) == 4
    printed = capsys.readouterr().out
    assert "2 failed" in printed and "failed tasks (by index): 1, 3" in printed
    assert read_from[1] in printed
    assert [r.ok for r in pickle.loads(out.read_bytes())] == [True, False, True, False, True]
    DetachedExecutor.attach(sid, store=local_store).cleanup(delete_data=True)


@pytest.mark.parametrize("kind", ["detached", "plain"])
@pytest.mark.slow
def test_session_expiry_fails_queued_work_and_starts_no_worker(
    kind: str, local_store: str, tmp_path: Path, reap: list[str]
) -> None:
    """The only worker is blocked when session_timeout passes, with calls queued behind it
    (in the store, and for a plain executor in the client too). They used to stay pending
    forever, shutdown() never returned, and a worker was started about twice a second."""
    timeout = 6.0
    cls = DetachedExecutor if kind == "detached" else StarburstExecutor
    started = time.monotonic()
    ex = cls(max_workers=1, store=local_store, session_timeout=timeout, pacing=FAST)
    sid = ex.session_id
    reap.append(sid)
    gate, marks = tmp_path / "gate", tmp_path / "marks"
    marks.mkdir()
    blocked = ex.submit(tasks.wait_for_gate, str(gate), 0, str(marks))
    wait_until(lambda: list(marks.iterdir()), what="the blocking task to start")
    queued = [ex.submit(tasks.square, i) for i in range(10)]

    finished, _ = wait([blocked, *queued], timeout=timeout + 15)
    assert len(finished) == 11, "Futures still pending after the session expired"
    assert time.monotonic() - started < timeout + 8  # promptly after the deadline
    for fut in queued:
        error = fut.exception()
        assert isinstance(error, SessionExpiredError) and isinstance(error, TimeoutError)
        assert sid in str(error) and "session_timeout of 6 s" in str(error)
    assert isinstance(blocked.exception(), TimeoutError)  # stopped at the deadline
    if kind == "detached":  # refused at once
        with pytest.raises(SessionExpiredError, match="expired"):
            ex.submit(tasks.square, 1)
    else:  # its Future fails at once: nothing travels into the expired session
        assert isinstance(ex.submit(tasks.square, 1).exception(timeout=5), SessionExpiredError)

    logs = home_dir() / "logs" / sid
    time.sleep(2.0)  # an observation window: the bug started a new worker every ~0.5 s
    assert len(list(logs.glob("*.log"))) == 1, "a worker was started into an expired session"
    closer = threading.Thread(target=ex.shutdown)
    closer.start()
    closer.join(30)
    assert not closer.is_alive(), "shutdown() did not return"


def test_collect_right_after_submit_includes_the_new_tasks(
    local_store: str, reap: list[str]
) -> None:
    ex = DetachedExecutor(max_workers=2, store=local_store, pacing=FAST)
    reap.append(ex.session_id)
    for i in range(5):
        ex.submit(tasks.square, i)
    list(ex.map(tasks.square, range(5, 8), chunksize=2))  # two chunks: two more entries
    ex.submit(tasks.add, 1, 1)
    # The last submit is still on its way to the store: collect must wait for it too.
    results = ex.collect(wait=True, timeout=30, poll_interval=POLL)
    assert [r.value for r in results] == [0, 1, 4, 9, 16, 25, 36, 49, 2]
    assert len(ex.futures) == 8  # five submits, two map chunks, one submit
    assert ex.futures[5].result(timeout=5) == ([25, 36], None)
    ex.cleanup(delete_data=True)


def test_submit_after_detach_is_refused(local_store: str, reap: list[str]) -> None:
    ex = DetachedExecutor(max_workers=1, store=local_store, pacing=FAST)
    reap.append(ex.session_id)
    assert ex.submit(tasks.add, 1, 2).result(timeout=30) == 3
    ex.detach()
    # Once detached, this client no longer uploads: a call queued now would never run.
    with pytest.raises(RuntimeError, match="attach"):
        ex.submit(tasks.add, 2, 3)
    with pytest.raises(RuntimeError, match="attach"):
        ex.map(tasks.square, [1])
    attached = DetachedExecutor.attach(ex.session_id, store=local_store, pacing=FAST)
    assert attached.submit(tasks.add, 2, 3).result(timeout=30) == 5
    attached.cleanup(delete_data=True)


def test_submission_order_survives_a_store_clock_that_steps_back(
    local_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3 store's clock comes from each response's one-second ``Date`` header, so
    successive stamps of one client can step back: the sequence number must win."""
    store = open_store(local_store)
    ex = DetachedExecutor(max_workers=1, store=store)
    ex.detach()
    writer = Session(store, ex._writer.manifest, ex._writer.codec)
    stamps = iter([5000.9, 5000.2, 5000.5, 4999.9])
    monkeypatch.setattr(store, "now", lambda: next(stamps))
    bids = [writer.next_bid(1) for _ in range(4)]
    assert sorted(bids) != bids  # as strings they would sort out of submission order
    for bid in bids:
        writer.write_batch(bid, [])
    assert reader(local_store, ex.session_id).batch_ids() == bids


# -- two clients at once -----------------------------------------------------------------------


def test_two_clients_submitting_at_once_lose_nothing(local_store: str, reap: list[str]) -> None:
    ex = DetachedExecutor(max_workers=2, store=local_store, pacing=FAST)
    sid = ex.session_id
    reap.append(sid)
    ex.submit(tasks.add, 0, 0).result(timeout=30)
    ex.detach()
    # Each client rewrites the control record (its low watermark) as often as it can: the
    # compare-and-swap must keep every write intact.
    hammer = Pacing(poll_max=0.05, watermark_every=0.0)
    clients = [DetachedExecutor.attach(sid, store=local_store, pacing=hammer) for _ in range(2)]
    futures: dict[int, list[object]] = {0: [], 1: []}
    barrier = threading.Barrier(2)

    def submit_many(n: int) -> None:
        barrier.wait()
        for i in range(25):
            futures[n].append(clients[n].submit(tasks.square, 1000 * (n + 1) + i))
            if i % 5 == 0:
                # An extra compare-and-swap of the record.
                clients[n]._writer.update_control(lambda r: dataclasses.replace(r, n=r.n + 1))

    threads = [threading.Thread(target=submit_many, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in (0, 1):
        got = [f.result(timeout=60) for f in futures[n]]  # type: ignore[attr-defined]
        assert got == [(1000 * (n + 1) + i) ** 2 for i in range(25)]
    results = clients[0].collect(wait=True, timeout=60, poll_interval=POLL)
    assert len(results) == 51 and all(r.ok for r in results)
    expected = {0} | {(1000 * (n + 1) + i) ** 2 for n in (0, 1) for i in range(25)}
    assert {r.value for r in results} == expected
    assert summary(clients[1].collect(poll_interval=POLL)) == summary(results)
    control = reader(local_store, sid).control()
    assert control.state == "open" and control.n >= 10
    status = clients[1].status()
    assert (status.total, status.completed, status.failed) == (51, 51, 0)
    clients[0].cleanup(delete_data=True)


# -- bad input ---------------------------------------------------------------------------------


def test_unknown_session_names_the_store_and_how_to_list(local_store: str) -> None:
    DetachedExecutor(max_workers=1, store=local_store).detach()  # the store exists
    with pytest.raises(SessionError) as info:
        DetachedExecutor.attach("20200101-000000-abcdef", store=local_store)
    message = str(info.value)
    assert "20200101-000000-abcdef" in message
    assert local_store in message
    assert "starburst sessions" in message


def _manifest_path(store: str, sid: str) -> Path:
    return Path(store.removeprefix("file://")) / SessionKeys(sid).manifest


def test_manifest_of_another_protocol_version_is_a_protocol_mismatch(local_store: str) -> None:
    ex = DetachedExecutor(max_workers=1, store=local_store)
    ex.detach()
    path = _manifest_path(local_store, ex.session_id)
    data = bytearray(path.read_bytes())
    assert data[:3] == b"SBX"
    data[3] = data[3] + 1  # byte 3 of every record is the protocol version
    path.write_bytes(bytes(data))
    with pytest.raises(ProtocolMismatchError, match="protocol version"):
        DetachedExecutor.attach(ex.session_id, store=local_store)


def test_damaged_manifest_is_a_corrupt_record_naming_the_key(local_store: str) -> None:
    ex = DetachedExecutor(max_workers=1, store=local_store)
    ex.detach()
    _manifest_path(local_store, ex.session_id).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CorruptRecordError) as info:
        DetachedExecutor.attach(ex.session_id, store=local_store)
    assert SessionKeys(ex.session_id).manifest in str(info.value)


def test_cleaned_up_session_is_read_only(local_store: str, reap: list[str]) -> None:
    ex = DetachedExecutor(max_workers=1, store=local_store, pacing=FAST)
    reap.append(ex.session_id)
    assert ex.submit(tasks.add, 2, 3).result(timeout=30) == 5
    ex.cleanup()
    with pytest.raises(SessionError, match="closed"):
        ex.submit(tasks.add, 1, 1)
    attached = DetachedExecutor.attach(ex.session_id, store=local_store)
    assert attached.status().state == "closed"
    assert values(attached.collect(wait=True, timeout=10, poll_interval=POLL)) == [5]
    assert attached.futures[0].result(timeout=30) == 5
    with pytest.raises(SessionError, match="closed"):
        attached.submit(tasks.add, 1, 1)
    with pytest.raises(SessionError, match="closed"):
        attached.map(tasks.square, [1, 2])
    attached.cleanup(delete_data=True)
    with pytest.raises(SessionError, match="deleted"):
        DetachedExecutor.attach(ex.session_id, store=local_store)
    with pytest.raises(SessionError, match="deleted"):
        attached.cleanup(delete_data=True)  # not a bare "object not found" from the store
    with pytest.raises(SessionError, match="deleted"):
        attached.status()


@pytest.mark.slow
def test_expired_session_can_be_collected_but_not_extended(
    local_store: str, reap: list[str]
) -> None:
    ex = DetachedExecutor(max_workers=1, store=local_store, session_timeout=1.0, pacing=FAST)
    reap.append(ex.session_id)
    assert ex.submit(tasks.add, 2, 3).result(timeout=30) == 5
    time.sleep(1.2)  # the thing under test: session_timeout=1 passes on the store's clock
    # No worker has marked it expired yet (the control record still says "open").
    attached = DetachedExecutor.attach(ex.session_id, store=local_store)
    assert attached.status().state == "expired"
    with pytest.raises(SessionError, match="expired"):
        attached.submit(tasks.add, 1, 1)
    with pytest.raises(SessionError, match="expired"):
        ex.submit(tasks.add, 1, 1)  # the client that created it knows the deadline too
    assert values(attached.collect(wait=True, timeout=10, poll_interval=POLL)) == [5]
    attached.cleanup(delete_data=True)


# -- the example -------------------------------------------------------------------------------


@pytest.mark.slow
def test_detached_reattach_example(tmp_path: Path) -> None:
    env = subprocess_env(STARBURST_HOME=str(tmp_path / "home"))
    proc = subprocess.run(
        [sys.executable, str(REPO_DIR / "examples" / "detached_reattach.py"), "--tasks", "12"],
        cwd=REPO_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    out = proc.stdout
    sid = next(line.split()[-1] for line in out.splitlines() if line.startswith("Session id:"))
    assert "detached" in out
    assert f"Attached to {sid}" in out
    assert "Total tasks:     13" in out  # the status table of the attached session
    assert "Collected so far:" in out
    assert "12 succeeded, 1 failed" in out
    assert "ValueError: sample 7 is corrupt" in out
    assert "Deleted the session's data" in out
    assert "13/13" in proc.stderr  # the progress bar reached the end
    assert session_processes(sid) == []


def test_a_reattached_local_client_counts_the_first_clients_workers(
    local_store: str, tmp_path: Path, reap: list[str]
) -> None:
    """The first client's workers still run (blocked on a gate) when a second client
    attaches and adds work: they count toward max_workers, so none is started beside them
    (before: the new client started max_workers more, as it counted only its own)."""
    gate, marks = tmp_path / "gate", tmp_path / "marks"
    marks.mkdir()
    ex = DetachedExecutor(max_workers=2, store=local_store, pacing=FAST)
    sid = ex.session_id
    reap.append(sid)
    ex.map(tasks.wait_for_gate, [str(gate)] * 4, range(4), [str(marks)] * 4, chunksize=1)
    wait_until(lambda: len(list(marks.iterdir())) == 2, what="both workers inside a task")
    ex.detach()

    again = DetachedExecutor.attach(sid, store=local_store, pacing=FAST)
    again.submit(tasks.add, 1, 2)
    time.sleep(1.5)  # several manager rounds (maintain_every 0.5 s): nothing may happen
    assert len(session_processes(sid)) == 2
    gate.touch()
    results = again.collect(wait=True, timeout=60, poll_interval=POLL)
    assert [r.value for r in results] == [0, 1, 2, 3, 3]
    assert len(again._writer.workers()) == 2  # the first client's two did all the work
    again.cleanup(delete_data=True)
