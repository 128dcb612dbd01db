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
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as futures_wait
from dataclasses import replace
from typing import Any, TypeVar

from starburst_executor._commit import GroupCommit
from starburst_executor._manager import MAX_BATCH_TASKS, Pacing
from starburst_executor._session import Call, Session
from starburst_executor.config import remember_session, remembered_store, validate_session_id
from starburst_executor.errors import SessionError, SessionExpiredError
from starburst_executor.executor import StarburstExecutor
from starburst_executor.launchers.local import LocalLauncher
from starburst_executor.protocol import BatchId, SessionState
from starburst_executor.sessions import (
    SessionStatus,
    TaskResult,
    codec_for,
    collected,
    list_sessions,
    session_status,
)
from starburst_executor.stores import Store, open_store
from starburst_executor.stores.counting import count_requests
from starburst_executor.stores.outage import OutageTolerantStore, is_outage, tolerate_outages

__all__ = ["DetachedExecutor", "list_sessions"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


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
        self._state = SessionState.OPEN

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
        store_obj = count_requests(
            open_store(store if store is not None else remembered_store(session_id))
        )
        session = Session.open(store_obj, session_id, codec_for(store_obj))
        # Unreachable now: reported at once; gone later: an outage, waited out.
        session.store = tolerate_outages(store_obj, session.manifest.store_outage_timeout)
        self = cls.__new__(cls)
        self._wire(session, max_workers or session.manifest.max_workers, pacing)
        if isinstance(self._launcher, LocalLauncher):
            # The first client's workers may still run here: they count toward max_workers.
            self._launcher.adopt_recorded(session.workers())
        self._restored = None  # built on first use of .futures
        remember_session(session_id, store_obj.url)
        self._state = state = session.state()
        if state.terminal:
            logger.info(
                "session %s is %s: it can be inspected and collected, not extended",
                session_id,
                state,
            )
        return self

    # -- work --------------------------------------------------------------------------------

    def _wire(self, writer: Session, max_workers: int, pacing: Pacing | None) -> None:
        super()._wire(writer, max_workers, pacing)
        manifest = writer.manifest
        self._submitted: list[Future[Any]] = []
        self._followed: dict[str, list[Future[Any]]] = {}  # batches the manager resolves
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
        progress: bool = False,
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
            results = super().map(
                fn, *columns, timeout=timeout, chunksize=chunksize, progress=progress
            )
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
        self._followed[bid] = futures
        self._manager.adopt(bid, futures)

    def _check_extendable(self) -> None:
        if self._state is SessionState.OPEN and self._writer.expired():
            self._state = SessionState.EXPIRED
        state = self._state
        if state.terminal:
            raise (SessionExpiredError if state is SessionState.EXPIRED else SessionError)(
                f"session {self.session_id} is {state}: it takes no more work. Collect its "
                "results, and start a new DetachedExecutor for new work"
            )
        if self._shared.detaching:
            # The manager thread has stopped: a call queued now would never travel.
            raise RuntimeError(
                f"cannot schedule new futures after detach(): reattach with "
                f"DetachedExecutor.attach({self.session_id!r}) to add work"
            )

    @property
    def futures(self) -> list[Future[Any]]:
        """The session's Futures in submission order: one per ``submit`` (a ``map`` chunk
        resolves to ``(values, error)``). After ``attach``, those of earlier processes are
        restored from the store and resolve as their results are found."""
        if self._restored is None:
            restored: list[Future[Any]] = []
            for bid in self._writer.batch_ids():
                if BatchId.parse(bid).origin == self._writer.origin:
                    continue  # submitted by this process: already in _submitted
                restored.extend(self._adopt(bid))
            self._restored = restored
            self._ensure_started()
        return [*self._restored, *self._submitted]

    def _adopt(self, bid: str) -> list[Future[Any]]:
        """Futures for a batch in the store, resolved by the manager as its result comes."""
        batch: list[Future[Any]] = [Future() for _ in range(BatchId.parse(bid).ntasks)]
        for fut in batch:
            fut.set_running_or_notify_cancel()
        self._followed[bid] = batch
        self._manager.adopt(bid, batch)
        return batch

    def detach(self) -> None:
        """Leave the workers running and stop polling; every call submitted is in the store
        already. The session carries on without this process. Reattach with
        ``DetachedExecutor.attach(session_id)``.
        """
        self._manager.request_detach()
        if self._started:
            self._manager.thread.join()
        logger.info("session %s detached", self.session_id)

    # -- inspection --------------------------------------------------------------------------

    def status(self) -> SessionStatus:
        """Counts by state, workers, progress, creation and last activity (prints as a table).

        While the store is unreachable (the run pauses for up to ``store_outage_timeout``),
        it returns the last counts it saw, with ``store_unreachable_for`` set.

        Raises:
            StoreUnavailableError: the store is unreachable and no earlier status is known.
        """
        if not isinstance(self._store, OutageTolerantStore):
            return session_status(self._writer)
        # Read past the outage wrapper: status() answers now rather than wait out an outage.
        direct = Session(self._store.inner, self._writer.manifest, self._writer.codec)
        try:
            status = session_status(direct)
        except Exception as exc:
            last: SessionStatus | None = getattr(self, "_last_status", None)
            if not is_outage(exc) or last is None:
                raise
            away = self._store.unreachable_for() or 0.0
            return replace(last, store_unreachable_for=away)
        self._last_status = status
        return status

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
        interval = poll_interval or (0.1 if self._store.url.startswith("file:") else 2.0)
        self._writer.control()  # SessionError if the data was deleted (not an empty list)
        bids = self._writer.batch_ids()
        if wait:
            self._wait_for(bids, timeout, interval, progress)
        done = self._writer.done()
        terminal = None
        if any(b not in done for b in bids):  # unfinished: did the session end first?
            state = self._writer.state()
            terminal = state if state.terminal else None
        return collected(self._writer, bids, done, terminal)

    def _wait_for(
        self, bids: list[str], timeout: float | None, interval: float, progress: bool
    ) -> None:
        """Wait until every batch of ``bids`` finished, or the session ended with no worker
        left to finish them. The manager thread follows the results (and keeps the workers
        the outstanding batches need) as it does for any Future; this waits on those Futures
        and then checks the store, which has the last word: a Future the manager failed
        (e.g. at the session's deadline) may still get its batch's result from a worker
        stopping its task."""
        deadline = None if timeout is None else time.monotonic() + timeout
        futures = self._follow(bids)
        pending = {f for f in futures if not f.done()}
        bar = _progress_bar(len(futures), progress)
        if bar is not None:
            bar.update(len(futures) - len(pending))
        try:
            while True:
                if pending:
                    finished, pending = futures_wait(pending, interval, FIRST_COMPLETED)
                    if bar is not None:
                        bar.update(len(finished))
                if (not pending or self._manager.closed.is_set()) and self._all_done(bids):
                    return
                state = self._writer.state()
                if state.terminal and not session_status(self._writer).workers:
                    return  # nobody will run what is left: collect reports it
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"session {self.session_id}: {len(futures) - len(pending)} of "
                        f"{len(futures)} tasks finished within {timeout:g} s; "
                        "collect(wait=False) returns them"
                    )
                if not pending:  # resolved, not all in the store yet: a worker is finishing
                    time.sleep(interval)  # a poll with a deadline: nothing here signals it
        finally:
            if bar is not None:
                bar.close()

    def _follow(self, bids: list[str]) -> list[Future[Any]]:
        """The Futures of ``bids``, each batch handed to the manager once."""
        self.futures  # noqa: B018  (restores the earlier processes' batches on first use)
        out: list[Future[Any]] = []
        for bid in bids:
            out.extend(self._followed.get(bid) or self._adopt(bid))
        self._ensure_started()
        return out

    def _all_done(self, bids: list[str]) -> bool:
        """Whether every batch of ``bids`` has its completion event (one listing)."""
        done = self._writer.done()
        return all(b in done for b in bids)

    def cancel(self) -> None:
        """Cancel the session: tasks not started yet will not run (``collect`` reports them
        as cancelled), and workers exit after their current batch."""
        self._writer.update_control(lambda record: record.cancel())
        self._state = SessionState.CANCELLED

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
        self._writer.control()  # SessionError if its data was deleted already
        self._writer.update_control(lambda record: record.close())
        self._state = SessionState.CLOSED
        if stop_workers:
            self._launcher.stop()
            if isinstance(self._launcher, LocalLauncher):  # and those of earlier processes
                self._launcher.stop_recorded(self._writer.workers, timeout=15.0)
        if delete_data:
            removed = self._writer.delete_all()
            logger.info("session %s: deleted %d objects", self.session_id, removed)


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="task", desc="collect")
