"""starburst-executor: burst ``concurrent.futures`` code onto a pool of workers that share an
object store (a local directory by default, any S3 endpoint, or AWS with ECS workers).

    >>> from starburst_executor import StarburstExecutor
    >>> with StarburstExecutor(max_workers=4) as ex:
    ...     print(list(ex.map(abs, [-1, -2, 3])))
    [1, 2, 3]
"""

from starburst_executor.detached import DetachedExecutor, list_sessions
from starburst_executor.errors import (
    AwsCredentialsError,
    AwsError,
    AwsLaunchError,
    AwsNotSetUpError,
    AwsPermissionError,
    BrokenStarburstExecutor,
    CorruptRecordError,
    CostLimitError,
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
from starburst_executor.stores import open_store

__version__ = "0.1.0"

__all__ = [
    "AwsCredentialsError",
    "AwsError",
    "AwsLaunchError",
    "AwsNotSetUpError",
    "AwsPermissionError",
    "BrokenStarburstExecutor",
    "CorruptRecordError",
    "CostLimitError",
    "DetachedExecutor",
    "ObjectNotFoundError",
    "PreconditionFailedError",
    "ProtocolMismatchError",
    "RemoteTraceback",
    "SerializationError",
    "SessionError",
    "SessionExpiredError",
    "SessionStatus",
    "StarburstError",
    "StarburstExecutor",
    "StoreConfigError",
    "StoreError",
    "StoreUnavailableError",
    "TaskResult",
    "WorkerLostError",
    "__version__",
    "list_sessions",
    "open_store",
]
