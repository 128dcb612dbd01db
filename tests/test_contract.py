"""The ``concurrent.futures`` contract, pinned against ``ProcessPoolExecutor`` itself.

Each test runs one scenario on a ``StarburstExecutor`` (once per backend, see ``conftest.py``)
and, where that is cheap, the same scenario on the stdlib's ``ProcessPoolExecutor`` in the
same test, then compares what the caller sees: the exception class, when it is raised, what
``traceback.format_exception`` prints, what stays referenced. Where the executor still
differs on purpose, README's "How it differs from ``ProcessPoolExecutor``" says so.
"""

from __future__ import annotations

import concurrent.futures
import gc
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from pathlib import Path
from typing import Any

import executor_tasks as tasks
import pytest

from starburst_executor import RemoteTraceback, StarburstExecutor, WorkerLostError

MakeExecutor = Callable[..., StarburstExecutor]
RESULT_TIMEOUT = 60
# Well under the default 30 s lease: a Future resolved after a lease expiry fails the test.
PROMPT = 20.0


@pytest.fixture(scope="module")
def stdlib() -> Iterator[ProcessPoolExecutor]:
    """The reference: a ``ProcessPoolExecutor`` with fresh ("spawn") workers, as ours are."""
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ppe:
        yield ppe


def outcome(fut: Future[Any], timeout: float = RESULT_TIMEOUT) -> BaseException:
    """The exception ``fut`` fails with (the test fails if it succeeds)."""
    try:
        value = fut.result(timeout=timeout)
    except BaseException as exc:  # SystemExit included: it is a result here
        return exc
    raise AssertionError(f"expected the Future to fail, it returned {value!r}")


# -- an argument or callable that cannot be pickled ----------------------------------------------

UNPICKLABLE_CALLS: dict[str, tuple[Callable[[Executor], Future[Any]], str]] = {
    # A lock where add() takes an int: deliberately wrong, it must fail to pickle first.
    "lock-argument": (
        lambda ex: ex.submit(tasks.add, threading.Lock()),  # type: ignore[arg-type]
        "argument 1 of add",
    ),
    "keyword": (
        lambda ex: ex.submit(tasks.add, 1, b=threading.Lock()),  # type: ignore[arg-type]
        "keyword argument 'b'",
    ),
    "callable": (lambda ex: ex.submit(threading.Lock().acquire), "the callable"),
    "PicklingError": (
        lambda ex: ex.submit(tasks.ignore, tasks.RefusesPickle("PicklingError")),
        "argument 1 of ignore",
    ),
    "AttributeError": (
        lambda ex: ex.submit(tasks.ignore, tasks.RefusesPickle("AttributeError")),
        "argument 1 of ignore",
    ),
}


@pytest.mark.parametrize("case", list(UNPICKLABLE_CALLS))
def test_unpicklable_call_fails_its_future_like_the_stdlib(
    make_executor: MakeExecutor, stdlib: ProcessPoolExecutor, case: str
) -> None:
    submit, named = UNPICKLABLE_CALLS[case]
    expected = outcome(submit(stdlib))
    ex = make_executor()
    # The usual pattern: submit everything, then wait. A raise from submit would break it.
    futures = [ex.submit(tasks.square, 2), submit(ex), ex.submit(tasks.square, 3)]
    done = list(concurrent.futures.as_completed(futures, timeout=RESULT_TIMEOUT))
    assert len(done) == 3
    error = outcome(futures[1])
    assert type(error) is type(expected), (error, expected)  # the pickler's own exception
    assert str(expected) in str(error)
    assert named in str(error)  # ... saying which part of the call it was
    assert isinstance(error.__cause__, _RemoteTraceback)  # its traceback as text, as the stdlib
    assert [futures[0].result(), futures[2].result()] == [4, 9]
    assert ex.submit(tasks.square, 4).result(timeout=RESULT_TIMEOUT) == 16  # still usable


@pytest.mark.parametrize("chunksize", [1, 2])
def test_map_raises_an_unpicklable_item_when_it_is_reached_like_the_stdlib(
    make_executor: MakeExecutor, stdlib: ProcessPoolExecutor, chunksize: int
) -> None:
    items = [1, 2, threading.Lock(), 3]
    expected = stdlib.map(tasks.square, items, chunksize=chunksize)
    ex = make_executor()
    results = ex.map(tasks.square, items, chunksize=chunksize)  # no raise here: as the stdlib
    assert [next(results), next(results)] == [next(expected), next(expected)] == [1, 4]
    with pytest.raises(TypeError) as stdlib_info:
        next(expected)
    with pytest.raises(TypeError) as info:
        next(results)
    assert type(info.value) is type(stdlib_info.value)
    assert str(stdlib_info.value) in str(info.value)
    assert "the item at index 2 given to map(square)" in str(info.value)
    assert list(ex.map(tasks.square, [5])) == [25]


