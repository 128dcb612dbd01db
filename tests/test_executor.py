"""The executor contract: ``StarburstExecutor`` behaves as ``ProcessPoolExecutor`` does.

Every test runs once per backend (``executor_store`` in ``conftest.py``): a directory store,
and an S3 store on SeaweedFS. Workers are real processes running ``python -m
starburst_executor.worker``; they import ``executor_tasks`` (and this module) by name.

Crash and lease recovery live in ``test_executor_recovery.py``; garbage collection and
interpreter exit in ``test_lifecycle.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import operator
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import BrokenExecutor, Future
from pathlib import Path
from typing import Any

import executor_tasks as tasks
import pytest

from starburst_executor import (
    BrokenStarburstExecutor,
    ProtocolMismatchError,
    RemoteTraceback,
    SerializationError,
    StarburstExecutor,
    StoreConfigError,
    StoreUnavailableError,
)
from starburst_executor._manager import Pacing
from starburst_executor.launchers import LocalLauncher

MakeExecutor = Callable[..., StarburstExecutor]
RESULT_TIMEOUT = 60


class TaskFailed(Exception):
    """A user-defined exception with several arguments and an attribute."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


class NeedsTwoArgs(Exception):
    """Pickles, but cannot be unpickled: ``__init__`` wants other arguments than ``args``."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


class HoldsLock(Exception):
    """Cannot be pickled at all: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class UnpicklesBadly:
    """Pickles on the worker; unpickling it on the client raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_to_load, ())


def _refuse_to_load() -> None:
    raise RuntimeError("this object refuses to be loaded")


def raise_task_failed(code: int) -> None:
    raise TaskFailed(code, "disk full")


def raise_value_error() -> None:
    raise ValueError("boom", 42)  # the remote traceback quotes this line


def raise_needs_two_args() -> None:
    raise NeedsTwoArgs(1, 2)


def raise_holds_lock() -> None:
    raise HoldsLock("cannot travel")


def return_unpicklable_on_client() -> UnpicklesBadly:
    return UnpicklesBadly()


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.01)


def fill_until_queued(ex: StarburstExecutor, gate: Path, limit: int = 40) -> list[Future[Any]]:
    """Submit gated tasks one by one until one stays queued in the client (not handed to the
    store, so ``running()`` stays False); returns all of them, the queued one last."""
    futures: list[Future[Any]] = []
    for i in range(limit):
        fut = ex.submit(tasks.wait_for_gate, str(gate), i)
        futures.append(fut)
        try:
            wait_until(fut.running, timeout=1.0)  # handed over within milliseconds if it can be
        except AssertionError:
            return futures
    raise AssertionError(f"all {limit} gated tasks were handed to the store; none stayed queued")


@pytest.fixture
def gate(make_executor: MakeExecutor, tmp_path: Path) -> Iterator[Path]:
    """A file that gated tasks (``executor_tasks.wait_for_gate``) wait for. It is opened at
    teardown, before the executors are shut down, so a failed test cannot leave them waiting."""
    path = tmp_path / "gate"
    yield path
    path.touch()


# -- submit and result ---------------------------------------------------------------------------


def test_submit_returns_the_result(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    fut = ex.submit(tasks.add, 2, 3)
    assert isinstance(fut, Future)
    assert fut.result(timeout=RESULT_TIMEOUT) == 5


def test_submit_passes_keyword_arguments(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    assert ex.submit(tasks.add, 2, b=40).result(timeout=RESULT_TIMEOUT) == 42
    # ``fn`` is positional-only, so a keyword argument may be called "fn" too.
    assert ex.submit(dict, fn=1, x=2).result(timeout=RESULT_TIMEOUT) == {"fn": 1, "x": 2}


def test_lambdas_closures_and_local_definitions_travel_by_value(
    make_executor: MakeExecutor,
) -> None:
    ex = make_executor()
    offset = 100

    def local_function(x: int) -> int:
        return x + offset  # a closure over a local variable

    class Point:
        def __init__(self, x: int, y: int) -> None:
            self.x, self.y = x, y

        def norm1(self) -> int:
            return abs(self.x) + abs(self.y)

    futures = [
        ex.submit(lambda x: x * 3, 7),
        ex.submit(local_function, 1),
        ex.submit(Point(3, -4).norm1),
        ex.submit(lambda: Point(1, 2)),
    ]
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures[:3]] == [21, 101, 7]
    point = futures[3].result(timeout=RESULT_TIMEOUT)
    assert isinstance(point, Point)  # the class comes back as the same class object
    assert (point.x, point.y) == (1, 2)


def test_submit_runs_in_another_process(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    assert ex.submit(tasks.getpid).result(timeout=RESULT_TIMEOUT) != os.getpid()


# -- map -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 3, 100])
def test_map_returns_results_in_order(make_executor: MakeExecutor, chunksize: int) -> None:
    ex = make_executor()
    results = ex.map(tasks.square, range(40), chunksize=chunksize)
    assert list(results) == [x * x for x in range(40)]


def test_map_over_several_iterables_stops_at_the_shortest(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    assert list(ex.map(operator.add, range(5), range(10, 100))) == [10, 12, 14, 16, 18]
    assert list(ex.map(pow, [2, 3, 4], [5, 6, 7], chunksize=2)) == [32, 729, 16384]


def test_map_of_nothing_is_empty(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    assert list(ex.map(tasks.square, [])) == []


@pytest.mark.parametrize("chunksize", [1, 3, 20])
def test_map_raises_at_the_failing_item_after_the_earlier_values(
    make_executor: MakeExecutor, chunksize: int
) -> None:
    ex = make_executor()
    results = ex.map(tasks.raise_at, range(10), [5] * 10, chunksize=chunksize)
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError) as info:
        next(results)
    assert info.value.args == ("bad item", 5)
    assert isinstance(info.value.__cause__, RemoteTraceback)


@pytest.mark.slow
def test_map_timeout_counts_from_the_call_and_cancels_the_rest(
    make_executor: MakeExecutor, gate: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = make_executor(max_workers=1)
    futures: list[Future[Any]] = []
    enqueue = ex._enqueue

    def spy(call: Any) -> Future[Any]:  # to look at the Futures map() keeps to itself
        fut = enqueue(call)
        futures.append(fut)
        return fut

    monkeypatch.setattr(ex, "_enqueue", spy)
    start = time.monotonic()
    results = ex.map(tasks.wait_for_gate, [str(gate)] * 60, range(60), timeout=2.0)
    time.sleep(1.5)  # the timeout runs while the caller is busy elsewhere, as in the stdlib
    waiting = time.monotonic()
    with pytest.raises(TimeoutError):
        next(results)
    end = time.monotonic()
    assert end - start >= 1.95, end - start
    assert end - waiting < 2.0, end - waiting  # counted from the call to map(), not from next()
    # Nothing is left waiting in the client: what was not handed to the store is cancelled.
    assert all(f.cancelled() or f.running() or f.done() for f in futures)
    assert any(f.cancelled() for f in futures)
    gate.touch()
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)


def test_map_rejects_chunksize_below_one(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    with pytest.raises(ValueError, match="chunksize"):
        ex.map(tasks.square, range(3), chunksize=0)


def test_non_callable_fails_its_future_with_a_type_error(make_executor: MakeExecutor) -> None:
    # As ProcessPoolExecutor: submit() accepts it; calling it on the worker raises TypeError.
    ex = make_executor()
    with pytest.raises(TypeError, match="not callable"):
        ex.submit(42).result(timeout=RESULT_TIMEOUT)  # type: ignore[arg-type]
    results: Iterator[Any] = ex.map("not callable", range(3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not callable"):
        next(results)


@pytest.mark.parametrize("max_workers", [0, -1])
def test_max_workers_must_be_positive(executor_store: str, max_workers: int) -> None:
    with pytest.raises(ValueError, match="max_workers"):
        StarburstExecutor(max_workers=max_workers, store=executor_store)


# -- real Futures --------------------------------------------------------------------------------


def test_futures_work_with_wait_and_as_completed(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    futures = [ex.submit(tasks.sleep_and_return, 0.05 * (i % 3), i) for i in range(8)]
    done, not_done = concurrent.futures.wait(futures, timeout=RESULT_TIMEOUT)
    assert len(done) == 8 and not not_done
    more = [ex.submit(tasks.square, i) for i in range(8)]
    completed = list(concurrent.futures.as_completed(more, timeout=RESULT_TIMEOUT))
    assert sorted(f.result() for f in completed) == sorted(i * i for i in range(8))


def test_futures_work_with_asyncio(make_executor: MakeExecutor) -> None:
    ex = make_executor()

    async def main() -> list[int]:
        waiting = [asyncio.wrap_future(ex.submit(tasks.square, i)) for i in range(6)]
        return list(await asyncio.wait_for(asyncio.gather(*waiting), RESULT_TIMEOUT))

    assert asyncio.run(main()) == [0, 1, 4, 9, 16, 25]


def test_done_callbacks_run_once_per_future_under_concurrent_submits(
    make_executor: MakeExecutor,
) -> None:
    ex = make_executor()
    calls: Counter[tuple[int, int]] = Counter()
    lock = threading.Lock()
    futures: dict[tuple[int, int], Future[int]] = {}

    def on_done(key: tuple[int, int]) -> Callable[[Future[int]], None]:
        def callback(_: Future[int]) -> None:
            with lock:
                calls[key] += 1

        return callback

    def submitter(t: int) -> None:
        for i in range(50):
            fut = ex.submit(tasks.add, t * 1000, i)
            fut.add_done_callback(on_done((t, i)))
            with lock:
                futures[(t, i)] = fut

    threads = [threading.Thread(target=submitter, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(futures) == 400
    for (t, i), fut in futures.items():
        assert fut.result(timeout=RESULT_TIMEOUT) == t * 1000 + i
    wait_until(lambda: sum(calls.values()) >= 400, what="the done callbacks")
    assert set(calls.values()) == {1} and len(calls) == 400


# -- remote exceptions ---------------------------------------------------------------------------


def test_remote_exception_keeps_type_args_and_traceback(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    with pytest.raises(ValueError) as info:
        ex.submit(raise_value_error).result(timeout=RESULT_TIMEOUT)
    assert type(info.value) is ValueError
    assert info.value.args == ("boom", 42)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert 'raise ValueError("boom", 42)' in str(cause)
    assert "raise_value_error" in str(cause)


def test_user_defined_exception_comes_back_as_itself(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    with pytest.raises(TaskFailed) as info:
        ex.submit(raise_task_failed, 7).result(timeout=RESULT_TIMEOUT)
    assert type(info.value) is TaskFailed
    assert (info.value.code, info.value.detail) == (7, "disk full")


def test_locally_defined_exception_comes_back_as_the_same_class(
    make_executor: MakeExecutor,
) -> None:
    ex = make_executor()

    class LocalError(Exception):
        pass

    def fail() -> None:
        raise LocalError("local")

    with pytest.raises(LocalError, match="local"):
        ex.submit(fail).result(timeout=RESULT_TIMEOUT)


@pytest.mark.parametrize(
    "task", [raise_holds_lock, raise_needs_two_args], ids=["unpicklable", "not-loadable"]
)
def test_exception_that_cannot_travel_becomes_serialization_error(
    make_executor: MakeExecutor, task: Callable[[], None]
) -> None:
    ex = make_executor()
    bad = ex.submit(task)
    good = ex.submit(tasks.square, 9)
    with pytest.raises(SerializationError) as info:
        bad.result(timeout=RESULT_TIMEOUT)
    name = "HoldsLock" if task is raise_holds_lock else "NeedsTwoArgs"
    assert name in str(info.value)
    assert isinstance(info.value.__cause__, RemoteTraceback)  # the worker's traceback survives
    assert good.result(timeout=RESULT_TIMEOUT) == 81
    assert ex.submit(tasks.square, 3).result(timeout=RESULT_TIMEOUT) == 9


def test_result_that_cannot_be_pickled_fails_only_its_future(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    futures = [ex.submit(tasks.square, 2), ex.submit(tasks.return_lock), ex.submit(tasks.square, 3)]
    with pytest.raises(TypeError, match="cannot pickle the task's result: .*lock"):
        futures[1].result(timeout=RESULT_TIMEOUT)
    assert futures[0].result(timeout=RESULT_TIMEOUT) == 4
    assert futures[2].result(timeout=RESULT_TIMEOUT) == 9


def test_result_that_cannot_be_unpickled_on_the_client_fails_only_its_future(
    make_executor: MakeExecutor,
) -> None:
    ex = make_executor()
    bad = ex.submit(return_unpicklable_on_client)
    good = ex.submit(tasks.square, 5)
    with pytest.raises(SerializationError, match="refuses to be loaded"):
        bad.result(timeout=RESULT_TIMEOUT)
    assert good.result(timeout=RESULT_TIMEOUT) == 25


def _batches(ex: StarburstExecutor) -> list[str]:
    return [info.key for info in ex.store.list(f"sessions/{ex.session_id}/batches/")]


@pytest.mark.parametrize(
    ("submit", "named"),
    [
        (lambda ex: ex.submit(tasks.add, threading.Lock()), "argument 1 of add"),
        (lambda ex: ex.submit(tasks.add, 1, b=threading.Lock()), "keyword argument 'b' of add"),
        (lambda ex: ex.submit(threading.Lock().acquire), "the callable"),
        (lambda ex: next(ex.map(tasks.square, [threading.Lock()])), "item at index 0"),
    ],
    ids=["argument", "keyword", "callable", "map-item"],
)
def test_unpicklable_call_fails_its_future_and_nothing_is_queued(
    make_executor: MakeExecutor, submit: Callable[[StarburstExecutor], Any], named: str
) -> None:
    # As ProcessPoolExecutor: the Future fails with the pickler's TypeError (test_contract.py
    # compares it with the stdlib's); the call never reaches the store.
    ex = make_executor()
    with pytest.raises(TypeError) as info:
        result = submit(ex)
        if isinstance(result, Future):
            result.result(timeout=RESULT_TIMEOUT)
    assert not isinstance(info.value, SerializationError)  # the original exception, named
    assert named in str(info.value)
    assert "cannot pickle '_thread.lock' object" in str(info.value)
    assert any("picklable by cloudpickle" in note for note in info.value.__notes__)
    assert ex.submit(tasks.square, 4).result(timeout=RESULT_TIMEOUT) == 16
    assert len(_batches(ex)) == 1  # only the call that could be sent reached the store


# -- shutdown ------------------------------------------------------------------------------------


def test_shutdown_is_idempotent_and_refuses_new_work(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    assert ex.submit(tasks.square, 2).result(timeout=RESULT_TIMEOUT) == 4
    ex.shutdown()
    ex.shutdown()
    ex.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(RuntimeError, match="shutdown"):
        ex.submit(tasks.square, 2)
    with pytest.raises(RuntimeError, match="shutdown"):
        ex.map(tasks.square, [1])


def test_shutdown_of_an_unused_executor_is_prompt(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    start = time.monotonic()
    ex.shutdown(wait=True)
    assert time.monotonic() - start < 5
    with pytest.raises(RuntimeError):
        ex.submit(tasks.square, 2)


@pytest.mark.slow
def test_with_block_waits_for_every_future(executor_store: str) -> None:
    with StarburstExecutor(max_workers=2, store=executor_store) as ex:
        futures = [ex.submit(tasks.sleep_and_return, 0.3, i) for i in range(5)]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(5))


@pytest.mark.slow
def test_shutdown_without_wait_returns_at_once_and_work_completes(
    make_executor: MakeExecutor,
) -> None:
    ex = make_executor()
    futures = [ex.submit(tasks.sleep_and_return, 0.5, i) for i in range(4)]
    start = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - start < 0.5
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == list(range(4))


@pytest.mark.slow
def test_shutdown_cancel_futures_cancels_queued_work(
    make_executor: MakeExecutor, gate: Path, tmp_path: Path
) -> None:
    ex = make_executor(max_workers=1)
    marks = tmp_path / "marks"
    marks.mkdir()
    futures = fill_until_queued(ex, gate)
    futures += [ex.submit(tasks.wait_for_gate, str(gate), 100 + i, str(marks)) for i in range(5)]
    ex.shutdown(wait=False, cancel_futures=True)
    gate.touch()
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)  # none left pending
    cancelled = [f for f in futures if f.cancelled()]
    completed = [f for f in futures if not f.cancelled()]
    assert len(cancelled) >= 6  # the one that stayed queued, and the five after it
    assert [f.result() for f in completed] == list(range(len(completed)))
    assert list(marks.iterdir()) == []  # the cancelled tasks never ran


@pytest.mark.slow
def test_shutdown_leaves_no_worker_process(make_executor: MakeExecutor) -> None:
    ex = make_executor(max_workers=2)
    list(ex.map(tasks.sleep_and_return, [0.3] * 4))
    launcher = ex._launcher
    assert isinstance(launcher, LocalLauncher)  # the local backend: workers are processes here
    pids = list(launcher.pids().values())
    assert pids, "the executor should have running workers"
    ex.shutdown(wait=True)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# -- cancel ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cancel_of_a_queued_future_prevents_the_call(
    make_executor: MakeExecutor, gate: Path, tmp_path: Path
) -> None:
    ex = make_executor(max_workers=1)
    marks = tmp_path / "marks"
    marks.mkdir()
    futures = fill_until_queued(ex, gate)
    victim = ex.submit(tasks.wait_for_gate, str(gate), "victim", str(marks))
    assert victim.cancel()
    assert victim.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        victim.result()
    gate.touch()
    for fut in futures:
        fut.result(timeout=RESULT_TIMEOUT)
    after = ex.submit(tasks.square, 6)
    assert after.result(timeout=RESULT_TIMEOUT) == 36
    ex.shutdown(wait=True)
    assert list(marks.iterdir()) == []


def test_cancel_of_a_finished_future_returns_false(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    fut = ex.submit(tasks.square, 3)
    assert fut.result(timeout=RESULT_TIMEOUT) == 9
    assert not fut.cancel()
    assert not fut.cancelled()
    assert fut.result() == 9


# -- large payloads --------------------------------------------------------------------------------


@pytest.mark.slow
def test_large_shared_argument_is_stored_once(make_executor: MakeExecutor) -> None:
    import hashlib

    ex = make_executor()
    data = os.urandom(24 * 1024 * 1024)
    expected = (len(data), hashlib.sha256(data).hexdigest())
    futures = [ex.submit(tasks.digest_of, data) for _ in range(4)]
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == [expected] * 4
    blobs = list(ex.store.list(f"sessions/{ex.session_id}/blobs/"))
    assert len(blobs) == 1
    assert blobs[0].size >= len(data)


def test_large_result_comes_back_whole(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    size = 20 * 1024 * 1024
    result = ex.submit(tasks.big_result, size).result(timeout=RESULT_TIMEOUT)
    assert result == bytes(range(256)) * (size // 256)


def test_large_result_does_not_stall_the_worker(make_executor: MakeExecutor) -> None:
    # A result too large to ride inside the done event leaves that event empty. botocore sent
    # "Expect: 100-continue" with the empty body, and against SeaweedFS the worker's next
    # request then waited for the 60 s read timeout before it could take another task.
    ex = make_executor(max_workers=1)
    big = ex.submit(tasks.big_result, 1024 * 1024).result(timeout=RESULT_TIMEOUT)
    assert len(big) == 1024 * 1024
    start = time.monotonic()
    assert ex.submit(tasks.square, 12).result(timeout=20) == 144
    assert time.monotonic() - start < 15


# -- initializer and max_tasks_per_child -----------------------------------------------------------


def test_initializer_runs_once_in_each_worker(make_executor: MakeExecutor, tmp_path: Path) -> None:
    inits = tmp_path / "inits"
    inits.mkdir()
    ex = make_executor(max_workers=2, initializer=tasks.init_record, initargs=(str(inits), "ready"))
    futures = [ex.submit(tasks.initialized_state) for _ in range(12)]
    states = [f.result(timeout=RESULT_TIMEOUT) for f in futures]
    assert {tag for _, tag in states} == {"ready"}  # the tasks see what the initializer set
    ex.shutdown(wait=True)
    files = {int(p.name.split("-")[1]): p.read_text() for p in inits.iterdir()}
    assert {pid for pid, _ in states} <= set(files)
    assert set(files.values()) == {"ready\n"}  # once per worker, with its initargs


def test_failing_initializer_breaks_the_executor(make_executor: MakeExecutor) -> None:
    ex = make_executor(max_workers=2, initializer=tasks.init_fail)
    futures = [ex.submit(tasks.square, i) for i in range(3)]
    for fut in futures:
        with pytest.raises(BrokenStarburstExecutor) as info:
            fut.result(timeout=RESULT_TIMEOUT)
        assert isinstance(info.value, BrokenExecutor)
        assert "no GPU here" in str(info.value)
    with pytest.raises(BrokenStarburstExecutor):
        ex.submit(tasks.square, 1)


@pytest.mark.slow
def test_max_tasks_per_child_replaces_workers(make_executor: MakeExecutor) -> None:
    ex = make_executor(max_workers=2, max_tasks_per_child=2)
    pids = list(ex.map(tasks.getpid, range(10)))
    assert len(set(pids)) > 2  # more workers than max_workers=2 took part: they were replaced


@pytest.mark.slow
def test_max_tasks_per_child_is_exact_whatever_the_batching(make_executor: MakeExecutor) -> None:
    # The first worker has one task done when the map arrives; a long linger lets the manager
    # see all 14 items at once, so they could travel in batches as big as the limit. A worker
    # that then claimed a batch of 3 would run 4 tasks (the bug this pins: the worker only
    # checked its count between batches).
    ex = make_executor(max_workers=1, max_tasks_per_child=3, pacing=Pacing(linger=0.5))
    first = ex.submit(tasks.getpid).result(timeout=RESULT_TIMEOUT)
    rest = list(ex.map(tasks.getpid, range(14)))
    counts = Counter([first, *rest])
    assert max(counts.values()) <= 3, counts


# -- versions and stores ---------------------------------------------------------------------------


def test_version_mismatch_fails_each_task_clearly(
    executor_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starburst_executor import executor as executor_module
    from starburst_executor.protocol import runtime_versions

    claimed = {**runtime_versions(), "python": "3.99"}
    monkeypatch.setattr(executor_module, "runtime_versions", lambda: claimed)
    with StarburstExecutor(max_workers=1, store=executor_store) as ex:
        futures = [ex.submit(tasks.square, i) for i in range(3)]
        mapped = ex.map(tasks.square, range(3))
        for fut in futures:
            with pytest.raises(ProtocolMismatchError) as info:
                fut.result(timeout=RESULT_TIMEOUT)
            here = f"{sys.version_info.major}.{sys.version_info.minor}"
            assert "3.99" in str(info.value) and here in str(info.value)
        with pytest.raises(ProtocolMismatchError):
            list(mapped)


@pytest.mark.slow
def test_unreachable_s3_endpoint_is_reported(
    monkeypatch: pytest.MonkeyPatch, free_port: int
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port}")
    with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{free_port}"):
        StarburstExecutor(max_workers=1, store="s3://starburst-test/x")


def test_missing_bucket_is_reported(seaweed: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", seaweed.endpoint_url)
    with pytest.raises(StoreConfigError, match="no-such-bucket-here"):
        StarburstExecutor(max_workers=1, store="s3://no-such-bucket-here/x")


def test_unwritable_directory_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreConfigError, match="a-file"):
        StarburstExecutor(max_workers=1, store=str(blocker / "store"))


def test_unknown_store_scheme_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="scheme"):
        StarburstExecutor(max_workers=1, store="ftp://example.com/x")
