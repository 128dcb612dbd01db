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
import random
import signal
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any, NoReturn

from starburst_executor._claims import ClaimHandle, Claims
from starburst_executor._cursor import KeyCursor
from starburst_executor.code_files import install_code
from starburst_executor.errors import (
    ObjectNotFoundError,
    PreconditionFailedError,
    ProtocolMismatchError,
    SerializationError,
    SessionExpiredError,
    StarburstError,
    WorkerLostError,
)
from starburst_executor.protocol import (
    Codec,
    ControlRecord,
    SessionKeys,
    SessionManifest,
    WorkerRecord,
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

__all__ = ["EXIT_INIT_FAILED", "Worker", "WorkerOptions"]

logger = logging.getLogger(__name__)

EXIT_INIT_FAILED = 3
INLINE_RESULT_MAX = 256 * 1024  # results up to this size ride inside the done event
_BLOB_CACHE_BYTES = 512 * 1024 * 1024
OUTPUT_MAX = 64 * 1024  # captured stdout/stderr kept per task (the tail beyond this)
_LOG_LINES = 2000  # worker log lines kept in memory and uploaded to the store at exit
_Outcome = tuple[int, str, bytes]


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


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker polls.

    Attributes:
        poll_min: first wait when idle (seconds); doubles up to ``poll_max``.
        poll_max: longest wait between two looks for work.
        cursor_margin: overlap of successive listings (see ``KeyCursor``).
        control_every: how often to re-read the session's control record.
        capture_output: keep each task's stdout/stderr for its result. Off for workers that
            share a process (``ThreadLauncher``): ``sys.stdout`` is one per process, so
            redirecting it from several threads would mix their outputs.
    """

    poll_min: float = 0.005
    poll_max: float = 0.5
    cursor_margin: float = 15.0
    control_every: float = 2.0
    capture_output: bool = True


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
        self.store = store
        self.keys = SessionKeys(session_id)
        self.worker_id = worker_id
        self.codec = codec
        self.options = options or WorkerOptions()
        self.manifest = self._load_manifest()
        self.claims = Claims(
            store,
            self.keys,
            codec,
            lease_seconds=self.manifest.lease_seconds,
            max_attempts=self.manifest.max_attempts,
        )
        self._mismatch = version_mismatch(self.manifest.versions)
        self._blobs = _BlobCache(_BLOB_CACHE_BYTES)
        self._stop = threading.Event()
        self._terminating = threading.Event()
        self._lock = threading.Lock()
        self._handle: ClaimHandle | None = None  # the claim being run, renewed in background
        self._tasks_run = 0
        self._task_started: float | None = None  # monotonic start of the running task
        self._outcomes: list[_Outcome] = []  # of the running batch, for the watchdog
        self._outputs: dict[int, str] = {}
        self._chunk_failures = 0  # map chunks of the running batch that stopped on an error
        self._current_batch: dict[str, Any] | None = None
        self._batch_started = time.monotonic()
        self._ring = _RingHandler()
        logging.getLogger("starburst_executor").addHandler(self._ring)
        self._started = store.now()
        self._record = WorkerRecord(
            worker_id, "running", socket.gethostname(), os.getpid(), self._started
        )

    # -- lifecycle -------------------------------------------------------------------------

    def _load_manifest(self) -> SessionManifest:
        try:
            obj = self.store.get(self.keys.manifest)
        except ObjectNotFoundError:
            raise StarburstError(
                f"session {self.keys.session_id} does not exist in {self.store.url}"
            ) from None
        return SessionManifest.from_dict(self.codec.decode_json(obj.data, self.keys.manifest))

    def _write_record(self, **changes: Any) -> None:
        self._record = replace(self._record, tasks=self._tasks_run, **changes)
        self.store.put(
            self.keys.worker(self.worker_id), self.codec.encode_json(self._record.to_dict())
        )

    def run(self) -> int:
        """Work until the session ends; returns the process exit code."""
        self._write_record()
        if not self._run_initializer():
            return EXIT_INIT_FAILED
        renewer = threading.Thread(target=self._lease_thread, name="starburst-lease", daemon=True)
        renewer.start()
        reason = "error"
        try:
            reason = self._loop()
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
                self._write_record(state="exited", reason=reason, ended=self.store.now())
                self._upload_log()
            # A worker in a thread must not leave its handler on the shared logger.
            logging.getLogger("starburst_executor").removeHandler(self._ring)
        return 0

    def _upload_log(self) -> None:
        text = "\n".join(self._ring.lines) + "\n"
        try:
            self.store.put(self.keys.log(self.worker_id), text.encode())
        except StarburstError as exc:
            logger.warning("worker %s: could not upload its log: %s", self.worker_id, exc)

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
                state="init-failed", reason="initializer failed", error=text, ended=self.store.now()
            )
            self._upload_log()
            return False
        return True

    def handle_sigterm(self) -> None:
        """Install a SIGTERM handler that hands the current claim back and exits.

        ECS sends SIGTERM on StopTask and on a Spot interruption (two minutes before the
        machine goes); the handler only sets a flag, the lease thread does the store I/O.
        """

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        signal.signal(signal.SIGTERM, on_sigterm)

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

    def _renew_loop(self) -> None:
        """Renews the lease; acts on SIGTERM; enforces ``task_timeout``."""
        interval = self.claims.lease_seconds / 3
        watch = self.manifest.task_timeout or self.manifest.deadline
        tick = min(interval, 0.5) if watch else interval
        next_renewal = time.monotonic() + interval
        while True:
            if self._terminating.is_set():
                self._terminate()
            if self._stop.wait(tick) and not self._terminating.is_set():
                return
            if self._terminating.is_set():
                continue
            self._check_task_timeout()
            if time.monotonic() < next_renewal:
                continue
            next_renewal = time.monotonic() + interval
            with self._lock:
                handle = self._handle
            if handle is None:
                continue
            try:
                renewed = self.claims.renew(handle)
            except StarburstError as exc:  # the next renewal may get through
                logger.warning(
                    "worker %s: lease renewal of %s failed: %s", self.worker_id, handle.bid, exc
                )
                continue
            with self._lock:
                if self._handle is not None and self._handle.bid == handle.bid:
                    self._handle = renewed
            if renewed is None:
                logger.warning(
                    "worker %s: lost its claim on batch %s (lease expired and taken "
                    "over); its result may be discarded",
                    self.worker_id,
                    handle.bid,
                )

    def _check_task_timeout(self) -> None:
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
        deadline = self.manifest.deadline
        if deadline is not None and self.store.now() > deadline:
            logger.error(
                "worker %s: session %s expired while batch %s ran; exiting",
                self.worker_id,
                self.keys.session_id,
                handle.bid,
            )
            try:
                self._expired()
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
                self._on_exit(0)

    def _abandon(
        self, handle: ClaimHandle, done: list[_Outcome], error: BaseException, reason: str = ""
    ) -> None:
        """Deliver ``error`` for the batch's unfinished tasks and record the exit."""
        payload = dumps(capture_exception(error))
        finished = {o[0] for o in done}
        batch = self._current_batch or {"tasks": []}
        outcomes = done + [
            (t["i"], "err", payload) for t in batch["tasks"] if t["i"] not in finished
        ]
        self._deliver(handle, outcomes, None)
        self.claims.finish(handle)
        if reason:
            self._write_record(state="exited", reason=reason, ended=self.store.now())
        self._upload_log()

    def _terminate(self) -> None:
        with self._lock:
            handle = self._handle
        try:
            if handle is not None and self.claims.release(handle, "stopped by SIGTERM"):
                logger.info("worker %s: SIGTERM, released batch %s", self.worker_id, handle.bid)
            logger.info(
                "worker %s of session %s exits: SIGTERM", self.worker_id, self.keys.session_id
            )
            self._write_record(state="exited", reason="SIGTERM", ended=self.store.now())
            self._upload_log()
        finally:
            self._on_exit(143)

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> str:
        control = self._read_control()
        cursor = KeyCursor(
            self.store,
            self.keys.batches,
            margin=self.options.cursor_margin,
            start_after=control.low_watermark,
        )
        old_before_ms = int(self._started * 1000) - int(self.options.cursor_margin * 1000)
        interval = self.options.poll_min
        last_work = time.monotonic()
        next_control = time.monotonic() + self.options.control_every
        next_scan = 0.0
        pending: list[str] = []
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_control:
                control = self._read_control()
                next_control = now + self.options.control_every
                if control.state == "open" and self._expired():
                    return "session expired (session_timeout)"
            if control.state != "open":
                return f"session {control.state}"
            if not pending:
                keys = [info.key for info in cursor.poll()]
                if keys:  # start at a random point: racing workers rarely contend on one key
                    k = random.randrange(len(keys))
                    pending = keys[k:] + keys[:k]
            ran = False
            while pending and not self._stop.is_set():
                key = pending.pop(0)
                handle = self._claim(key, old_before_ms)
                if handle is not None:
                    self._run_claimed(handle)
                    ran = True
                    break
            if not ran and now >= next_scan:
                next_scan = now + self.claims.lease_seconds / 2
                for bid in self.claims.scan():
                    handle = self.claims.take_over(bid, self.worker_id)
                    if handle is not None:
                        self._run_claimed(handle)
                        ran = True
                        break
            limit = self.manifest.max_tasks_per_child
            if limit is not None and self._tasks_run >= limit:
                return f"ran max_tasks_per_child={limit} tasks"
            if ran or pending:
                interval = self.options.poll_min
                last_work = time.monotonic()
                continue
            if time.monotonic() - last_work > self.manifest.idle_timeout:
                return f"idle for {self.manifest.idle_timeout:g} s"
            self._stop.wait(interval)
            interval = min(interval * 2, self.options.poll_max)
        return "stopped"

    def _expired(self) -> bool:
        deadline = self.manifest.deadline
        if deadline is None or self.store.now() < deadline:
            return False
        try:
            obj = self.store.get(self.keys.control)
            record = ControlRecord.from_dict(self.codec.decode_json(obj.data, self.keys.control))
            if record.state == "open":
                new = replace(record, n=record.n + 1, state="expired")
                self.store.put_if_match(
                    self.keys.control, self.codec.encode_json(new.to_dict()), obj.etag
                )
        except PreconditionFailedError:
            pass  # another worker or a client changed it first
        return True

    def _read_control(self) -> ControlRecord:
        try:
            obj = self.store.get(self.keys.control)
        except ObjectNotFoundError:
            return ControlRecord(state="deleted")
        return ControlRecord.from_dict(self.codec.decode_json(obj.data, self.keys.control))

    def _claim(self, key: str, old_before_ms: int) -> ClaimHandle | None:
        bid = SessionKeys.bid_of(key)
        if SessionKeys.is_requeue(key):
            return self.claims.take_over(bid, self.worker_id)
        handle = self.claims.try_claim(bid, self.worker_id)
        # A batch from before this worker started may be finished with its claim already
        # collected: then its result exists, and it must not run again.
        old = handle is not None and key_time_ms(bid) < old_before_ms
        if old and handle is not None and any(True for _ in self.store.list(self.keys.result(bid))):
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
        finally:
            with self._lock:
                current, self._handle = self._handle, None
        if current is not None:
            self.claims.finish(current)

    def _execute(self, handle: ClaimHandle) -> tuple[list[_Outcome], bytes | None]:
        key = self.keys.batch(handle.bid)
        try:
            batch = self.codec.decode_pickle(self.store.get(key).data, key)
        except ObjectNotFoundError:
            return [], dumps(
                capture_exception(
                    StarburstError(
                        f"batch {handle.bid} is missing from the store (was the session's "
                        "data deleted?)"
                    )
                )
            )
        except StarburstError as exc:
            return [], dumps(capture_exception(exc))
        if self._mismatch:
            return [], dumps(capture_exception(ProtocolMismatchError(self._mismatch)))
        if handle.exhausted:
            history = ", ".join(handle.claim.history) or "unknown"
            error = WorkerLostError(
                f"the worker running this task was lost {handle.claim.attempt - 1} times "
                f"(workers: {history}); giving up after max_attempts="
                f"{self.claims.max_attempts}. A task that kills its worker (out of memory, "
                "segfault, os._exit) fails this way: check the worker logs"
            )
            return [], dumps(capture_exception(error))
        self._current_batch = batch
        inline: dict[str, bytes] = batch["inline"]
        for task in batch["tasks"]:
            outcome = self._capture(task, inline)
            with self._lock:
                self._outcomes.append(outcome)
            self._tasks_run += 1
        return list(self._outcomes), None

    def _capture(self, task: dict[str, Any], inline: dict[str, bytes]) -> _Outcome:
        """Run a task with its stdout/stderr kept (and still echoed to the worker's log)."""
        out, err = _Tee(sys.stdout), _Tee(sys.stderr)
        buffer = io.StringIO()
        out.buffer_ = err.buffer_ = buffer
        with self._lock:
            self._task_started = time.monotonic()
        try:
            if not self.options.capture_output:
                return self._run_task(task, inline)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                return self._run_task(task, inline)
        finally:
            with self._lock:
                self._task_started = None
            text = buffer.getvalue()
            if text:
                self._outputs[task["i"]] = text[-OUTPUT_MAX:]

    def _part(self, digest: str, inline: dict[str, bytes]) -> bytes:
        data = inline.get(digest)
        if data is None:
            data = self._blobs.get(digest)
        if data is None:
            key = self.keys.blob(digest)
            data = self.codec.decode_blob(self.store.get(key).data, key)
            self._blobs.put(digest, data)
        return data

    def _run_task(self, task: dict[str, Any], inline: dict[str, bytes]) -> _Outcome:
        index = task["i"]
        try:
            fn = loads(self._part(task["fn"], inline))
            args = [loads(self._part(d, inline)) for d in task["args"]]
            kwargs = {k: loads(self._part(d, inline)) for k, d in task["kwargs"].items()}
        except Exception as exc:
            error = SerializationError(
                f"the task's callable or arguments could not be unpickled on worker "
                f"{self.worker_id}: {type(exc).__name__}: {exc}. Are the modules it uses "
                "installed on the worker?"
            )
            error.__cause__ = exc
            return index, "err", dumps(capture_exception(error))
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
            return index, "err", dumps(capture_exception(lost))
        if task["kind"] == "chunk":
            value: Any = self._run_chunk(fn, args[0])
            self._chunk_failures += value.error is not None
        else:
            try:
                value = fn(*args, **kwargs)
            except BaseException as exc:  # user code: every exception is the task's result
                if isinstance(exc, (KeyboardInterrupt, SystemExit)) and self._terminating.is_set():
                    raise
                return index, "err", dumps(capture_exception(exc))
        try:
            return index, "ok", dumps(value)
        except Exception as exc:  # the pickler's own exception, as ProcessPoolExecutor's
            failed = name_pickling_error(exc, "the task's result", value, RESULT_ADVICE)
            return index, "err", dumps(capture_exception(failed))
        except BaseException as exc:  # sys.exit() in a __reduce__: the task's exception, as
            if self._terminating.is_set():  # ProcessPoolExecutor's _sendback_result has it
                raise
            return index, "err", dumps(capture_exception(exc))

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
        self, handle: ClaimHandle, outcomes: list[_Outcome], batch_error: bytes | None
    ) -> None:
        record = {
            "bid": handle.bid,
            "worker": self.worker_id,
            "attempt": handle.claim.attempt,
            "outcomes": outcomes,
            "batch_error": batch_error,
            "outputs": dict(self._outputs),
            "seconds": time.monotonic() - self._batch_started,  # lets the client size batches
        }
        failed = (
            SessionKeys.batch_size(handle.bid)
            if batch_error
            else (sum(1 for o in outcomes if o[1] == "err") + self._chunk_failures)
        )
        data = self.codec.encode_pickle(record)
        try:
            self.store.put_if_absent(self.keys.result(handle.bid), data)
            inline = data if len(data) <= INLINE_RESULT_MAX else b""
        except PreconditionFailedError:  # a duplicate run delivered first: its result stands
            inline = b""
        ts_ms = int(self.store.now() * 1000)
        self.store.put(self.keys.done_event(ts_ms, handle.bid, failed), inline)
