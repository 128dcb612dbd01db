"""The worker loop: claim a batch, run it, write its results, repeat.

The same code runs in local worker processes and in the container (``python -m
starburst_executor.worker``). A worker exits when the session is closed, after
``idle_timeout`` seconds without work, after ``max_tasks_per_child`` tasks, or on SIGTERM, when
it hands its claim back so that another worker runs the batch at once.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NoReturn

from starburst_executor._claims import ClaimHandle
from starburst_executor._cursor import KeyCursor
from starburst_executor._session import Session
from starburst_executor.code_files import install_code
from starburst_executor.errors import (
    ObjectNotFoundError,
    ProtocolMismatchError,
    SerializationError,
    SessionError,
    SessionExpiredError,
    StarburstError,
    StoreConfigError,
    StoreUnavailableError,
    WorkerLostError,
)
from starburst_executor.protocol import (
    BatchId,
    BatchRecord,
    Codec,
    ControlRecord,
    ExitCode,
    ResultRecord,
    SessionKeys,
    SessionState,
    TaskKind,
    TaskOutcome,
    TaskSpec,
    WorkerRecord,
    WorkerState,
    key_time_ms,
    version_mismatch,
)
from starburst_executor.serialization import (
    RESULT_ADVICE,
    ChunkResult,
    capture_exception,
    dumps,
    loads,
    name_pickling_error,
)
from starburst_executor.stores.base import Store
from starburst_executor.stores.counting import count_requests
from starburst_executor.stores.outage import tolerate_outages
from starburst_executor.usage import UsageReporter
from starburst_executor.worker.liveness import ClientWatch
from starburst_executor.worker.pacing import LeaseClock as _LeaseClock
from starburst_executor.worker.pacing import Scan as _Scan
from starburst_executor.worker.pacing import WorkerOptions
from starburst_executor.worker.pending import Pending as _Pending
from starburst_executor.worker.progress import BatchProgress, fill_unfinished
from starburst_executor.worker.signals import on_signal

__all__ = ["Worker", "WorkerOptions"]

logger = logging.getLogger(__name__)

_BLOB_CACHE_BYTES = 512 * 1024 * 1024
OUTPUT_MAX = 64 * 1024  # captured stdout/stderr kept per task (the tail beyond this)
_LOG_LINES = 2000  # worker log lines kept in memory and uploaded to the store at exit


class _Tee(io.TextIOBase):
    """Writes to the worker's own stream (its log) and to the current task's buffer."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.buffer_: io.StringIO | None = None

    def write(self, text: str) -> int:
        if self.buffer_ is not None:
            self.buffer_.write(text)
        return int(self._stream.write(text))

    def flush(self) -> None:
        self._stream.flush()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self._stream, "encoding", "utf-8"))


class _RingHandler(logging.Handler):
    """Keeps the worker's last log lines, to upload them when it exits."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: deque[str] = deque(maxlen=_LOG_LINES)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class WorkerGone(BaseException):
    """Raised by an ``on_exit``/``on_restart`` hook that cannot end a process (a worker in a
    thread): it unwinds the lease thread, which then ends quietly."""


def exit_process(code: int) -> NoReturn:
    """End this worker's process at once (SIGTERM handled, session expired mid-task): the
    running task cannot be interrupted from another thread, so the process goes with it."""
    logging.shutdown()
    os._exit(code)


def restart_process() -> NoReturn:
    """Replace this worker's process by a fresh worker (a task overran ``task_timeout``);
    exec keeps the pid, so the launcher keeps tracking it."""
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, "-m", "starburst_executor.worker", *sys.argv[1:]])


class _BlobCache:
    """Large parts already fetched by this worker, least recently used evicted first."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def get(self, digest: str) -> bytes | None:
        data = self._items.get(digest)
        if data is not None:
            self._items.move_to_end(digest)
        return data

    def put(self, digest: str, data: bytes) -> None:
        self._items[digest] = data
        self._size += len(data)
        while self._size > self._limit and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._size -= len(old)


