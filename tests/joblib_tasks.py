"""Task functions the joblib backend tests send to workers (imported there by name: the
tests put ``tests/`` on the workers' ``PYTHONPATH``)."""

from __future__ import annotations

import os


class TaskFailure(Exception):
    """An exception type of the tests' own: it must come back as itself, not a wrapper."""


def square(x: int) -> int:
    return x * x


def worker_pid(_: int) -> int:
    return os.getpid()


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise TaskFailure(f"task {x} failed on purpose")
    return x
