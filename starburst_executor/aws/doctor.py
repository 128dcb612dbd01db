"""``starburst doctor``: check, one by one, everything an AWS session needs, and say how to
fix what is wrong.

Each :class:`Check` names one thing (credentials, region, profile, bucket, roles, cluster,
log group, network, EC2 capacity, signing key, repository, image, Fargate quota), whether it
is fine, what was found, and the command or IAM permission that fixes it. Checks that cannot
mean anything without an earlier one (no credentials, no profile, the wrong region) are not
run.

The resource checks are the very ones setup judges by (each resource module's ``check``,
:mod:`starburst_executor.aws.resources`), so doctor and setup cannot disagree. Beyond them,
doctor checks that the image will start (:mod:`starburst_executor.aws.image_check`) and reads
the Fargate quota.

Reads only, except one probe object put and deleted under the bucket prefix. The calls are
the read actions of :func:`~starburst_executor.aws.policies.user_policy`, so a user holding
that policy gets a clean report.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starburst_executor.aws import image_check
from starburst_executor.aws.client import Aws
from starburst_executor.aws.resources import bucket as bucket_resource
from starburst_executor.aws.resources import cluster as cluster_resource
from starburst_executor.aws.resources import ec2 as ec2_resource
from starburst_executor.aws.resources import iam, log_group, network, repository, signing_key
from starburst_executor.aws.resources.base import CheckFailed, Place, absent
from starburst_executor.aws.resources.names import resource_names
from starburst_executor.aws.settings import AwsSettings
from starburst_executor.aws.setup import role_specs
from starburst_executor.errors import AwsCredentialsError, AwsError, AwsPermissionError

__all__ = ["DEFAULT_FARGATE_VCPU", "FARGATE_QUOTAS", "Check", "doctor", "format_checks"]

# Fargate vCPU quotas (Service Quotas, service code "fargate").
FARGATE_QUOTAS = {"L-3032A538": "on-demand", "L-36FBB829": "Spot"}
# What a new account gets in most regions (AWS Fargate quotas page); assumed when the quota
# cannot be read.
DEFAULT_FARGATE_VCPU = 6

IMAGE_FIX = "run `starburst image build` (it pushes the worker image and records it)"
CREDENTIALS_FIX = (
    "configure AWS credentials: `aws configure` or `aws sso login` and set AWS_PROFILE, or "
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN if temporary)"
)

_ECR_IMAGE = re.compile(
    r"^(?P<registry>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
    r"(?P<repository>[^:@]+)(?::(?P<tag>[^@]+))?(?:@(?P<digest>sha256:[0-9a-f]+))?$"
)


@dataclass(frozen=True)
class Check:
    """The outcome of one check.

    Attributes:
        name: what was checked.
        ok: True if it is fine (a warning is ok).
        detail: what was found.
        fix: the command or permission that fixes it ("" when ok).
        warning: ok, but could not be verified or is worth knowing.
    """

    name: str
    ok: bool
    detail: str = ""
    fix: str = ""
    warning: bool = False


def _run(name: str, fn: Callable[[], str | Check]) -> Check:
    """Run one check; translate failures into a failed :class:`Check` with its fix."""
    try:
        result = fn()
    except CheckFailed as exc:
        return Check(name, False, exc.detail, exc.fix)
    except AwsPermissionError as exc:
        return Check(
            name,
            False,
            str(exc),
            f"allow the IAM action {exc.permission or '(see message)'} to your "
            "credentials (`starburst setup --print-policy user` prints every action the "
            "client needs)",
        )
    except AwsCredentialsError as exc:
        return Check(name, False, str(exc), CREDENTIALS_FIX)
    except AwsError as exc:
        return Check(name, False, str(exc), "see the message; then run `starburst doctor` again")
    return result if isinstance(result, Check) else Check(name, True, result)


def doctor(aws: Aws, settings: AwsSettings | None, *, docker: str = "docker") -> list[Check]:
    """Check the credentials, the profile and every resource a session uses.

    Args:
        aws: the AWS client the sessions would use (its region is the one checked).
        settings: the saved profile, or None if there is none.
        docker: the docker executable that reads the image's config (when it is there).

    Returns:
        The checks, in order; later checks are left out when an earlier one makes them
        meaningless (no credentials, no profile, another region).
    """
    identity: dict[str, Any] = {}

    def credentials() -> str:
        identity.update(aws.call("sts", "get_caller_identity"))
        return f"account {identity['Account']} as {identity['Arn']}"

    checks = [_run("credentials", credentials)]
    region_ok = settings is None or settings.region == aws.region
    if settings is not None and not region_ok:
        checks.append(
            Check(
                "region",
                False,
                f"the client uses {aws.region} but the profile's resources are in "
                f"{settings.region}; the other checks need the profile's region",
                f"export AWS_REGION={settings.region} (or run `starburst setup` in {aws.region})",
            )
        )
    else:
        checks.append(Check("region", True, aws.region))
    if settings is None:
        checks.append(
            Check(
                "profile",
                False,
                "no AWS profile: setup has not been run here "
                "(or STARBURST_HOME / STARBURST_AWS_PROFILE point elsewhere)",
                "run `starburst setup`",
            )
        )
        return checks
    checks.append(
        Check(
            "profile", True, f"s3://{settings.bucket}/{settings.prefix}, cluster {settings.cluster}"
        )
    )
    if not identity or not region_ok:
        return checks
    place = Place(aws, str(identity["Account"]), str(identity["Arn"]).split(":")[1])
    checks += [(_run(name, fn)) for name, fn in _resource_checks(place, settings, docker)]
    return checks


def _resource_checks(
    place: Place, settings: AwsSettings, docker: str
) -> list[tuple[str, Callable[[], str | Check]]]:
    s = settings
    spec = bucket_resource.BucketSpec(s.bucket, s.prefix, s.lifecycle_days)
    execution, task, _ = role_specs(place, s)
    providers = [*cluster_resource.FARGATE_PROVIDERS]
    checks: list[tuple[str, Callable[[], str | Check]]] = [
        ("bucket", lambda: bucket_resource.check_reachable(place, spec)),
        ("bucket security", lambda: bucket_resource.check(place, spec, s.bucket_kms_key)),
        ("execution role", lambda: _role(place, s.execution_role_arn, "execution", execution)),
        ("task role", lambda: _role(place, s.task_role_arn, "task", task)),
    ]
    if s.ec2_capacity_provider:
        providers.append(s.ec2_capacity_provider)
    checks += [
        ("ECS cluster", lambda: cluster_resource.check(place, s.cluster, providers)),
        ("log group", lambda: log_group.check(place, s.log_group)),
        ("network", lambda: network.check(place, s.subnets, s.security_group)),
    ]
    if s.ec2_capacity_provider:
        names = resource_names(s.cluster, s.region)
        capacity = ec2_resource.Capacity(
            name=s.ec2_capacity_provider,
            cluster=s.cluster,
            instance_profile=names.instance_role,
            instance_types=s.instance_types,
            security_group=s.security_group,
            subnets=s.subnets,
        )
        where = network.Network(s.vpc_id, s.subnets)
        checks += [
            ("EC2 capacity", lambda: ec2_resource.check(place, capacity)),
            ("S3 endpoint", lambda: _endpoint(place, where, s.cluster)),
        ]
    checks += [
        ("signing key", lambda: signing_key.check(place, s.secret_parameter)),
        ("ECR repository", lambda: repository.check(place, s.ecr_repository)),
        ("worker image", lambda: _image(place, s)),
        ("image starts", lambda: _image_starts(place, s, docker)),
        ("Fargate vCPU quota", lambda: _quota(place, s)),
    ]
    return checks


def _role(place: Place, arn: str, label: str, spec: iam.RoleSpec) -> str:
    if not arn:
        raise CheckFailed(f"the profile names no {label} role")
    return iam.check_role(place, spec)


def _endpoint(place: Place, where: network.Network, cluster: str) -> str:
    if not where.vpc_id:
        raise CheckFailed("the profile names no VPC (it predates the S3 endpoint)")
    return network.check_endpoint(place, where, cluster)


def _ecr_id(image: str) -> tuple[str, str, dict[str, str]] | None:
    match = _ECR_IMAGE.match(image)
    if match is None:
        return None
    image_id = (
        {"imageDigest": match["digest"]}
        if match["digest"]
        else {"imageTag": match["tag"] or "latest"}
    )
    return match["registry"], match["repository"], image_id


def _image(place: Place, settings: AwsSettings) -> str:
    image = settings.image
    if not image:
        raise CheckFailed("the profile names no worker image", IMAGE_FIX)
    ecr = _ecr_id(image)
    if ecr is None:
        return f"{image} (not in ECR: not checked)"
    registry, name, image_id = ecr
    found = absent(
        place.aws,
        "ecr",
        "describe_images",
        ("ImageNotFoundException", "RepositoryNotFoundException"),
        registryId=registry,
        repositoryName=name,
        imageIds=[image_id],
    )
    if found is None or not found.get("imageDetails"):
        raise CheckFailed(f"the image {image} is not in ECR", IMAGE_FIX)
    return f"{image} is in ECR"


def _image_starts(place: Place, settings: AwsSettings, docker: str) -> str | Check:
    """Its architecture is the one tasks request, its ENTRYPOINT is the worker, and its CMD
    adds nothing (ECS would pass it to the worker as arguments)."""
    image = settings.image
    if not image:
        raise CheckFailed("the profile names no worker image", IMAGE_FIX)
    wanted = (getattr(settings, "image_architecture", "") or "X86_64").upper()
    config, why = image_check.read_config(place.aws, image, _ecr_id(image), docker)
    if config is None:
        return Check(
            "image starts",
            True,
            f"not verified: {why}",
            "install docker (or allow ecr:BatchGetImage and ecr:GetDownloadUrlForLayer) "
            "and run `starburst doctor` again",
            warning=True,
        )
    found = image_check.problems(config, wanted)
    if found:
        raise CheckFailed(
            f"{image}: " + "; ".join(found),
            "run `starburst image build` (it builds for the recorded architecture with the "
            "worker as ENTRYPOINT, and records both)",
        )
    return (
        f"{image_check.ecs_architecture(config.architecture)}, ENTRYPOINT "
        f"{list(config.entrypoint)} (read with {config.source})"
    )


def _quota(place: Place, settings: AwsSettings) -> Check:
    values: dict[str, float] = {}
    reason = ""
    for code, label in FARGATE_QUOTAS.items():
        try:
            quota = place.call(
                "service-quotas", "get_service_quota", ServiceCode="fargate", QuotaCode=code
            )["Quota"]
        except AwsCredentialsError:
            raise
        except AwsError as exc:  # not offered here, denied, or an emulator without it
            reason = str(exc)
            break
        values[label] = float(quota["Value"])
    name = "Fargate vCPU quota"
    if reason:
        return Check(
            name,
            True,
            f"unknown (default assumed: {DEFAULT_FARGATE_VCPU} vCPU): {reason}",
            "see Service Quotas > AWS Fargate in the console; sessions asking for more "
            "vCPUs than the quota start fewer workers",
            warning=True,
        )
    cpu = settings.cpu
    detail = ", ".join(
        f"{label} {value:g} vCPU (~{int(value // cpu)} workers of {cpu:g} vCPU)"
        for label, value in values.items()
    )
    return Check(name, True, detail)


def format_checks(checks: list[Check]) -> str:
    """The checks as lines: ``✓`` passed, ``!`` warning, ``✗`` failed with its fix below."""
    lines = []
    for c in checks:
        mark = "✗" if not c.ok else ("!" if c.warning else "✓")
        lines.append(f"{mark} {c.name}: {c.detail}" if c.detail else f"{mark} {c.name}")
        if c.fix and (not c.ok or c.warning):
            lines.append(f"    fix: {c.fix}" if not c.ok else f"    note: {c.fix}")
    failed = sum(not c.ok for c in checks)
    warned = sum(c.ok and c.warning for c in checks)
    lines.append(
        f"{len(checks)} checks: {len(checks) - failed - warned} passed, {failed} "
        f"failed, {warned} warning(s)"
    )
    return "\n".join(lines)
