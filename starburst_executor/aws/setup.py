"""``starburst setup`` and ``starburst teardown``: create (or adopt) and remove the AWS
resources sessions run on, idempotently, and write the profile
(:class:`~starburst_executor.aws.settings.AwsSettings`) that ``backend="aws"`` reads.

This module only orders the work; each resource's creation, check and removal live together
in :mod:`starburst_executor.aws.resources`:

===========================  ==========================================================
S3 bucket (``bucket``)       ``starburst-{account}-{region}`` unless named; public access
                             blocked, SSE-S3 (AES256) by default, a TLS-only bucket policy,
                             a lifecycle rule expiring ``{prefix}/`` after N days
ECR repository               ``starburst-worker``: scan on push, keep the last 10 images
CloudWatch log group         ``/starburst/workers``, with a retention
SSM parameter                SecureString holding this client's HMAC signing key
IAM roles (``iam``)          execution role (managed ECS policy + a scoped inline policy)
                             and task role (the bucket prefix, and the bucket's KMS key if
                             it has a customer-managed one); trust: ECS tasks of this account
network (``network``)        the VPC's subnets (default VPC unless named; at most 16), a
                             security group with no inbound rules, and for EC2 capacity an
                             S3 gateway endpoint
ECS cluster (``cluster``)    with the FARGATE and FARGATE_SPOT capacity providers, after
                             ECS's service-linked role exists
EC2 capacity (``ec2=True``)  instance role + profile, launch template on the ECS-optimised
                             AMI, an Auto Scaling group (Spot allowed) parked at 0, and an
                             ECS capacity provider with managed scaling
===========================  ==========================================================

Everything it creates is tagged ``starburst=true``. A second run changes nothing and says
so. :func:`teardown` removes the same resources in dependency order, tolerating missing
pieces; it keeps the bucket (it holds results) unless asked.
"""

from __future__ import annotations

import functools
import json
import logging
import time  # noqa: F401  (tests patch time.sleep through this module)
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from starburst_executor.aws import policies
from starburst_executor.aws.client import Aws
from starburst_executor.aws.resources import (
    bucket as bucket_resource,
)
from starburst_executor.aws.resources import (
    cluster as cluster_resource,
)
from starburst_executor.aws.resources import (
    ec2 as ec2_resource,
)
from starburst_executor.aws.resources import (
    iam,
    log_group,
    network,
    repository,
    signing_key,
)
from starburst_executor.aws.resources.base import (
    ABSENT,
    CREATED,
    EXISTS,
    FAILED,
    IAM_PROPAGATION_ATTEMPTS,
    IAM_PROPAGATION_DELAY,
    KEPT,
    REMOVED,
    UPDATED,
    Place,
    ResourceStatus,
    Run,
    table,
)
from starburst_executor.aws.resources.names import CLUSTER_NAME, ResourceNames, resource_names
from starburst_executor.aws.settings import AwsSettings, profile_path
from starburst_executor.errors import AwsCredentialsError, AwsError

__all__ = [
    "ABSENT",
    "CREATED",
    "EXISTS",
    "FAILED",
    "IAM_PROPAGATION_ATTEMPTS",
    "IAM_PROPAGATION_DELAY",
    "KEPT",
    "LOG_RETENTION_DAYS",
    "REMOVED",
    "UPDATED",
    "ResourceNames",
    "ResourceStatus",
    "SetupReport",
    "TeardownReport",
    "policy",
    "resource_names",
    "role_specs",
    "scope",
    "setup",
    "teardown",
]

logger = logging.getLogger(__name__)

LOG_RETENTION_DAYS = log_group.RETENTION_DAYS


# -- reports ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetupReport:
    """What :func:`setup` found and did.

    Attributes:
        resources: one row per resource, in the order setup handled them.
        settings: the profile written.
        profile_path: where it was written.
        notes: things the user should know (fallbacks taken, keys that differ ...).
    """

    resources: tuple[ResourceStatus, ...]
    settings: AwsSettings
    profile_path: Path
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """True if anything was created or updated."""
        return any(r.status != EXISTS for r in self.resources)

    def __str__(self) -> str:
        counts = {s: sum(r.status == s for r in self.resources) for s in (CREATED, UPDATED, EXISTS)}
        summary = (
            f"{counts[CREATED]} created, {counts[UPDATED]} updated, "
            f"{counts[EXISTS]} already as configured"
            if self.changed
            else "nothing to do: every resource already exists as configured"
        )
        parts = [table(self.resources), "", summary, f"profile: {self.profile_path}"]
        parts += [f"note: {n}" for n in self.notes]
        return "\n".join(parts)


