"""Progress bars for long waits: ``map(..., progress=True)`` and :func:`as_completed`.

Bars are tqdm bars on stderr, updated as results arrive (not as the caller consumes them).
When stderr is not a terminal (a pipe, a log file, a CI job) nothing is drawn at all, so
turning progress on never litters captured output; ``progress=False`` adds nothing either::

    from starburst_executor.progress import as_completed

    futures = [ex.submit(fit, params) for params in grid]
    for future in as_completed(futures):          # a bar: "3/40 tasks [00:12<02:28]"
        print(future.result())
"""

from __future__ import annotations

import concurrent.futures
import functools
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["as_completed", "progress_bar"]

T = TypeVar("T")


def progress_bar(total: int, desc: str, unit: str = "task") -> Any:
    """A tqdm bar of ``total`` steps on stderr, disabled when stderr is not a terminal.

    Args:
        total: the number of steps to 100%.
        desc: the label in front of the bar.
        unit: what a step is, for the rate ("task/s").
    """
    from tqdm import tqdm

    # disable=None: tqdm draws nothing when its file is not a TTY.
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None)


def as_completed(
    fs: Iterable[Future[T]],
    timeout: float | None = None,
    *,
    progress: bool = True,
    desc: str = "tasks",
) -> Iterator[Future[T]]:
    """``concurrent.futures.as_completed`` with a progress bar (see :func:`progress_bar`).

    Args:
        fs: the Futures to wait for (duplicates count once, as in the stdlib).
        timeout: seconds from this call after which iterating raises ``TimeoutError``.
        progress: draw the bar; ``False`` is exactly the stdlib's ``as_completed``.
        desc: the bar's label.

    Yields:
        Each Future as it finishes (done, failed or cancelled).

    Raises:
        TimeoutError: ``timeout`` passed before every Future finished.
    """
    futures = set(fs)
    if not progress:
        yield from concurrent.futures.as_completed(futures, timeout)
        return
    bar = progress_bar(len(futures), desc)
    try:
        for future in concurrent.futures.as_completed(futures, timeout):
            bar.update(1)
            yield future
    finally:
        bar.close()


class _MapProgress:
    """A bar over a ``map``'s items, advanced by each chunk's Future when it finishes (on
    whichever thread resolves it: the executor's poller)."""

    def __init__(self, futures: Sequence[Future[Any]], sizes: Sequence[int], desc: str) -> None:
        self._total = sum(sizes)
        self._bar = progress_bar(self._total, desc, unit="item")
        self._lock = threading.Lock()
        self._left = len(futures)
        self._closed = False
        for future, size in zip(futures, sizes, strict=True):
            future.add_done_callback(functools.partial(self._finished, size))

    def _finished(self, size: int, _future: Future[Any]) -> None:
        with self._lock:
            if self._closed:
                return
            self._bar.update(size)
            self._left -= 1
            finished = self._left == 0
        if finished:
            self.close()

    def finish(self) -> None:
        """Every chunk was delivered: show the total (a Future wakes its waiter before it
        runs its callbacks, so the last callbacks may still be on their way), then close."""
        with self._lock:
            if not self._closed:
                self._bar.update(self._total - self._bar.n)
        self.close()

    def close(self) -> None:
        """Stop the bar where it is (idempotent; later chunks no longer move it)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._bar.close()


def track_map(
    results: Iterator[T], futures: Sequence[Future[Any]], sizes: Sequence[int], desc: str
) -> Iterator[T]:
    """``map``'s result iterator, with a bar over its items (``sizes[i]`` items travel in
    ``futures[i]``). The bar follows the Futures from now on, whether or not the iterator is
    consumed; it stops when every chunk finished or the iterator ends (exhausted, timed out,
    closed)."""
    if not futures:
        return results
    return _closing(results, _MapProgress(futures, sizes, desc))


def _closing(results: Iterator[T], bar: _MapProgress) -> Iterator[T]:
    try:
        yield from results
        bar.finish()
    finally:
        bar.close()
