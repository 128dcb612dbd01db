"""The manager thread: one per executor, the only code that resolves its Futures.

Each turn of its loop it forms batches from queued calls (when the upload window has room),
uploads them on a small I/O pool, follows the session's completion events with a cursor,
fetches and decodes results, resolves Futures, and keeps the worker pool at the size the
outstanding work needs, replacing workers that died. It polls fast while results arrive,
backs off while they do not, and sleeps without polling when nothing is outstanding.

It holds only a weak reference to its executor (as the stdlib's management threads do), and
shares state with it through one ``_Shared`` object behind one lock; no store I/O happens
under that lock.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from starburst_executor._claims import Claims
from starburst_executor._client_pace import Durations, Pacing, PollClock, batch_size, fn_key
from starburst_executor._cursor import KeyCursor
from starburst_executor._session import BATCH_BYTES_MAX, Call, Session
from starburst_executor.errors import (
    BrokenStarburstExecutor,
    CorruptRecordError,
    ProtocolMismatchError,
    SessionExpiredError,
    StarburstError,
    StoreUnavailableError,
)
from starburst_executor.launchers.base import Launcher, WorkerExit
from starburst_executor.protocol import (
    ControlRecord,
    DoneEvent,
    ExitCode,
    Outcome,
    WorkerState,
)
from starburst_executor.usage import UsageReporter, client_writer_id

__all__ = ["Manager", "Pacing", "Shared", "WorkItem"]

logger = logging.getLogger(__name__)

MAX_BATCH_TASKS = 1000
# With this few batches awaited, the client asks for each one's result object directly (one
# GET each, the result in hand) instead of listing the completion events and then reading
# the event found (a LIST, then a GET): one request less on the critical path, and a GET
# costs a twelfth of a LIST on S3.
_DIRECT_READS_MAX = 1
_RESOLVED_KEPT = 4096  # batches resolved here, remembered so their late events are ignored
_START_FAILURES_MAX = 3
# After the session's deadline, how long to wait for its workers to go before failing what
# is still outstanding: a worker stops its task within a second of the deadline and writes
# that task's result (an expiry error), which should win over the client's own error.
_EXPIRY_GRACE = 5.0


def _saying(ended: WorkerExit) -> str:
    """``, saying: <its log's last line>``: what a worker that died said last (a full disk, a
    missing module), put before its whole log so that the caller reads the cause first."""
    lines = [line.strip() for line in ended.log_tail.splitlines() if line.strip()]
    return f", saying: {lines[-1]}" if lines else ""


@dataclass(frozen=True)
class _BatchResult:
    """A batch's decoded outcomes (or its batch-wide error) and how long its worker ran it."""

    outcomes: list[Outcome] | BaseException
    seconds: float


@dataclass
class WorkItem:
    future: Future[Any]
    call: Call
    queued_at: float = field(default_factory=time.monotonic)


