"""Serialization fallbacks: a part that cannot be pickled is named; an exception that cannot
travel, or cannot be rebuilt on the client, still arrives with its type name, message and
remote traceback."""

from __future__ import annotations

import pickle
import threading

import pytest

from starburst_executor.errors import RemoteTraceback, SerializationError
from starburst_executor.serialization import (
    RemoteException,
    call_parts,
    capture_exception,
    dumps,
    dumps_part,
    loads,
    name_pickling_error,
)


class NeedsTwoArgs(Exception):
    """Pickles, but cannot be unpickled: ``__init__`` wants other arguments than ``.args``."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}+{b}")


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def func(x: object, *, key: object = None) -> None:
    del x, key


def test_an_unpicklable_argument_fails_with_the_picklers_own_type_naming_it() -> None:
    with pytest.raises(TypeError) as info:
        call_parts(func, (1, threading.Lock()), {})
    assert "argument 2 of func" in str(info.value)
    assert any("while pickling argument 2 of func" in note for note in info.value.__notes__)


def test_an_unpicklable_keyword_argument_is_named() -> None:
    with pytest.raises(TypeError, match="keyword argument 'key' of func"):
        call_parts(func, (1,), {"key": threading.Lock()})


def test_a_message_of_several_args_is_kept_and_the_part_named_in_a_note() -> None:
    exc = ValueError("a", "b")
    named = name_pickling_error(exc, "the result", object())
    assert named is exc
    assert named.args == ("a", "b")
    assert "while pickling the result (object)" in named.__notes__[0]


def test_a_part_that_pickles_round_trips() -> None:
    assert loads(dumps_part({"x": [1, 2]}, "argument 1")) == {"x": [1, 2]}


def test_a_picklable_exception_is_rebuilt_with_its_type_and_the_remote_traceback() -> None:
    remote = capture_exception(raised(KeyError("missing")))
    rebuilt = pickle.loads(pickle.dumps(remote)).rebuild()
    assert type(rebuilt) is KeyError
    assert rebuilt.args == ("missing",)
    assert isinstance(rebuilt.__cause__, RemoteTraceback)
    assert "raise exc" in str(rebuilt.__cause__)


def test_an_exception_that_cannot_be_unpickled_travels_as_its_name_and_message() -> None:
    remote = capture_exception(raised(NeedsTwoArgs(1, 2)))
    assert remote.exc is None  # checked on the worker, not discovered on the client
    rebuilt = remote.rebuild()
    assert isinstance(rebuilt, SerializationError)
    assert f"{__name__}.NeedsTwoArgs: 1+2" in str(rebuilt)
    assert "NeedsTwoArgs" in str(rebuilt.__cause__)  # the remote traceback is kept


def test_an_exception_with_a_broken_str_keeps_its_traceback() -> None:
    remote = capture_exception(raised(BadStr()))
    assert remote.message == "<unprintable BadStr>"
    assert "BadStr" in remote.tb


def test_an_exception_whose_class_is_missing_on_the_client_is_named() -> None:
    # What a client without the task's module sees: the payload does not load here.
    remote = RemoteException(b"not a pickle", "worker_only.Failure", "it broke", "Traceback...")
    rebuilt = remote.rebuild()
    assert isinstance(rebuilt, SerializationError)
    assert "worker_only.Failure: it broke" in str(rebuilt)
    assert "could not be unpickled here" in str(rebuilt)
    assert isinstance(rebuilt.__cause__, RemoteTraceback)


def test_a_non_exception_payload_is_refused() -> None:
    remote = RemoteException(dumps(42), "builtins.int", "42", "")
    rebuilt = remote.rebuild()
    assert isinstance(rebuilt, SerializationError)
    assert "non-exception" in str(rebuilt)


def test_system_exit_is_captured_like_any_exception() -> None:
    rebuilt = capture_exception(raised(SystemExit(3))).rebuild()
    assert type(rebuilt) is SystemExit
    assert rebuilt.code == 3
