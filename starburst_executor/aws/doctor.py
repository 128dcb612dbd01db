"""``starburst doctor``: check, one by one, everything an AWS session needs, and say how to
fix what is wrong.

Each :class:`Check` names one thing (credentials, region, profile, bucket, roles, cluster,
log group, network, signing key, image, Fargate quota), whether it is fine, what was found,
and the command or IAM permission that fixes it. Checks that cannot mean anything without an
earlier one (no credentials, no profile, the wrong region) are not run.

Reads only, except one probe object put and deleted under the bucket prefix. The calls are
the read actions of :func:`~starburst_executor.aws.policies.user_policy`, so a user holding
that policy gets a clean report.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starburst_executor.aws import policies
from starburst_executor.aws.client import Aws
from starburst_executor.aws.settings import AwsSettings
from starburst_executor.errors import AwsCredentialsError, AwsError, AwsPermissionError

__all__ = ["DEFAULT_FARGATE_VCPU", "FARGATE_QUOTAS", "Check", "doctor", "format_checks"]

# Fargate vCPU quotas (Service Quotas, service code "fargate").
FARGATE_QUOTAS = {"L-3032A538": "on-demand", "L-36FBB829": "Spot"}
# What a new account gets in most regions (AWS Fargate quotas page); assumed when the quota
# cannot be read.
DEFAULT_FARGATE_VCPU = 6

SETUP_FIX = "run `starburst setup` (it creates or repairs this, and changes nothing else)"
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


class _Failed(Exception):
    """Raised inside a check to fail it with a detail and a fix."""

    def __init__(self, detail: str, fix: str = SETUP_FIX) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


def _absent(
    aws: Aws, service: str, operation: str, codes: tuple[str, ...], **params: Any
) -> dict[str, Any] | None:
    try:
        return aws.call(service, operation, **params)
    except (AwsCredentialsError, AwsPermissionError):
        raise
    except AwsError as exc:
        if exc.code in codes:
            return None
        raise


def _run(name: str, fn: Callable[[], str | Check]) -> Check:
    """Run one check; translate failures into a failed :class:`Check` with its fix."""
    try:
        result = fn()
    except _Failed as exc:
        return Check(name, False, exc.detail, exc.fix)
    except AwsPermissionError as exc:
        return Check(
            name,
            False,
            str(exc),
            f"allow the IAM action {exc.permission or '(see message)'} to your "
            "credentials (policies.user_policy lists every action the client needs)",
        )
    except AwsCredentialsError as exc:
        return Check(name, False, str(exc), CREDENTIALS_FIX)
    except AwsError as exc:
        return Check(name, False, str(exc), "see the message; then run `starburst doctor` again")
    return result if isinstance(result, Check) else Check(name, True, result)


def doctor(aws: Aws, settings: AwsSettings | None) -> list[Check]:
    """Check the credentials, the profile and every resource a session uses.

    Args:
        aws: the AWS client the sessions would use (its region is the one checked).
        settings: the saved profile, or None if there is none.

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
    run = _Doctor(aws, settings, str(identity["Account"]), str(identity["Arn"]).split(":")[1])
    checks += [
        _run("bucket", run.bucket),
        _run("bucket security", run.bucket_security),
        _run("execution role", run.execution_role),
        _run("task role", run.task_role),
        _run("ECS cluster", run.cluster),
        _run("log group", run.log_group),
        _run("network", run.network),
        _run("signing key", run.secret),
        _run("worker image", run.image),
        _run("Fargate vCPU quota", run.quota),
    ]
    return checks