class Shared:
    """State shared by an executor and its manager thread (loky's ``_ExecutorFlags``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.queue: deque[WorkItem] = deque()
        self.shutdown = False
        self.broken: BaseException | None = None
        # detach(): upload everything queued now (the window no longer holds calls back),
        # then stop without closing the session.
        self.detaching = False
        self.adopt: list[tuple[str, list[Future[Any]]]] = []  # attach: batches to resolve


class Manager:
    """Drives one session from the client side. See the module docstring."""

    def __init__(
        self,
        executor: object,
        shared: Shared,
        session: Session,
        launcher: Launcher | None,
        *,
        max_workers: int,
        pacing: Pacing,
        window: int | None,
        batch_limit: int | None,
        claims: Claims | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock  # monotonic seconds (a test passes a fake clock)
        self._executor_ref = weakref.ref(executor, lambda _: self._wake_for_gc())
        self._shared = shared
        self._session = session
        self._launcher = launcher
        self._max_workers = max_workers
        self._pacing = pacing
        self._window = window
        self._batch_limit = min(batch_limit or MAX_BATCH_TASKS, MAX_BATCH_TASKS)
        self._claims = claims or session.claims()
        self._outstanding: dict[str, list[Future[Any]]] = {}
        self._io = ThreadPoolExecutor(8, thread_name_prefix="starburst-io")
        self._inflight: dict[Future[Any], tuple[str, str]] = {}  # I/O job -> (kind, batch)
        self._fetching: set[str] = set()  # batches whose results are being read
        # Completion events of batches this manager did not follow when the cursor passed
        # them (another client's, before attach or collect adopted them): the cursor shows
        # each key once, so they are kept here for a later adopt.
        self._unfollowed: dict[str, DoneEvent] = {}
        self._start_failures = 0  # workers in a row that died before registering
        self._durations = Durations()  # measured run time per task (by function)
        self._fn_of: dict[str, tuple[str, bytes]] = {}  # batch -> its function's key
        self._cursor = KeyCursor(session.store, session.keys.done)
        self._last_watermark: str | None = None
        self._next_watermark = 0.0
        self._next_maintain = 0.0
        self._interval = pacing.poll_min  # the current wait between polls
        self._last_result = self._clock()
        self._pace = PollClock(pacing, self._clock())
        self._resolved: OrderedDict[str, None] = OrderedDict()  # recent, see _RESOLVED_KEPT
        self._rewind_after = pacing.rewind_after
        self._left_open = False  # detached: exit without closing the session
        self._session_over = False  # another client ended the session: start no workers
        self._expired_since: float | None = None  # when this client saw the deadline pass
        self._lost: set[str] = set()  # workers holding an expired lease (frozen, cut off)
        self._next_lease_scan = 0.0
        self._next_beat = 0.0
        # This client's store requests, recorded for the session's bill (usage.py).
        self._usage = UsageReporter(session, client_writer_id(), "client")
        self.thread = threading.Thread(target=self._run, name="starburst-manager", daemon=True)
        self.closed = threading.Event()

    def request_detach(self) -> None:
        """Upload what is queued, make sure workers run, then exit leaving the session open."""
        with self._shared.lock:
            self._shared.detaching = True
        self._shared.wake.set()

    def adopt(self, bid: str, futures: list[Future[Any]]) -> None:
        """Resolve ``futures`` (the tasks of an existing batch) from the store (attach)."""
        with self._shared.lock:
            self._shared.adopt.append((bid, futures))
        self._shared.wake.set()

    def request_shutdown(self) -> None:
        """Finish what is queued and outstanding, then close the session and exit."""
        with self._shared.lock:
            self._shared.shutdown = True
        self._shared.wake.set()

    def _wake_for_gc(self) -> None:
        self._shared.wake.set()

    @property
    def detachable(self) -> bool:
        """Whether the session outlives this client (the manifest says: ``DetachedExecutor``)."""
        return self._session.manifest.detached

    @property
    def session_id(self) -> str:
        return self._session.session_id

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except StoreUnavailableError as exc:
            # The store stayed away for longer than store_outage_timeout (every store call
            # waits out shorter outages): the Futures fail with the error that says so.
            logger.error("session %s: %s", self.session_id, exc)
            self._break(exc)
        except BaseException as exc:  # top of a thread: never die silently, fail the Futures
            logger.exception("session %s: manager thread failed", self.session_id)
            broken = BrokenStarburstExecutor(f"the executor's manager thread failed: {exc!r}")
            broken.__cause__ = exc  # the original, with its traceback, for whoever catches it
            self._break(broken)
        finally:
            self._close()

    def _loop(self) -> None:
        while True:
            self._shared.wake.clear()
            if self.turn():
                return
            self._wait_for_wakeup()

    def turn(self) -> bool:
        """One turn of the loop (every step that is due); whether it is time to leave."""
        self._adopt_batches()
        moved = self._process_finished_io()
        self._upload_queued_calls()
        moved += self._poll_completions()
        self._heartbeat_when_due()
        self._maintain_workers_when_due()
        self._usage.write_when_due()
        self._follow_pace(moved)
        return self._time_to_leave()

    def _adopt_batches(self) -> None:
        """Take the batches handed over by attach and durable submission."""
        with self._shared.lock:
            adopted, self._shared.adopt = self._shared.adopt, []
        self._outstanding.update(adopted)
        for bid, _ in adopted:
            event = self._unfollowed.pop(bid, None)
            if event is not None and bid not in self._fetching:
                self._fetch_result(event)

    def _poll_completions(self) -> int:
        """Look for results when the pace says so (see ``_follow_pace``)."""
        if not self._outstanding:
            return 0
        now = self._clock()
        if not self._pace.due(now):
            return 0
        est = self._durations.overall
        fewest = min(len(f) for f in self._outstanding.values())
        self._pace.polled(now, None if est is None else est * fewest)
        return self._poll_results()

    def _maintain_workers_when_due(self) -> None:
        now = self._clock()
        if now >= self._next_maintain:
            self._maintain_workers()
            self._next_maintain = now + self._pacing.maintain_every

    def _heartbeat_when_due(self) -> None:
        """Say this client is alive, so that a plain session's workers stop soon after it
        dies instead of running work nobody will collect until ``idle_timeout``.

        The beat is a field of the control record, not an object of its own: the workers
        read that record anyway (every ``control_every`` and at each lease renewal), so it
        costs them nothing more, and the client writes it by compare-and-swap against the
        ETag it already holds: one PUT per third of a lease. Conflicts are rare in a plain
        session (only workers marking it expired write there too) and are retried.
        Detached sessions do not beat: their client is meant to go away.
        """
        now = self._clock()
        if self.detachable or now < self._next_beat:
            return
        if any(kind == "heartbeat" for kind, _ in self._inflight.values()):
            self._next_beat = now + 1.0  # the last one is still trying (a slow store)
            return
        self._next_beat = now + self._beat_every()
        stamp = self._session.store.now()
        self._start_io("heartbeat", "", self._session.update_control, lambda r: r.heartbeat(stamp))

    def _beat_every(self) -> float:
        return self._pacing.heartbeat_every or self._claims.lease_seconds / 3

    def _follow_pace(self, moved: int) -> None:
        """Poll fast while things move; after ``rewind_after`` without a result, re-list the
        completions from the start (an event stamped by a badly skewed clock sits behind the
        cursor), doubling the wait each time so a quiet session costs ever less."""
        now = self._clock()
        if moved:
            self._interval = self._pacing.poll_min
            self._last_result, self._rewind_after = now, self._pacing.rewind_after
            self._pace.moved(now)
        elif self._outstanding and now - self._last_result > self._rewind_after:
            self._cursor.rewind()
            self._last_result, self._rewind_after = now, self._rewind_after * 2

    def _busy(self) -> bool:
        return bool(self._outstanding or self._inflight)

    def _queued(self) -> int:
        with self._shared.lock:
            return len(self._shared.queue)

    def _time_to_leave(self) -> bool:
        """Detaching, once every queued call is uploaded (workers made sure of); stopping,
        once nothing is queued or outstanding. A collected executor of a detached session
        detaches; of a plain one, stops."""
        gone = self._executor_ref() is None
        with self._shared.lock:
            queued = len(self._shared.queue)
            detaching = self._shared.detaching or (gone and self.detachable)
            stopping = self._shared.shutdown or gone
        uploading = any(kind == "upload" for kind, _ in self._inflight.values())
        if detaching and not queued and not uploading:
            self._maintain_workers()
            self._left_open = True
            return True
        return stopping and not queued and not self._busy()

    def _wait_for_wakeup(self) -> None:
        """Sleep until a submit, a finished I/O job or shutdown wakes the thread, or until
        the next step is due (see ``wait_timeout``)."""
        self._shared.wake.wait(self.wait_timeout())

    def wait_timeout(self) -> float | None:
        """How long the thread may sleep: with nothing outstanding, until the heartbeat
        (forever in a detached session); while calls linger, until the linger ends; while
        results are awaited, until the next poll (``None``: until woken)."""
        queued = self._queued()
        if not self._busy() and not queued:
            # Nothing to wait for: no polling at all, only the heartbeat of a plain session
            # (its idle workers are still there, and must not think it dead).
            return None if self.detachable else max(0.0, self._next_beat - self._clock())
        if queued and not self._window_full():
            # Linger: calls submitted in the next moments share the first one's batch.
            with self._shared.lock:
                oldest = self._shared.queue[0].queued_at if self._shared.queue else None
            now = time.monotonic()  # the clock of WorkItem.queued_at
            age = now - (oldest if oldest is not None else now)
            return max(0.0, self._pacing.linger - age)
        if not self._outstanding:  # only I/O in flight: its callback wakes the thread
            return self._beat_every()
        due = min(self._pace.next_poll, self._next_beat, self._next_maintain)
        return max(0.0, due - self._clock())

    def _window_full(self) -> bool:
        return (
            self._window is not None
            and len(self._outstanding) >= self._window
            and not self._shared.detaching
        )

    # -- batches -----------------------------------------------------------------------------

    def _upload_queued_calls(self) -> None:
        """Form batches from the queue while the upload window has room; upload each on the
        I/O pool (the stdlib's ``add_call_item_to_queue``)."""
        if self._deadline_passed():  # nothing more travels into an expired session
            self._fail_queued(self._expiry_error())
            return
        while not self._window_full():
            with self._shared.lock:
                pending = len(self._shared.queue)
                if not pending:
                    return
                size = batch_size(
                    pending,
                    self._durations.of(fn_key(self._shared.queue[0].call)),
                    window=self._window,
                    outstanding=len(self._outstanding),
                    max_workers=self._max_workers,
                    batch_limit=self._batch_limit,
                    pacing=self._pacing,
                )
                items: list[WorkItem] = []
                nbytes = 0
                while self._shared.queue and len(items) < size:
                    item = self._shared.queue[0]
                    if items and nbytes + item.call.size > BATCH_BYTES_MAX:
                        break
                    self._shared.queue.popleft()
                    nbytes += item.call.size
                    items.append(item)
            # Handing a call to the store is the stdlib's "moving it to the call queue": from
            # here on cancel() returns False.
            items = [it for it in items if it.future.set_running_or_notify_cancel()]
            if not items:
                continue
            bid = self._session.next_bid(len(items))
            self._outstanding[bid] = [it.future for it in items]
            self._fn_of[bid] = fn_key(items[0].call)
            self._start_io("upload", bid, self._session.write_batch, bid, [it.call for it in items])

    def _start_io(self, kind: str, bid: str, fn: Any, *args: Any) -> None:
        job = self._io.submit(fn, *args)
        self._inflight[job] = (kind, bid)
        job.add_done_callback(lambda _: self._shared.wake.set())

    def _process_finished_io(self) -> int:
        """Handle finished I/O jobs (uploads, result reads, heartbeats, releases); returns
        how many moved the work on (an upload, a result): those set the polling pace."""
        finished = 0
        for job in [j for j in self._inflight if j.done()]:
            kind, bid = self._inflight.pop(job)
            finished += kind in ("upload", "result")
            exc = job.exception()
            if kind == "upload":
                if exc is not None:
                    logger.error(
                        "session %s: upload of batch %s failed: %s", self.session_id, bid, exc
                    )
                    self._fail_batch(bid, exc)
                elif len(self._outstanding) == 1:
                    self._pace.lone_uploaded(bid, self._clock())
            elif kind == "result":
                self._fetching.discard(bid)
                if exc is not None:
                    logger.error(
                        "session %s: reading results of %s failed: %s", self.session_id, bid, exc
                    )
                    self._fail_batch(bid, exc)
                elif job.result() is None:  # read directly, not there yet
                    finished -= 1
                    self._pace.missed(bid, self._clock())
                else:
                    self._pace.found(bid, self._clock(), job.result().seconds)
                    self._resolve(bid, job.result())
            elif exc is not None:
                logger.warning("session %s: %s failed: %s", self.session_id, kind, exc)
        return finished

    def _fail_batch(self, bid: str, exc: BaseException) -> None:
        for fut in self._outstanding.pop(bid, ()):
            if not fut.done():
                fut.set_exception(exc)

    # -- results -----------------------------------------------------------------------------

    def _poll_results(self) -> int:
        """Follow the completion events; read the results of our batches on the I/O pool.
        With at most ``_DIRECT_READS_MAX`` batches awaited, read their results directly."""
        uploading = {bid for kind, bid in self._inflight.values() if kind == "upload"}
        awaited = [b for b in self._outstanding if b not in self._fetching and b not in uploading]
        if len(self._outstanding) <= _DIRECT_READS_MAX:
            for bid in awaited:
                self._fetching.add(bid)
                self._start_io("result", bid, self._read_result_directly, bid)
            return 0
        got = 0
        for info in self._cursor.poll():
            event = DoneEvent.parse(info.key, info.size)
            if event.bid in self._resolved:
                continue  # read directly already
            if event.bid not in self._outstanding:
                self._unfollowed.setdefault(event.bid, event)
                continue
            if event.bid in self._fetching:
                continue
            got += 1
            self._fetch_result(event)
        return got

    def _fetch_result(self, event: DoneEvent) -> None:
        self._fetching.add(event.bid)
        self._start_io("result", event.bid, self._read_result, event)

    def _read_result(self, event: DoneEvent) -> _BatchResult:
        # On the I/O pool: unpickling the values is the user's code and may take a while.
        record = self._session.read_result(event)
        return _BatchResult(record.decode_outcomes(), record.seconds)

    def _read_result_directly(self, bid: str) -> _BatchResult | None:
        """A batch's result if it is there yet (one GET), else ``None``."""
        record = self._session.result_if_done(bid)
        return None if record is None else _BatchResult(record.decode_outcomes(), record.seconds)

    def _resolve(self, bid: str, result: _BatchResult) -> None:
        self._start_failures = 0
        futures = self._outstanding.pop(bid, None)
        if futures is None:
            return
        self._resolved[bid] = None
        if len(self._resolved) > _RESOLVED_KEPT:
            self._resolved.popitem(last=False)
        outcomes = result.outcomes
        if futures and result.seconds > 0:
            self._durations.learn(self._fn_of.get(bid), result.seconds / len(futures))
        self._fn_of.pop(bid, None)
        if isinstance(outcomes, BaseException):
            for fut in futures:
                fut.set_exception(outcomes)
            return
        for i, fut in enumerate(futures):
            if i >= len(outcomes):
                fut.set_exception(
                    CorruptRecordError(f"batch {bid}: its result record has no entry for task {i}")
                )
            elif outcomes[i].error is not None:
                fut.set_exception(outcomes[i].error)
            else:
                fut.set_result(outcomes[i].value)

    # -- workers -----------------------------------------------------------------------------

    def _maintain_workers(self) -> None:
        if self._launcher is None:
            return
        for ended in self._launcher.poll():
            self._worker_ended(ended)
        if self._shared.broken is not None:
            return
        if self._check_expiry():
            return  # no worker is ever started into an expired session
        need = min(self._max_workers, len(self._outstanding) + (1 if self._queued() else 0))
        running = max(0, self._launcher.running() - len(self._find_lost_workers()))
        if need > running and not self._session_ended_elsewhere():
            try:
                self._launcher.start(need - running)
            except StarburstError as exc:  # e.g. ECS refused every task: nothing can run
                if not running:
                    self._break(exc)
                    return
                logger.warning("session %s: could not start more workers: %s", self.session_id, exc)
        self._update_watermark()

    def _find_lost_workers(self) -> set[str]:
        """Workers whose lease on a batch expired: frozen (SIGSTOP), cut off from the store,
        or dead without their launcher noticing. Their launcher still counts them as running,
        yet they do no work; counting them as lost lets a replacement start, which takes
        their batches over (with no other worker, the run would hang on them for good).

        One listing of the claims every lease (plus a GET per stale claim). Once its
        batch is taken over, a lost worker counts as running again: if it comes back, it
        finds its claim gone and carries on with other work.
        """
        if not self._outstanding:
            self._lost = set()
            return self._lost
        now = self._clock()
        if now < self._next_lease_scan:
            return self._lost
        every = self._pacing.lease_scan_every or self._claims.lease_seconds
        self._next_lease_scan = now + every
        try:
            lost = set(self._claims.expired_holders().values())
        except StarburstError as exc:  # the store may answer next time; keep the last view
            logger.warning("session %s: cannot list the claims: %s", self.session_id, exc)
            return self._lost
        for worker in lost - self._lost:
            logger.warning(
                "session %s: worker %s let its lease expire (frozen or cut off); counted as "
                "lost, its work goes to another worker",
                self.session_id,
                worker,
            )
        self._lost = lost
        return lost

    def _session_ended_elsewhere(self) -> bool:
        """Whether another client cancelled or closed this detached session: then no worker
        is started into it (it would exit at once, and be replaced, forever). One GET per
        decision to start workers; a plain session's control record is only this
        manager's to change."""
        if self._session_over or not self.detachable:
            return self._session_over
        try:
            self._session_over = self._session.control().state.terminal
        except (CorruptRecordError, ProtocolMismatchError) as exc:
            self._break(self._unreadable(exc))  # no worker could run in it either
            return True
        except StarburstError as exc:  # deleted, or unreachable: start nothing this round
            logger.warning("session %s: cannot read its state: %s", self.session_id, exc)
            return True
        return self._session_over

    def _worker_ended(self, ended: WorkerExit) -> None:
        # Asked whatever the exit code: an emulator (moto reports exit code 0 for every
        # container) or a lost code must not turn a worker that cannot start into an
        # endless relaunch. One GET per ended worker.
        record = self._session.worker(ended.worker)
        # A worker that registered, then failed before running any task (it recorded its
        # exit, then crashed: e.g. it could not read the control record) cannot start either:
        # counted too, or a damaged record had workers replaced without limit (139-170).
        failed_early = (
            record is not None
            and record.state is WorkerState.EXITED
            and record.tasks == 0
            and ended.code not in (ExitCode.OK, ExitCode.SIGTERM)
        )
        if record is None or failed_early:
            # It died before registering: it cannot even start (no module, bad interpreter,
            # image that does not run). Replacing it forever would hide that; give up after
            # a few in a row.
            self._start_failures += 1
            if self._start_failures >= _START_FAILURES_MAX:
                self._break(self._start_failure_error(ended))
                return
        # The exit code alone does not say what happened: a task may call os._exit(3) or
        # os._exit(0). The worker's own record does: it says "init-failed" when the
        # initializer failed and "exited" when the worker left its loop in order.
        state = record.state if record is not None else None
        if ended.code == ExitCode.INIT_FAILED and state is WorkerState.INIT_FAILED:
            error = (record.error if record is not None else "") or ended.log_tail
            self._break(
                BrokenStarburstExecutor(
                    f"the initializer (or installing code_files) failed on worker {ended.worker}, "
                    "so the pool cannot run tasks (as ProcessPoolExecutor's BrokenProcessPool). "
                    f"Its traceback:\n{error}"
                )
            )
        elif ended.code == ExitCode.CANNOT_START and record is None:
            self._break(
                BrokenStarburstExecutor(
                    f"worker {ended.worker} could not start ({ended.reason}). "
                    f"Its log:\n{ended.log_tail}"
                )
            )
        elif state is not WorkerState.EXITED and self._outstanding:  # it died, whatever its code
            logger.warning(
                "session %s: worker %s ended (%s); its work will be retried",
                self.session_id,
                ended.worker,
                ended.reason,
            )
            self._start_io("release", "", self._claims.release_worker, ended.worker, ended.reason)

    def _start_failure_error(self, ended: WorkerExit) -> BaseException:
        """Why workers keep failing to start: a session record they cannot read (the error
        names its key), else what the last one said."""
        try:
            Session.open(self._session.store, self.session_id, self._session.codec)
            self._session.control()
        except (CorruptRecordError, ProtocolMismatchError) as exc:
            return self._unreadable(exc)
        except StarburstError as exc:  # unreachable or deleted: the worker's log says more
            logger.warning("session %s: cannot read its records: %s", self.session_id, exc)
        return BrokenStarburstExecutor(
            f"{self._start_failures} workers in a row exited before starting "
            f"(last: {ended.worker}, {ended.reason}){_saying(ended)}. "
            f"Its log:\n{ended.log_tail}"
        )

    def _unreadable(self, exc: CorruptRecordError | ProtocolMismatchError) -> BaseException:
        """The error that breaks the executor when a session record cannot be read."""
        if isinstance(exc, ProtocolMismatchError):
            return exc
        error = CorruptRecordError(
            f"session {self.session_id} cannot go on: {exc}. Its tasks cannot run; submit "
            "them to a new session"
        )
        error.__cause__ = exc
        return error

    def _update_watermark(self) -> None:
        if not self._outstanding or self._clock() < self._next_watermark:
            return
        self._next_watermark = self._clock() + self._pacing.watermark_every
        first = min(self._outstanding)
        mark = self._session.keys.batch(first)[:-1]  # just before the oldest unfinished batch
        if mark != self._last_watermark and (
            self._last_watermark is None or mark > self._last_watermark
        ):
            try:
                self._session.update_control(lambda record: record.raise_watermark(mark))
            except (CorruptRecordError, ProtocolMismatchError) as exc:
                self._break(self._unreadable(exc))
                return
            except StarburstError as exc:  # only an optimisation for workers that start late
                logger.warning(
                    "session %s: could not update the watermark: %s", self.session_id, exc
                )
                return
            self._last_watermark = mark

    # -- session expiry ----------------------------------------------------------------------

    def _expiry_error(self) -> SessionExpiredError:
        timeout = self._session.manifest.session_timeout or 0.0
        return SessionExpiredError(
            f"session {self.session_id} expired: its session_timeout of {timeout:g} s passed "
            "before this task could run. Give the executor a longer session_timeout (or "
            "None), or submit the work to a new session"
        )

    def _check_expiry(self) -> bool:
        """Whether the session's ``session_timeout`` has passed (store clock); if so, fail
        what will never run: the calls queued here at once, the batches in the store once
        the session's workers are gone (or after ``_EXPIRY_GRACE``), so that a result a
        worker delivered at the deadline still resolves its Future."""
        if not self._deadline_passed():
            return False
        error = self._expiry_error()
        self._fail_queued(error)
        waited = self._clock() - (self._expired_since or 0.0)
        workers_left = self._launcher is not None and self._launcher.running()
        if self._outstanding and workers_left and waited < _EXPIRY_GRACE:
            return True
        if self._outstanding:
            self._poll_results()  # the last results, written before the workers stopped
            for bid in [b for b in self._outstanding if b not in self._fetching]:
                self._fail_batch(bid, error)
        return True

    def _deadline_passed(self) -> bool:
        if self._expired_since is not None:
            return True
        if not self._session.expired():
            return False
        self._expired_since = self._clock()
        logger.warning(
            "session %s: its session_timeout (%gs) passed; tasks that did not run fail",
            self.session_id,
            self._session.manifest.session_timeout,
        )
        return True

    def _fail_queued(self, exc: BaseException) -> None:
        with self._shared.lock:
            items = list(self._shared.queue)
            self._shared.queue.clear()
        for item in items:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(exc)

    def _break(self, exc: BaseException) -> None:
        with self._shared.lock:
            if self._shared.broken is None:
                self._shared.broken = exc
            items = list(self._shared.queue)
            self._shared.queue.clear()
        for item in items:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(exc)
        for bid in list(self._outstanding):
            self._fail_batch(bid, exc)

    # -- closing -----------------------------------------------------------------------------

    def _close(self) -> None:
        try:
            if not self._left_open:
                try:
                    self._session.update_control(ControlRecord.close)
                except StarburstError as exc:
                    logger.warning(
                        "session %s: could not mark the session closed: %s", self.session_id, exc
                    )
                if self._launcher is not None:
                    self._launcher.stop()
        finally:
            self._io.shutdown(wait=True)
            self._usage.write()  # after the launcher stopped: nothing this client makes is left
            self.closed.set()