def test_map_of_an_unpicklable_callable_raises_at_the_first_item_like_the_stdlib(
    make_executor: MakeExecutor, stdlib: ProcessPoolExecutor
) -> None:
    fn = threading.Lock().acquire
    expected = stdlib.map(fn, [1, 2])
    ex = make_executor()
    results = ex.map(fn, range(300))  # one failed chunk each, all with the one exception
    with pytest.raises(TypeError) as stdlib_info:
        next(expected)
    with pytest.raises(TypeError) as info:
        next(results)
    assert str(stdlib_info.value) in str(info.value) and "the callable" in str(info.value)
    # its own traceback as text, not that text nested once per chunk (300 levels deep)
    assert "direct cause" not in str(info.value.__cause__)


def test_non_callable_fails_its_future_like_the_stdlib(
    make_executor: MakeExecutor, stdlib: ProcessPoolExecutor
) -> None:
    expected = outcome(stdlib.submit(42))  # type: ignore[arg-type]
    ex = make_executor()
    error = outcome(ex.submit(42))  # type: ignore[arg-type]
    assert type(error) is type(expected) is TypeError
    assert str(error) == str(expected)  # "'int' object is not callable"
    with pytest.raises(TypeError):
        next(ex.map("not callable", range(3)))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["lock", "PicklingError", "AttributeError"])
def test_unpicklable_result_fails_its_future_like_the_stdlib(
    make_executor: MakeExecutor, stdlib: ProcessPoolExecutor, kind: str
) -> None:
    def submit(ex: Executor) -> Future[Any]:
        if kind == "lock":
            return ex.submit(tasks.return_lock)
        return ex.submit(tasks.returns_refuser, kind)

    expected = outcome(submit(stdlib))
    ex = make_executor()
    error = outcome(submit(ex))
    assert type(error) is type(expected), (error, expected)
    assert str(expected) in str(error) and "the task's result" in str(error)
    assert isinstance(error.__cause__, _RemoteTraceback)
    assert ex.submit(tasks.square, 5).result(timeout=RESULT_TIMEOUT) == 25


# -- a task whose unpickling or result pickling ends the worker process ---------------------------

ENDINGS = ["sys.exit", "os._exit", "sigkill"]


def _submit_ending(ex: Executor, phase: str, how: str) -> Future[Any]:
    if phase == "unpickling":
        return ex.submit(tasks.ignore, tasks.EndsProcessWhenLoaded(how))
    return ex.submit(tasks.returns_process_ender, how)


@pytest.mark.parametrize("how", ENDINGS)
@pytest.mark.parametrize("phase", ["unpickling", "result-pickling"])
@pytest.mark.slow
def test_process_exit_while_pickling_resolves_promptly_like_the_stdlib(
    make_executor: MakeExecutor, phase: str, how: str
) -> None:
    """The stdlib gives ``BrokenProcessPool`` when its worker process ends, and the
    ``SystemExit`` itself when ``sys.exit`` runs while it pickles a result (it catches that
    and sends it back). Here: the same classes (``WorkerLostError`` is a
    ``BrokenProcessPool``), within seconds, not after lease expiries, and the executor stays
    usable (a documented difference: the stdlib's pool is broken by a dead worker)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ppe:
        expected = outcome(_submit_ending(ppe, phase, how))
    assert type(expected) in (BrokenProcessPool, SystemExit)
    ex = make_executor(max_workers=1)
    start = time.monotonic()
    error = outcome(_submit_ending(ex, phase, how), timeout=PROMPT)
    assert time.monotonic() - start < PROMPT
    assert isinstance(error, type(expected)), (error, expected)
    if isinstance(expected, SystemExit):
        assert isinstance(error, SystemExit) and error.code == expected.code == 3
    else:
        assert isinstance(error, WorkerLostError)
    assert isinstance(error.__cause__, _RemoteTraceback)
    assert ex.submit(tasks.square, 7).result(timeout=RESULT_TIMEOUT) == 49


# -- map keeps no reference to what it yielded ----------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 3])
@pytest.mark.slow
def test_map_iterator_keeps_no_reference_to_yielded_results(
    make_executor: MakeExecutor, stdlib: ProcessPoolExecutor, chunksize: int
) -> None:
    def first_result_dies(ex: Executor) -> bool:
        results = ex.map(tasks.box, range(6), chunksize=chunksize)
        first = next(results)
        ref = weakref.ref(first)
        assert first.value == 0
        del first
        gc.collect()
        died = ref() is None
        assert [b.value for b in results] == [1, 2, 3, 4, 5]
        return died

    assert first_result_dies(stdlib)
    assert first_result_dies(make_executor())


# -- remote tracebacks -----------------------------------------------------------------------------


def _remote_block(exc: BaseException) -> list[str]:
    """The remote traceback block ``traceback.format_exception`` prints for ``exc``, from its
    opening triple quote to the "direct cause" line, without the frames of the executor's
    own worker machinery (the stdlib's ``process.py``, this package's ``loop.py``)."""
    text = "".join(traceback.format_exception(exc))
    head, sep, _ = text.partition("\nThe above exception was the direct cause")
    assert sep, text
    block = head[head.index('"""\nTraceback (most recent call last):') :].splitlines()
    lines, skip = [], False
    for line in block:
        if line.startswith('  File "'):
            skip = "concurrent/futures" in line or "starburst_executor" in line
        if not skip:
            lines.append(line)
    return lines


