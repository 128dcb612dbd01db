"""Task functions the executor tests send to workers.

Workers import this module by name (the ``executor_store`` fixture puts ``tests/`` on their
``PYTHONPATH``), as a user's workers import the user's modules: cloudpickle sends these
functions by reference. Tests of by-value pickling (lambdas, closures, local classes) define
their callables inside the test instead.

Tasks that must stay busy until a test lets them go wait on a *gate* file; tasks that must
prove they ran (or did not) leave a file in a directory the test inspects.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

GATE_TIMEOUT = 30.0  # a gated task gives up after this long if its test never opens the gate

_initialized: str | None = None


def add(a: int, b: int = 0) -> int:
    return a + b


def square(x: int) -> int:
    return x * x


def getpid(_: Any = None) -> int:
    return os.getpid()


def sleep_and_return(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def raise_at(x: int, bad: int) -> int:
    """Returns ``x``; raises ``ValueError("bad item", x)`` for ``x == bad``."""
    if x == bad:
        raise ValueError("bad item", x)
    return x


def wait_for_gate(gate: str, value: Any = None, mark_dir: str | None = None) -> Any:
    """Block until the file ``gate`` exists; leave a file in ``mark_dir`` to prove it ran."""
    if mark_dir is not None:
        Path(mark_dir, f"{value}-{uuid.uuid4().hex}").write_text(str(os.getpid()))
    deadline = time.monotonic() + GATE_TIMEOUT
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} was never opened")
        time.sleep(0.01)
    return value


def record_run(mark_dir: str, index: int) -> int:
    """Leave one file per execution (a unique token in its name): count files to count runs."""
    Path(mark_dir, f"{index}-{uuid.uuid4().hex}").write_text(str(os.getpid()))
    return index * 2


def digest_of(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


def big_result(size: int) -> bytes:
    return bytes(range(256)) * (size // 256)


def return_lock() -> Any:
    return threading.Lock()


def init_record(directory: str, tag: str) -> None:
    """Initializer: one line per call, in a file named after the worker's pid."""
    global _initialized
    with open(Path(directory, f"init-{os.getpid()}"), "a") as fh:
        fh.write(f"{tag}\n")
    _initialized = tag


def initialized_state() -> tuple[int, str | None]:
    return os.getpid(), _initialized


def init_fail() -> None:
    raise RuntimeError("the initializer found no GPU here")


def kill_worker_once(marker: str) -> str:
    """SIGKILL this worker on the first attempt only (the marker file remembers it)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return f"survived in {os.getpid()}"
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def kill_worker_always(mark_dir: str) -> None:
    Path(mark_dir, f"attempt-{os.getpid()}").write_text("")
    os.kill(os.getpid(), signal.SIGKILL)


def announce_and_sleep(mark_dir: str, seconds: float, first_only: bool = False) -> int:
    """Leave ``mark_dir/started-{pid}``, sleep (with ``first_only``, on the first attempt
    only), leave ``mark_dir/finished-{pid}``; returns the pid."""
    Path(mark_dir, f"started-{os.getpid()}").touch()
    try:
        os.close(os.open(Path(mark_dir, "first-attempt"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        first = True
    except FileExistsError:
        first = False
    if first or not first_only:
        time.sleep(seconds)
    Path(mark_dir, f"finished-{os.getpid()}").touch()
    return os.getpid()


# -- the process-exit battery (tests/test_contract.py) ---------------------------------------------


def end_process(how: str) -> None:
    """End this process the way ``how`` says: ``sys.exit``, ``os._exit`` or ``sigkill``."""
    if how == "sys.exit":
        sys.exit(3)
    if how == "os._exit":
        os._exit(0)  # exit code 0: looks like a clean exit to whoever watches the process
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise ValueError(f"unknown way to end a process: {how}")


class EndsProcessWhenLoaded:
    """Pickles fine; unpickling it (on the worker, before the task runs) ends the process."""

    def __init__(self, how: str) -> None:
        self.how = how

    def __reduce__(self) -> tuple[Any, ...]:
        return (end_process, (self.how,))


class EndsProcessWhenPickled:
    """A result whose pickling (on the worker, after the task ran) ends the process."""

    def __init__(self, how: str) -> None:
        self.how = how

    def __reduce__(self) -> tuple[Any, ...]:
        end_process(self.how)
        raise AssertionError("unreachable")


def returns_process_ender(how: str) -> EndsProcessWhenPickled:
    return EndsProcessWhenPickled(how)


def ignore(_: Any) -> int:
    return 1


class Box:
    """A weak-referenceable result: tests watch it die."""

    def __init__(self, value: Any) -> None:
        self.value = value


def box(value: Any) -> Box:
    return Box(value)


class RefusesPickle:
    """Refuses to be pickled with the exception named by ``kind``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        if self.kind == "PicklingError":
            raise pickle.PicklingError("RefusesPickle will not be pickled")
        if self.kind == "AttributeError":
            raise AttributeError("RefusesPickle has no pickled form")
        raise TypeError("RefusesPickle is not picklable")


def returns_refuser(kind: str) -> RefusesPickle:
    return RefusesPickle(kind)
