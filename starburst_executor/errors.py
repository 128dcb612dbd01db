"""Every exception the library raises, in one tree, and the warnings it gives.

::

    StarburstError
     ├── StoreError                     a store operation failed
     │    ├── StoreUnavailableError     endpoint unreachable, throttled past retries, 5xx
     │    ├── StoreConfigError          bucket missing, no credentials, access denied,
     │    │                             directory not writable: the user must fix something
     │    ├── ObjectNotFoundError       get() of a key that does not exist
     │    ├── PreconditionFailedError   put_if_absent / put_if_match lost the race
     │    └── CorruptRecordError        a record failed its signature or could not be decoded
     ├── SerializationError (+TypeError) a callable, argument or result could not be pickled
     ├── ProtocolMismatchError          client and worker disagree on protocol / Python /
     │                                  cloudpickle versions
     ├── SessionError                   a session cannot be used (unknown, expired, deleted)
     │    └── SessionExpiredError (+TimeoutError)  its ``session_timeout`` passed first
     ├── AwsError                       an AWS call failed
     │    ├── AwsCredentialsError       no, invalid or expired credentials
     │    ├── AwsPermissionError        access denied: names the missing IAM permission
     │    ├── AwsNotSetUpError          `starburst setup` has not been run (or not here)
     │    └── AwsLaunchError            ECS refused to start workers (failures[], quota, image)
     ├── CostLimitError                 the estimate exceeds ``max_hourly_cost``
     ├── ImageBuildError                the worker image could not be built or pushed
     └── WorkerLostError (+BrokenProcessPool)
          a task's worker died more often than ``max_attempts`` allows
    BrokenStarburstExecutor (+BrokenExecutor)  the pool cannot run anything (initializer failed)
    RemoteTraceback (+_RemoteTraceback)  carries a worker's traceback text as ``__cause__``

    CostAlertWarning (+UserWarning)    the estimate exceeds ``cost_alert_threshold``

Standard exceptions keep their standard meaning: ``ValueError`` for bad arguments,
``RuntimeError`` after shutdown, ``TimeoutError`` for timeouts.
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback

__all__ = [
    "AwsCredentialsError",
    "AwsError",
    "AwsLaunchError",
    "AwsNotSetUpError",
    "AwsPermissionError",
    "BrokenStarburstExecutor",
    "CorruptRecordError",
    "CostAlertWarning",
    "CostLimitError",
    "ImageBuildError",
    "ObjectNotFoundError",
    "PreconditionFailedError",
    "ProtocolMismatchError",
    "RemoteTraceback",
    "SerializationError",
    "SessionError",
    "SessionExpiredError",
    "StarburstError",
    "StoreConfigError",
    "StoreError",
    "StoreUnavailableError",
    "WorkerLostError",
]


class StarburstError(Exception):
    """Root of every error this library defines."""


class StoreError(StarburstError):
    """A store operation failed."""


class StoreUnavailableError(StoreError):
    """The store could not be reached, or kept failing after retries (network, 5xx, throttling)."""


class StoreConfigError(StoreError):
    """The store is misconfigured: missing bucket, no or bad credentials, access denied,
    a directory that cannot be written. Retrying will not help; the message says what to fix."""


class ObjectNotFoundError(StoreError, KeyError):
    """The key does not exist in the store."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class PreconditionFailedError(StoreError):
    """A conditional write lost: the key already exists (``put_if_absent``), or it changed or
    no longer exists (``put_if_match``)."""


class CorruptRecordError(StoreError):
    """A record in the store failed its integrity check or could not be decoded."""


class SerializationError(StarburstError, TypeError):
    """A callable, an argument, a result or an exception could not be (un)pickled."""


class ProtocolMismatchError(StarburstError):
    """Client and worker run incompatible protocol, Python or cloudpickle versions."""


class SessionError(StarburstError):
    """A session cannot be used: unknown id, expired, cleaned up, or its data deleted."""


class SessionExpiredError(SessionError, TimeoutError):
    """The session's ``session_timeout`` passed before the task could finish: the task was
    stopped, or never ran. A ``TimeoutError`` too, as the stdlib's timeouts are."""


class AwsError(StarburstError):
    """An AWS API call failed; the message names the service, the operation and what to do.

    Attributes:
        code: the AWS error code, when AWS answered with one.
    """

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class AwsCredentialsError(AwsError):
    """No AWS credentials were found, or they are invalid or expired."""


class AwsPermissionError(AwsError):
    """AWS denied a call; ``permission`` is the IAM action that is missing."""

    def __init__(self, message: str, permission: str = "") -> None:
        super().__init__(message, "AccessDenied")
        self.permission = permission


class AwsNotSetUpError(AwsError):
    """The AWS resources are missing: run ``starburst setup`` first."""


class AwsLaunchError(AwsError):
    """ECS could not start workers (RunTask failures, capacity, quota, missing image)."""


class CostLimitError(StarburstError, ValueError):
    """The estimated cost exceeds the limit the user set (``max_hourly_cost``)."""


class CostAlertWarning(UserWarning):
    """The estimated cost of a session exceeds the ``cost_alert_threshold`` the user set
    (the session starts anyway; ``max_hourly_cost`` is the limit that refuses)."""


class ImageBuildError(StarburstError):
    """The worker image could not be built or pushed (no docker, a failed docker command, no
    source tree to build from). The message names the command and shows its stderr."""


class WorkerLostError(StarburstError, BrokenProcessPool):
    """The worker running a task died (killed, out of memory, machine lost) on every attempt."""


class BrokenStarburstExecutor(StarburstError, BrokenExecutor):
    """The executor cannot run tasks any more (e.g. the initializer failed on a worker)."""


class RemoteTraceback(_RemoteTraceback):
    """Holds the formatted traceback of an exception raised on a worker.

    It is attached as ``__cause__`` of the re-raised exception, so the worker's source lines
    are printed under "The above exception was the direct cause of ...". It subclasses the
    stdlib's ``concurrent.futures.process._RemoteTraceback`` and holds the same text (the
    traceback between triple quotes), so code and tools that look for the stdlib's class, and
    ``traceback.format_exception``, see what ``ProcessPoolExecutor`` gives.
    """

    def __init__(self, tb: str) -> None:
        # Not super().__init__: typeshed types the stdlib's ``tb`` as a traceback object,
        # while CPython passes (and keeps) the formatted text, as this does.
        Exception.__init__(self, tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb
