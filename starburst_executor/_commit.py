"""Durable submission with group commit: a ``DetachedExecutor``'s calls are in the store
before ``submit`` (or ``map``) returns.

A submitter adds its calls to the pending list and waits. If no write is in flight it leads:
it takes everything pending, cuts it into batches, writes them, and then wakes the others.
Calls that arrive while a write is in flight wait for the next one, which one of their
submitters leads. So threads submitting at once share writes, a sequential loop costs one
write per call (the price of "submit, note the id, close the laptop"), and a ``map`` writes
its chunks in a few batches at once.

The batches are ordinary batch objects: workers claim them as any others. Each holds calls of
one shape (see :class:`~starburst_executor.protocol.BatchId`), so readers can number every
result by its submission position without reading the batches.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from starburst_executor._session import BATCH_BYTES_MAX, Call, Session

__all__ = ["GroupCommit"]

_WRITERS = 8  # batch objects written at once by one leader


@dataclass
class _Request:
    """One ``submit`` (one call) or one ``map`` (its chunks), waiting to be written."""

    calls: list[tuple[Future[Any], Call]]
    kind: str  # "s": submitted calls; "m": map chunks; "": shapes unknown
    done: bool = False
    error: BaseException | None = None


@dataclass
class _Batch:
    bid: str
    futures: list[Future[Any]]
    calls: list[Call]
    requests: list[_Request] = field(default_factory=list)


class GroupCommit:
    """Writes calls to the store as batch objects; see the module docstring.

    Args:
        writer: the session (it names and writes the batches).
        spread: a leader's calls are spread over up to this many batches (twice the
            workers), so that the workers share them.
        batch_limit: the most tasks one batch holds.
        on_written: called with each written batch's id and Futures, in submission order,
            before the submitters return (the executor hands them to its manager thread).
    """

    def __init__(
        self,
        writer: Session,
        *,
        spread: int,
        batch_limit: int,
        on_written: Callable[[str, list[Future[Any]]], None],
    ) -> None:
        self._writer = writer
        self._spread = max(1, spread)
        self._batch_limit = max(1, batch_limit)
        self._on_written = on_written
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._writing = False
        self.writes = 0  # batch objects written (for tests and benchmarks)

    def commit(self, calls: list[tuple[Future[Any], Call]], kind: str) -> None:
        """Return once every call is in the store; their Futures are then running.

        Args:
            calls: the calls with their (pending) Futures, in submission order.
            kind: ``"s"`` for submitted calls, ``"m"`` for ``map`` chunks whose ``items``
                are set, ``""`` when their shapes are unknown.

        Raises:
            StoreError: the store refused a write (after its retries); the Futures of the
                calls not written fail with that error too.
        """
        request = _Request(calls, kind)
        with self._cond:
            self._pending.append(request)
            while self._writing and not request.done:
                self._cond.wait()
            lead = not request.done  # no write in flight: lead the next one
            if lead:
                self._writing = True
                group, self._pending = self._pending, []
                batches = self._plan(group)
        if lead:
            self._lead(group, batches)
        if request.error is not None:
            raise request.error

    def _lead(self, group: list[_Request], batches: list[_Batch]) -> None:
        errors: dict[str, BaseException] = {}
        try:
            errors = self._write(batches)
        except BaseException as exc:  # e.g. KeyboardInterrupt in this thread: fail them all
            errors = {b.bid: exc for b in batches}
            raise
        finally:
            # Still the only leader (``_writing``), so batches are handed on in order; Futures
            # are resolved outside the lock (their callbacks are the user's code).
            for batch in batches:
                error = errors.get(batch.bid)
                if error is None:
                    self._on_written(batch.bid, batch.futures)
                    continue
                for fut in batch.futures:
                    fut.set_exception(error)
                for req in batch.requests:
                    req.error = req.error or error
            with self._cond:
                for req in group:
                    req.done = True
                self._writing = False
                self._cond.notify_all()

    def _plan(self, group: list[_Request]) -> list[_Batch]:
        """Cut the group's calls into batches of one shape each, and name them (in order:
        batch ids carry this client's sequence number, the submission order)."""
        runs: list[tuple[str, list[tuple[_Request, Future[Any], Call]]]] = []
        for req in group:
            for fut, call in req.calls:
                shape = f"{req.kind}{call.items}" if req.kind else ""
                if not runs or runs[-1][0] != shape:
                    runs.append((shape, []))
                runs[-1][1].append((req, fut, call))
        batches: list[_Batch] = []
        for shape, run in runs:
            size = max(1, min(self._batch_limit, math.ceil(len(run) / self._spread)))
            start = 0
            while start < len(run):
                part: list[tuple[_Request, Future[Any], Call]] = []
                nbytes = 0
                for entry in run[start : start + size]:
                    if part and nbytes + entry[2].size > BATCH_BYTES_MAX:
                        break
                    nbytes += entry[2].size
                    part.append(entry)
                start += len(part)
                # As the manager does: a call handed to the store can no longer be cancelled.
                part = [e for e in part if e[1].set_running_or_notify_cancel()]
                if not part:
                    continue
                batches.append(
                    _Batch(
                        self._writer.next_bid(len(part), shape or None),
                        [e[1] for e in part],
                        [e[2] for e in part],
                        list({id(e[0]): e[0] for e in part}.values()),
                    )
                )
        return batches

    def _write(self, batches: list[_Batch]) -> dict[str, BaseException]:
        """Write the batches (several at once); returns the errors of those that failed."""

        def write(batch: _Batch) -> BaseException | None:
            try:
                self._writer.write_batch(batch.bid, batch.calls)
            except Exception as exc:  # reported to the submitters of this batch
                return exc
            return None

        if len(batches) == 1:
            outcomes = [write(batches[0])]
        else:
            with ThreadPoolExecutor(min(_WRITERS, len(batches))) as pool:
                outcomes = list(pool.map(write, batches))
        self.writes += sum(1 for o in outcomes if o is None)
        return {b.bid: e for b, e in zip(batches, outcomes) if e is not None}
