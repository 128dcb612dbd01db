"""``EcsOptions``: how one session's workers run on ECS, validated before any AWS call.

Resolved from the saved profile (:class:`~starburst_executor.aws.settings.AwsSettings`) and
the user's :class:`~starburst_executor.backends.AwsBackend`, then stored in the session
manifest as an :class:`AwsSessionBackend`, so that a reattaching process (on any machine,
with or without the profile) starts workers exactly like the first one.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

from starburst_executor.aws.settings import AwsSettings
from starburst_executor.backends import RECORD_VERSION, AwsBackend, check_record
from starburst_executor.errors import CorruptRecordError, SessionError
from starburst_executor.protocol import SessionManifest

__all__ = [
    "ARCHITECTURES",
    "FARGATE_PAIRS",
    "AwsSessionBackend",
    "EcsOptions",
    "parse_memory",
    "session_backend",
    "validate_fargate",
]

# ECS runtimePlatform.cpuArchitecture values. Fargate Spot runs X86_64 only (AWS ECS developer
# guide, "Fargate capacity providers": "Linux tasks with the ARM64 architecture don't support
# the Fargate Spot capacity provider").
ARCHITECTURES = ("X86_64", "ARM64")

# Fargate task sizes: vCPU -> allowed memory in MiB (AWS ECS developer guide, "Task CPU and
# memory", checked 2026-11). RunTask rejects any other pair, after the call; we refuse before.
FARGATE_PAIRS: dict[float, tuple[int, ...]] = {
    0.25: (512, 1024, 2048),
    0.5: tuple(range(1024, 4097, 1024)),
    1.0: tuple(range(2048, 8193, 1024)),
    2.0: tuple(range(4096, 16385, 1024)),
    4.0: tuple(range(8192, 30721, 1024)),
    8.0: tuple(range(16384, 61441, 4096)),
    16.0: tuple(range(32768, 122881, 8192)),
}

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(gb|gib|g|mb|mib|m)?\s*$", re.IGNORECASE)


def parse_memory(value: str | float) -> int:
    """Memory in MiB from ``"8GB"``, ``"512MB"``, ``"0.5GB"`` or a number of MiB.

    Raises:
        ValueError: the value is not a size.
    """
    if isinstance(value, (int, float)):
        mib = int(value)
    else:
        match = _MEMORY.match(value)
        if not match:
            raise ValueError(f"memory {value!r} is not a size: use e.g. '8GB' or '512MB'")
        number, unit = float(match.group(1)), (match.group(2) or "mb").lower()
        mib = int(number * 1024) if unit.startswith("g") else int(number)
    if mib <= 0:
        raise ValueError(f"memory must be positive, got {value!r}")
    return mib


def validate_fargate(cpu: float, memory_mib: int) -> None:
    """Refuse a CPU/memory pair Fargate does not offer, listing the ones it does.

    Raises:
        ValueError: ``cpu`` is not a Fargate size, or ``memory_mib`` is not allowed with it.
    """
    if cpu not in FARGATE_PAIRS:
        sizes = ", ".join(f"{c:g}" for c in FARGATE_PAIRS)
        raise ValueError(f"Fargate has no {cpu:g}-vCPU tasks: cpu must be one of {sizes}")
    allowed = FARGATE_PAIRS[cpu]
    if memory_mib not in allowed:
        lo, hi = allowed[0] / 1024, allowed[-1] / 1024
        step = (allowed[1] - allowed[0]) / 1024 if len(allowed) > 1 else 0
        raise ValueError(
            f"Fargate does not run {cpu:g} vCPU with {memory_mib / 1024:g} GB: with {cpu:g} vCPU "
            f"memory must be {lo:g}-{hi:g} GB in steps of {step:g} GB"
        )


@dataclass(frozen=True)
class EcsOptions:
    """Everything needed to run one session's workers on ECS.

    Attributes:
        cpu: vCPUs per worker; ``memory_mib`` its memory.
        launch_type: "FARGATE" or "EC2"; ``spot``: Fargate Spot, or Spot instances in the
            EC2 capacity provider; ``instance_type`` the EC2 type (for cost and placement).
        instance_types: the EC2 types the capacity provider's group may launch (from setup;
            packing is computed for the smallest of them); empty: ``instance_type``.
        image: the worker image URI.
        cpu_architecture: the image's architecture, ``"X86_64"`` or ``"ARM64"`` (the task
            definition's ``runtimePlatform``); recorded by ``starburst image build``.
        the rest: copied from :class:`AwsSettings`.
    """

    region: str
    cluster: str
    image: str
    cpu: float = 1.0
    memory_mib: int = 2048
    launch_type: str = "FARGATE"
    spot: bool = True
    instance_type: str = ""
    instance_types: tuple[str, ...] = ()
    cpu_architecture: str = "X86_64"
    subnets: tuple[str, ...] = ()
    security_group: str = ""
    assign_public_ip: bool = True
    execution_role_arn: str = ""
    task_role_arn: str = ""
    log_group: str = "/starburst/workers"
    secret_parameter: str = "/starburst/secret-key"
    task_family: str = "starburst-worker"
    ec2_capacity_provider: str = ""
    max_workers_ceiling: int = 500

    @classmethod
    def resolve(cls, settings: AwsSettings, backend: AwsBackend) -> EcsOptions:
        """Profile defaults overridden by the backend's options, validated.

        ARM64 images on Fargate: Fargate Spot does not run them, so ``spot=True`` asked
        explicitly is refused, and the profile's default ``spot`` falls back to On-Demand
        (which for ARM64 costs about 20 % less than x86 On-Demand);
        :attr:`spot_fallback` tells.

        Raises:
            ValueError: unknown launch type or architecture, an invalid Fargate pair, EC2
                without a capacity provider from setup, Fargate Spot with an ARM64 image, or
                no image.
        """
        cpu, memory, spot = backend.cpu, backend.memory, backend.spot
        instance_type = backend.instance_type
        kind = (backend.launch_type or settings.launch_type).upper()
        if kind not in ("FARGATE", "EC2"):
            raise ValueError(f"launch_type must be 'FARGATE' or 'EC2', not {backend.launch_type!r}")
        # Recorded by `starburst image build` ("" in profiles written before it was: x86).
        arch = (settings.image_architecture or "X86_64").upper()
        if arch not in ARCHITECTURES:
            raise ValueError(
                f"the profile's image_architecture {arch!r} is not one of {ARCHITECTURES}: "
                "run `starburst image build` again"
            )
        use_spot = settings.spot if spot is None else spot
        if kind == "FARGATE" and arch == "ARM64" and use_spot:
            if spot:
                raise ValueError(
                    "spot=True: Fargate Spot does not run ARM64 (Graviton) tasks, and the "
                    "worker image is ARM64. Use spot=False (ARM64 On-Demand is about 20 % "
                    "cheaper than x86), or build an X86_64 image (`starburst image build "
                    "--platform linux/amd64`) to use Fargate Spot"
                )
            use_spot = False  # the profile's default: fall back, and say so (spot_fallback)
        types = tuple(settings.instance_types)
        options = cls(
            region=settings.region,
            cluster=settings.cluster,
            image=backend.image or settings.image,
            cpu=float(cpu if cpu is not None else settings.cpu),
            memory_mib=parse_memory(memory if memory is not None else settings.memory),
            launch_type=kind,
            spot=use_spot,
            instance_type=instance_type or "",
            instance_types=() if instance_type else types,
            cpu_architecture=arch,
            subnets=settings.subnets,
            security_group=settings.security_group,
            assign_public_ip=settings.assign_public_ip,
            execution_role_arn=settings.execution_role_arn,
            task_role_arn=settings.task_role_arn,
            log_group=settings.log_group,
            secret_parameter=settings.secret_parameter,
            task_family=settings.task_family,
            ec2_capacity_provider=settings.ec2_capacity_provider,
            max_workers_ceiling=settings.max_workers_ceiling,
        )
        if kind == "FARGATE":
            validate_fargate(options.cpu, options.memory_mib)
        elif not options.ec2_capacity_provider:
            raise ValueError(
                "launch_type='EC2' needs the EC2 capacity provider that `starburst "
                "setup --ec2` creates; run it, or use launch_type='FARGATE'"
            )
        if not options.image:
            raise ValueError(
                "no worker image: run `starburst image build` (it pushes one to "
                "ECR and records it in the profile), or pass AwsBackend(image='URI')"
            )
        return options

    def spot_fallback(self, settings: AwsSettings) -> bool:
        """Whether the profile asked for Spot but these options run On-Demand because Fargate
        Spot does not run the ARM64 image (see :meth:`resolve`)."""
        return (
            settings.spot
            and not self.spot
            and self.launch_type == "FARGATE"
            and self.cpu_architecture == "ARM64"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (:meth:`from_dict` reverses it)."""
        d = asdict(self)
        d["subnets"] = list(self.subnets)
        d["instance_types"] = list(self.instance_types)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EcsOptions:
        """The options :meth:`to_dict` wrote; unknown keys (from a newer release) are dropped.

        Raises:
            TypeError: a required field (``region``, ``cluster``, ``image``) is missing.
        """
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["subnets"] = tuple(data.get("subnets", ()))
        data["instance_types"] = tuple(data.get("instance_types", ()))
        return cls(**data)

    def with_image(self, image: str) -> EcsOptions:
        """These options with another worker image."""
        return replace(self, image=image)