@dataclass(frozen=True)
class TeardownReport:
    """What :func:`teardown` removed, found absent, kept, or failed to remove."""

    resources: tuple[ResourceStatus, ...]

    @property
    def ok(self) -> bool:
        """True if nothing failed."""
        return all(r.status != FAILED for r in self.resources)

    def __str__(self) -> str:
        removed = sum(r.status == REMOVED for r in self.resources)
        failed = [r for r in self.resources if r.status == FAILED]
        summary = f"removed {removed} resource(s)"
        if failed:
            summary += f"; {len(failed)} could not be removed (see above): run teardown again"
        return f"{table(self.resources)}\n\n{summary}"


# -- what setup wants (shared with doctor) ---------------------------------------------------


def role_specs(
    place: Place, settings: AwsSettings
) -> tuple[iam.RoleSpec, iam.RoleSpec, iam.RoleSpec]:
    """The execution, task and EC2 instance roles as setup makes them for ``settings``."""
    names = resource_names(settings.cluster, settings.region)
    trust = policies.ecs_tasks_trust_policy(place.account)
    execution = iam.RoleSpec(
        iam.role_name(settings.execution_role_arn) or names.execution_role,
        trust,
        policies.execution_role_policy(
            secret_parameter=settings.secret_parameter,
            log_group=settings.log_group,
            region=settings.region,
            account=place.account,
            partition=place.partition,
        ),
        [policies.managed_policy_arn(policies.ECS_EXECUTION_MANAGED_POLICY, place.partition)],
        "starburst: lets ECS pull the worker image, write its logs and read the signing key",
    )
    task = iam.RoleSpec(
        iam.role_name(settings.task_role_arn) or names.task_role,
        trust,
        policies.task_role_policy(
            bucket=settings.bucket,
            prefix=settings.prefix,
            partition=place.partition,
            kms_key=settings.bucket_kms_key,
        ),
        [],
        f"starburst: what workers may do: objects under s3://{settings.bucket}/"
        f"{settings.prefix}/ only",
    )
    instance = iam.RoleSpec(
        names.instance_role,
        policies.ec2_instance_trust_policy(),
        None,
        [policies.managed_policy_arn(policies.EC2_INSTANCE_MANAGED_POLICY, place.partition)],
        "starburst: lets EC2 container instances join the ECS cluster",
    )
    return execution, task, instance


def scope(place: Place, settings: AwsSettings) -> policies.Scope:
    """The names the generated policies refer to, for ``settings`` in ``place``."""
    names = resource_names(settings.cluster, settings.region)
    role = f"arn:{place.partition}:iam::{place.account}:role"
    ec2 = bool(settings.ec2_capacity_provider)
    return policies.Scope(
        partition=place.partition,
        region=settings.region,
        account=place.account,
        bucket=settings.bucket,
        prefix=settings.prefix,
        cluster=settings.cluster,
        task_family=settings.task_family,
        execution_role_arn=settings.execution_role_arn or f"{role}/{names.execution_role}",
        task_role_arn=settings.task_role_arn or f"{role}/{names.task_role}",
        secret_parameter=settings.secret_parameter,
        log_group=settings.log_group,
        ecr_repository=settings.ecr_repository,
        autoscaling_group=settings.ec2_capacity_provider if ec2 else "",
        kms_key=settings.bucket_kms_key,
        instance_role=names.instance_role if ec2 else "",
    )


