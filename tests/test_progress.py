"""Progress bars: ``map(..., progress=True)`` on both executors and
``starburst_executor.progress.as_completed``. A bar is drawn on stderr only when stderr is a
terminal, counts to the total, and changes nothing about results, laziness or timeouts.

Each test swaps ``sys.stderr`` in its own body (``contextlib.redirect_stderr``): pytest's
output capture sets ``sys.stderr`` again after the fixtures have run.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import executor_tasks as tasks
import pytest

from starburst_executor import DetachedExecutor, StarburstExecutor
from starburst_executor.progress import as_completed

MakeExecutor = Callable[..., StarburstExecutor]


class FakeTerminal(io.StringIO):
    """A stderr that says it is a terminal, and keeps what is written to it."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def executor_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The directory store only (this overrides conftest's store matrix for ``make_executor``):
    the bar does not depend on the store. Workers import ``executor_tasks`` from ``tests/``."""
    tests_dir = Path(__file__).resolve().parent
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tests_dir.parent), str(tests_dir)]))
    return (tmp_path / "store").as_uri()


def last_count(text: str) -> tuple[int, int]:
    """The last ``n/total`` tqdm drew."""
    counts = re.findall(r"(\d+)/(\d+)", text)
    assert counts, f"no bar in {text!r}"
    done, total = counts[-1]
    return int(done), int(total)


def test_map_draws_a_bar_of_items_on_a_terminal(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    with redirect_stderr(FakeTerminal()) as tty:
        results = list(ex.map(tasks.square, range(20), chunksize=3, progress=True))
    assert results == [i * i for i in range(20)]
    assert last_count(tty.getvalue()) == (20, 20)  # items, not the 7 chunks
    assert "map(square)" in tty.getvalue()


def test_map_draws_nothing_when_stderr_is_not_a_terminal(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    with redirect_stderr(io.StringIO()) as pipe:  # isatty() is False: a pipe, a log file
        results = list(ex.map(tasks.square, range(10), chunksize=2, progress=True))
    assert results == [i * i for i in range(10)]
    assert pipe.getvalue() == ""


def test_progress_is_off_by_default_and_results_are_the_stdlib_ones(
    make_executor: MakeExecutor,
) -> None:
    ex = make_executor()
    items = [3, -1, 4, 1, -5, 9, 2, 6]
    with redirect_stderr(FakeTerminal()) as tty:
        assert list(ex.map(abs, items, chunksize=3)) == list(map(abs, items))
        assert list(ex.map(tasks.add, items, items)) == list(map(tasks.add, items, items))
    assert tty.getvalue() == ""


def test_map_with_progress_stays_lazy_and_keeps_its_timeout(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    ex = make_executor(max_workers=1)
    gate = tmp_path / "gate"
    try:
        with redirect_stderr(FakeTerminal()) as tty:
            start = time.monotonic()
            results = ex.map(
                tasks.wait_for_gate, [str(gate)] * 4, range(4), timeout=1.0, progress=True
            )
            assert time.monotonic() - start < 1.0  # returned at once: nothing waited for
            with pytest.raises(TimeoutError):
                next(results)
            assert time.monotonic() - start >= 0.95
        assert last_count(tty.getvalue()) == (0, 4)  # the bar stopped where it was
    finally:
        gate.touch()


def test_an_error_in_map_is_raised_at_its_item_with_the_bar_on(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    with redirect_stderr(FakeTerminal()):
        results = ex.map(tasks.raise_at, range(8), [5] * 8, chunksize=2, progress=True)
        assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
        with pytest.raises(ValueError, match="bad item"):
            next(results)


def test_detached_map_draws_the_bar(executor_store: str) -> None:
    ex = DetachedExecutor(max_workers=2, store=executor_store)
    try:
        with redirect_stderr(FakeTerminal()) as tty:
            results = list(ex.map(tasks.square, range(9), chunksize=4, progress=True))
    finally:
        ex.cleanup(delete_data=True)
    assert results == [i * i for i in range(9)]
    assert last_count(tty.getvalue()) == (9, 9)


def test_as_completed_counts_futures_to_the_total(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    futures = [ex.submit(tasks.square, i) for i in range(6)]
    with redirect_stderr(FakeTerminal()) as tty:
        seen = list(as_completed(futures, timeout=60, desc="squares"))
    assert set(seen) == set(futures) and len(seen) == 6
    assert last_count(tty.getvalue()) == (6, 6)
    assert "squares" in tty.getvalue()


def test_as_completed_without_progress_is_the_stdlib_one() -> None:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(pow, 2, i) for i in range(5)]
        with redirect_stderr(FakeTerminal()) as tty:
            seen = set(as_completed(futures, progress=False))
        assert seen == set(concurrent.futures.as_completed(futures))
    assert tty.getvalue() == ""


def test_as_completed_timeout_raises_and_closes_the_bar() -> None:
    never: concurrent.futures.Future[Any] = concurrent.futures.Future()
    done: concurrent.futures.Future[Any] = concurrent.futures.Future()
    done.set_result(1)
    with redirect_stderr(FakeTerminal()) as tty:
        iterator: Iterator[Any] = as_completed([done, never], timeout=0.2)
        assert next(iterator) is done
        with pytest.raises(TimeoutError):
            next(iterator)
    assert last_count(tty.getvalue()) == (1, 2)
