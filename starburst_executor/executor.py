"""``StarburstExecutor``: a drop-in ``ProcessPoolExecutor`` whose workers pull from a store.

Calls are pickled at ``submit`` (an unpicklable argument fails that call's Future with the
pickler's own exception, naming the argument, as ``ProcessPoolExecutor`` does), queued, and
batched by the manager thread (``_manager.py``) into objects in the store, where a pool of
workers claims and runs them. Futures are real ``concurrent.futures.Future`` objects.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from starburst_executor._claims import Claims
from starburst_executor._manager import Manager, Pacing, Shared, WorkItem
from starburst_executor._parts import SharedParts
from starburst_executor._session import INLINE_PART_MAX, Call, Session, new_session_id
from starburst_executor.backends import AwsBackend, Backend, BackendConfig, resolve_backend
from starburst_executor.code_files import pack_code
from starburst_executor.config import (
    forget_session,
    keep_logs_default,
    remember_session,
    secret_key,
)
from starburst_executor.errors import BrokenStarburstExecutor, RemoteTraceback, StarburstError
from starburst_executor.launchers import Launcher, make_launcher
from starburst_executor.launchers.local import LocalLauncher, process_started
from starburst_executor.protocol import Codec, SessionManifest, runtime_versions
from starburst_executor.serialization import (
    callable_name,
    dumps,
    dumps_part,
    name_pickling_error,
)
from starburst_executor.sessions import session_cost
from starburst_executor.stores import Store, open_store
from starburst_executor.stores.counting import count_requests
from starburst_executor.stores.local import LocalStore
from starburst_executor.stores.outage import DEFAULT_OUTAGE_TIMEOUT, tolerate_outages, unwrapped

__all__ = ["StarburstExecutor"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

_live_managers: weakref.WeakSet[Manager] = weakref.WeakSet()
_interpreter_exiting = False


def _python_exit() -> None:
    """At interpreter exit, finish pending work and join the manager threads (as the stdlib's
    ``concurrent.futures.process._python_exit`` does)."""
    global _interpreter_exiting
    _interpreter_exiting = True
    managers = list(_live_managers)
    for manager in managers:
        if manager.detachable:
            manager.request_detach()  # a detached session carries on without this process
        else:
            manager.request_shutdown()
    for manager in managers:
        manager.thread.join()


threading._register_atexit(_python_exit)  # type: ignore[attr-defined]


class StarburstExecutor(Executor):
    """Runs calls on a pool of workers that share an object store with this process.

    Accepts ``ProcessPoolExecutor``'s arguments, with these meanings here:

    Args:
        max_workers: the most workers the session runs at once (default: ``os.cpu_count()``
            for the local backend). Workers start as work arrives and exit when idle.
        mp_context: accepted for compatibility and ignored: workers are always fresh
            interpreters (like the "spawn" start method), because on remote machines nothing
            else is possible and local runs should behave the same.
        initializer: called as ``initializer(*initargs)`` once in each worker before it runs
            tasks. If it raises, the executor becomes broken (``BrokenStarburstExecutor``, a
            ``BrokenExecutor``), as the stdlib's does.
        initargs: arguments for ``initializer``.
        max_tasks_per_child: a worker exits after this many tasks and a fresh one replaces
            it (batches are capped at this size so the count is exact).
        store: where tasks and results live: ``None`` (a directory under the per-user cache,
            or ``STARBURST_STORE``), ``"file:///path"``, ``"s3://bucket/prefix"``, or a
            ``Store`` object.
        backend: what runs the workers: ``LocalBackend()`` (processes on this machine; the
            default, also ``"local"`` or ``None``) or ``AwsBackend(cpu=2, memory="4GB",
            spot=True, max_hourly_cost=10.0, ...)`` (ECS tasks; needs ``starburst setup``
            once; the store defaults to the profile's bucket; ``"aws"`` is short for
            ``AwsBackend()``, the profile's defaults). The worker size, capacity and cost
            guardrails are options of the backend object.
        max_attempts: how many times a task is started when its worker dies before its Future
            fails with ``WorkerLostError`` (a ``BrokenProcessPool``).
        lease_seconds: how long a worker's claim on a batch lasts without renewal; a worker
            that vanishes without a trace has its work retried after this long.
        idle_timeout: workers exit after this long without work (started again on demand).
        name: a label for the session.
        session_timeout: seconds after which the session expires: workers stop, and tasks
            not yet run fail. ``None``: no limit.
        task_timeout: a task running longer than this many seconds fails with
            ``TimeoutError`` and its worker is replaced by a fresh one. ``None``: no limit.
        code_files: local modules (``.py`` files) and package directories to ship with the
            session: each worker puts them first on its ``sys.path`` before the initializer,
            so tasks can import code that is not installed in the worker image.
        keep_logs: when the executor shuts down cleanly (``shutdown(wait=True)`` or the end
            of a ``with`` block), its session's data is deleted: tasks, results and blobs in
            the store, the local worker logs, and its entry in the session index. ``True``
            keeps the worker logs (and what ``starburst status``/``logs`` need to show them)
            until ``starburst prune``. Default: ``STARBURST_KEEP_LOGS=1`` in the environment,
            else ``False``. A ``DetachedExecutor`` never deletes its data by itself.
        pacing: polling pace of the client (advanced).
        store_outage_timeout: how long the client and its workers wait out an unreachable
            store (5xx, throttling, connection errors) before giving up: meanwhile the run
            pauses and Futures stay pending; after it, outstanding Futures fail with
            ``StoreUnavailableError``. Default 300 s.

    With an ``AwsBackend``, the cost estimate is logged (INFO, logger
    ``starburst_executor.aws.backend``) before anything launches, an estimate above
    ``cost_alert_threshold`` gives a ``CostAlertWarning``, and a clean shutdown logs the
    measured cost (INFO, this module's logger; also ``cost()``).

    Raises:
        TypeError: an argument has the wrong type (e.g. ``max_workers="4"``).
        ValueError: ``max_workers`` or ``max_tasks_per_child`` is not positive, or an argument
            is out of range.
        StoreConfigError: the store cannot be used (missing bucket, no credentials, directory
            not writable); the message says what to fix.
        StoreUnavailableError: the store could not be reached.
        AwsNotSetUpError, CostLimitError, AwsLaunchError: see ``AwsBackend``.
    """

    _detached = False

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        store: str | Store | None = None,
        backend: str | Backend | None = None,
        max_attempts: int = 3,
        lease_seconds: float = 30.0,
        idle_timeout: float = 60.0,
        name: str = "",
        session_timeout: float | None = None,
        task_timeout: float | None = None,
        code_files: Sequence[str | os.PathLike[str]] = (),
        keep_logs: bool | None = None,
        pacing: Pacing | None = None,
        store_outage_timeout: float = DEFAULT_OUTAGE_TIMEOUT,
    ) -> None:
        _check_int("max_workers", max_workers, optional=True)
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        _check_int("max_tasks_per_child", max_tasks_per_child, optional=True)
        if max_tasks_per_child is not None and max_tasks_per_child <= 0:
            raise ValueError("max_tasks_per_child must be >= 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        _check_int("max_attempts", max_attempts)
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        for label, seconds in (
            ("lease_seconds", lease_seconds),
            ("idle_timeout", idle_timeout),
            ("session_timeout", session_timeout),
            ("task_timeout", task_timeout),
            ("store_outage_timeout", store_outage_timeout),
        ):
            _check_seconds(label, seconds)
        if lease_seconds < 1:
            raise ValueError("lease_seconds must be >= 1 (workers renew every third of it)")
        if idle_timeout < 0:
            raise ValueError(
                f"idle_timeout must be >= 0 seconds (how long idle workers wait for work), "
                f"not {idle_timeout!r}"
            )
        if not isinstance(name, str):
            raise TypeError(f"name must be a string, not {type(name).__name__}")
        backend_obj = resolve_backend(backend)
        if session_timeout is not None and session_timeout <= 0:
            raise ValueError("session_timeout must be > 0 seconds (or None)")
        if task_timeout is not None and task_timeout <= 0:
            raise ValueError("task_timeout must be > 0 seconds (or None)")
        # The client's host and pid: `starburst prune` removes a plain session whose client is
        # gone (it crashed before it could delete the session's data).
        extra: dict[str, Any] = {
            "client": {"host": socket.gethostname(), "pid": os.getpid(), "started": _started()}
        }
        backend_config: BackendConfig
        if isinstance(backend_obj, AwsBackend):
            from starburst_executor.aws.backend import prepare

            plan = prepare(backend_obj, max_workers=max_workers, store=store)
            max_workers = plan.max_workers
            store_obj = count_requests(open_store(store if store is not None else plan.store_url))
            codec = Codec(plan.secret_key)
            backend_config = plan.session_backend(backend_obj)
        else:
            max_workers = max_workers or os.cpu_count() or 1
            store_obj = count_requests(open_store(store))
            codec = Codec(secret_key())
            backend_config = backend_obj
        manifest = SessionManifest(
            session_id=new_session_id(),
            created=store_obj.now(),
            versions=runtime_versions(),
            max_attempts=max_attempts,
            lease_seconds=lease_seconds,
            idle_timeout=idle_timeout,
            max_tasks_per_child=max_tasks_per_child,
            name=name,
            store_url=store_obj.url,
            backend=backend_config.kind,
            backend_config=backend_config,
            detached=self._detached,
            session_timeout=session_timeout,
            task_timeout=task_timeout,
            max_workers=max_workers,
            store_outage_timeout=store_outage_timeout,
            extra=extra,
        )
        code = pack_code([Path(p) for p in code_files]) if code_files else None
        writer = Session(store_obj, manifest, codec)
        if initializer is not None:
            ref = writer.upload_blob(dumps_part((initializer, initargs), "the initializer"))
            writer.manifest = replace(writer.manifest, initializer=ref)
        if code is not None:
            writer.manifest = replace(writer.manifest, code=writer.upload_blob(code))
        writer.create()
        remember_session(manifest.session_id, store_obj.url)  # attach(session_id) finds it
        # A store never reached is a configuration problem, reported at once (above); one that
        # goes away during the run is an outage, waited out for store_outage_timeout.
        writer.store = tolerate_outages(store_obj, store_outage_timeout)
        self._wire(writer, max_workers, pacing)
        self._keep_logs = keep_logs_default() if keep_logs is None else bool(keep_logs)
        self._data_removed = False
        logger.info(
            "session %s: %d worker(s) max, store %s", self.session_id, max_workers, store_obj.url
        )

    def _wire(self, writer: Session, max_workers: int, pacing: Pacing | None) -> None:
        """Connect this executor to a session (new, or existing for ``attach``)."""
        manifest = writer.manifest
        self._max_workers = max_workers
        self._store = writer.store
        self._writer = writer
        pacing = pacing or _default_pacing(self._store)
        self._launcher: Launcher = make_launcher(manifest, poll_max=pacing.poll_max)
        self._shared = Shared()
        claims = Claims(
            self._store,
            writer.keys,
            writer.codec,
            lease_seconds=manifest.lease_seconds,
            max_attempts=manifest.max_attempts,
        )
        # One task per batch when a worker may end between two tasks: task_timeout replaces
        # the worker of a task that overran (no other task should share its fate), and
        # max_tasks_per_child must be exact whatever the batch a worker claims next.
        batch_limit = 1 if manifest.task_timeout or manifest.max_tasks_per_child else None
        self._manager = Manager(
            self,
            self._shared,
            writer,
            self._launcher,
            max_workers=max_workers,
            pacing=pacing,
            window=None if manifest.detached else max(4, 2 * max_workers),
            batch_limit=batch_limit,
            claims=claims,
        )
        self._started = False
        self._start_lock = threading.Lock()
        # Large arguments shared by many calls are pickled and held once (memory).
        self._parts = SharedParts(INLINE_PART_MAX)

    # -- properties --------------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        """The session's id: sortable by creation time, printable, and the key to its data."""
        return self._writer.keys.session_id

    @property
    def store(self) -> Store:
        """The store this executor's session lives in."""
        return self._store

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(session={self.session_id!r}, max_workers="
            f"{self._max_workers}, store={self._store.url!r})"
        )

    # -- Executor API ------------------------------------------------------------------------

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; returns a Future for its result.

        As with ``ProcessPoolExecutor``, a call that cannot be sent is not an error of
        ``submit``: ``fn`` or an argument that cannot be pickled fails the returned Future
        with the pickler's own exception (``TypeError``, ``PicklingError`` ...), its message
        naming the argument, and nothing is queued; a ``fn`` that is not callable fails it
        with the ``TypeError`` that calling it raises.

        Raises:
            RuntimeError: after ``shutdown()``.
            BrokenStarburstExecutor: the pool is broken (see ``initializer``).
        """
        self._check_open()
        try:
            parts = self._parts.call_parts(fn, args, kwargs)
        except Exception as exc:  # the call's own failure, reported on its Future
            return _failed_future(exc)
        return self._enqueue(Call("call", parts))

    def _check_open(self) -> None:
        broken = self._shared.broken
        if broken is not None:
            # A new exception per call, as the stdlib's `raise BrokenProcessPool(...)`:
            # raising the stored one again would grow its traceback on every submit. The
            # original (the one the pending Futures hold) is its __cause__.
            raise BrokenStarburstExecutor(_broken_message(broken)) from broken
        if self._shared.shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _enqueue(self, call: Call) -> Future[Any]:
        future: Future[Any] = Future()
        with self._shared.lock:
            self._check_open()
            self._shared.queue.append(WorkItem(future, call))
        self._ensure_started()
        self._shared.wake.set()
        return future

    def _ensure_started(self) -> None:
        if self._started:
            return
        with self._start_lock:
            if not self._started:
                _live_managers.add(self._manager)
                self._manager.thread.start()
                self._started = True

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        progress: bool = False,
    ) -> Iterator[T]:
        """Like ``ProcessPoolExecutor.map``: results in order, ``chunksize`` items per task.

        Each chunk travels as one task; an exception raised for an item is raised when the
        iterator reaches that item, after the values before it. ``timeout`` counts from this
        call; on timeout the iterator raises ``TimeoutError`` and cancels what has not run.
        A chunk that cannot be pickled (or an ``fn`` that cannot) raises the pickler's own
        exception, naming the item, when the iterator reaches that chunk, as the stdlib's
        ``map`` does; the iterator keeps no reference to the values it has yielded.
        ``progress=True`` draws a tqdm bar of the items on stderr as results arrive (nothing
        when stderr is not a terminal; see ``starburst_executor.progress``).

        Raises:
            TypeError: ``chunksize`` is not an int.
            ValueError: ``chunksize`` < 1.
            RuntimeError: after ``shutdown()``.
        """
        _check_int("chunksize", chunksize)
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        self._check_open()
        end_time = None if timeout is None else timeout + time.monotonic()
        name = callable_name(fn)
        fn_bytes: bytes | None = None
        try:
            fn_bytes = dumps_part(fn, f"the callable {name}")
        except Exception as exc:  # every chunk fails with it, as each stdlib submit would
            fn_error: Exception = exc
        futures: list[Future[Any]] = []
        sizes: list[int] = []  # items per chunk, for the progress bar
        items = zip(*iterables)
        for start in itertools.count(0, chunksize):
            chunk = list(itertools.islice(items, chunksize))
            if not chunk:
                break
            sizes.append(len(chunk))
            if fn_bytes is None:
                futures.append(_failed_future(fn_error))
                continue
            try:
                args = _dumps_chunk(chunk, start, name)
            except Exception as exc:
                futures.append(_failed_future(exc))
                continue
            futures.append(
                self._enqueue(Call("chunk", {"fn": fn_bytes, "args": [args], "kwargs": {}}))
            )
        if progress:
            from starburst_executor.progress import track_map

            return track_map(_chain_results(futures, end_time), futures, sizes, f"map({name})")
        return _chain_results(futures, end_time)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; with ``wait``, return once every Future is done and the
        workers have stopped. Safe to call more than once.

        Args:
            wait: block until pending work is finished and the workers exited.
            cancel_futures: cancel the calls not yet handed to the store (as the stdlib
                cancels those not yet in its call queue).
        """
        with self._shared.lock:
            self._shared.shutdown = True
            cancelled = list(self._shared.queue) if cancel_futures else []
            if cancel_futures:
                self._shared.queue.clear()
        for item in cancelled:
            item.future.cancel()
        self._shared.wake.set()
        if not self._started:
            self._ensure_started()  # let the manager close the session and exit
        if wait:
            self._manager.thread.join()
            report = self._cost_at_shutdown()
            # Kept: the session's records are deleted next, and cost() must still answer.
            self._final_cost = report
            if report is not None:
                logger.info("session %s: %s", self.session_id, report["text"])
            self._remove_session_data()

    def _remove_session_data(self) -> None:
        """After a clean shutdown of a plain session, delete what it left: the store's
        objects of the session, the local worker logs, and its session index entry (with
        ``keep_logs``, the logs and what shows them stay). Only when the session is over:
        its manager closed it and nothing is left to resolve."""
        if self._writer.manifest.detached or getattr(self, "_data_removed", True):
            return
        if not self._manager.closed.is_set() or any(
            not item.future.done() for item in self._shared.queue
        ):
            return
        self._data_removed = True
        try:
            removed = self._writer.remove(keep_logs=self._keep_logs)
            if not self._keep_logs:
                if isinstance(self._launcher, LocalLauncher):
                    self._launcher.remove_logs()
                forget_session(self.session_id)
        except (StarburstError, OSError) as exc:  # the results were delivered; prune retries
            logger.warning(
                "session %s: could not delete its data (%s); `starburst prune` will",
                self.session_id,
                exc,
            )
            return
        logger.info("session %s: deleted its %d objects", self.session_id, removed)

    _data_removed = True  # until __init__ makes a session this executor owns
    _final_cost: dict[str, Any] | None = None  # cost() measured at a clean shutdown

    def cost(self) -> dict[str, Any] | None:
        """What the session cost so far: its store requests (counted by the client and the
        workers, billed on S3) and, on AWS, its workers' measured runtime:
        ``{"cost": USD, "compute": USD, "s3_cost": USD, "requests": {...}, "text": ...}``
        (see :func:`~starburst_executor.sessions.session_cost`). After a clean shutdown, the
        figure measured then (the session's data is gone)."""
        if self._final_cost is not None:
            return self._final_cost
        return session_cost(self._writer)

    def _cost_at_shutdown(self) -> dict[str, Any] | None:
        try:
            return self.cost()
        except StarburstError as exc:  # the bill must not fail a shutdown that worked
            logger.warning("session %s: could not measure its cost: %s", self.session_id, exc)
            return None

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True)


def _broken_message(broken: BaseException) -> str:
    """The message of the error ``submit`` raises once the executor is broken."""
    if isinstance(broken, BrokenStarburstExecutor):
        return str(broken)
    return f"the executor is broken and cannot run new work: {type(broken).__name__}: {broken}"


def _check_int(label: str, value: object, *, optional: bool = False) -> None:
    """``TypeError`` unless ``value`` is an int (not a bool; ``None`` when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{label} must be an int{' or None' if optional else ''}, not "
            f"{type(value).__name__} {value!r}"
            + (f" (use {label}={int(value)})" if isinstance(value, float) else "")
        )


def _check_seconds(label: str, value: object) -> None:
    """``TypeError`` unless ``value`` is a number of seconds (or ``None``)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TypeError(
            f"{label} must be a number of seconds, not {type(value).__name__} {value!r}"
        )


def _started() -> float:
    """This process's start time (POSIX), to tell it from a later process with its pid."""
    return process_started(os.getpid()) or time.time()


def _failed_future(exc: Exception) -> Future[Any]:
    """A Future failed with ``exc``, a call's pickling error, as ``ProcessPoolExecutor``
    reports it: the exception itself, its traceback as text in ``__cause__`` (so no frame
    keeps the call's arguments alive)."""
    if exc.__traceback__ is not None:  # once: map fails every chunk with one exception
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        exc.__cause__ = RemoteTraceback(f'\n"""\n{text}"""')
        exc.__traceback__ = None
    future: Future[Any] = Future()
    future.set_running_or_notify_cancel()
    future.set_exception(exc)
    return future


def _dumps_chunk(chunk: list[tuple[Any, ...]], start: int, name: str) -> bytes:
    """Pickle a ``map`` chunk (its items start at index ``start``).

    Raises:
        Exception: the pickler's exception for the first item that cannot be pickled, its
            message naming that item's index.
    """
    try:
        return dumps(chunk)
    except Exception as chunk_exc:
        for offset, item in enumerate(chunk):
            for position, value in enumerate(item):
                try:
                    dumps(value)
                except Exception as exc:
                    where = f" (from iterable {position + 1})" if len(item) > 1 else ""
                    what = f"the item at index {start + offset}{where} given to map({name})"
                    raise name_pickling_error(exc, what, value) from None
        what = f"the items {start}..{start + len(chunk) - 1} given to map({name})"
        raise name_pickling_error(chunk_exc, what, chunk) from None


def _chain_results(futures: list[Future[Any]], end_time: float | None) -> Iterator[Any]:
    """Yield the values of chunk Futures in order; cancel the rest if the caller stops.

    Like the stdlib's ``result_iterator``, it pops each Future and each value before handing
    it over, so nothing here keeps a yielded value (or its chunk) alive.
    """
    try:
        futures.reverse()
        while futures:
            values, error = _chunk_outcome(
                futures.pop(), None if end_time is None else end_time - time.monotonic()
            )
            values.reverse()
            while values:
                yield values.pop()
            if error is not None:
                raise error
    finally:
        for fut in futures:
            fut.cancel()


def _chunk_outcome(
    fut: Future[Any], timeout: float | None
) -> tuple[list[Any], BaseException | None]:
    """A chunk's values (a copy: a ``DetachedExecutor`` keeps its Futures) and its error;
    the Future is cancelled if it did not finish in time (the stdlib's ``_result_or_cancel``)."""
    try:
        values, error = fut.result(timeout)
        return list(values), error
    finally:
        fut.cancel()
        del fut


def _default_pacing(store: Store) -> Pacing:
    if isinstance(unwrapped(store), LocalStore):
        return Pacing()
    # Each S3 request costs money and tens of milliseconds: while results are awaited the
    # client polls in proportion to how long it has waited (half of it, from 5 ms), at
    # most every 30 s once nothing comes: with the heartbeat (a third of the lease), the
    # lease scan (every lease) and the usage record (a minute), 0.18 requests/s for a
    # client waiting on long tasks (issue 11: at most 0.2).
    return Pacing(linger=0.01, poll_min=0.005, poll_max=2.0, poll_ratio=0.5, wait_max=30.0)
