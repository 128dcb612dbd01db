"""Backends: what runs a session's workers, and the options of each (``backend=``).

A backend is a small frozen object, as httpx's ``HTTPTransport(retries=3)`` is a transport:
its options live on it, not on the executor's signature::

    StarburstExecutor(backend=AwsBackend(cpu=2, memory="4GB", spot=True))
    StarburstExecutor(backend="aws")      # shorthand for AwsBackend(), the profile's defaults
    StarburstExecutor()                   # LocalBackend(): worker processes on this machine

Each backend encodes itself for the session manifest with ``to_record()`` and decodes with
``from_record()``; :func:`backend_from_record` picks the class by the record's ``kind``.
Records carry their own ``version`` (independent of the store protocol's), so a backend can
gain options without breaking the sessions already in a store.

This module imports nothing of the package but :mod:`errors`: the protocol module decodes
manifests with it, and the AWS code (boto3) is imported only by an AWS session.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Protocol

from starburst_executor.errors import CorruptRecordError

__all__ = [
    "AwsBackend",
    "Backend",
    "BackendConfig",
    "LocalBackend",
    "backend_from_record",
    "resolve_backend",
]

# Version of the records below; a decoder refuses a newer one (written by a newer release)
# rather than dropping options it does not know, which would start different workers.
RECORD_VERSION = 1


class BackendConfig(Protocol):
    """What a session manifest stores about its backend: any record with a ``kind``.

    :class:`LocalBackend` is one; an AWS session stores
    :class:`~starburst_executor.aws.options.AwsSessionBackend` (the options as resolved
    against the profile, with the hourly rate), not the :class:`AwsBackend` it was asked for.
    """

    @property
    def kind(self) -> str: ...

    def to_record(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class LocalBackend:
    """Workers are processes on this machine, started by the client and running the same
    worker loop as the containers. It has no options today; ``max_workers`` (default
    ``os.cpu_count()``) and ``idle_timeout`` on the executor decide the pool."""

    kind: ClassVar[str] = "local"

    def to_record(self) -> dict[str, Any]:
        """This backend as a JSON-able record (``kind`` and ``version`` included)."""
        return {"kind": self.kind, "version": RECORD_VERSION}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> LocalBackend:
        """The backend a :meth:`to_record` record describes.

        Raises:
            CorruptRecordError: the record is of another kind or a newer version.
        """
        check_record(data, cls.kind)
        return cls()


@dataclass(frozen=True, kw_only=True)
class AwsBackend:
    """Workers are ECS tasks (Fargate, or EC2 with ``starburst setup --ec2``) in the account
    and region that ``starburst setup`` prepared. Every option left ``None`` takes the saved
    profile's value (``starburst setup`` writes it; ``STARBURST_<FIELD>`` overrides it).

    Everything is checked when the executor is created, before anything is launched or paid
    for: the profile, the region, the Fargate CPU/memory pair, the image in ECR, the vCPU
    quota, and the cost estimate against ``max_hourly_cost``.

    Args:
        cpu: vCPUs per worker (Fargate: 0.25, 0.5, 1, 2, 4, 8 or 16).
        memory: memory per worker, ``"8GB"``, ``"512MB"`` or a number of MiB; with ``cpu``
            it must be a pair Fargate offers.
        launch_type: ``"FARGATE"`` or ``"EC2"`` (the capacity provider ``setup --ec2`` made).
        instance_type: the EC2 instance type (for placement and the cost estimate).
        spot: Spot capacity (Fargate Spot, or Spot instances); the profile's default is on,
            and falls back to On-Demand for an ARM64 image, which Fargate Spot does not run.
        region: must match the profile's (a check, not a switch: set up each region).
        image: the worker image URI (default: the one ``starburst image build`` pushed).
        max_hourly_cost: refuse to launch (``CostLimitError``) when the estimate for the
            workers that run at once is above this many dollars per hour.
        cost_alert_threshold: warn (``CostAlertWarning``) when the estimate is above it.

    Raises:
        TypeError: an option of the wrong type (``cpu="2"``).
        ValueError: ``cpu``, ``max_hourly_cost`` or ``cost_alert_threshold`` not positive.
    """

    kind: ClassVar[str] = "aws"

    cpu: float | None = None
    memory: str | int | None = None
    launch_type: str | None = None
    instance_type: str | None = None
    spot: bool | None = None
    region: str | None = None
    image: str | None = None
    max_hourly_cost: float | None = None
    cost_alert_threshold: float | None = None

    def __post_init__(self) -> None:
        # Types here, at construction; values that need the profile (Fargate pairs, the
        # image's architecture) are checked when a session starts (aws.options).
        _check(self.cpu, (int, float), "cpu", "a number of vCPUs, e.g. cpu=2")
        _check(self.memory, (str, int), "memory", "a size, e.g. memory='4GB'")
        _check(self.launch_type, str, "launch_type", "'FARGATE' or 'EC2'")
        _check(self.instance_type, str, "instance_type", "an EC2 type, e.g. 'c7a.xlarge'")
        _check(self.spot, bool, "spot", "True or False")
        _check(self.region, str, "region", "e.g. 'us-east-1'")
        _check(self.image, str, "image", "an image URI")
        for name in ("max_hourly_cost", "cost_alert_threshold"):
            _check(getattr(self, name), (int, float), name, "dollars per hour, e.g. 10.0")
        for name in ("cpu", "max_hourly_cost", "cost_alert_threshold"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"AwsBackend({name}={value!r}): must be a positive number")

    def to_record(self) -> dict[str, Any]:
        """This backend as a JSON-able record (``kind`` and ``version`` included)."""
        return {"kind": self.kind, "version": RECORD_VERSION, **asdict(self)}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> AwsBackend:
        """The backend a :meth:`to_record` record describes.

        Raises:
            CorruptRecordError: the record is of another kind or a newer version, or holds
                an option of the wrong type.
        """
        check_record(data, cls.kind)
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except (TypeError, ValueError) as exc:
            raise CorruptRecordError(f"AWS backend record: {exc}") from exc


#: What ``backend=`` accepts once the shorthand strings are resolved.
Backend = LocalBackend | AwsBackend


def resolve_backend(value: object) -> Backend:
    """The backend object for the executor's ``backend=`` argument.

    ``None`` and ``"local"`` give :class:`LocalBackend`, ``"aws"`` :class:`AwsBackend` with
    the profile's defaults; a backend object is returned as is.

    Raises:
        ValueError: an unknown name.
        TypeError: neither a name nor a backend object.
    """
    if value is None or value == "local":
        return LocalBackend()
    if value == "aws":
        return AwsBackend()
    if isinstance(value, (LocalBackend, AwsBackend)):
        return value
    if isinstance(value, str):
        raise ValueError(
            f"backend must be 'local', 'aws', LocalBackend() or AwsBackend(...), not {value!r}"
        )
    raise TypeError(
        f"backend must be 'local', 'aws', LocalBackend() or AwsBackend(...), not "
        f"{type(value).__name__} {value!r}"
    )


def backend_from_record(data: dict[str, Any]) -> BackendConfig:
    """Decode a manifest's backend record, whatever its kind (the inverse of
    ``to_record()`` of :class:`LocalBackend` and of
    :class:`~starburst_executor.aws.options.AwsSessionBackend`).

    Raises:
        CorruptRecordError: an unknown kind, a newer version, or a malformed record.
    """
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == LocalBackend.kind:
        return LocalBackend.from_record(data)
    if kind == AwsBackend.kind:
        # Here, not at the top: only AWS sessions pay for importing the AWS modules.
        from starburst_executor.aws.options import AwsSessionBackend

        return AwsSessionBackend.from_record(data)
    raise CorruptRecordError(
        f"the session's backend record has an unknown kind {kind!r} (written by a newer "
        "starburst-executor? upgrade this one)"
    )


def check_record(data: dict[str, Any], kind: str) -> None:
    """Refuse a record that is not a ``kind`` record of a version this release reads.

    Raises:
        CorruptRecordError: another kind, or a version newer than :data:`RECORD_VERSION`.
    """
    if not isinstance(data, dict) or data.get("kind") != kind:
        got = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise CorruptRecordError(f"expected a {kind!r} backend record, got {got!r}")
    version = data.get("version")
    if not isinstance(version, int) or version > RECORD_VERSION:
        raise CorruptRecordError(
            f"the {kind!r} backend record has version {version!r}; this release reads up to "
            f"{RECORD_VERSION}: upgrade starburst-executor to use this session"
        )


def _check(value: object, types: type | tuple[type, ...], name: str, hint: str) -> None:
    """``TypeError`` unless ``value`` is ``None`` or of ``types`` (a bool is no number here,
    though Python makes it an int)."""
    if value is None or (isinstance(value, types) and not _bool_for_number(value, types)):
        return
    raise TypeError(f"AwsBackend({name}=...) must be {hint}, not {type(value).__name__} {value!r}")


def _bool_for_number(value: object, types: type | tuple[type, ...]) -> bool:
    return isinstance(value, bool) and types is not bool
