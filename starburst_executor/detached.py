"""``DetachedExecutor``: a session that outlives the process that started it.

Its whole state lives in the store, so any later process (or the ``starburst`` command line)
reattaches by session id, checks status, collects results (all, or what is done so far), adds
work, and cleans up. Results stay in the store until ``cleanup(delete_data=True)`` (or the
bucket's lifecycle rule): collecting twice, or from two machines, works.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from starburst_executor._commit import GroupCommit
from starburst_executor._cursor import KeyCursor
from starburst_executor._manager import MAX_BATCH_TASKS, Pacing
from starburst_executor._session import Call, SessionWriter
from starburst_executor.config import validate_session_id
from starburst_executor.errors import (
    CorruptRecordError,
    SessionError,
    SessionExpiredError,
    StarburstError,
)
from starburst_executor.executor import StarburstExecutor
from starburst_executor.protocol import SessionKeys
from starburst_executor.sessions import (
    SessionReader,
    SessionStatus,
    TaskResult,
    codec_for,
    remember_session,
    remembered_store,
)
from starburst_executor.stores import Store, open_store

__all__ = ["DetachedExecutor", "list_sessions"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

_TERMINAL = ("closed", "cancelled", "expired")


class DetachedExecutor(StarburstExecutor):
    """A ``StarburstExecutor`` whose session survives this process.

    Everything of ``StarburstExecutor`` holds (a ``with`` block waits for the submitted work
    and then stops the workers). In addition: ``detach()`` (also done at interpreter exit)
    leaves the workers running; ``attach(session_id)`` reconnects.

    Submission is durable: ``submit`` and ``map`` return once their calls are in the store, so
    a client that dies right after (even by SIGKILL) loses nothing. Threads submitting at once
    share store writes; a sequential loop pays one write per ``submit``.

    The defaults protect your money: workers exit after ``idle_timeout`` (5 minutes) without
    work, and the whole session expires after ``session_timeout`` (24 hours).

    Args:
        max_workers, initializer, ...: as ``StarburstExecutor``.
        name: a label shown by ``status()`` and ``list_sessions()``.
    """

    _detached = True

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Any = None,
        initargs: tuple[Any, ...] = (),
        *,
        idle_timeout: float = 300.0,
        session_timeout: float | None = 24 * 3600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            max_workers,
            mp_context,
            initializer,
            initargs,
            idle_timeout=idle_timeout,
            session_timeout=session_timeout,
            **kwargs,
        )
        self._restored: list[Future[Any]] | None = []
        self._reader = SessionReader(self._store, self.session_id, self._writer.codec)
        self._state = "open"
        self._detached_here = False

    @classmethod
    def attach(
        cls,
        session_id: str,
        *,
        store: str | Store | None = None,
        max_workers: int | None = None,
        pacing: Pacing | None = None,
    ) -> DetachedExecutor:
        """Reconnect to a session by id, from any process.

        Args:
            session_id: the id printed by ``ex.session_id`` or ``starburst sessions``.
            store: where the session lives; by default the store recorded when the session
                was created on this machine, else the default store.
            max_workers: a new ceiling for workers this process starts (default: the
                session's own).

        Raises:
            ValueError: ``session_id`` is not a session id (``YYYYMMDD-HHMMSS-xxxxxx``).
            SessionError: unknown session id (says which store was searched), or its data
                was deleted.
            CorruptRecordError: the session's manifest is damaged (names the key).
            ProtocolMismatchError: the session was written by an incompatible version.
        """
        validate_session_id(session_id)  # before it becomes part of a key or a file name
        store_obj = open_store(store if store is not None else remembered_store(session_id))
        codec = codec_for(store_obj)
        reader = SessionReader(store_obj, session_id, codec)
        self = cls.__new__(cls)
        self._wire(
            SessionWriter(store_obj, reader.manifest, codec),
            max_workers or reader.manifest.max_workers,
            pacing,
        )
        self._restored = None  # built on first use of .futures
        self._reader = reader
        self._detached_here = False
        remember_session(session_id, store_obj.url)
        self._state = state = reader.state()
        if state in _TERMINAL:
            logger.info(
                "session %s is %s: it can be inspected and collected, not extended",
                session_id,
                state,
            )
        return self

    # -- work --------------------------------------------------------------------------------

    def _wire(self, writer: SessionWriter, max_workers: int, pacing: Pacing | None) -> None:
        super()._wire(writer, max_workers, pacing)
        manifest = writer.manifest
        self._submitted: list[Future[Any]] = []
        self._bulk = threading.local()  # map(): its chunks, written together
        self._commit = GroupCommit(
            writer,
            spread=2 * max_workers,
            # One task per batch when a worker may end between tasks (as the manager's rule).
            batch_limit=1
            if manifest.task_timeout or manifest.max_tasks_per_child
            else MAX_BATCH_TASKS,
            on_written=self._written,
        )

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """As ``StarburstExecutor.submit``; returns once the call is in the store.

        Raises:
            StoreError: the call could not be written to the store (it will not run).
            SessionError: the session is closed, cancelled or expired.
        """
        self._check_extendable()
        return super().submit(fn, *args, **kwargs)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """As ``StarburstExecutor.map``; returns once every chunk is in the store (the input
        is read at once, as the stdlib's ``map`` does). A chunk that cannot be pickled is
        not in the session: its Future fails, and ``collect`` does not count its items.

        Raises:
            StoreError: a chunk could not be written to the store.
            SessionError: the session is closed, cancelled or expired.
        """
        self._check_extendable()
        rows = list(zip(*iterables))
        taken = [0]  # rows the base class has drawn so far: tells each chunk's item count

        def column(k: int) -> Iterator[Any]:
            for row in rows:
                taken[0] += k == 0
                yield row[k]

        calls: list[tuple[Future[Any], Call]] = []
        self._bulk.calls, self._bulk.taken, self._bulk.chunksize = calls, taken, chunksize
        try:
            columns = [column(k) for k in range(len(iterables))]
            results = super().map(fn, *columns, timeout=timeout, chunksize=chunksize)
        finally:
            self._bulk.calls = None
        if calls:
            self._commit.commit(calls, "m")
            self._ensure_started()
        return results

    def _enqueue(self, call: Call) -> Future[Any]:
        future: Future[Any] = Future()
        bulk: list[tuple[Future[Any], Call]] | None = getattr(self._bulk, "calls", None)
        if bulk is not None:  # inside map(): written with the other chunks
            # Chunks start at multiples of chunksize, and this one was just drawn.
            taken, size = self._bulk.taken[0], self._bulk.chunksize
            call.items = taken - (taken - 1) // size * size
            bulk.append((future, call))
            return future
        with self._shared.lock:
            self._check_open()
        self._commit.commit([(future, call)], "s")
        self._ensure_started()
        return future

    def _written(self, bid: str, futures: list[Future[Any]]) -> None:
        """A batch is in the store: the manager thread resolves its Futures from now on."""
        self._submitted.extend(futures)  # submit() and every map() chunk, in order
        self._manager.adopt(bid, futures)

    def _check_extendable(self) -> None:
        if self._detached_here:
            # The manager thread has stopped: a call queued now would never travel.
            raise RuntimeError(
                f"cannot schedule new futures after detach(): reattach with "
                f"DetachedExecutor.attach({self.session_id!r}) to add work"
            )
        if self._state == "open" and self._reader.expired():
            self._state = "expired"
        state = self._state
        if state in _TERMINAL:
            raise (SessionExpiredError if state == "expired" else SessionError)(
                f"session {self.session_id} is {state}: it takes no more work. Collect its "
                "results, and start a new DetachedExecutor for new work"
            )

    @property
    def futures(self) -> list[Future[Any]]:
        """The session's Futures in submission order: one per ``submit`` (a ``map`` chunk
        resolves to ``(values, error)``). After ``attach``, those of earlier processes are
        restored from the store and resolve as their results are found."""
        if self._restored is None:
            restored: list[Future[Any]] = []
            for bid in self._reader.batch_ids():
                if bid.split("-")[1] == self._writer.origin:
                    continue  # submitted by this process: already in _submitted
                batch: list[Future[Any]] = [Future() for _ in range(SessionKeys.batch_size(bid))]
                for fut in batch:
                    fut.set_running_or_notify_cancel()
                self._manager.adopt(bid, batch)
                restored.extend(batch)
            self._restored = restored
            self._ensure_started()
        return [*self._restored, *self._submitted]

    def detach(self) -> None:
        """Leave the workers running and stop polling; every call submitted is in the store
        already. The session carries on without this process. Reattach with
        ``DetachedExecutor.attach(session_id)``.
        """
        self._detached_here = True
        self._manager.request_detach()
        if self._started:
            self._manager.thread.join()
        logger.info("session %s detached", self.session_id)

    # -- inspection --------------------------------------------------------------------------

    def status(self) -> SessionStatus:
        """Counts by state, workers, progress, creation and last activity (prints as a table)."""
        return self._reader.status()

    def collect(
        self,
        wait: bool = False,
        timeout: float | None = None,
        progress: bool = False,
        poll_interval: float | None = None,
    ) -> list[TaskResult]:
        """The results of finished tasks, in submission order.

        Args:
            wait: block until every task is finished (or the session is cancelled or
                expired: tasks that will never run come back as ``SessionError`` entries).
            timeout: with ``wait``, give up after this many seconds (``TimeoutError``).
            progress: show a progress bar (tqdm) while waiting.
            poll_interval: seconds between looks at the store while waiting.

        Returns:
            One ``TaskResult`` per finished task (per item for ``map`` chunks); failed tasks
            carry their exception in ``.error``. Calling it again returns the same results.

        Raises:
            TimeoutError: ``wait`` and ``timeout`` passed with tasks unfinished.
            SessionError: the session's data was deleted.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = poll_interval or (0.1 if self._store.url.startswith("file:") else 2.0)
        self._reader.control()  # SessionError if the data was deleted (not an empty list)
        cursor = KeyCursor(self._store, self._reader.keys.done)
        done: dict[str, tuple[int, str, int]] = {}
        bids = self._reader.batch_ids()
        total = sum(SessionKeys.batch_size(b) for b in bids)
        bar = _progress_bar(total, progress and wait)
        terminal_state = None
        try:
            while True:
                for info in cursor.poll():
                    bid = SessionKeys.bid_of(info.key)
                    if bid not in done:
                        done[bid] = (SessionKeys.done_failures(info.key), info.key, info.size)
                        if bar is not None:
                            bar.update(SessionKeys.batch_size(bid))
                if not wait or all(b in done for b in bids):
                    break
                state = self._reader.state()
                if state in _TERMINAL and not self._reader.status().workers:
                    terminal_state = state
                    break
                if state not in _TERMINAL:  # a terminal session gets no new workers
                    self._keep_workers(bids, done)
                if deadline is not None and time.monotonic() > deadline:
                    finished = sum(SessionKeys.batch_size(b) for b in bids if b in done)
                    raise TimeoutError(
                        f"session {self.session_id}: {finished} of {total} tasks finished "
                        f"within {timeout:g} s; collect(wait=False) returns them"
                    )
                time.sleep(interval)
        finally:
            if bar is not None:
                bar.close()
        return self._entries(bids, done, terminal_state)

    def _keep_workers(self, bids: list[str], done: dict[str, Any]) -> None:
        """While waiting on a reattached session, start workers if none is left."""
        pending = sum(1 for b in bids if b not in done)
        idle = pending and not self._started and self._launcher.running() == 0
        if idle and self._reader.status().workers == 0:
            self._launcher.start(min(self._max_workers, pending))

    def _entries(
        self,
        bids: list[str],
        done: dict[str, tuple[int, str, int]],
        terminal: str | None,
    ) -> list[TaskResult]:
        """One entry per finished task (per item for ``map`` chunks), numbered by submission
        position: the items of every batch before it count, finished or not."""
        records = self._reader.read_results([b for b in bids if b in done], done)
        entries: list[TaskResult] = []
        position = 0
        for bid in bids:
            shape = SessionKeys.batch_shape(bid)
            ntasks = SessionKeys.batch_size(bid)
            record = records.get(bid)
            if record is None:  # not finished
                if terminal is not None:
                    error: SessionError = (
                        SessionExpiredError if terminal == "expired" else SessionError
                    )(f"the task did not run: session {self.session_id} was {terminal}")
                    entries.extend(TaskResult(i, t, error=error) for i, t in _slots(bid, position))
            elif isinstance(record, StarburstError):
                entries.extend(_damaged(bid, position, record))
            else:
                made = self._batch_entries(bid, position, record)
                entries.extend(made)
                if shape is None:  # mixed kinds: number the entries as they come
                    position += max(ntasks, len(made))
                    continue
            position += ntasks * (shape[1] if shape is not None else 1)
        return entries

    def _batch_entries(self, bid: str, start: int, record: dict[str, Any]) -> list[TaskResult]:
        shape = SessionKeys.batch_shape(bid)
        per = shape[1] if shape is not None else None
        outcomes = self._writer.outcomes_of(record)
        if isinstance(outcomes, BaseException):  # the whole batch failed (e.g. worker lost)
            return [TaskResult(i, t, error=outcomes) for i, t in _slots(bid, start)]
        outputs = record.get("outputs", {})
        entries: list[TaskResult] = []
        for i in range(SessionKeys.batch_size(bid)):
            task_id = f"{bid}/{i}"
            # Where this task's first item stands: fixed by the shape, else right after the
            # entries before it (a batch of mixed kinds, from a plain executor).
            first = start + i * per if per is not None else start + len(entries)
            if i >= len(outcomes):
                error = StarburstError(f"batch {bid}: the worker returned no result for task {i}")
                entries.append(TaskResult(first, task_id, error=error))
                continue
            outcome, out = outcomes[i], outputs.get(i, "")
            if outcome.error is not None:
                entries.append(TaskResult(first, task_id, error=outcome.error, output=out))
            elif outcome.chunk:
                values, error = outcome.value
                for j, v in enumerate(values):
                    entries.append(TaskResult(first + j, f"{task_id}.{j}", v, output=out))
                if error is not None:  # the items after it did not run (as map stops there)
                    j = len(values)
                    entries.append(TaskResult(first + j, f"{task_id}.{j}", error=error, output=out))
            else:
                entries.append(TaskResult(first, task_id, outcome.value, output=out))
        return entries

    def cancel(self) -> None:
        """Cancel the session: tasks not started yet will not run (``collect`` reports them
        as cancelled), and workers exit after their current batch."""
        self._writer.set_control(state="cancelled")
        self._state = "cancelled"

    def cleanup(self, stop_workers: bool = True, delete_data: bool = False) -> None:
        """End the session: no more work is taken.

        Args:
            stop_workers: stop the session's workers now (running tasks are handed back);
                otherwise they exit once they notice the session is closed (seconds).
            delete_data: delete every object of the session from the store. Without it,
                results stay and can still be collected.

        Raises:
            SessionError: the session's data was deleted already.
        """
        if self._started:  # stop polling; the Futures still pending will not complete
            self._manager.request_detach()
            self._manager.thread.join()
        self._reader.control()  # SessionError if its data was deleted already
        self._writer.set_control(state="closed")
        self._state = "closed"
        if stop_workers:
            self._launcher.stop()
            self._reader.stop_local_workers(timeout=15.0)
        if delete_data:
            removed = self._reader.delete_all()
            logger.info("session %s: deleted %d objects", self.session_id, removed)


def _slots(bid: str, start: int) -> list[tuple[int, str]]:
    """``(index, task id)`` of every item of a batch whose first item stands at ``start``."""
    shape = SessionKeys.batch_shape(bid)
    ntasks = SessionKeys.batch_size(bid)
    if shape is None or shape[0] != "m":
        return [(start + i, f"{bid}/{i}") for i in range(ntasks)]
    per = shape[1]
    return [(start + i * per + j, f"{bid}/{i}.{j}") for i in range(ntasks) for j in range(per)]


def _damaged(bid: str, start: int, exc: StarburstError) -> list[TaskResult]:
    """Error entries for the tasks of a batch whose result record cannot be read: the rest of
    the session is still collected."""
    entries = []
    for index, task_id in _slots(bid, start):
        error = CorruptRecordError(
            f"task {index} ({task_id}): its result cannot be read: {exc}. The other results "
            "are unaffected; run the task again to get this one"
        )
        error.__cause__ = exc
        entries.append(TaskResult(index, task_id, error=error))
    return entries


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="task", desc="collect")


def list_sessions(store: str | Store | None = None) -> list[SessionStatus]:
    """Every session in a store, oldest first, with its counts and state.

    Sessions whose data was deleted are listed with state "deleted" and zero counts.
    """
    store_obj = open_store(store)
    codec = codec_for(store_obj)
    out = []
    for info in store_obj.list("index/"):
        sid = info.key.split("/", 1)[1]
        try:
            out.append(SessionReader(store_obj, sid, codec).status())
        except SessionError:
            out.append(
                SessionStatus(
                    sid, "", "deleted", 0, 0, 0, 0, 0, 0, 0, 0.0, info.last_modified, store_obj.url
                )
            )
    return out