@dataclass
class _Doctor:
    aws: Aws
    settings: AwsSettings
    account: str
    partition: str

    def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        return self.aws.call(service, operation, **params)

    # -- S3 ----------------------------------------------------------------------------------

    def bucket(self) -> str:
        s = self.settings
        prefix = f"{s.prefix}/" if s.prefix else ""
        # A prefixed listing, not HeadBucket: the client policy allows ListBucket only under
        # the prefix, which HeadBucket (no prefix) would not satisfy.
        if (
            _absent(
                self.aws,
                "s3",
                "list_objects_v2",
                ("NoSuchBucket",),
                Bucket=s.bucket,
                Prefix=prefix,
                MaxKeys=1,
            )
            is None
        ):
            raise _Failed(f"the bucket {s.bucket} does not exist")
        probe = f"{prefix}.starburst-doctor/{uuid.uuid4().hex}"
        self.call("s3", "put_object", Bucket=s.bucket, Key=probe, Body=b"")
        self.call("s3", "delete_object", Bucket=s.bucket, Key=probe)
        return f"s3://{s.bucket}/{prefix} is reachable and writable"

    def bucket_security(self) -> str:
        s = self.settings
        problems: list[str] = []
        found = _absent(
            self.aws,
            "s3",
            "get_bucket_encryption",
            ("ServerSideEncryptionConfigurationNotFoundError",),
            Bucket=s.bucket,
        )
        rules = (found or {}).get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
        algorithms = [
            r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") for r in rules
        ]
        if not any(algorithms):
            problems.append("no default encryption")
        policy = _absent(
            self.aws, "s3", "get_bucket_policy", ("NoSuchBucketPolicy",), Bucket=s.bucket
        )
        statements = json.loads(policy["Policy"]).get("Statement", []) if policy else []
        statements = [statements] if isinstance(statements, dict) else statements
        if not any(_denies_plain_http(st) for st in statements):
            problems.append("no policy denying plain-HTTP requests")
        block = _absent(
            self.aws,
            "s3",
            "get_public_access_block",
            ("NoSuchPublicAccessBlockConfiguration",),
            Bucket=s.bucket,
        )
        config = (block or {}).get("PublicAccessBlockConfiguration", {})
        if not all(
            config.get(k)
            for k in (
                "BlockPublicAcls",
                "IgnorePublicAcls",
                "BlockPublicPolicy",
                "RestrictPublicBuckets",
            )
        ):
            problems.append("public access not fully blocked")
        lifecycle = _absent(
            self.aws,
            "s3",
            "get_bucket_lifecycle_configuration",
            ("NoSuchLifecycleConfiguration",),
            Bucket=s.bucket,
        )
        prefix = f"{s.prefix}/" if s.prefix else ""
        expiring = [
            r
            for r in (lifecycle or {}).get("Rules", [])
            if r.get("Status") == "Enabled"
            and r.get("Expiration", {}).get("Days")
            and r.get("Filter", {}).get("Prefix", r.get("Prefix")) == prefix
        ]
        if not expiring:
            problems.append(f"no lifecycle rule expiring {prefix or 'its objects'}")
        if problems:
            raise _Failed(f"the bucket {s.bucket} has " + "; ".join(problems))
        days = expiring[0]["Expiration"]["Days"]
        return (
            f"encrypted ({', '.join(a for a in algorithms if a)}), TLS only, not public, "
            f"sessions expire after {days} days"
        )

    # -- IAM ---------------------------------------------------------------------------------

    def _role(self, arn: str, label: str, inline: dict[str, Any], managed: list[str]) -> str:
        if not arn:
            raise _Failed(f"the profile names no {label} role")
        name = arn.rsplit("/", 1)[-1]
        found = _absent(self.aws, "iam", "get_role", ("NoSuchEntity",), RoleName=name)
        if found is None:
            raise _Failed(f"the role {name} does not exist")
        trust = policies.parse_document(found["Role"].get("AssumeRolePolicyDocument", {}))
        services: list[str] = []
        for statement in trust.get("Statement", []):
            service = statement.get("Principal", {}).get("Service", [])
            services += [service] if isinstance(service, str) else list(service)
        if "ecs-tasks.amazonaws.com" not in services:
            raise _Failed(f"the role {name} cannot be assumed by ECS tasks (trust policy)")
        current = _absent(
            self.aws,
            "iam",
            "get_role_policy",
            ("NoSuchEntity",),
            RoleName=name,
            PolicyName="starburst",
        )
        if current is None:
            raise _Failed(f"the role {name} lacks its inline policy 'starburst'")
        if not policies.same_policy(current["PolicyDocument"], inline):
            raise _Failed(
                f"the role {name}'s inline policy differs from what setup writes "
                "(names changed, or edited by hand)"
            )
        attached = {
            p["PolicyArn"]
            for p in self.aws.paginate(
                "iam", "list_attached_role_policies", "AttachedPolicies", RoleName=name
            )
        }
        missing = [m for m in managed if m not in attached]
        if missing:
            raise _Failed(f"the role {name} lacks the managed policy {', '.join(missing)}")
        return f"{name} with the expected policies"

    def execution_role(self) -> str:
        s = self.settings
        return self._role(
            s.execution_role_arn,
            "execution",
            policies.execution_role_policy(
                secret_parameter=s.secret_parameter,
                log_group=s.log_group,
                region=s.region,
                account=self.account,
                partition=self.partition,
            ),
            [policies.managed_policy_arn(policies.ECS_EXECUTION_MANAGED_POLICY, self.partition)],
        )

    def task_role(self) -> str:
        s = self.settings
        return self._role(
            s.task_role_arn,
            "task",
            policies.task_role_policy(bucket=s.bucket, prefix=s.prefix, partition=self.partition),
            [],
        )

    # -- ECS, logs, network ------------------------------------------------------------------

    def cluster(self) -> str:
        s = self.settings
        found = [
            c
            for c in self.call("ecs", "describe_clusters", clusters=[s.cluster])["clusters"]
            if c.get("status") == "ACTIVE"
        ]
        if not found:
            raise _Failed(f"the ECS cluster {s.cluster} does not exist (or is inactive)")
        providers = found[0].get("capacityProviders", [])
        wanted = ["FARGATE", "FARGATE_SPOT"] + (
            [s.ec2_capacity_provider] if s.ec2_capacity_provider else []
        )
        missing = [p for p in wanted if p not in providers]
        if missing:
            raise _Failed(
                f"the cluster {s.cluster} lacks the capacity provider(s) {', '.join(missing)}"
            )
        return f"{s.cluster} ACTIVE with {', '.join(providers)}"

    def log_group(self) -> str:
        name = self.settings.log_group
        if (
            _absent(
                self.aws,
                "logs",
                "describe_log_streams",
                ("ResourceNotFoundException",),
                logGroupName=name,
                limit=1,
            )
            is None
        ):
            raise _Failed(f"the log group {name} does not exist")
        return f"{name} exists"

    def network(self) -> str:
        s = self.settings
        if not s.subnets or not s.security_group:
            raise _Failed("the profile names no subnets or no security group")
        subnets = _absent(
            self.aws,
            "ec2",
            "describe_subnets",
            ("InvalidSubnetID.NotFound",),
            SubnetIds=list(s.subnets),
        )
        if subnets is None or len(subnets.get("Subnets", [])) != len(s.subnets):
            raise _Failed(f"some of the subnets {', '.join(s.subnets)} no longer exist")
        groups = _absent(
            self.aws,
            "ec2",
            "describe_security_groups",
            ("InvalidGroup.NotFound", "InvalidGroupId.NotFound"),
            GroupIds=[s.security_group],
        )
        if groups is None or not groups.get("SecurityGroups"):
            raise _Failed(f"the security group {s.security_group} does not exist")
        group = groups["SecurityGroups"][0]
        if group.get("IpPermissions"):
            raise _Failed(
                f"the security group {s.security_group} allows inbound traffic; "
                "workers accept no connections"
            )
        if not group.get("IpPermissionsEgress"):
            raise _Failed(
                f"the security group {s.security_group} allows no outbound traffic: "
                "workers could not reach S3 or ECR",
                f"allow outbound HTTPS in {s.security_group} (setup creates it so)",
            )
        return f"{len(s.subnets)} subnets; security group {s.security_group} has no inbound rules"

    def secret(self) -> str:
        name = self.settings.secret_parameter
        found = _absent(
            self.aws, "ssm", "get_parameter", ("ParameterNotFound",), Name=name, WithDecryption=True
        )
        if found is None:
            raise _Failed(f"the SSM parameter {name} does not exist")
        kind = found["Parameter"].get("Type")
        if kind != "SecureString":
            raise _Failed(f"the SSM parameter {name} is a {kind}, not a SecureString")
        return f"{name} is a readable SecureString"

    # -- image, quota ------------------------------------------------------------------------

    def image(self) -> str:
        image = self.settings.image
        if not image:
            raise _Failed("the profile names no worker image", IMAGE_FIX)
        match = _ECR_IMAGE.match(image)
        if match is None:
            return f"{image} (not in ECR: not checked)"
        image_id = (
            {"imageDigest": match["digest"]}
            if match["digest"]
            else {"imageTag": match["tag"] or "latest"}
        )
        found = _absent(
            self.aws,
            "ecr",
            "describe_images",
            ("ImageNotFoundException", "RepositoryNotFoundException"),
            registryId=match["registry"],
            repositoryName=match["repository"],
            imageIds=[image_id],
        )
        if found is None or not found.get("imageDetails"):
            raise _Failed(f"the image {image} is not in ECR", IMAGE_FIX)
        return f"{image} is in ECR"

    def quota(self) -> Check:
        values: dict[str, float] = {}
        reason = ""
        for code, label in FARGATE_QUOTAS.items():
            try:
                quota = self.call(
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
        cpu = self.settings.cpu
        detail = ", ".join(
            f"{label} {value:g} vCPU (~{int(value // cpu)} workers of {cpu:g} vCPU)"
            for label, value in values.items()
        )
        return Check(name, True, detail)


def _denies_plain_http(statement: dict[str, Any]) -> bool:
    condition = statement.get("Condition", {}).get("Bool", {})
    return bool(
        statement.get("Effect") == "Deny"
        and str(condition.get("aws:SecureTransport", "")).lower() == "false"
    )


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
