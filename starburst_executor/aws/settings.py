"""``AwsSettings``: what ``starburst setup`` created, saved as a small profile that
``backend="aws"`` reads.

The profile lives in ``STARBURST_HOME/aws-{name}.json`` (name ``default`` unless
``STARBURST_AWS_PROFILE`` says otherwise). Any field can be overridden per process by an
environment variable ``STARBURST_<FIELD>`` (``STARBURST_BUCKET``, ``STARBURST_CLUSTER``,
``STARBURST_SUBNETS`` as a comma-separated list ...) and per executor by arguments.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from starburst_executor.config import home_dir
from starburst_executor.errors import AwsNotSetUpError

__all__ = ["AwsSettings", "profile_path"]


@dataclass(frozen=True)
class AwsSettings:
    """Names and defaults of the AWS resources a session uses.

    Attributes:
        region: AWS region of every resource.
        bucket: S3 bucket holding sessions; ``prefix`` is the key prefix inside it.
        cluster: ECS cluster name.
        ecr_repository: ECR repository of the worker image; ``image`` the default image URI.
        image_architecture: the image's CPU architecture, ``"X86_64"`` or ``"ARM64"`` (ECS
            ``runtimePlatform.cpuArchitecture``), recorded by ``starburst image build``.
        log_group: CloudWatch log group for worker logs (one stream per worker).
        execution_role_arn: role ECS uses to pull the image, write logs, read the secret.
        task_role_arn: role the workers run as (S3 access to the bucket prefix only).
        subnets: subnets for Fargate tasks; ``security_group`` has no inbound rules.
        secret_parameter: SSM SecureString holding the HMAC key that signs records; ECS
            injects it into the worker's environment (it never travels in overrides).
        ec2_capacity_provider: capacity provider of the EC2 Auto Scaling group ("" if none).
        task_family: ECS task definition family prefix.
        max_workers_ceiling: the most workers one session may request.
        lifecycle_days: session data expires from the bucket after this many days.
        log_retention_days: CloudWatch log retention.
        cpu: default vCPUs per worker; ``memory`` default memory ("2GB").
        launch_type: "FARGATE" or "EC2"; ``spot``: use Spot capacity where it saves money.
        assign_public_ip: give Fargate tasks a public IP (needed in a default VPC without a
            NAT gateway to reach ECR and S3).
        vpc_id: the VPC of ``subnets``.
        instance_types: the EC2 instance types the Auto Scaling group launches (setup
            ``--instance-types``), for packing workers onto instances; () without EC2.
        bucket_kms_key: the ARN of the customer-managed KMS key that encrypts an adopted
            bucket ("" for SSE-S3 or the AWS-managed key); the task role may use it.
    """

    region: str
    bucket: str
    prefix: str = "starburst"
    cluster: str = "starburst"
    ecr_repository: str = "starburst-worker"
    image: str = ""
    image_architecture: str = ""
    log_group: str = "/starburst/workers"
    execution_role_arn: str = ""
    task_role_arn: str = ""
    subnets: tuple[str, ...] = ()
    security_group: str = ""
    secret_parameter: str = "/starburst/secret-key"
    ec2_capacity_provider: str = ""
    task_family: str = "starburst-worker"
    max_workers_ceiling: int = 500
    lifecycle_days: int = 30
    log_retention_days: int = 14
    cpu: float = 1.0
    memory: str = "2GB"
    launch_type: str = "FARGATE"
    spot: bool = True
    assign_public_ip: bool = True
    vpc_id: str = ""
    instance_types: tuple[str, ...] = ()
    bucket_kms_key: str = ""

    @property
    def store_url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name, value in d.items():
            if isinstance(value, tuple):  # JSON has lists
                d[name] = list(value)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AwsSettings:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        for name, value in data.items():
            if isinstance(value, list):  # tuple fields (subnets, instance_types ...)
                data[name] = tuple(value)
        return cls(**data)

    def with_env(self) -> AwsSettings:
        """Apply ``STARBURST_<FIELD>`` environment overrides."""
        changes: dict[str, Any] = {}
        for f in fields(self):
            value = os.environ.get(f"STARBURST_{f.name.upper()}")
            if value is None:
                continue
            current = getattr(self, f.name)
            if isinstance(current, bool):
                changes[f.name] = value.lower() in ("1", "true", "yes", "on")
            elif isinstance(current, int):
                changes[f.name] = int(value)
            elif isinstance(current, float):
                changes[f.name] = float(value)
            elif isinstance(current, tuple):
                changes[f.name] = tuple(v for v in value.split(",") if v)
            else:
                changes[f.name] = value
        return dataclasses.replace(self, **changes)

    def save(self, name: str | None = None) -> Path:
        path = profile_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, name: str | None = None) -> AwsSettings:
        """The saved profile with environment overrides applied.

        Raises:
            AwsNotSetUpError: no profile: ``starburst setup`` has not been run for it.
        """
        path = profile_path(name)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise AwsNotSetUpError(
                f"no AWS profile at {path}: run `starburst setup --region REGION` first (it "
                "creates the bucket, cluster, roles and writes this profile), or set "
                "STARBURST_HOME to where it was written"
            ) from None
        except ValueError as exc:
            raise AwsNotSetUpError(
                f"the AWS profile {path} is damaged ({exc}); run "
                "`starburst setup` again to rewrite it"
            ) from exc
        return cls.from_dict(data).with_env()


def profile_path(name: str | None = None) -> Path:
    name = name or os.environ.get("STARBURST_AWS_PROFILE") or "default"
    return home_dir() / f"aws-{name}.json"