@dataclass(frozen=True)
class AwsSessionBackend:
    """The backend record of an AWS session's manifest: what was asked, and what it became.

    Attributes:
        requested: the :class:`AwsBackend` the executor was given (for ``status`` and for
            the cost guardrails).
        options: the options resolved against the profile when the session started: a
            reattaching client starts workers with these, whatever the profile says now.
        rate: the estimated dollars per worker-hour (the cost report bills the workers'
            measured runtime at this rate).
    """

    kind: ClassVar[str] = AwsBackend.kind

    requested: AwsBackend
    options: EcsOptions
    rate: float

    def to_record(self) -> dict[str, Any]:
        """JSON-able record (``kind`` and ``version`` included; :meth:`from_record`)."""
        return {
            "kind": self.kind,
            "version": RECORD_VERSION,
            "requested": self.requested.to_record(),
            "options": self.options.to_dict(),
            "rate": self.rate,
        }

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> AwsSessionBackend:
        """The record :meth:`to_record` wrote.

        Raises:
            CorruptRecordError: another kind, a newer version, or a malformed record.
        """
        check_record(data, cls.kind)
        try:
            return cls(
                AwsBackend.from_record(data["requested"]),
                EcsOptions.from_dict(data["options"]),
                float(data["rate"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptRecordError(f"the AWS backend record is malformed: {exc!r}") from exc


def session_backend(manifest: SessionManifest) -> AwsSessionBackend:
    """The AWS backend record of a session's manifest.

    Raises:
        SessionError: the session was not started on ECS (no AWS backend record).
    """
    config = manifest.backend_config
    if not isinstance(config, AwsSessionBackend):
        raise SessionError(
            f"session {manifest.session_id} has no ECS options in its manifest: it was "
            f"started with backend={manifest.backend!r}, not 'aws'"
        )
    return config
