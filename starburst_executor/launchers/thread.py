"""``ThreadLauncher``: the real worker loop in threads of this process, for fast tests.

submitit's ``DebugExecutor`` and httpx's ``MockTransport`` in one: every worker is the same
``Worker`` the container runs, on the same store (a ``MemoryStore`` shared by URL, or any
other), so the protocol's claims, leases, retries and results are exercised for real, in
milliseconds and without processes. What a process does differently is replaced by hooks:

- Where a worker process would end itself (``os._exit`` after SIGTERM, or when the session
  expires mid-task) or re-exec (a task past ``task_timeout``), the thread records the exit
  code the process would have had and stops. A task cannot be interrupted from outside its
  thread: one that overran keeps its (daemon) thread until it returns, but the worker is
  reported ended at once, as the process would have been.
- ``stop`` asks each worker what SIGTERM asks (hand the claim back, record the exit).
- Task output is not captured (``sys.stdout`` is one per process).

Not for production use: a task that never returns keeps its thread for the life of the
process, and every worker shares this process's memory, modules and GIL.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, field, replace
from typing import NoReturn

from starburst_executor.errors import StarburstError
from starburst_executor.launchers.base import WorkerExit
from starburst_executor.protocol import Codec
from starburst_executor.stores.base import Store
from starburst_executor.worker.loop import Worker, WorkerGone, WorkerOptions

__all__ = ["ThreadLauncher"]

logger = logging.getLogger(__name__)

_EXIT_CANNOT_START = 2  # what ``python -m starburst_executor.worker`` returns then
_SIGTERM_EXIT = 143
_serial = itertools.count(1)


@dataclass
class _Slot:
    thread: threading.Thread
    worker: Worker | None = None
    code: int | None = None  # set once the worker ended (or its process would have)
    reason: str = ""
    done: threading.Event = field(default_factory=threading.Event)


class ThreadLauncher:
    """Runs a session's workers as threads of this process (see the module docstring).

    Args:
        store: the session's store (the same object the client uses, or one opened from
            the same URL).
        session_id: the session the workers work for.
        codec: signs and verifies records (the client's, so both sides share the key).
        options: the workers' polling behaviour (output capture is always off).
    """

    def __init__(
        self,
        store: Store,
        session_id: str,
        codec: Codec,
        *,
        options: WorkerOptions | None = None,
    ) -> None:
        self.store = store
        self.session_id = session_id
        self.codec = codec
        self.options = replace(options or WorkerOptions(poll_max=0.05), capture_output=False)
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._reported: set[str] = set()
        self._stopping = False

    def start(self, count: int) -> list[str]:
        started = []
        for _ in range(count):
            worker_id = f"thread-{next(_serial)}"
            slot = _Slot(
                threading.Thread(
                    target=self._run, args=(worker_id,), name=f"starburst-{worker_id}", daemon=True
                )
            )
            with self._lock:
                self._slots[worker_id] = slot
            slot.thread.start()
            started.append(worker_id)
        return started

    def _ended(self, worker_id: str, code: int, reason: str) -> None:
        with self._lock:
            slot = self._slots[worker_id]
            if slot.code is None:  # the first ending counts (a hook, then the thread's end)
                slot.code, slot.reason = code, reason
        slot.done.set()

    def _run(self, worker_id: str) -> None:
        def on_exit(code: int) -> NoReturn:
            # The process would be gone now: report it so, and stop the loop as well (the
            # thread may be stuck in a task, but will do nothing more once it returns).
            if slot.worker is not None:
                slot.worker.request_stop()
            self._ended(worker_id, code, f"exit code {code}")
            raise WorkerGone

        def on_restart() -> NoReturn:
            # A process would exec a fresh worker under the same id; a thread cannot stop the
            # task that overran, so this worker ends and the manager starts another.
            on_exit(0)

        with self._lock:
            slot = self._slots[worker_id]
        try:
            slot.worker = Worker(
                self.store,
                self.session_id,
                worker_id,
                self.codec,
                self.options,
                on_exit=on_exit,
                on_restart=on_restart,
            )
        except (StarburstError, ValueError) as exc:
            logger.error("worker %s: cannot start: %s", worker_id, exc)
            self._ended(worker_id, _EXIT_CANNOT_START, f"exit code {_EXIT_CANNOT_START}")
            return
        with self._lock:
            stopping = self._stopping
        if stopping:  # stop() came while this worker was being made: it missed the request
            slot.worker.request_stop()
        try:
            code = slot.worker.run()
        except WorkerGone:
            return
        except BaseException as exc:  # top of a thread: a process would die with a traceback
            logger.exception("worker %s failed", worker_id)
            self._ended(worker_id, 1, f"exit code 1 ({exc!r})")
            return
        self._ended(worker_id, code, f"exit code {code}")

    def running(self) -> int:
        with self._lock:
            return sum(1 for slot in self._slots.values() if slot.code is None)

    def poll(self) -> list[WorkerExit]:
        ended = []
        with self._lock:
            for worker_id, slot in self._slots.items():
                if slot.code is not None and worker_id not in self._reported:
                    self._reported.add(worker_id)
                    ended.append(WorkerExit(worker_id, slot.code, slot.reason))
        return ended

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            slots = list(self._slots.items())
        for _, slot in slots:
            if slot.worker is not None and slot.code is None:
                slot.worker.request_stop()
        for worker_id, slot in slots:
            if not slot.done.wait(timeout):
                logger.warning(
                    "session %s: worker thread %s did not stop within %gs (a task still runs)",
                    self.session_id,
                    worker_id,
                    timeout,
                )
