"""The public API, pinned: a change to it must be a decision, not an accident."""

from __future__ import annotations

import concurrent.futures
import inspect
import types
import typing
import warnings
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

import starburst_executor
from starburst_executor import (
    AwsBackend,
    BrokenStarburstExecutor,
    DetachedExecutor,
    LocalBackend,
    StarburstError,
    StarburstExecutor,
    WorkerLostError,
    errors,
)
from starburst_executor.backends import backend_from_record, resolve_backend
from starburst_executor.errors import CorruptRecordError

PUBLIC = {
    "AwsBackend",
    "AwsCredentialsError",
    "AwsError",
    "AwsLaunchError",
    "AwsNotSetUpError",
    "AwsPermissionError",
    "BrokenStarburstExecutor",
    "CorruptRecordError",
    "CostAlertWarning",
    "CostLimitError",
    "DetachedExecutor",
    "ImageBuildError",
    "LocalBackend",
    "ObjectNotFoundError",
    "Pacing",
    "PreconditionFailedError",
    "ProtocolMismatchError",
    "RemoteTraceback",
    "SerializationError",
    "SessionError",
    "SessionExpiredError",
    "SessionStatus",
    "StarburstError",
    "StarburstExecutor",
    "Store",
    "StoreConfigError",
    "StoreError",
    "StoreUnavailableError",
    "TaskResult",
    "WorkerLostError",
    "__version__",
    "list_sessions",
    "open_store",
}

# The executor's own keywords beyond ProcessPoolExecutor's: the store, the session and the
# backend. A backend's options live on its object (AwsBackend), never here.
EXECUTOR_KEYWORDS = {
    "store",
    "backend",
    "max_attempts",
    "lease_seconds",
    "idle_timeout",
    "name",
    "session_timeout",
    "task_timeout",
    "code_files",
    "keep_logs",
    "pacing",
    "store_outage_timeout",
}


def test_all_is_pinned() -> None:
    assert set(starburst_executor.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(starburst_executor, name), name


def test_every_public_name_of_the_package_is_pinned() -> None:
    """Not only ``__all__``: every public name bound in the package's namespace. Submodules
    are bound there by the import system as they load (``starburst_executor.errors`` ...);
    they are API by their own dotted path, not as names of the package, so they are allowed
    here whatever loads them, as long as they are the package's own."""
    names = {name for name in vars(starburst_executor) if not name.startswith("_")}
    modules = {
        name for name in names if isinstance(getattr(starburst_executor, name), types.ModuleType)
    }
    for name in modules:
        assert getattr(starburst_executor, name).__name__ == f"starburst_executor.{name}", name
    assert names - modules == PUBLIC - {"__version__"}


def test_every_error_and_warning_of_the_tree_is_exported() -> None:
    defined = {
        name
        for name, obj in vars(errors).items()
        if isinstance(obj, type)
        and issubclass(obj, (Exception, Warning))
        and obj.__module__ == errors.__name__
    }
    assert defined == set(errors.__all__)
    assert defined <= PUBLIC


def test_every_public_parameter_type_is_importable_from_the_package() -> None:
    """Each class a public signature names (``pacing: Pacing``, ``backend: AwsBackend``, the
    return types of ``status``/``collect``) is importable from ``starburst_executor``."""
    exported = {getattr(starburst_executor, name) for name in PUBLIC}
    methods = [
        StarburstExecutor.__init__,
        DetachedExecutor.attach,
        DetachedExecutor.status,
        DetachedExecutor.collect,
        starburst_executor.list_sessions,
    ]
    for method in methods:
        hints = typing.get_type_hints(method, vars(inspect.getmodule(method)))
        for hint in hints.values():
            for part in _classes(hint):
                if part.__module__.startswith("starburst_executor"):
                    assert part in exported, (method.__qualname__, part)


def _classes(hint: object) -> list[type]:
    if isinstance(hint, type):
        return [hint]
    return [c for arg in typing.get_args(hint) for c in _classes(arg)]


def test_the_version_is_stated_once() -> None:
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert "\nversion =" not in pyproject.split("[tool.", 1)[0]  # only the dynamic one
    assert 'version = { attr = "starburst_executor.__version__" }' in pyproject


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
    assert set(ours) == set(stdlib) | EXECUTOR_KEYWORDS


def test_error_tree() -> None:
    assert issubclass(WorkerLostError, BrokenProcessPool)
    assert issubclass(BrokenStarburstExecutor, concurrent.futures.BrokenExecutor)
    assert issubclass(starburst_executor.CostAlertWarning, UserWarning)
    for name in PUBLIC:
        obj = getattr(starburst_executor, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, Exception)
            and not issubclass(obj, (Warning, starburst_executor.RemoteTraceback))
        ):
            assert issubclass(obj, StarburstError), name


# -- backends --------------------------------------------------------------------------------


def test_backend_shorthands_and_objects() -> None:
    assert resolve_backend(None) == resolve_backend("local") == LocalBackend()
    assert resolve_backend("aws") == AwsBackend()
    custom = AwsBackend(cpu=2, memory="4GB", spot=True, max_hourly_cost=10.0)
    assert resolve_backend(custom) is custom
    with pytest.raises(ValueError, match="'local', 'aws'"):
        resolve_backend("gcp")
    with pytest.raises(TypeError, match="not int"):
        resolve_backend(3)


def test_aws_backend_options_are_checked_at_construction() -> None:
    with pytest.raises(TypeError, match="cpu=.*not str '2'"):
        AwsBackend(cpu="2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="spot=.*not str"):
        AwsBackend(spot="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cpu=.*not bool"):
        AwsBackend(cpu=True)
    with pytest.raises(ValueError, match="max_hourly_cost=0"):
        AwsBackend(max_hourly_cost=0)
    with pytest.raises(TypeError):
        AwsBackend(2)  # type: ignore[call-arg]  # keywords only: AwsBackend(cpu=2)


def test_backend_records_round_trip_and_refuse_what_they_cannot_read() -> None:
    local = LocalBackend()
    assert backend_from_record(local.to_record()) == local
    aws = AwsBackend(cpu=0.5, memory=1024, launch_type="EC2", spot=False, image="img:1")
    assert AwsBackend.from_record(aws.to_record()) == aws
    newer = {**local.to_record(), "version": 99}
    with pytest.raises(CorruptRecordError, match="upgrade"):
        backend_from_record(newer)
    with pytest.raises(CorruptRecordError, match="unknown kind 'gcp'"):
        backend_from_record({"kind": "gcp", "version": 1})
    with pytest.raises(CorruptRecordError, match="expected a 'aws'"):
        AwsBackend.from_record(local.to_record())
    with pytest.raises(CorruptRecordError, match="cpu"):
        AwsBackend.from_record({**aws.to_record(), "cpu": "lots"})


def test_aws_options_are_not_executor_keywords(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'cpu'"):
        StarburstExecutor(store=str(tmp_path), cpu=2)  # type: ignore[call-arg]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with StarburstExecutor(max_workers=1, store=str(tmp_path), backend=LocalBackend()) as ex:
            assert ex._writer.manifest.backend_config == LocalBackend()
            assert ex._writer.manifest.backend == "local"
