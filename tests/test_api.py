"""The public API, pinned: a change to it must be a decision, not an accident."""

from __future__ import annotations

import concurrent.futures
import inspect
from concurrent.futures.process import BrokenProcessPool

import starburst_executor
from starburst_executor import (
    BrokenStarburstExecutor,
    DetachedExecutor,
    StarburstError,
    StarburstExecutor,
    WorkerLostError,
)

PUBLIC = {
    "AwsCredentialsError", "AwsError", "AwsLaunchError", "AwsNotSetUpError",
    "AwsPermissionError", "BrokenStarburstExecutor", "CorruptRecordError", "CostLimitError",
    "DetachedExecutor", "ObjectNotFoundError", "PreconditionFailedError",
    "ProtocolMismatchError", "RemoteTraceback", "SerializationError", "SessionError",
    "SessionExpiredError", "SessionStatus", "StarburstError", "StarburstExecutor", "StoreConfigError", "StoreError",
    "StoreUnavailableError", "TaskResult", "WorkerLostError", "__version__", "list_sessions",
    "open_store",
}


def test_all_is_pinned() -> None:
    assert set(starburst_executor.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(starburst_executor, name), name


def test_executors_are_concurrent_futures_executors() -> None:
    assert issubclass(StarburstExecutor, concurrent.futures.Executor)
    assert issubclass(DetachedExecutor, StarburstExecutor)


def test_constructor_accepts_process_pool_executor_arguments() -> None:
    ours = inspect.signature(StarburstExecutor.__init__).parameters
    stdlib = inspect.signature(concurrent.futures.ProcessPoolExecutor.__init__).parameters
    for name, param in stdlib.items():
        assert name in ours, name
        assert ours[name].kind == param.kind, name
        assert ours[name].default == param.default, name


def test_error_tree() -> None:
    assert issubclass(WorkerLostError, BrokenProcessPool)
    assert issubclass(BrokenStarburstExecutor, concurrent.futures.BrokenExecutor)
    for name in PUBLIC:
        obj = getattr(starburst_executor, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and name != "RemoteTraceback":
            assert issubclass(obj, StarburstError), name