class Worker:
    """One worker of one session.

    Args:
        store: the session's store.
        session_id: the session to work for.
        worker_id: this worker's id (unique within the session).
        codec: verifies and signs records.
        options: polling behaviour.
        on_exit: ends the worker with an exit code where a process would ``os._exit``
            (default :func:`exit_process`); a worker in a thread stops its thread instead.
        on_restart: replaces the worker after a task overran ``task_timeout`` (default
            :func:`restart_process`, an exec).
    """

    def __init__(
        self,
        store: Store,
        session_id: str,
        worker_id: str,
        codec: Codec,
        options: WorkerOptions | None = None,
        *,
        on_exit: Callable[[int], NoReturn] = exit_process,
        on_restart: Callable[[], NoReturn] = restart_process,
    ) -> None:
        self._on_exit = on_exit
        self._on_restart = on_restart
        # Every store call of the worker waits out an outage of the store (for the session's
        # store_outage_timeout) instead of failing the batch it runs.
        # Counted apart from any other user of the same store object (a thread launcher's
        # client): the worker's own requests, for the session's bill (usage.py).
        store = tolerate_outages(count_requests(store))
        try:
            self.session = Session.open(store, session_id, codec)
        except SessionError:
            raise SessionError(f"session {session_id} does not exist in {store.url}") from None
        store.outage_timeout = self.session.manifest.store_outage_timeout
        self.store: Store = store
        self.keys = self.session.keys
        self.manifest = self.session.manifest
        self.worker_id = worker_id
        self.options = options or WorkerOptions()
        self.claims = self.session.claims()
        self._mismatch = version_mismatch(self.manifest.versions)
        self._blobs = _BlobCache(_BLOB_CACHE_BYTES)
        self._stop = threading.Event()
        self._terminating = threading.Event()
        # Why the lease thread hands the claim back and ends the worker, with the exit code.
        self._leaving: tuple[str, int] = ("SIGTERM", ExitCode.SIGTERM)
        self._client = ClientWatch.for_lease(self.claims.lease_seconds)
        self._progress = BatchProgress(self.session, worker_id, self.claims.lease_seconds / 6)
        self._lock = threading.Lock()
        self._handle: ClaimHandle | None = None  # the claim being run, renewed in background
        self._tasks_run = 0
        self._task_started: float | None = None  # monotonic start of the running task
        self._outcomes: list[TaskOutcome] = []  # of the running batch, for the watchdog
        self._outputs: dict[int, str] = {}
        self._chunk_failures = 0  # map chunks of the running batch that stopped on an error
        self._current_batch: BatchRecord | None = None
        self._batch_started = time.monotonic()
        self._ring = _RingHandler()
        logging.getLogger("starburst_executor").addHandler(self._ring)
        self._started = store.now()
        self._record = WorkerRecord(
            worker_id, WorkerState.RUNNING, socket.gethostname(), os.getpid(), self._started
        )
        self._usage = UsageReporter(self.session, worker_id, "worker")

    # -- lifecycle -------------------------------------------------------------------------

    def _write_record(self, **changes: Any) -> None:
        self._record = replace(self._record, tasks=self._tasks_run, **changes)
        self.session.write_worker(self._record)

    def _record_exit(self, reason: str) -> None:
        self._write_record(state=WorkerState.EXITED, reason=reason, ended=self.store.now())

    def run(self) -> int:
        """Work until the session ends; returns the process exit code."""
        self._write_record()
        if not self._run_initializer():
            return ExitCode.INIT_FAILED
        renewer = threading.Thread(target=self._lease_thread, name="starburst-lease", daemon=True)
        renewer.start()
        reason = "error"
        try:
            reason = self._loop()
        except StoreUnavailableError as exc:
            # Unreachable for longer than store_outage_timeout: nothing can be claimed or
            # delivered, and the client fails its Futures the same way.
            logger.error("worker %s: %s", self.worker_id, exc)
            reason = "store unreachable"
        finally:
            self._stop.set()
            renewer.join()
            if not self._terminating.is_set():
                logger.info(
                    "worker %s of session %s exits: %s",
                    self.worker_id,
                    self.keys.session_id,
                    reason,
                )
                try:
                    self._record_exit(reason)
                except StoreUnavailableError as exc:
                    logger.warning("worker %s: could not record its exit: %s", self.worker_id, exc)
                self._upload_log()
            # A worker in a thread must not leave its handler on the shared logger.
            logging.getLogger("starburst_executor").removeHandler(self._ring)
        return ExitCode.OK

    def _upload_log(self) -> None:
        text = "\n".join(self._ring.lines) + "\n"
        try:
            self.session.write_log(self.worker_id, text)
        except StarburstError as exc:
            logger.warning("worker %s: could not upload its log: %s", self.worker_id, exc)
        self._usage.write()  # the worker's last store request: its count is complete

    def _run_initializer(self) -> bool:
        """Install the session's shipped code, then run its initializer; report failures."""
        if self.manifest.code is None and self.manifest.initializer is None:
            return True
        try:
            if self.manifest.code is not None:
                install_code(self._part(self.manifest.code, {}))
            if self.manifest.initializer is not None:
                initializer, initargs = loads(self._part(self.manifest.initializer, {}))
                initializer(*initargs)
        except BaseException as exc:  # the initializer is user code: report anything
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            logger.error("worker %s: initializer failed:\n%s", self.worker_id, text)
            self._write_record(
                state=WorkerState.INIT_FAILED,
                reason="initializer failed",
                error=text,
                ended=self.store.now(),
            )
            self._upload_log()
            return False
        return True

    def handle_sigterm(self) -> None:
        """Install a SIGTERM handler that hands the current claim back and exits.

        ECS sends SIGTERM on StopTask and on a Spot interruption (two minutes before the
        machine goes); the lease thread does the store I/O. ``request_stop`` runs outside
        the signal handler (:mod:`~starburst_executor.worker.signals` says why).
        """
        on_signal(signal.SIGTERM, self.request_stop)

    def request_stop(self) -> None:
        """What SIGTERM does: the lease thread hands the current claim back, records the
        exit and ends the worker through ``on_exit(143)``."""
        self._terminating.set()
        self._stop.set()

    def _lease_thread(self) -> None:
        try:
            self._renew_loop()
        except WorkerGone:  # a hook ended this worker; its loop stops at _stop
            pass

    # -- the lease thread ------------------------------------------------------------------

    def _renew_loop(self) -> None:
        """The lease thread: hands the claim back on SIGTERM, enforces ``task_timeout`` and
        the session's deadline, renews the lease; until the worker stops."""
        lease = _LeaseClock.for_worker(self.claims.lease_seconds, self.manifest)
        while True:
            if self._terminating.is_set():
                self._hand_back_and_exit()
            if self._stop.wait(lease.tick) and not self._terminating.is_set():
                return
            if self._terminating.is_set():
                continue  # SIGTERM arrived during the wait: handled at the top
            self._enforce_timeouts()
            if lease.renewal_due():
                self._renew_lease()
                self._watch_client()
            self._usage.write_when_due()

    def _renew_lease(self) -> None:
        with self._lock:
            handle = self._handle
        if handle is None:
            return
        try:
            renewed = self.claims.renew(handle)
        except StarburstError as exc:  # the next renewal may get through
            logger.warning(
                "worker %s: lease renewal of %s failed: %s", self.worker_id, handle.bid, exc
            )
            return
        with self._lock:
            # The batch may have finished while the renewal was in flight: only the claim
            # still being run takes the new ETag (finish() must compare against it).
            if self._handle is not None and self._handle.bid == handle.bid:
                self._handle = renewed
        if renewed is None:
            logger.warning(
                "worker %s: lost its claim on batch %s (lease expired and taken "
                "over); its result may be discarded",
                self.worker_id,
                handle.bid,
            )

    def _watch_client(self) -> None:
        """A plain session's client stamps the control record while it lives; once it is
        gone (killed, its machine lost), leave and hand the batch back: nobody is left to
        collect the results. One GET per renewal; detached sessions go on without one. While
        no batch runs, the loop judges the heartbeat at its (idle) pace instead."""
        with self._lock:
            idle = self._handle is None
        if self.manifest.detached or idle:
            return
        try:
            stamp = self.session.control().client_seen
        except StarburstError as exc:  # judged on the next read
            logger.info("worker %s: cannot read the control record: %s", self.worker_id, exc)
            return
        if self._client.gone(stamp, self.store.now(), time.monotonic()):
            logger.warning(
                "worker %s: the client of session %s stopped beating; handing back and leaving",
                self.worker_id,
                self.keys.session_id,
            )
            self._leaving = ("its client's death (no heartbeat)", ExitCode.OK)
            self.request_stop()

    def _enforce_timeouts(self) -> None:
        """Stop a task past ``task_timeout`` or the session's deadline (``session_timeout``).

        A running task cannot be interrupted from this thread: its error (and one for each
        task of the batch that did not finish) is delivered, then the process is replaced by
        a fresh worker (task timeout; exec keeps the pid, so the launcher keeps tracking it)
        or exits (session expired).
        """
        with self._lock:
            started, handle = self._task_started, self._handle
            done = list(self._outcomes)
        if started is None or handle is None:
            return
        limit = self.manifest.task_timeout
        if limit is not None and time.monotonic() - started > limit:
            self._replace_after_task_timeout(handle, done, limit)
        if self.session.expired():
            self._exit_as_session_expired(handle, done)

    def _replace_after_task_timeout(
        self, handle: ClaimHandle, done: list[TaskOutcome], limit: float
    ) -> NoReturn:
        logger.error(
            "worker %s: a task of batch %s exceeded task_timeout=%gs; restarting",
            self.worker_id,
            handle.bid,
            limit,
        )
        try:
            self._abandon(
                handle,
                done,
                TimeoutError(
                    f"the task ran longer than task_timeout={limit:g}s on worker "
                    f"{self.worker_id}; it was stopped and the worker replaced"
                ),
            )
        finally:
            self._on_restart()

    def _exit_as_session_expired(self, handle: ClaimHandle, done: list[TaskOutcome]) -> NoReturn:
        logger.error(
            "worker %s: session %s expired while batch %s ran; exiting",
            self.worker_id,
            self.keys.session_id,
            handle.bid,
        )
        try:
            self._mark_expired()
            self._abandon(
                handle,
                done,
                SessionExpiredError(
                    f"session {self.keys.session_id} expired (session_timeout="
                    f"{self.manifest.session_timeout:g}s) while the task ran; it was stopped"
                ),
                reason="session expired (session_timeout) during a task",
            )
        finally:
            self._on_exit(ExitCode.OK)

    def _abandon(
        self, handle: ClaimHandle, done: list[TaskOutcome], error: BaseException, reason: str = ""
    ) -> None:
        """Deliver ``error`` for the batch's unfinished tasks and record the exit."""
        tasks = self._current_batch.tasks if self._current_batch is not None else ()
        self._deliver(handle, fill_unfinished(done, tasks, dumps(capture_exception(error))), None)
        self.claims.finish(handle)
        if reason:
            self._record_exit(reason)
        self._upload_log()

    def _hand_back_and_exit(self) -> NoReturn:
        """SIGTERM (or the client's death): release the claim (another worker runs the batch
        at once, not after the lease), record the exit, and end with 143 as a process killed
        by SIGTERM would (0 when the client is gone)."""
        why, code = self._leaving
        with self._lock:
            handle = self._handle
        try:
            if handle is not None and self.claims.release(handle, f"stopped by {why}"):
                logger.info("worker %s: %s, released batch %s", self.worker_id, why, handle.bid)
            logger.info(
                "worker %s of session %s exits: %s", self.worker_id, self.keys.session_id, why
            )
            self._record_exit(why)
            self._upload_log()
        finally:
            self._on_exit(code)

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> str:
        """Claim and run batches until the session ends; returns why the worker leaves."""
        try:
            scan = self._start_scan()
        except SessionError:
            return "session deleted"
        while not self._stop.is_set():
            ended = self._session_ended(scan)
            if ended is not None:
                return ended
            ran = self._run_next_listed_batch(scan) or self._take_over_lost_batch(scan)
            limit = self.manifest.max_tasks_per_child
            if limit is not None and self._tasks_run >= limit:
                return f"ran max_tasks_per_child={limit} tasks"
            if ran or scan.pending:  # listed batches not tried yet wait for this worker's turn
                scan.worked()
                if not ran:
                    self._stop.wait(scan.pending.wait())
                continue
            if scan.idle_for() > self.manifest.idle_timeout:
                return f"idle for {self.manifest.idle_timeout:g} s"
            self._stop.wait(scan.backoff())
        return "stopped"

    def _start_scan(self) -> _Scan:
        """Follow the batches from the low watermark (batches before it are all finished)."""
        control = self.session.control()
        cursor = KeyCursor(
            self.store,
            self.keys.batches,
            margin=self.options.cursor_margin,
            start_after=control.low_watermark,
        )
        # Batches stamped before this worker started, less the cursor's margin, may have
        # finished with their claims collected already: see _claim.
        old_before_ms = int(self._started * 1000) - int(self.options.cursor_margin * 1000)
        opts, lease = self.options, self.claims.lease_seconds
        mine = _Pending(self.worker_id, self.manifest.max_workers, opts.race_age, opts.clock)
        return _Scan(cursor, old_before_ms, opts, control.state, lease, mine)

    def _session_ended(self, scan: _Scan) -> str | None:
        """Re-read the control record every ``control_every`` (less often while idle, see
        ``Scan``); why to leave, or ``None``. While no batch runs, the lease thread does not
        read the record, so the client's heartbeat is judged here."""
        if scan.control_due():
            try:
                control = self.session.control()
            except SessionError:
                return "session deleted"
            scan.state = control.state
            if scan.state is SessionState.OPEN and self._mark_expired():
                return "session expired (session_timeout)"
            watch = not self.manifest.detached and scan.state is SessionState.OPEN
            if watch and self._client.gone(control.client_seen, self.store.now(), scan.clock()):
                return "its client's death (no heartbeat)"
        return None if scan.state is SessionState.OPEN else f"session {scan.state}"

    def _run_next_listed_batch(self, scan: _Scan) -> bool:
        """Claim a listed batch that nobody holds, and run it.

        Keys are tried in this worker's own order, and only while believed free; after a
        lost race, or once a batch has run, one listing of the claims checks the rest (see
        ``pending.py``), and a fresh listing of the batches follows when none is left.
        """
        pending, listed = scan.pending, False
        while not self._stop.is_set():
            if not pending:
                if listed:
                    return False
                keys = [info.key for info in scan.cursor.poll()]
                pending.add(keys, int(self.store.now() * 1000))
                listed = True
                continue
            if pending.wait() > 0:
                return False  # another worker's turn first: _loop waits for this one's
            if pending.needs_check():
                pending.checked(self.claims.claimed_from(pending.oldest_bid()))
                continue
            handle = self._claim(pending.pop(), scan.old_before_ms)
            pending.stale()  # a race was lost, or others claimed while this batch runs
            if handle is not None:
                self._run_claimed(handle)
                return True
        return False

    def _take_over_lost_batch(self, scan: _Scan) -> bool:
        """Every half lease (less often while idle), look for a claim whose lease expired
        (its worker vanished without a trace) and run its batch again."""
        if not scan.takeover_due():
            return False
        for bid in self.claims.scan():
            handle = self.claims.take_over(bid, self.worker_id)
            if handle is not None:
                self._run_claimed(handle)
                return True
        return False

    def _mark_expired(self) -> bool:
        """Whether the session's deadline passed; if so, record it in the control record for
        every reader (the first worker to notice writes it; a transition that finds the
        session no longer open changes nothing)."""
        if not self.session.expired():
            return False
        try:
            self.session.update_control(ControlRecord.expire)
        except StarburstError as exc:  # deleted, or contended: the workers exit either way
            logger.info("worker %s: could not mark the session expired: %s", self.worker_id, exc)
        return True

    def _claim(self, key: str, old_before_ms: int) -> ClaimHandle | None:
        bid = SessionKeys.bid_of(key)
        if SessionKeys.is_requeue(key):
            return self.claims.take_over(bid, self.worker_id)
        handle = self.claims.try_claim(bid, self.worker_id)
        # A batch from before this worker started may be finished with its claim already
        # collected: then its result exists, and it must not run again.
        old = handle is not None and key_time_ms(bid) < old_before_ms
        if old and handle is not None and self.session.has_result(bid):
            self.claims.finish(handle)
            return None
        return handle

    # -- running a batch -------------------------------------------------------------------

    def _run_claimed(self, handle: ClaimHandle) -> None:
        with self._lock:
            self._handle = handle
            self._outcomes, self._outputs = [], {}
        self._chunk_failures = 0
        self._current_batch = None
        self._batch_started = time.monotonic()
        try:
            outcomes, batch_error = self._execute(handle)
            with self._lock:
                handle = self._handle or handle
            self._deliver(handle, outcomes, batch_error)
            self._progress.discard(handle.bid)
        finally:
            with self._lock:
                current, self._handle = self._handle, None
        if current is not None:
            self.claims.finish(current)

    def _execute(self, handle: ClaimHandle) -> tuple[list[TaskOutcome], bytes | None]:
        try:
            batch = self.session.read_batch(handle.bid)
        except ObjectNotFoundError:
            return [], dumps(
                capture_exception(
                    SessionError(
                        f"batch {handle.bid} is missing from the store (was the session's "
                        "data deleted?)"
                    )
                )
            )
        except StarburstError as exc:
            return [], dumps(capture_exception(exc))
        if self._mismatch:
            return [], dumps(capture_exception(ProtocolMismatchError(self._mismatch)))
        # A retry starts after the tasks an earlier attempt finished (see progress.py).
        done, outputs = self._progress.restore(handle.bid, handle.claim.attempt)
        if handle.exhausted:
            history = ", ".join(handle.claim.history) or "unknown"
            error = WorkerLostError(
                f"the worker running this task was lost {handle.claim.attempt - 1} times "
                f"(workers: {history}); giving up after max_attempts="
                f"{self.claims.max_attempts}. A task that kills its worker (out of memory, "
                "segfault, os._exit) fails this way: check the worker logs"
            )
            return fill_unfinished(done, batch.tasks, dumps(capture_exception(error))), None
        self._current_batch = batch
        with self._lock:
            self._outcomes = list(done)
            self._outputs.update(outputs)
        finished = {o.index for o in done}
        for task in (t for t in batch.tasks if t.index not in finished):
            outcome = self._capture(task, batch.inline)
            with self._lock:
                self._outcomes.append(outcome)
            self._tasks_run += 1
            attempt = handle.claim.attempt
            self._progress.save_if_due(handle.bid, attempt, self._outcomes, self._outputs)
        return list(self._outcomes), None

    def _capture(self, task: TaskSpec, inline: dict[str, bytes]) -> TaskOutcome:
        """Run a task with its stdout/stderr kept (and still echoed to the worker's log)."""
        out, err = _Tee(sys.stdout), _Tee(sys.stderr)
        buffer = io.StringIO()
        out.buffer_ = err.buffer_ = buffer
        started, began = self.session.store.now(), time.monotonic()
        with self._lock:
            self._task_started = began
        try:
            if not self.options.capture_output:
                outcome = self._run_task(task, inline)
            else:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    outcome = self._run_task(task, inline)
            # When and how long it ran: the dashboard's timeline and duration histogram.
            return replace(outcome, started=started, seconds=time.monotonic() - began)
        finally:
            with self._lock:
                self._task_started = None
            text = buffer.getvalue()
            if text:
                self._outputs[task.index] = text[-OUTPUT_MAX:]

    def _part(self, digest: str, inline: dict[str, bytes]) -> bytes:
        data = inline.get(digest)
        if data is None:
            data = self._blobs.get(digest)
        if data is None:
            data = self.session.read_blob(digest)
            self._blobs.put(digest, data)
        return data

    def _run_task(self, task: TaskSpec, inline: dict[str, bytes]) -> TaskOutcome:
        index = task.index
        try:
            fn = loads(self._part(task.fn, inline))
            args = [loads(self._part(d, inline)) for d in task.args]
            kwargs = {k: loads(self._part(d, inline)) for k, d in task.kwargs.items()}
        except Exception as exc:
            error = SerializationError(
                f"the task's callable or arguments could not be unpickled on worker "
                f"{self.worker_id}: {type(exc).__name__}: {exc}. Are the modules it uses "
                "installed on the worker?"
            )
            error.__cause__ = exc
            return TaskOutcome(index, False, dumps(capture_exception(error)))
        except BaseException as exc:  # sys.exit() (or Ctrl-C) in a __reduce__ or __setstate__
            if self._terminating.is_set():
                raise
            # A ProcessPoolExecutor worker exits here and the Future fails with
            # BrokenProcessPool; this worker reports the same class and carries on, instead of
            # exiting (which would end in retries of the same fatal unpickling).
            lost = WorkerLostError(
                f"unpickling the task's callable or arguments raised {exc!r} on worker "
                f"{self.worker_id}, which ends a ProcessPoolExecutor worker "
                "(BrokenProcessPool); this worker reported it instead. Check the "
                "__reduce__/__setstate__ of the objects passed to the task"
            )
            lost.__cause__ = exc
            return TaskOutcome(index, False, dumps(capture_exception(lost)))
        if task.kind is TaskKind.CHUNK:
            value: Any = self._run_chunk(fn, args[0])
            self._chunk_failures += value.error is not None
        else:
            try:
                value = fn(*args, **kwargs)
            except BaseException as exc:  # user code: every exception is the task's result
                if isinstance(exc, (KeyboardInterrupt, SystemExit)) and self._terminating.is_set():
                    raise
                return TaskOutcome(index, False, dumps(capture_exception(exc)))
        try:
            return TaskOutcome(index, True, dumps(value))
        except Exception as exc:  # the pickler's own exception, as ProcessPoolExecutor's
            failed = name_pickling_error(exc, "the task's result", value, RESULT_ADVICE)
            return TaskOutcome(index, False, dumps(capture_exception(failed)))
        except BaseException as exc:  # sys.exit() in a __reduce__: the task's exception, as
            if self._terminating.is_set():  # ProcessPoolExecutor's _sendback_result has it
                raise
            return TaskOutcome(index, False, dumps(capture_exception(exc)))

    @staticmethod
    def _run_chunk(fn: Any, chunk: list[tuple[Any, ...]]) -> ChunkResult:
        values = []
        for args in chunk:
            try:
                values.append(fn(*args))
            except BaseException as exc:  # user code; map raises it at its position
                return ChunkResult(values, capture_exception(exc))
        return ChunkResult(values)

    def _deliver(
        self, handle: ClaimHandle, outcomes: list[TaskOutcome], batch_error: bytes | None
    ) -> None:
        record = ResultRecord(
            handle.bid,
            self.worker_id,
            handle.claim.attempt,
            tuple(outcomes),
            batch_error,
            dict(self._outputs),
            time.monotonic() - self._batch_started,  # lets the client size batches
        )
        # The done event's key carries the failure count, so readers count without reading
        # results; a map chunk that stopped on an error counts as a failed task.
        failed = (
            BatchId.parse(handle.bid).ntasks
            if batch_error
            else sum(1 for o in outcomes if not o.ok) + self._chunk_failures
        )
        try:
            self.session.write_result(record, failed)
        except StoreConfigError as exc:
            # The store refuses this result for good (a full disk, a permission): a retry on
            # another worker would fail the same way, attempt after attempt, and the caller
            # would only learn that workers were lost. Deliver the refusal instead, a small
            # record that still fits, so the batch's Futures fail with the reason.
            logger.error(
                "worker %s: cannot store the result of batch %s: %s",
                self.worker_id,
                handle.bid,
                exc,
            )
            refused = replace(
                record, outcomes=(), batch_error=dumps(capture_exception(exc)), outputs={}
            )
            self.session.write_result(refused, BatchId.parse(handle.bid).ntasks)
