"""Errors and output: a broken executor keeps its original error, failures have specific
types, and the library never prints (it logs, or warns)."""

from __future__ import annotations

import ast
from concurrent.futures import BrokenExecutor
from pathlib import Path

import executor_tasks as tasks
import pytest

import starburst_executor
from starburst_executor import BrokenStarburstExecutor, StarburstExecutor
from starburst_executor._manager import Manager

RESULT_TIMEOUT = 60
PACKAGE = Path(starburst_executor.__file__).parent
# Programs, not library code: their output is the user interface.
PROGRAMS = {"cli.py", "cli_aws.py", "__main__.py"}


def _calls_of(path: Path, name: str) -> list[int]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name
    ]


def test_submit_on_a_broken_executor_raises_from_the_original_error(tmp_path: Path) -> None:
    with StarburstExecutor(max_workers=1, store=str(tmp_path), initializer=tasks.init_fail) as ex:
        future = ex.submit(tasks.square, 2)
        with pytest.raises(BrokenStarburstExecutor) as failed:
            future.result(timeout=RESULT_TIMEOUT)
        original = failed.value
        raised = []
        for _ in range(2):
            with pytest.raises(BrokenStarburstExecutor, match="no GPU here") as info:
                ex.submit(tasks.square, 1)
            raised.append(info.value)
    # The very object the pending Futures failed with, not a copy rebuilt from its text ...
    assert raised[0].__cause__ is original and raised[1].__cause__ is original
    # ... under a new exception per call, as the stdlib's `raise BrokenProcessPool(...)`:
    # re-raising one instance would grow its traceback with every submit.
    assert raised[0] is not raised[1]


def test_a_failed_manager_thread_breaks_the_executor_with_its_error_as_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boom = RuntimeError("the manager's loop failed")

    def fail(self: Manager) -> None:
        raise boom

    monkeypatch.setattr(Manager, "_loop", fail)
    ex = StarburstExecutor(max_workers=1, store=str(tmp_path))
    future = ex.submit(tasks.square, 3)
    with pytest.raises(BrokenStarburstExecutor, match="manager thread failed") as info:
        future.result(timeout=RESULT_TIMEOUT)
    assert isinstance(info.value, BrokenExecutor)
    assert info.value.__cause__ is boom
    ex.shutdown(wait=True)


def test_the_library_never_prints() -> None:
    """Only the programs (``starburst``, ``python -m starburst_executor.worker``) write to the
    console; the library reports through ``logging`` and ``warnings``, which the application
    configures (the AWS quick start shows the library's INFO records)."""
    found = {
        str(path.relative_to(PACKAGE)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name not in PROGRAMS and (lines := _calls_of(path, "print"))
    }
    assert found == {}


def test_errors_are_raised_with_a_specific_type() -> None:
    """``StarburstError`` is the root to catch, never the type raised: each failure has its
    own class (``SessionError``, ``CorruptRecordError``, ``BrokenStarburstExecutor`` ...)."""
    found = {
        str(path.relative_to(PACKAGE)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := _calls_of(path, "StarburstError"))
    }
    assert found == {}
