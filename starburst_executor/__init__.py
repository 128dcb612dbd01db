"""starburst-executor: burst ``concurrent.futures`` code onto a pool of workers that share an
object store (a local directory by default, any S3 endpoint, or AWS with ECS workers).

    >>> from starburst_executor import StarburstExecutor
    >>> with StarburstExecutor(max_workers=4) as ex:
    ...     print(list(ex.map(abs, [-1, -2, 3])))
    [1, 2, 3]

Every name a public signature uses is importable from here: the executors, their backends
(``LocalBackend``, ``AwsBackend``), ``Store``, ``Pacing``, the results of a detached session,
and the whole error tree of :mod:`starburst_executor.errors`.
"""

from starburst_executor._manager import Pacing
from starburst_executor.backends import AwsBackend, LocalBackend
from starburst_executor.detached import DetachedExecutor, list_sessions
from starburst_executor.errors import (
    AwsCredentialsError,
    AwsError,
    AwsLaunchError,
    AwsNotSetUpError,
    AwsPermissionError,
    BrokenStarburstExecutor,
    CorruptRecordError,
    CostAlertWarning,
    CostLimitError,
    ImageBuildError,
    ObjectNotFoundError,
    PreconditionFailedError,
    ProtocolMismatchError,
    RemoteTraceback,
    SerializationError,
    SessionError,
    SessionExpiredError,
    StarburstError,
    StoreConfigError,
    StoreError,
    StoreUnavailableError,
    WorkerLostError,
)
from starburst_executor.executor import StarburstExecutor
from starburst_executor.sessions import SessionStatus, TaskResult
from starburst_executor.stores import Store, open_store

# The one statement of the version: pyproject.toml reads it (setuptools' dynamic version).
__version__ = "0.1.0"

__all__ = [
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
]
