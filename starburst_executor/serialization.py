"""Pickling of calls, results and exceptions, with errors that name the culprit.

A call travels as *parts*: the callable, each positional argument and each keyword argument
pickled on its own with cloudpickle (a part that cannot be pickled raises cloudpickle's own
exception, its message naming the part, as ``ProcessPoolExecutor`` sets it on the Future).
Parts are content-addressed, so the same callable in a thousand tasks of one batch is stored
once, and a large argument shared by many tasks is uploaded once as a blob.

Exceptions come back as :class:`RemoteException` records that keep the exception itself when
it pickles, and its type name, message and formatted traceback always. The client rebuilds
the original type with the remote traceback chained as ``__cause__`` (CPython's
``_rebuild_exc``), or raises ``SerializationError`` naming the type when it cannot.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from starburst_executor.errors import RemoteTraceback, SerializationError

__all__ = [
    "ChunkResult",
    "RemoteException",
    "call_parts",
    "callable_name",
    "capture_exception",
    "dumps",
    "dumps_part",
    "loads",
    "RESULT_ADVICE",
    "name_pickling_error",
]


def dumps(obj: Any) -> bytes:
    return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]


def loads(data: bytes) -> Any:
    return pickle.loads(data)


def dumps_part(obj: Any, what: str) -> bytes:
    """Pickle one part of a call; a failure keeps its type and says which part failed.

    Raises:
        Exception: whatever cloudpickle raised (``TypeError`` for a lock, ``PicklingError``,
            ``AttributeError`` ...), the very exception ``ProcessPoolExecutor`` would set on
            the Future, with its message naming ``what`` (see :func:`name_pickling_error`).
    """
    try:
        return dumps(obj)
    except Exception as exc:
        raise name_pickling_error(exc, what, obj) from None


_CALL_ADVICE = (
    "Tasks run in other processes, so every callable and argument must be picklable by "
    "cloudpickle: pass plain data (paths, numbers, arrays) and create locks, connections and "
    "open files inside the task"
)
RESULT_ADVICE = "A task's result travels back to the caller: return plain data instead"


def name_pickling_error(
    exc: Exception, what: str, obj: Any, advice: str = _CALL_ADVICE
) -> Exception:
    """Make ``exc``, raised while pickling ``obj``, say that it was ``what`` that failed.

    The exception keeps its type, as ``ProcessPoolExecutor`` keeps it (code that catches
    ``TypeError`` or ``PicklingError`` still does): a one-string message gets ``what`` in
    front, and a note (shown under the traceback) names it in any case and gives ``advice``.
    """
    if len(exc.args) == 1 and isinstance(exc.args[0], str) and str(exc) == exc.args[0]:
        exc.args = (f"cannot pickle {what}: {exc.args[0]}",)
    exc.add_note(f"while pickling {what} ({type(obj).__name__}). {advice}")
    return exc


@dataclass
class RemoteException:
    """An exception raised by a task on a worker, as it travels back.

    Attributes:
        exc: the pickled exception, or ``None`` if it could not be pickled.
        type_name: ``module.QualName`` of the exception type.
        message: ``str(exc)``.
        tb: the formatted remote traceback.
    """

    exc: bytes | None
    type_name: str
    message: str
    tb: str

    def rebuild(self) -> BaseException:
        """The exception to raise on the client, with the remote traceback as ``__cause__``."""
        cause = RemoteTraceback(f'\n"""\n{self.tb}"""')
        if self.exc is not None:
            try:
                exc = loads(self.exc)
            except Exception as load_error:
                err: BaseException = SerializationError(
                    f"the task raised {self.type_name}: {self.message}, but the exception "
                    f"could not be unpickled here ({load_error!r}); is its module importable "
                    "on the client?"
                )
            else:
                if isinstance(exc, BaseException):
                    exc.__cause__ = cause
                    return exc
                err = SerializationError(f"the task raised a non-exception {self.type_name}")
        else:
            err = SerializationError(
                f"the task raised {self.type_name}: {self.message}, but the exception could "
                "not be pickled to send it back; its traceback is attached"
            )
        err.__cause__ = cause
        return err


def capture_exception(exc: BaseException) -> RemoteException:
    """Record ``exc`` (raised on this worker) for the trip back to the client."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    kind = type(exc)
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not lose the traceback
        message = f"<unprintable {kind.__name__}>"
    payload: bytes | None
    try:
        payload = dumps(exc)
        loads(payload)  # e.g. exceptions whose __init__ takes other args than .args fail here
    except Exception:
        payload = None
    return RemoteException(payload, f"{kind.__module__}.{kind.__qualname__}", message, tb)


def call_parts(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Pickle a call into its parts: ``{"fn": bytes, "args": [bytes], "kwargs": {k: bytes}}``.

    Raises:
        Exception: a part cannot be pickled (see :func:`dumps_part`).
    """
    name = callable_name(fn)
    return {
        "fn": dumps_part(fn, f"the callable {name}"),
        "args": [dumps_part(a, f"argument {i + 1} of {name}") for i, a in enumerate(args)],
        "kwargs": {
            k: dumps_part(v, f"keyword argument {k!r} of {name}") for k, v in kwargs.items()
        },
    }


def callable_name(fn: Any) -> str:
    """How messages name a callable: its qualified name, else its ``repr``."""
    return getattr(fn, "__qualname__", None) or repr(fn)


@dataclass
class ChunkResult:
    """The outcome of one ``map`` chunk: the values computed in order, then the exception
    that stopped the chunk, if any (``map`` raises it at its position, after the values)."""

    values: list[Any]
    error: RemoteException | None = None