def test_remote_traceback_is_the_stdlibs_and_prints_like_it(
    make_executor: MakeExecutor, stdlib: ProcessPoolExecutor
) -> None:
    expected = outcome(stdlib.submit(tasks.raise_at, 5, 5))
    ex = make_executor()
    error = outcome(ex.submit(tasks.raise_at, 5, 5))
    assert type(error) is ValueError and error.args == expected.args == ("bad item", 5)
    assert isinstance(error.__cause__, _RemoteTraceback)
    assert isinstance(error.__cause__, RemoteTraceback)
    ours, theirs = _remote_block(error), _remote_block(expected)
    assert ours == theirs, "\n".join(ours) + "\n---\n" + "\n".join(theirs)
    assert any('raise ValueError("bad item", x)' in line for line in ours)
    assert ours[-1] == '"""'


# -- interpreter exit and garbage collection -------------------------------------------------------

SCRIPT_TIMEOUT = 60

EXIT_SCRIPT = """
import sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from starburst_executor import StarburstExecutor

def slow_write(path):
    time.sleep(1.0)
    Path(path).write_text("apple")

if __name__ == "__main__":
    kind, path, store, shutdown = sys.argv[1:]
    if kind == "stdlib":
        ex = ProcessPoolExecutor(5)
    else:
        ex = StarburstExecutor(5, store=store)
    ex.submit(slow_write, path)
    if shutdown == "no-wait":
        ex.shutdown(wait=False)
    # No shutdown(wait=True), no result(): the script falls off its end with the task running.
"""


def _run(source: str, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    script = Path(os.environ.get("TMPDIR", "/tmp"), f"contract-{os.getpid()}-{time.time_ns()}.py")
    script.write_text(textwrap.dedent(source))
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, str(script), *args],
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    finally:
        script.unlink()
    return proc, time.monotonic() - start


@pytest.mark.parametrize("shutdown", ["never", "no-wait"])
@pytest.mark.slow
def test_interpreter_exit_with_running_work_finishes_it_like_the_stdlib(
    executor_store: str, tmp_path: Path, shutdown: str
) -> None:
    """CPython issue 39205 and ``test_interpreter_shutdown``: the script exits cleanly (exit
    code 0, nothing on stderr) once the running task has finished, without hanging."""
    for kind in ("stdlib", "starburst"):
        out = tmp_path / f"{kind}-apple"
        proc, elapsed = _run(EXIT_SCRIPT, kind, str(out), executor_store, shutdown)
        assert proc.returncode == 0, (kind, proc.stderr)
        assert proc.stderr == "", (kind, proc.stderr)
        assert out.read_text() == "apple", kind  # the task ran to its end before the exit
        assert elapsed < 30, (kind, elapsed)


@pytest.mark.slow
def test_dropped_executor_with_running_work_is_collected(executor_store: str) -> None:
    """CPython's ``test_del_shutdown``: an executor dropped while a ``map`` and a ``submit``
    run is garbage collected at once; its manager thread ends once the work is done, and the
    work completes."""
    proc, _ = _run(
        """
        import gc, sys, time, weakref
        from starburst_executor import StarburstExecutor

        def slow(i):
            time.sleep(0.5)
            return i

        if __name__ == "__main__":
            ex = StarburstExecutor(2, store=sys.argv[1])
            futures = [ex.submit(slow, i) for i in range(2)]
            results = ex.map(slow, range(3))
            thread = ex._manager.thread
            ref = weakref.ref(ex)
            del ex
            gc.collect()
            print("collected:", ref() is None, flush=True)
            print("results:", [f.result(timeout=60) for f in futures], list(results))
            thread.join(timeout=30)
            print("manager alive:", thread.is_alive())
        """,
        executor_store,
    )
    assert proc.returncode == 0, proc.stderr
    assert "collected: True" in proc.stdout
    assert "results: [0, 1] [0, 1, 2]" in proc.stdout
    assert "manager alive: False" in proc.stdout