def _load_profile_file(profile: str | None) -> AwsSettings | None:
    """The saved profile as written (no environment overrides), or None."""
    try:
        return AwsSettings.from_dict(json.loads(profile_path(profile).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        logger.warning("the AWS profile %s is damaged; setup rewrites it", profile_path(profile))
        return None


def _validate(
    prefix: str,
    cluster: str,
    lifecycle_days: int,
    log_retention_days: int,
    ec2: bool,
    instance_types: Sequence[str],
) -> None:
    if not prefix:
        raise ValueError(
            "prefix must not be empty: the lifecycle rule expires every object "
            "under it, and an empty prefix would cover the whole bucket"
        )
    if not CLUSTER_NAME.match(cluster):
        raise ValueError(f"cluster name {cluster!r}: use 1-255 letters, digits, '-' or '_'")
    if lifecycle_days < 1:
        raise ValueError(f"lifecycle_days must be at least 1, got {lifecycle_days}")
    if log_retention_days not in LOG_RETENTION_DAYS:
        allowed = ", ".join(str(d) for d in sorted(LOG_RETENTION_DAYS))
        raise ValueError(f"log_retention_days must be one of {allowed}")
    if ec2 and not instance_types:
        raise ValueError("ec2=True needs at least one instance type")


# -- setup -----------------------------------------------------------------------------------


def setup(
    aws: Aws,
    *,
    bucket: str | None = None,
    prefix: str = "starburst",
    cluster: str = "starburst",
    ec2: bool = False,
    instance_types: Sequence[str] = ("c7a.xlarge",),
    lifecycle_days: int = 30,
    log_retention_days: int = 14,
    profile: str | None = None,
    vpc_id: str | None = None,
    subnets: Sequence[str] = (),
) -> SetupReport:
    """Create or adopt every AWS resource a session needs, then write the profile.

    Idempotent: resources that exist are checked and brought to the settings below, never
    recreated; a second run reports no change. An existing bucket is adopted: its other
    lifecycle rules and policy statements are kept, and its customer-managed KMS key, if it
    has one, is granted to the task role.

    Args:
        aws: the AWS client (its region is where everything is created).
        bucket: the session bucket (default ``starburst-{account}-{region}``).
        prefix: key prefix of the sessions inside the bucket; the lifecycle rule covers it.
        cluster: ECS cluster name (also the stem of the other names).
        ec2: also create EC2 capacity (Spot allowed) for ``launch_type="EC2"``.
        instance_types: EC2 instance types the Auto Scaling group may launch (one
            architecture); saved in the profile.
        lifecycle_days: session objects expire after this many days.
        log_retention_days: CloudWatch log retention (a value CloudWatch accepts).
        profile: the profile name to write (default ``STARBURST_AWS_PROFILE`` or "default").
        vpc_id: the VPC for workers (default: the subnets' VPC, else the default VPC).
        subnets: the subnets for workers (default: every subnet of the VPC); at most 16 are
            used, spread over the availability zones.

    Returns:
        The report: every resource with ``created`` / ``exists`` / ``updated``.

    Raises:
        ValueError: an invalid argument (a subnet outside the VPC ...).
        AwsCredentialsError: no usable credentials.
        AwsPermissionError: the caller may not create something; names the IAM action.
        AwsError: anything else AWS refused (a bucket name taken by another account, no
            default VPC, a bucket KMS key that cannot be resolved ...).
    """
    prefix = prefix.strip("/")
    _validate(prefix, cluster, lifecycle_days, log_retention_days, ec2, instance_types)
    place = Place.of(aws)
    run = Run(aws, place.account, place.partition)
    names = resource_names(cluster, aws.region)
    bucket = bucket or f"starburst-{place.account}-{aws.region}"
    previous = _load_profile_file(profile)
    same_place = previous is not None and (previous.region, previous.cluster) == (
        aws.region,
        cluster,
    )

    kms_key = bucket_resource.ensure(
        run, bucket_resource.BucketSpec(bucket, prefix, lifecycle_days)
    )
    repository.ensure(run, names.repository)
    log_group.ensure(run, names.log_group, log_retention_days)
    signing_key.ensure(run, names.secret_parameter)
    settings = AwsSettings(
        region=aws.region,
        bucket=bucket,
        prefix=prefix,
        cluster=cluster,
        ecr_repository=names.repository,
        log_group=names.log_group,
        secret_parameter=names.secret_parameter,
        task_family=names.task_family,
        lifecycle_days=lifecycle_days,
        log_retention_days=log_retention_days,
        bucket_kms_key=kms_key,
    )
    execution_spec, task_spec, instance_spec = role_specs(place, settings)
    execution_role_arn = iam.ensure_role(run, execution_spec)
    task_role_arn = iam.ensure_role(run, task_spec)

    where = network.choose(run, vpc_id, subnets)
    security_group = network.ensure_security_group(run, names.security_group, where.vpc_id)
    fresh_role = iam.ensure_service_linked_role(run)
    cluster_status = cluster_resource.ensure(run, cluster)
    providers = list(cluster_resource.FARGATE_PROVIDERS)
    # Without --ec2, EC2 capacity set up earlier for this cluster stays in the profile.
    kept_ec2 = previous is not None and same_place and not ec2 and previous.ec2_capacity_provider
    ec2_provider = previous.ec2_capacity_provider if previous and kept_ec2 else ""
    types = (
        tuple(instance_types) if ec2 else (previous.instance_types if previous and kept_ec2 else ())
    )
    if ec2:
        ec2_provider = _ec2_capacity(
            run, names, cluster, types, where, security_group, instance_spec
        )
        providers.append(ec2_provider)
    if ec2_provider:
        # awsvpc tasks on EC2 get no public IP: S3 through a gateway endpoint (network.py).
        network.ensure_endpoint(run, where, cluster)
    cluster_resource.ensure_providers(
        run, cluster, cluster_status, providers, wait_for_role=fresh_role
    )

    settings = replace(
        settings,
        execution_role_arn=execution_role_arn,
        task_role_arn=task_role_arn,
        vpc_id=where.vpc_id,
        subnets=where.subnets,
        security_group=security_group,
        ec2_capacity_provider=ec2_provider,
        instance_types=types,
    )
    if previous is not None:
        settings = _keep_choices(run, previous, settings)
    path = profile_path(profile)
    if previous != settings:
        settings.save(profile)
    run.add(
        "profile",
        str(path),
        CREATED if previous is None else (UPDATED if previous != settings else EXISTS),
    )
    return SetupReport(tuple(run.rows), settings, path, tuple(run.notes))


def _ec2_capacity(
    run: Run,
    names: ResourceNames,
    cluster: str,
    instance_types: tuple[str, ...],
    where: network.Network,
    security_group: str,
    instance_spec: iam.RoleSpec,
) -> str:
    arch = ec2_resource.architecture(run, instance_types)
    ami = ec2_resource.ecs_ami(run, arch)
    iam.ensure_role(run, instance_spec)
    fresh = iam.ensure_instance_profile(run, names.instance_role)
    spec = ec2_resource.Capacity(
        name=names.ec2,
        cluster=cluster,
        instance_profile=names.instance_role,
        instance_types=instance_types,
        security_group=security_group,
        subnets=where.subnets,
    )
    ec2_resource.ensure_launch_template(run, spec, ami)
    group_arn = ec2_resource.ensure_auto_scaling_group(run, spec, fresh_profile=fresh)
    return ec2_resource.ensure_capacity_provider(run, names.ec2, group_arn)


def _keep_choices(run: Run, previous: AwsSettings, settings: AwsSettings) -> AwsSettings:
    """Keep what the user chose or built (``starburst image build`` records the image and
    its architecture); an image lives in one region's registry, so it only carries over
    within it."""
    same_region = previous.region == settings.region
    image = previous.image if same_region else ""
    if previous.image and not image:
        run.notes.append(
            f"the profile's image {previous.image} is in {previous.region}; "
            "run `starburst image build` for this region"
        )
    chosen = ["cpu", "memory", "launch_type", "spot", "assign_public_ip", "max_workers_ceiling"]
    if same_region:
        chosen.append("image_architecture")  # recorded with the image, when the profile has it
    present = {f.name for f in fields(AwsSettings)}
    kept = {name: getattr(previous, name) for name in chosen if name in present}
    return replace(settings, image=image, **kept)


def policy(
    aws: Aws,
    which: str = "setup",
    *,
    bucket: str | None = None,
    prefix: str = "starburst",
    cluster: str = "starburst",
    ec2: bool = False,
    profile: str | None = None,
) -> dict[str, Any]:
    """The IAM policy an administrator grants: ``"setup"`` for whoever runs setup and
    teardown with these arguments, ``"user"`` for whoever runs sessions. Creates nothing
    (one ``sts:GetCallerIdentity`` for the account).

    The saved profile is used when it is this region's and cluster's (it knows an adopted
    bucket's KMS key and the EC2 capacity); otherwise the names setup would give.

    Raises:
        ValueError: ``which`` is neither "setup" nor "user".
    """
    if which not in ("setup", "user"):
        raise ValueError(f"which policy? 'setup' or 'user', not {which!r}")
    place = Place.of(aws)
    names = resource_names(cluster, aws.region)
    previous = _load_profile_file(profile)
    if previous is not None and (previous.region, previous.cluster) == (aws.region, cluster):
        settings = previous
        if ec2 and not settings.ec2_capacity_provider:
            settings = replace(settings, ec2_capacity_provider=names.ec2)
    else:
        settings = AwsSettings(
            region=aws.region,
            bucket=bucket or f"starburst-{place.account}-{aws.region}",
            prefix=prefix.strip("/"),
            cluster=cluster,
            ecr_repository=names.repository,
            log_group=names.log_group,
            secret_parameter=names.secret_parameter,
            task_family=names.task_family,
            ec2_capacity_provider=names.ec2 if ec2 else "",
        )
    names_scope = scope(place, settings)
    if which == "user":
        return policies.user_policy(names_scope)
    return policies.setup_policy(names_scope)


# -- teardown --------------------------------------------------------------------------------


def teardown(aws: Aws, settings: AwsSettings, *, delete_bucket: bool = False) -> TeardownReport:
    """Remove what :func:`setup` created, in dependency order.

    Missing pieces are reported ``absent``, never an error, so teardown can run twice (or
    after a failed setup). A piece AWS refuses to remove (tasks still running, a network
    interface still attached) is reported ``failed`` with the reason, and the rest goes on.

    Removed with the cluster: the task definitions the launcher registered for its family,
    and the S3 gateway endpoint setup created for it. The bucket holds session data and is
    kept unless ``delete_bucket``; even then, a bucket that setup adopted (not tagged
    ``starburst=true``) only loses the objects under the prefix. ECS's service-linked role
    is the account's, and stays. The local profile file is left in place.

    Args:
        aws: the AWS client, in the profile's region.
        settings: the profile setup wrote.
        delete_bucket: also empty and delete the bucket.

    Raises:
        ValueError: the client's region is not the profile's.
        AwsCredentialsError: no usable credentials.
    """
    if settings.region != aws.region:
        raise ValueError(
            f"the profile's resources are in {settings.region} but the client is "
            f"in {aws.region}: run with AWS_REGION={settings.region}"
        )
    place = Place.of(aws)
    run = Run(aws, place.account, place.partition)
    names = resource_names(settings.cluster, settings.region)
    provider = settings.ec2_capacity_provider or names.ec2
    group = [names.ec2]

    def remove_provider() -> tuple[str, str]:
        group[0] = ec2_resource.group_of_provider(place, provider) or names.ec2
        return ec2_resource.remove_capacity_provider(place, settings.cluster, provider)

    def step(kind: str, name: str, fn: Callable[[], tuple[str, str]]) -> None:
        try:
            status, detail = fn()
        except AwsCredentialsError:
            raise
        except AwsError as exc:
            # Keep going: the other resources can still be removed, and a second run retries.
            status, detail = FAILED, str(exc)
            logger.warning("teardown: could not remove %s %s: %s", kind, name, exc)
        run.add(kind, name, status, detail)

    step("capacity provider", provider, remove_provider)
    step(
        "Auto Scaling group",
        group[0],
        lambda: ec2_resource.remove_auto_scaling_group(place, group[0]),
    )
    step(
        "launch template", names.ec2, lambda: ec2_resource.remove_launch_template(place, names.ec2)
    )
    step(
        "task definitions",
        settings.task_family,
        lambda: cluster_resource.remove_task_definitions(place, settings.task_family),
    )
    step("ECS cluster", settings.cluster, lambda: cluster_resource.remove(place, settings.cluster))
    execution, task, instance = role_specs(place, settings)
    for role in (execution.name, task.name, instance.name):
        step("IAM role", role, functools.partial(iam.remove_role, place, role))
    if settings.security_group:
        step(
            "security group",
            settings.security_group,
            lambda: network.remove_security_group(place, settings.security_group),
        )
    step(
        "S3 endpoint",
        settings.vpc_id or "(no VPC in the profile)",
        lambda: network.remove_endpoint(place, settings.vpc_id, settings.cluster),
    )
    step("log group", settings.log_group, lambda: log_group.remove(place, settings.log_group))
    step(
        "ECR repository",
        settings.ecr_repository,
        lambda: repository.remove(place, settings.ecr_repository),
    )
    step(
        "SSM parameter",
        settings.secret_parameter,
        lambda: signing_key.remove(place, settings.secret_parameter),
    )
    kept = bucket_resource.BucketSpec(settings.bucket, settings.prefix, settings.lifecycle_days)
    step("S3 bucket", settings.bucket, lambda: bucket_resource.remove(place, kept, delete_bucket))
    return TeardownReport(tuple(run.rows))
