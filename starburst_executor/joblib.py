"""A joblib parallel backend, ``"starburst"``: ``joblib.Parallel`` work on a ``StarburstExecutor``.

Importing this module registers the backend (``register()`` does it again, e.g. after
another library replaced it)::

    import joblib
    import starburst_executor.joblib  # noqa: F401  (registers "starburst")

    with joblib.parallel_config(backend="starburst", n_jobs=50, store="s3://bucket/prefix",
                                executor_backend="aws"):
        GridSearchCV(model, grid).fit(X, y)      # scikit-learn's n_jobs goes through joblib

``n_jobs`` is the executor's ``max_workers``; the other keywords of ``parallel_config`` are the
executor's own (``store``, ``name``, ``code_files``, ``task_timeout``, ...), except its
``backend=``, which joblib's ``parallel_config`` takes for itself: pass ``executor_backend=``
(``"local"``, ``"aws"``, ``LocalBackend()`` or ``AwsBackend(...)``). An executor you manage
yourself is passed as ``executor=`` (this module never shuts that one down).

One executor, and so one session and one pool of workers, serves every ``Parallel`` call inside
one ``parallel_config`` block (``GridSearchCV`` makes several); it is shut down cleanly (its
Futures done, its workers stopped, its data deleted) when the block's backend is released,
normally at the end of the ``with`` statement, at the latest at interpreter exit; ``close()``
does it at once. A ``Parallel(backend="starburst")`` outside such a block has an executor of
its own, shut down when the call returns.

joblib groups small tasks into batches (``batch_size="auto"``) from the measured duration of
each batch, from dispatch to result; a batch is one executor task. ``return_as="generator"``
and ``timeout`` work; a task that raises makes ``Parallel`` raise the task's own exception
type, with the remote traceback chained as its ``__cause__`` (a ``RemoteTraceback``).
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import weakref
from concurrent.futures import Future
from typing import Any

try:
    import joblib
    from joblib.parallel import AutoBatchingMixin, ParallelBackendBase, get_active_backend
except ImportError as _missing:  # pragma: no cover - depends on the installation
    raise ImportError(
        "starburst_executor.joblib needs joblib, which is not installed: "
        "pip install 'starburst-executor[joblib]'"
    ) from _missing

from starburst_executor.backends import AwsBackend, Backend, resolve_backend
from starburst_executor.executor import StarburstExecutor

__all__ = ["BACKEND_NAME", "StarburstBackend", "register"]

logger = logging.getLogger(__name__)

BACKEND_NAME = "starburst"

# StarburstExecutor's keywords that this backend sets itself.
_RESERVED = {
    "max_workers": "n_jobs (parallel_config(n_jobs=...)) is the executor's max_workers",
    "backend": "joblib keeps backend= for itself: pass executor_backend=",
    "mp_context": "workers are always fresh interpreters",
}
_EXECUTOR_OPTIONS = frozenset(
    name
    for name in inspect.signature(StarburstExecutor.__init__).parameters
    if name != "self" and name not in _RESERVED
)


class StarburstBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's ``"starburst"`` backend: each batch of joblib tasks is one executor task.

    Args:
        nesting_level: set by joblib.
        inner_max_num_threads: not supported (``ValueError`` from joblib if given).
        executor: a ``StarburstExecutor`` (or ``DetachedExecutor``) to run on; you keep it
            and shut it down. ``n_jobs`` then only tells joblib how much to dispatch ahead.
        executor_backend: the executor's ``backend=``: ``"local"`` (default), ``"aws"``,
            ``LocalBackend()`` or ``AwsBackend(...)``.
        **executor_options: other ``StarburstExecutor`` keywords (``store``, ``name``,
            ``code_files``, ``task_timeout``, ``idle_timeout``, ...).

    Raises:
        TypeError: an unknown executor option, ``max_workers``/``backend``/``mp_context``
            (set by this backend), or ``executor`` together with executor options.
        ValueError, TypeError: a bad ``executor_backend`` (as ``StarburstExecutor``).
    """

    supports_retrieve_callback = True  # results arrive through Future.add_done_callback
    supports_timeout = True
    supports_return_generator = True
    uses_threads = False
    supports_sharedmem = False  # workers are other processes, other machines
    default_n_jobs = -1  # parallel_config without n_jobs: every CPU (local) / the default pool
    # joblib sizes batches to last between these (from dispatch to result). A batch travels
    # through the store twice and waits for the poller: tens of milliseconds locally,
    # hundreds on S3; loky's 0.2 s would leave that overhead visible.
    MIN_IDEAL_BATCH_DURATION = 0.5
    MAX_IDEAL_BATCH_DURATION = 5.0

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        executor: StarburstExecutor | None = None,
        executor_backend: str | Backend | None = None,
        **executor_options: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        for key in executor_options:
            if key in _RESERVED:
                raise TypeError(f"the starburst joblib backend sets {key} itself: {_RESERVED[key]}")
            if key not in _EXECUTOR_OPTIONS:
                raise TypeError(
                    f"unknown option {key!r} for the starburst joblib backend; "
                    f"StarburstExecutor's options are: {', '.join(sorted(_EXECUTOR_OPTIONS))}"
                )
        if executor is not None and not isinstance(executor, StarburstExecutor):
            raise TypeError(f"executor must be a StarburstExecutor, not {type(executor).__name__}")
        if executor is not None and (executor_options or executor_backend is not None):
            raise TypeError(
                "pass either executor= (one you created) or the options of a new executor, "
                f"not both (got {sorted([*executor_options, 'executor_backend'])})"
            )
        self._given = executor
        self._executor_backend = resolve_backend(executor_backend)
        self._options = {"name": "joblib", **executor_options}
        self._lock = threading.Lock()
        self._owned: StarburstExecutor | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._current: StarburstExecutor | None = None
        self._pending: set[Future[Any]] = set()

    # -- joblib's hooks -------------------------------------------------------------------

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many batches run at once: ``n_jobs``, or for ``n_jobs < 0`` the capacity plus
        one plus ``n_jobs`` (``-1``: all of it), as joblib counts CPUs. The capacity is the
        given executor's ``max_workers``, else this machine's CPUs for local workers, else
        the AWS backend's default pool size.

        Raises:
            ValueError: ``n_jobs == 0``.
        """
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs > 0:
            return n_jobs
        return max(self._capacity() + 1 + n_jobs, 1)

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **joblib_options: Any,
    ) -> int:
        """Start (or reuse) the executor for a ``Parallel`` call; return its ``n_jobs``.

        ``joblib_options`` (``max_nbytes``, ``mmap_mode``, ``temp_folder``, ``context``...)
        concern joblib's own process pools and are ignored: arguments travel pickled.
        """
        self.parallel = parallel
        effective = self.effective_n_jobs(n_jobs)
        if effective == 1:
            return 1  # joblib runs n_jobs=1 sequentially in this process, as it always does
        self._current = self._executor_for(effective)
        return effective

    def submit(self, func: Any, callback: Any = None) -> Future[Any]:
        """Run one joblib batch as one executor task; ``callback(future)`` when it is done."""
        executor = self._current
        if executor is None:  # e.g. after close(): configure again, as joblib would
            executor = self._current = self._executor_for(self.effective_n_jobs(-1))
        future = executor.submit(func)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    # joblib 1.4 dispatches through apply_async (same arguments and contract).
    apply_async = submit

    def retrieve_result_callback(self, out: Future[Any]) -> Any:
        """The batch's results; a task's exception is raised with its remote traceback."""
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel the batches not yet claimed by a worker (running ones finish: a worker's
        task cannot be interrupted); the executor stays ready for the next call."""
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            future.cancel()

    def terminate(self) -> None:
        """End of a ``Parallel`` call. Inside the ``parallel_config`` block that made this
        backend the executor stays for the block's next call; otherwise it is shut down."""
        self.reset_batch_stats()
        self._current = None
        # The Parallel object refers to this backend: dropping the way back breaks the cycle,
        # so the end of the `with parallel_config` block releases the backend (and shuts
        # down its executor) at once, not at some later garbage collection.
        self.parallel = None
        active, _ = get_active_backend()
        if active is not self:
            self.close()

    # -- the executor ---------------------------------------------------------------------

    def close(self) -> None:
        """Shut down the executor this backend started (waiting for its work, stopping its
        workers, deleting its session's data). A later ``Parallel`` call starts a new one.
        An executor passed as ``executor=`` is left alone."""
        with self._lock:
            finalizer, self._finalizer, self._owned = self._finalizer, None, None
        if finalizer is not None:
            finalizer()

    def _capacity(self) -> int:
        """Workers available for ``n_jobs=-1``."""
        executor = self._given or self._owned
        if executor is not None:
            return _max_workers(executor)
        if isinstance(self._executor_backend, AwsBackend):
            # The AWS pool size depends on the profile and quotas: the executor decides.
            return _max_workers(self._executor_for(None))
        return os.cpu_count() or 1

    def _executor_for(self, n_jobs: int | None) -> StarburstExecutor:
        """The executor for a call of ``n_jobs`` (``None``: its default size): the given
        one, the running one if it is open and big enough, else a new one."""
        if self._given is not None:
            return self._given
        with self._lock:
            owned = self._owned
            fits = owned is not None and (n_jobs is None or _max_workers(owned) >= n_jobs)
            if owned is not None and fits and _is_open(owned):
                return owned
        if owned is not None:
            logger.info(
                "session %s: replaced by a bigger pool for n_jobs=%s", owned.session_id, n_jobs
            )
            self.close()
        executor = StarburstExecutor(
            max_workers=n_jobs, backend=self._executor_backend, **self._options
        )
        with self._lock:
            self._owned = executor
            # Not a method of self: the finalizer must not keep the backend alive.
            self._finalizer = weakref.finalize(self, _shutdown, executor)
        logger.info("session %s: joblib backend with %s workers", executor.session_id, n_jobs)
        return executor

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)


def _max_workers(executor: StarburstExecutor) -> int:
    return int(executor._max_workers)


def _is_open(executor: StarburstExecutor) -> bool:
    """Whether the executor still takes work (not shut down, not broken)."""
    shared = executor._shared
    return not shared.shutdown and shared.broken is None


def _shutdown(executor: StarburstExecutor) -> None:
    """Shut down a backend's executor once the backend is released.

    In the main thread (the end of a ``with parallel_config`` block, or interpreter exit),
    wait for it. A garbage collection may run this in any thread, even the executor's own
    poller, which cannot join itself: there, a helper thread does the waiting.
    """
    if threading.current_thread() is threading.main_thread():
        executor.shutdown(wait=True)
    else:
        threading.Thread(
            target=executor.shutdown, name="starburst-joblib-shutdown", daemon=False
        ).start()


def register() -> None:
    """Register the ``"starburst"`` backend with joblib (done when this module is imported)."""
    joblib.register_parallel_backend(BACKEND_NAME, StarburstBackend)


register()
