"""``starburst setup`` and ``starburst teardown``: create (or adopt) and remove the AWS
resources sessions run on, idempotently, and write the profile
(:class:`~starburst_executor.aws.settings.AwsSettings`) that ``backend="aws"`` reads.

:func:`setup` creates, or adopts when it exists, and brings to the settings below:

===========================  ==========================================================
S3 bucket                    ``starburst-{account}-{region}`` unless named; public access
                             blocked, SSE-S3 (AES256) by default, a TLS-only bucket policy,
                             a lifecycle rule expiring ``{prefix}/`` after N days
ECR repository               ``starburst-worker``: scan on push, keep the last 10 images
CloudWatch log group         ``/starburst/workers``, with a retention
SSM parameter                SecureString holding this client's HMAC signing key
IAM roles                    execution role (managed ECS policy + a scoped inline policy)
                             and task role (the bucket prefix only); trust: ECS tasks of
                             this account
network                      the VPC's subnets (default VPC unless named) and a security
                             group with no inbound rules
ECS cluster                  with the FARGATE and FARGATE_SPOT capacity providers
EC2 capacity (``ec2=True``)  instance role + profile, launch template on the ECS-optimised
                             AMI, an Auto Scaling group (Spot allowed) parked at 0, and an
                             ECS capacity provider with managed scaling
===========================  ==========================================================

Everything it creates is tagged ``starburst=true``. A second run changes nothing and says
so. :func:`teardown` removes the same resources in dependency order, tolerating missing
pieces; it keeps the bucket (it holds results) unless asked.

Every AWS call goes through :class:`~starburst_executor.aws.client.Aws`.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from starburst_executor import config
from starburst_executor.aws import policies
from starburst_executor.aws.client import Aws
from starburst_executor.aws.settings import AwsSettings, profile_path
from starburst_executor.errors import AwsCredentialsError, AwsError, AwsPermissionError

__all__ = [
    "CREATED",
    "EXISTS",
    "UPDATED",
    "ResourceNames",
    "ResourceStatus",
    "SetupReport",
    "TeardownReport",
    "resource_names",
    "setup",
    "teardown",
]

logger = logging.getLogger(__name__)

CREATED, EXISTS, UPDATED = "created", "exists", "updated"
REMOVED, ABSENT, KEPT, FAILED = "removed", "absent", "kept", "failed"

TAG_KEY, TAG_VALUE = "starburst", "true"
INLINE_POLICY = "starburst"
# A new instance profile takes up to ~10 s to be usable by EC2 (IAM is eventually consistent).
IAM_PROPAGATION_ATTEMPTS, IAM_PROPAGATION_DELAY = 6, 5.0
ECR_KEEP_IMAGES = 10

# CloudWatch Logs accepts only these retention periods (PutRetentionPolicy).
LOG_RETENTION_DAYS = frozenset(
    {
        1,
        3,
        5,
        7,
        14,
        30,
        60,
        90,
        120,
        150,
        180,
        365,
        400,
        545,
        731,
        1096,
        1827,
        2192,
        2557,
        2922,
        3288,
        3653,
    }
)
# IAM role names are at most 64 characters and embed the cluster name and the region.
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_AMI_PARAMETER = "/aws/service/ecs/optimized-ami/{os}/{arch}recommended/image_id"
_FARGATE_PROVIDERS = ("FARGATE", "FARGATE_SPOT")


# -- reports ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceStatus:
    """One resource in a report.

    Attributes:
        kind: what it is ("S3 bucket", "IAM role" ...).
        name: its name or id.
        status: setup: ``created`` / ``exists`` / ``updated``; teardown: ``removed`` /
            ``absent`` / ``kept`` / ``failed``.
        detail: what changed, or why.
    """

    kind: str
    name: str
    status: str
    detail: str = ""


def _table(rows: Sequence[ResourceStatus]) -> str:
    header = ResourceStatus("RESOURCE", "NAME", "STATUS", "DETAIL")
    widths = [max(len(getattr(r, f)) for r in (header, *rows)) for f in ("kind", "name", "status")]
    lines = []
    for r in (header, *rows):
        cells = (
            r.kind.ljust(widths[0]),
            r.name.ljust(widths[1]),
            r.status.ljust(widths[2]),
            r.detail,
        )
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


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
        parts = [_table(self.resources), "", summary, f"profile: {self.profile_path}"]
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
        return f"{_table(self.resources)}\n\n{summary}"


# -- names -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceNames:
    """The names setup gives its resources, derived from the cluster name and region.

    IAM names are global to the account, so roles carry the region; the others are
    regional already.
    """

    cluster: str
    region: str

    @property
    def base(self) -> str:
        return self.cluster if self.cluster.startswith("starburst") else f"starburst-{self.cluster}"

    @property
    def _default(self) -> bool:
        return self.cluster == "starburst"

    @property
    def execution_role(self) -> str:
        return f"{self.base}-execution-{self.region}"

    @property
    def task_role(self) -> str:
        return f"{self.base}-task-{self.region}"

    @property
    def instance_role(self) -> str:
        return f"{self.base}-ec2-{self.region}"

    @property
    def security_group(self) -> str:
        return f"{self.base}-workers"

    @property
    def ec2(self) -> str:
        """The launch template, Auto Scaling group and capacity provider."""
        return f"{self.base}-ec2"

    @property
    def log_group(self) -> str:
        return "/starburst/workers" if self._default else f"/starburst/{self.cluster}/workers"

    @property
    def secret_parameter(self) -> str:
        return "/starburst/secret-key" if self._default else f"/starburst/{self.cluster}/secret-key"

    @property
    def task_family(self) -> str:
        return "starburst-worker" if self._default else f"{self.base}-worker"

    @property
    def repository(self) -> str:
        return self.task_family


def resource_names(cluster: str, region: str) -> ResourceNames:
    """The names :func:`setup` uses for ``cluster`` in ``region``."""
    return ResourceNames(cluster, region)


# -- helpers ---------------------------------------------------------------------------------


def _absent(
    aws: Aws, service: str, operation: str, codes: Iterable[str], **params: Any
) -> dict[str, Any] | None:
    """``aws.call(...)``, or None when AWS answers with one of the not-found ``codes``."""
    try:
        return aws.call(service, operation, **params)
    except (AwsCredentialsError, AwsPermissionError):
        raise
    except AwsError as exc:
        if exc.code in codes:
            return None
        raise


def _tags(style: str) -> list[dict[str, str]]:
    """The starburst tag in each service's spelling (``Key`` or ``key``)."""
    return (
        [{"Key": TAG_KEY, "Value": TAG_VALUE}]
        if style == "Key"
        else [{"key": TAG_KEY, "value": TAG_VALUE}]
    )


def _identity(aws: Aws) -> tuple[str, str]:
    """(account id, partition) of the caller."""
    identity = aws.call("sts", "get_caller_identity")
    return str(identity["Account"]), str(identity["Arn"]).split(":")[1]


def _role_name(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def _load_profile_file(profile: str | None) -> AwsSettings | None:
    """The saved profile as written (no environment overrides), or None."""
    try:
        return AwsSettings.from_dict(json.loads(profile_path(profile).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        logger.warning("the AWS profile %s is damaged; setup rewrites it", profile_path(profile))
        return None


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
) -> SetupReport:
    """Create or adopt every AWS resource a session needs, then write the profile.

    Idempotent: resources that exist are checked and brought to the settings below, never
    recreated; a second run reports no change. An existing bucket is adopted: its other
    lifecycle rules and policy statements are kept.

    Args:
        aws: the AWS client (its region is where everything is created).
        bucket: the session bucket (default ``starburst-{account}-{region}``).
        prefix: key prefix of the sessions inside the bucket; the lifecycle rule covers it.
        cluster: ECS cluster name (also the stem of the other names).
        ec2: also create EC2 capacity (Spot allowed) for ``launch_type="EC2"``.
        instance_types: EC2 instance types the Auto Scaling group may launch (one
            architecture).
        lifecycle_days: session objects expire after this many days.
        log_retention_days: CloudWatch log retention (a value CloudWatch accepts).
        profile: the profile name to write (default ``STARBURST_AWS_PROFILE`` or "default").
        vpc_id: the VPC for workers (default: the region's default VPC).

    Returns:
        The report: every resource with ``created`` / ``exists`` / ``updated``.

    Raises:
        ValueError: an invalid argument.
        AwsCredentialsError: no usable credentials.
        AwsPermissionError: the caller may not create something; names the IAM action.
        AwsError: anything else AWS refused (a bucket name taken by another account, no
            default VPC ...).
    """
    prefix = prefix.strip("/")
    if not prefix:
        raise ValueError(
            "prefix must not be empty: the lifecycle rule expires every object "
            "under it, and an empty prefix would cover the whole bucket"
        )
    if not _CLUSTER_NAME.match(cluster):
        raise ValueError(f"cluster name {cluster!r}: use 1-32 letters, digits, '-' or '_'")
    if lifecycle_days < 1:
        raise ValueError(f"lifecycle_days must be at least 1, got {lifecycle_days}")
    if log_retention_days not in LOG_RETENTION_DAYS:
        allowed = ", ".join(str(d) for d in sorted(LOG_RETENTION_DAYS))
        raise ValueError(f"log_retention_days must be one of {allowed}")
    if ec2 and not instance_types:
        raise ValueError("ec2=True needs at least one instance type")

    account, partition = _identity(aws)
    names = resource_names(cluster, aws.region)
    bucket = bucket or f"starburst-{account}-{aws.region}"
    run = _Setup(aws, account, partition)

    run.bucket(bucket, prefix, lifecycle_days)
    run.repository(names.repository)
    run.log_group(names.log_group, log_retention_days)
    run.secret(names.secret_parameter)
    trust = policies.ecs_tasks_trust_policy(account)
    execution_role_arn = run.role(
        names.execution_role,
        trust,
        policies.execution_role_policy(
            secret_parameter=names.secret_parameter,
            log_group=names.log_group,
            region=aws.region,
            account=account,
            partition=partition,
        ),
        [policies.managed_policy_arn(policies.ECS_EXECUTION_MANAGED_POLICY, partition)],
        "starburst: lets ECS pull the worker image, write its logs and read the signing key",
    )
    task_role_arn = run.role(
        names.task_role,
        trust,
        policies.task_role_policy(bucket=bucket, prefix=prefix, partition=partition),
        [],
        f"starburst: what workers may do: objects under s3://{bucket}/{prefix}/ only",
    )
    vpc, subnets = run.network(vpc_id)
    security_group = run.security_group(names.security_group, vpc)
    cluster_status = run.cluster(cluster)
    providers = list(_FARGATE_PROVIDERS)
    previous = _load_profile_file(profile)
    # Without --ec2, EC2 capacity set up earlier for this cluster stays in the profile.
    same_place = previous is not None and (previous.region, previous.cluster) == (
        aws.region,
        cluster,
    )
    ec2_provider = previous.ec2_capacity_provider if previous and same_place and not ec2 else ""
    if ec2:
        ec2_provider = run.ec2_capacity(
            names, cluster, tuple(instance_types), subnets, security_group
        )
        providers.append(ec2_provider)
    run.cluster_providers(cluster, cluster_status, providers)

    settings = AwsSettings(
        region=aws.region,
        bucket=bucket,
        prefix=prefix,
        cluster=cluster,
        ecr_repository=names.repository,
        log_group=names.log_group,
        execution_role_arn=execution_role_arn,
        task_role_arn=task_role_arn,
        subnets=tuple(subnets),
        security_group=security_group,
        secret_parameter=names.secret_parameter,
        ec2_capacity_provider=ec2_provider,
        task_family=names.task_family,
        lifecycle_days=lifecycle_days,
        log_retention_days=log_retention_days,
    )
    if previous is not None:
        # Keep what the user chose or built (`starburst image build` records the image);
        # an image lives in one region's registry, so it only carries over within it.
        image = previous.image if previous.region == aws.region else ""
        if previous.image and not image:
            run.notes.append(
                f"the profile's image {previous.image} is in {previous.region}; "
                "run `starburst image build` for this region"
            )
        settings = replace(
            settings,
            image=image,
            cpu=previous.cpu,
            memory=previous.memory,
            launch_type=previous.launch_type,
            spot=previous.spot,
            assign_public_ip=previous.assign_public_ip,
            max_workers_ceiling=previous.max_workers_ceiling,
        )
    path = profile_path(profile)
    if previous != settings:
        settings.save(profile)
    run.add(
        "profile",
        str(path),
        CREATED if previous is None else (UPDATED if previous != settings else EXISTS),
    )
    return SetupReport(tuple(run.rows), settings, path, tuple(run.notes))


@dataclass
class _Setup:
    """One setup run: the calls, and the rows and notes of its report."""

    aws: Aws
    account: str
    partition: str
    rows: list[ResourceStatus] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, name: str, status: str, detail: str = "") -> None:
        if status != EXISTS:
            logger.info("setup: %s %s %s %s", kind, name, status, detail)
        self.rows.append(ResourceStatus(kind, name, status, detail))

    def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        return self.aws.call(service, operation, **params)

    # -- S3 ----------------------------------------------------------------------------------

    def _bucket_region(self, bucket: str) -> str | None:
        try:
            self.call("s3", "head_bucket", Bucket=bucket)
        except (AwsCredentialsError, AwsPermissionError):
            raise
        except AwsError as exc:
            if exc.code in ("404", "NoSuchBucket", "NotFound"):
                return None
            if exc.code == "403":
                raise AwsError(
                    f"the bucket {bucket} exists but you cannot use it: another account owns "
                    "it, or you lack s3:ListBucket on it. Pass another name (--bucket)",
                    "403",
                ) from exc
            if exc.code not in ("301", "PermanentRedirect"):  # 301: it lives in another region
                raise
        location = self.call("s3", "get_bucket_location", Bucket=bucket).get("LocationConstraint")
        # us-east-1 answers None; the legacy "EU" means eu-west-1.
        return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location)

    def bucket(self, bucket: str, prefix: str, days: int) -> None:
        region = self._bucket_region(bucket)
        changes: list[str] = []
        if region is None:
            params: dict[str, Any] = {"Bucket": bucket}
            # us-east-1 rejects a LocationConstraint naming itself; every other region needs one.
            if self.aws.region != "us-east-1":
                params["CreateBucketConfiguration"] = {"LocationConstraint": self.aws.region}
            self.call("s3", "create_bucket", **params)
            self.call("s3", "put_bucket_tagging", Bucket=bucket, Tagging={"TagSet": _tags("Key")})
            status, detail = CREATED, ""
        elif region != self.aws.region:
            raise AwsError(
                f"the bucket {bucket} is in {region}, not {self.aws.region}: run "
                f"setup in {region} (AWS_REGION={region}) or pass another --bucket"
            )
        else:
            tags = _absent(self.aws, "s3", "get_bucket_tagging", ["NoSuchTagSet"], Bucket=bucket)
            ours = {"Key": TAG_KEY, "Value": TAG_VALUE} in (tags or {}).get("TagSet", [])
            status, detail = EXISTS, "" if ours else "adopted: teardown never deletes it"
        changes += self._public_access_block(bucket)
        changes += self._encryption(bucket)
        changes += self._tls_policy(bucket)
        changes += self._lifecycle(bucket, prefix, days)
        if changes and status == EXISTS:
            status, detail = UPDATED, ", ".join(filter(None, [detail, "set " + ", ".join(changes)]))
        self.add("S3 bucket", bucket, status, detail)

    def _public_access_block(self, bucket: str) -> list[str]:
        wanted = {
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        }
        found = _absent(
            self.aws,
            "s3",
            "get_public_access_block",
            ["NoSuchPublicAccessBlockConfiguration"],
            Bucket=bucket,
        )
        if found and all(found.get("PublicAccessBlockConfiguration", {}).get(k) for k in wanted):
            return []
        self.call(
            "s3", "put_public_access_block", Bucket=bucket, PublicAccessBlockConfiguration=wanted
        )
        return ["public access block"]

    def _encryption(self, bucket: str) -> list[str]:
        found = _absent(
            self.aws,
            "s3",
            "get_bucket_encryption",
            ["ServerSideEncryptionConfigurationNotFoundError"],
            Bucket=bucket,
        )
        rules = (found or {}).get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
        if any(r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") for r in rules):
            return []  # SSE-S3 or a KMS key the owner chose: both encrypt at rest
        self.call(
            "s3",
            "put_bucket_encryption",
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}],
            },
        )
        return ["encryption"]

    def _tls_policy(self, bucket: str) -> list[str]:
        found = _absent(self.aws, "s3", "get_bucket_policy", ["NoSuchBucketPolicy"], Bucket=bucket)
        statement = policies.tls_statement(bucket, self.partition)
        if found is None:
            document: dict[str, Any] = policies.bucket_tls_policy(bucket, self.partition)
        else:
            document = json.loads(found["Policy"])
            current = document.get("Statement", [])
            current = [current] if isinstance(current, dict) else current
            if any(policies.same_policy(s, statement) for s in current):
                return []
            # Keep an adopted bucket's own statements; replace only ours.
            document["Statement"] = [s for s in current if s.get("Sid") != policies.TLS_SID]
            document["Statement"].append(statement)
        self.call("s3", "put_bucket_policy", Bucket=bucket, Policy=json.dumps(document))
        return ["TLS-only policy"]

    def _lifecycle(self, bucket: str, prefix: str, days: int) -> list[str]:
        found = _absent(
            self.aws,
            "s3",
            "get_bucket_lifecycle_configuration",
            ["NoSuchLifecycleConfiguration"],
            Bucket=bucket,
        )
        rule_id = f"starburst-expire-{prefix}"
        wanted = {
            "ID": rule_id,
            "Status": "Enabled",
            "Filter": {"Prefix": f"{prefix}/"},
            "Expiration": {"Days": days},
            # Parts of uploads a worker never completed would otherwise be billed forever.
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }
        rules = (found or {}).get("Rules", [])
        mine = next((r for r in rules if r.get("ID") == rule_id), None)
        if mine is not None and all(mine.get(k) == v for k, v in wanted.items()):
            return []
        others = [r for r in rules if r.get("ID") != rule_id]
        self.call(
            "s3",
            "put_bucket_lifecycle_configuration",
            Bucket=bucket,
            LifecycleConfiguration={"Rules": [*others, wanted]},
        )
        return [f"lifecycle ({days} days)"]

    # -- ECR, logs, SSM ----------------------------------------------------------------------

    def repository(self, name: str) -> None:
        found = _absent(
            self.aws,
            "ecr",
            "describe_repositories",
            ["RepositoryNotFoundException"],
            repositoryNames=[name],
        )
        changes: list[str] = []
        if found is None:
            self.call(
                "ecr",
                "create_repository",
                repositoryName=name,
                imageScanningConfiguration={"scanOnPush": True},
                encryptionConfiguration={"encryptionType": "AES256"},
                tags=_tags("Key"),
            )
            status = CREATED
        else:
            status = EXISTS
            repo = found["repositories"][0]
            if not repo.get("imageScanningConfiguration", {}).get("scanOnPush"):
                self.call(
                    "ecr",
                    "put_image_scanning_configuration",
                    repositoryName=name,
                    imageScanningConfiguration={"scanOnPush": True},
                )
                changes.append("scan on push")
        lifecycle = {
            "rules": [
                {
                    "rulePriority": 1,
                    "description": f"keep the last {ECR_KEEP_IMAGES} worker images",
                    "selection": {
                        "tagStatus": "any",
                        "countType": "imageCountMoreThan",
                        "countNumber": ECR_KEEP_IMAGES,
                    },
                    "action": {"type": "expire"},
                }
            ]
        }
        policy = _absent(
            self.aws,
            "ecr",
            "get_lifecycle_policy",
            ["LifecyclePolicyNotFoundException"],
            repositoryName=name,
        )
        if policy is None or json.loads(policy["lifecyclePolicyText"]) != lifecycle:
            self.call(
                "ecr",
                "put_lifecycle_policy",
                repositoryName=name,
                lifecyclePolicyText=json.dumps(lifecycle),
            )
            if status == EXISTS:
                changes.append("lifecycle policy")
        if changes:
            status = UPDATED
        self.add("ECR repository", name, status, "set " + ", ".join(changes) if changes else "")

    def log_group(self, name: str, days: int) -> None:
        groups = self.call("logs", "describe_log_groups", logGroupNamePrefix=name)["logGroups"]
        group = next((g for g in groups if g["logGroupName"] == name), None)
        if group is None:
            self.call("logs", "create_log_group", logGroupName=name, tags={TAG_KEY: TAG_VALUE})
            self.call("logs", "put_retention_policy", logGroupName=name, retentionInDays=days)
            self.add("log group", name, CREATED, f"retention {days} days")
        elif group.get("retentionInDays") != days:
            self.call("logs", "put_retention_policy", logGroupName=name, retentionInDays=days)
            self.add("log group", name, UPDATED, f"retention {days} days")
        else:
            self.add("log group", name, EXISTS, f"retention {days} days")

    def secret(self, name: str) -> None:
        key = config.secret_key().hex()
        found = _absent(
            self.aws, "ssm", "get_parameter", ["ParameterNotFound"], Name=name, WithDecryption=True
        )
        if found is None:
            # The default key (aws/ssm) encrypts it; see policies.execution_role_policy.
            self.call(
                "ssm",
                "put_parameter",
                Name=name,
                Value=key,
                Type="SecureString",
                Description="starburst: HMAC key signing session records",
                Tags=_tags("Key"),
            )
            self.add("SSM parameter", name, CREATED, "SecureString, this client's key")
            return
        parameter = found["Parameter"]
        status, detail = EXISTS, "SecureString"
        if parameter.get("Type") != "SecureString":
            self.call(
                "ssm",
                "put_parameter",
                Name=name,
                Value=parameter["Value"],
                Type="SecureString",
                Overwrite=True,
            )
            status, detail = UPDATED, "re-stored as SecureString"
        if parameter["Value"] != key:
            # Kept as is: sessions already running sign with it, and the AWS backend reads the
            # key from this parameter at run time, so client and workers still agree.
            self.notes.append(
                f"the signing key in {name} differs from this machine's key "
                f"({config.home_dir() / 'secret.key'} or STARBURST_SECRET_KEY); kept both: "
                "AWS sessions read the key from the parameter"
            )
        self.add("SSM parameter", name, status, detail)

    # -- IAM ---------------------------------------------------------------------------------

    def role(
        self,
        name: str,
        trust: dict[str, Any],
        inline: dict[str, Any] | None,
        managed: Sequence[str],
        description: str,
    ) -> str:
        """Create or update the role ``name``; ``inline`` None: no inline policy of ours."""
        found = _absent(self.aws, "iam", "get_role", ["NoSuchEntity"], RoleName=name)
        changes: list[str] = []
        if found is None:
            role = self.call(
                "iam",
                "create_role",
                RoleName=name,
                Description=description,
                AssumeRolePolicyDocument=json.dumps(trust),
                Tags=_tags("Key"),
            )["Role"]
            status = CREATED
        else:
            role, status = found["Role"], EXISTS
            if not policies.same_policy(role.get("AssumeRolePolicyDocument", {}), trust):
                self.call(
                    "iam",
                    "update_assume_role_policy",
                    RoleName=name,
                    PolicyDocument=json.dumps(trust),
                )
                changes.append("trust policy")
        if inline is not None:
            current = (
                None
                if status == CREATED
                else _absent(
                    self.aws,
                    "iam",
                    "get_role_policy",
                    ["NoSuchEntity"],
                    RoleName=name,
                    PolicyName=INLINE_POLICY,
                )
            )
            if current is None or not policies.same_policy(current["PolicyDocument"], inline):
                self.call(
                    "iam",
                    "put_role_policy",
                    RoleName=name,
                    PolicyName=INLINE_POLICY,
                    PolicyDocument=json.dumps(inline),
                )
                changes.append("inline policy")
        attached = (
            set()
            if status == CREATED
            else {
                p["PolicyArn"]
                for p in self.aws.paginate(
                    "iam", "list_attached_role_policies", "AttachedPolicies", RoleName=name
                )
            }
        )
        for arn in managed:
            if arn not in attached:
                self.call("iam", "attach_role_policy", RoleName=name, PolicyArn=arn)
                changes.append(arn.rsplit("/", 1)[-1])
        if status == EXISTS and changes:
            status = UPDATED
        self.add("IAM role", name, status, "set " + ", ".join(changes) if status == UPDATED else "")
        return str(role["Arn"])

    def instance_profile(self, name: str) -> bool:
        """An instance profile of the same name holding the role ``name``; True if this run
        created it or added the role (EC2 may not see it for a few seconds)."""
        found = _absent(
            self.aws, "iam", "get_instance_profile", ["NoSuchEntity"], InstanceProfileName=name
        )
        if found is None:
            found = self.call(
                "iam", "create_instance_profile", InstanceProfileName=name, Tags=_tags("Key")
            )
            status = CREATED
        else:
            status = EXISTS
        if not any(r["RoleName"] == name for r in found["InstanceProfile"].get("Roles", [])):
            self.call(
                "iam", "add_role_to_instance_profile", InstanceProfileName=name, RoleName=name
            )
            status = CREATED if status == CREATED else UPDATED
        self.add("instance profile", name, status)
        return status != EXISTS

    # -- network -----------------------------------------------------------------------------

    def network(self, vpc_id: str | None) -> tuple[str, list[str]]:
        if vpc_id is None:
            vpcs = self.call(
                "ec2", "describe_vpcs", Filters=[{"Name": "isDefault", "Values": ["true"]}]
            )["Vpcs"]
            if not vpcs:
                raise AwsError(
                    f"{self.aws.region} has no default VPC: pass the VPC for the "
                    "workers (vpc_id=..., `starburst setup --vpc-id`)"
                )
            vpc_id = str(vpcs[0]["VpcId"])
        subnets = sorted(
            self.aws.paginate(
                "ec2",
                "describe_subnets",
                "Subnets",
                Filters=[{"Name": "vpc-id", "Values": [vpc_id]}],
            ),
            key=lambda s: (s.get("AvailabilityZone", ""), s["SubnetId"]),
        )
        if not subnets:
            raise AwsError(f"the VPC {vpc_id} has no subnets: workers need at least one")
        ids = [str(s["SubnetId"]) for s in subnets]
        self.add("subnets", vpc_id, EXISTS, f"{len(ids)} subnets in this VPC")
        return vpc_id, ids

    def security_group(self, name: str, vpc_id: str) -> str:
        groups = self.call(
            "ec2",
            "describe_security_groups",
            Filters=[
                {"Name": "group-name", "Values": [name]},
                {"Name": "vpc-id", "Values": [vpc_id]},
            ],
        )["SecurityGroups"]
        if not groups:
            # A new group has no inbound rules and allows all outbound traffic, which is what
            # workers need: they only call out (S3, ECR, logs); nothing connects to them.
            group_id = str(
                self.call(
                    "ec2",
                    "create_security_group",
                    GroupName=name,
                    VpcId=vpc_id,
                    Description="starburst workers: no inbound traffic",
                    TagSpecifications=[{"ResourceType": "security-group", "Tags": _tags("Key")}],
                )["GroupId"]
            )
            self.add("security group", group_id, CREATED, f"{name}, no inbound rules")
            return group_id
        group = groups[0]
        group_id = str(group["GroupId"])
        inbound = group.get("IpPermissions", [])
        if inbound:
            self.call(
                "ec2", "revoke_security_group_ingress", GroupId=group_id, IpPermissions=inbound
            )
            self.add(
                "security group",
                group_id,
                UPDATED,
                f"{name}: removed {len(inbound)} inbound rule(s)",
            )
        else:
            self.add("security group", group_id, EXISTS, f"{name}, no inbound rules")
        return group_id

    # -- ECS ---------------------------------------------------------------------------------

    def _describe_cluster(self, name: str) -> dict[str, Any] | None:
        found = self.call("ecs", "describe_clusters", clusters=[name])["clusters"]
        active = [c for c in found if c.get("status") == "ACTIVE"]
        return active[0] if active else None

    def cluster(self, name: str) -> str:
        if self._describe_cluster(name) is not None:
            return EXISTS
        self.call("ecs", "create_cluster", clusterName=name, tags=_tags("key"))
        return CREATED

    def cluster_providers(self, name: str, status: str, providers: Sequence[str]) -> None:
        found = self._describe_cluster(name)
        current = list(found.get("capacityProviders", [])) if found else []
        missing = [p for p in providers if p not in current]
        if missing:
            strategy = (found or {}).get("defaultCapacityProviderStrategy") or [
                {"capacityProvider": "FARGATE", "weight": 1}
            ]
            self.call(
                "ecs",
                "put_cluster_capacity_providers",
                cluster=name,
                capacityProviders=current + missing,
                defaultCapacityProviderStrategy=strategy,
            )
            if status == EXISTS:
                status = UPDATED
        detail = "capacity providers " + ", ".join(current + missing)
        self.add(
            "ECS cluster",
            name,
            status,
            detail if status != UPDATED else "added capacity providers " + ", ".join(missing),
        )

    # -- EC2 capacity ------------------------------------------------------------------------

    def ec2_capacity(
        self,
        names: ResourceNames,
        cluster: str,
        instance_types: tuple[str, ...],
        subnets: Sequence[str],
        security_group: str,
    ) -> str:
        arch = self._architecture(instance_types)
        ami = self._ecs_ami(arch)
        self.role(
            names.instance_role,
            policies.ec2_instance_trust_policy(),
            None,
            [policies.managed_policy_arn(policies.EC2_INSTANCE_MANAGED_POLICY, self.partition)],
            "starburst: lets EC2 container instances join the ECS cluster",
        )
        fresh = self.instance_profile(names.instance_role)
        template = self._launch_template(names, cluster, ami, security_group)
        group_arn = self._auto_scaling_group(
            names.ec2, template, instance_types, subnets, fresh_profile=fresh
        )
        return self._capacity_provider(names.ec2, group_arn)

    def _architecture(self, instance_types: tuple[str, ...]) -> str:
        try:
            found = self.call("ec2", "describe_instance_types", InstanceTypes=list(instance_types))[
                "InstanceTypes"
            ]
        except (AwsCredentialsError, AwsPermissionError):
            raise
        except AwsError as exc:
            if exc.code == "InvalidInstanceType":
                raise ValueError(
                    f"unknown instance type among {', '.join(instance_types)}: {exc}"
                ) from exc
            raise
        archs = {
            t["InstanceType"]: set(t["ProcessorInfo"]["SupportedArchitectures"]) for t in found
        }
        unknown = [t for t in instance_types if t not in archs]
        if unknown:
            raise ValueError(f"{self.aws.region} has no instance type {', '.join(unknown)}")
        common = set.intersection(*archs.values()) & {"x86_64", "arm64"}
        if not common:
            raise ValueError(
                "the instance types mix architectures ("
                + ", ".join(f"{t}: {'/'.join(sorted(a))}" for t, a in archs.items())
                + "); one launch template has one AMI: pick types of one architecture"
            )
        return "x86_64" if "x86_64" in common else "arm64"

    def _ecs_ami(self, arch: str) -> str:
        """The recommended ECS-optimised AMI (Amazon Linux 2023, else 2) for ``arch``."""
        suffix = "arm64/" if arch == "arm64" else ""
        for os_name in ("amazon-linux-2023", "amazon-linux-2"):
            name = _AMI_PARAMETER.format(os=os_name, arch=suffix)
            found = _absent(self.aws, "ssm", "get_parameter", ["ParameterNotFound"], Name=name)
            if found is not None:
                if os_name != "amazon-linux-2023":
                    self.notes.append(f"no Amazon Linux 2023 ECS AMI parameter here; used {name}")
                return str(found["Parameter"]["Value"])
        # Last resort (SSM public parameters missing, e.g. in an emulator): Amazon's newest
        # image by name.
        pattern = "al2023-ami-ecs-hvm-*" + ("arm64" if arch == "arm64" else "x86_64")
        images = self.call(
            "ec2",
            "describe_images",
            Owners=["amazon"],
            Filters=[{"Name": "name", "Values": [pattern]}],
        )["Images"]
        if not images:
            parameter = _AMI_PARAMETER.format(os="amazon-linux-2023", arch=suffix)
            raise AwsError(
                f"cannot find the ECS-optimised AMI in {self.aws.region}: neither "
                f"the SSM parameter {parameter} nor an image named {pattern}"
            )
        newest = max(images, key=lambda i: i.get("CreationDate", ""))
        self.notes.append(
            f"the SSM parameter for the ECS-optimised AMI is missing; used the "
            f"newest {pattern} image, {newest['ImageId']}"
        )
        return str(newest["ImageId"])

    def _launch_template(
        self, names: ResourceNames, cluster: str, ami: str, security_group: str
    ) -> str:
        user_data = (
            "#!/bin/bash\n"
            "cat >> /etc/ecs/ecs.config <<'EOF'\n"
            f"ECS_CLUSTER={cluster}\n"
            # Drain the instance on a Spot interruption notice so ECS stops its tasks (the
            # worker gets SIGTERM and releases its claim) within the two-minute warning.
            "ECS_ENABLE_SPOT_INSTANCE_DRAINING=true\n"
            "EOF\n"
        )
        data: dict[str, Any] = {
            "ImageId": ami,
            "IamInstanceProfile": {"Name": names.instance_role},
            "UserData": base64.b64encode(user_data.encode()).decode(),
            # A default VPC has no NAT gateway: instances need a public IP to reach ECR and S3.
            "NetworkInterfaces": [
                {
                    "DeviceIndex": 0,
                    "AssociatePublicIpAddress": True,
                    "Groups": [security_group],
                    "DeleteOnTermination": True,
                }
            ],
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": _tags("Key")}],
        }
        name = names.ec2
        found = _absent(
            self.aws,
            "ec2",
            "describe_launch_templates",
            ["InvalidLaunchTemplateName.NotFoundException"],
            LaunchTemplateNames=[name],
        )
        if found is None or not found.get("LaunchTemplates"):
            self.call(
                "ec2",
                "create_launch_template",
                LaunchTemplateName=name,
                LaunchTemplateData=data,
                TagSpecifications=[{"ResourceType": "launch-template", "Tags": _tags("Key")}],
            )
            self.add("launch template", name, CREATED, f"AMI {ami}")
            return name
        template_id = found["LaunchTemplates"][0]["LaunchTemplateId"]
        current = self.call(
            "ec2",
            "describe_launch_template_versions",
            LaunchTemplateId=template_id,
            Versions=["$Default"],
        )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
        differs = [k for k in ("ImageId", "UserData") if current.get(k) != data[k]]
        if current.get("IamInstanceProfile", {}).get("Name") != names.instance_role:
            differs.append("IamInstanceProfile")
        groups = [g for ni in current.get("NetworkInterfaces", []) for g in ni.get("Groups", [])]
        if groups != [security_group]:
            differs.append("NetworkInterfaces")
        if not differs:
            self.add("launch template", name, EXISTS, f"AMI {ami}")
            return name
        version = self.call(
            "ec2",
            "create_launch_template_version",
            LaunchTemplateId=template_id,
            LaunchTemplateData=data,
        )["LaunchTemplateVersion"]["VersionNumber"]
        self.call(
            "ec2",
            "modify_launch_template",
            LaunchTemplateId=template_id,
            DefaultVersion=str(version),
        )
        self.add(
            "launch template",
            name,
            UPDATED,
            f"version {version}: new {', '.join(differs)} (AMI {ami})",
        )
        return name

    def _auto_scaling_group(
        self,
        name: str,
        template: str,
        instance_types: tuple[str, ...],
        subnets: Sequence[str],
        *,
        fresh_profile: bool,
    ) -> str:
        mixed = {
            "LaunchTemplate": {
                "LaunchTemplateSpecification": {
                    "LaunchTemplateName": template,
                    "Version": "$Default",
                },
                "Overrides": [{"InstanceType": t} for t in instance_types],
            },
            # All Spot above a zero on-demand base; sessions asking for on-demand use Fargate.
            "InstancesDistribution": {
                "OnDemandBaseCapacity": 0,
                "OnDemandPercentageAboveBaseCapacity": 0,
                "SpotAllocationStrategy": "price-capacity-optimized",
            },
        }
        found = self.call(
            "autoscaling", "describe_auto_scaling_groups", AutoScalingGroupNames=[name]
        )["AutoScalingGroups"]
        if not found:
            # Parked at zero: nothing runs (or costs) until a session raises MaxSize, and ECS
            # managed scaling then sets the desired count within it.
            params: dict[str, Any] = {
                "AutoScalingGroupName": name,
                "MinSize": 0,
                "MaxSize": 0,
                "DesiredCapacity": 0,
                "VPCZoneIdentifier": ",".join(subnets),
                "MixedInstancesPolicy": mixed,
                "CapacityRebalance": True,
                # Managed termination protection needs new instances protected from scale-in.
                "NewInstancesProtectedFromScaleIn": True,
                "Tags": [
                    {"Key": TAG_KEY, "Value": TAG_VALUE, "PropagateAtLaunch": True},
                    {"Key": "AmazonECSManaged", "Value": "", "PropagateAtLaunch": True},
                ],
            }
            self._create_group(params, fresh_profile)
            self.add(
                "Auto Scaling group",
                name,
                CREATED,
                f"min=max=desired=0, Spot: {', '.join(instance_types)}",
            )
            found = self.call(
                "autoscaling", "describe_auto_scaling_groups", AutoScalingGroupNames=[name]
            )["AutoScalingGroups"]
            return str(found[0]["AutoScalingGroupARN"])
        group = found[0]
        overrides = (
            group.get("MixedInstancesPolicy", {}).get("LaunchTemplate", {}).get("Overrides", [])
        )
        if [o.get("InstanceType") for o in overrides] != list(instance_types):
            # Sizes are left alone: a running session may have raised them.
            self.call(
                "autoscaling",
                "update_auto_scaling_group",
                AutoScalingGroupName=name,
                MixedInstancesPolicy=mixed,
            )
            self.add(
                "Auto Scaling group", name, UPDATED, f"instance types {', '.join(instance_types)}"
            )
        else:
            self.add("Auto Scaling group", name, EXISTS, f"Spot: {', '.join(instance_types)}")
        return str(group["AutoScalingGroupARN"])

    def _create_group(self, params: dict[str, Any], fresh_profile: bool) -> None:
        # CreateAutoScalingGroup validates the launch template with a dry run, which refuses
        # an instance profile IAM has not propagated to EC2 yet (ValidationError, for some
        # seconds after it was created). Wait it out, only for a profile this run created.
        attempts = IAM_PROPAGATION_ATTEMPTS if fresh_profile else 1
        for attempt in range(1, attempts + 1):
            try:
                self.call("autoscaling", "create_auto_scaling_group", **params)
                return
            except AwsError as exc:
                if exc.code != "ValidationError" or attempt == attempts:
                    raise
                logger.info("setup: waiting for the new instance profile to reach EC2 (%s)", exc)
                time.sleep(IAM_PROPAGATION_DELAY)

    def _capacity_provider(self, name: str, group_arn: str) -> str:
        found = self.call("ecs", "describe_capacity_providers", capacityProviders=[name])[
            "capacityProviders"
        ]
        active = [p for p in found if p.get("status") == "ACTIVE"]
        if active:
            current = active[0].get("autoScalingGroupProvider", {}).get("autoScalingGroupArn")
            if current != group_arn:
                raise AwsError(
                    f"the ECS capacity provider {name} belongs to another Auto "
                    f"Scaling group ({current}); delete it or run teardown first"
                )
            self.add("capacity provider", name, EXISTS, "managed scaling")
            return name
        self.call(
            "ecs",
            "create_capacity_provider",
            name=name,
            tags=_tags("key"),
            autoScalingGroupProvider={
                "autoScalingGroupArn": group_arn,
                "managedScaling": {
                    "status": "ENABLED",
                    "targetCapacity": 100,
                    "minimumScalingStepSize": 1,
                    "maximumScalingStepSize": 10,
                },
                "managedTerminationProtection": "ENABLED",
                "managedDraining": "ENABLED",
            },
        )
        self.add("capacity provider", name, CREATED, "managed scaling, target 100%")
        return name


# -- teardown --------------------------------------------------------------------------------


def teardown(aws: Aws, settings: AwsSettings, *, delete_bucket: bool = False) -> TeardownReport:
    """Remove what :func:`setup` created, in dependency order.

    Missing pieces are reported ``absent``, never an error, so teardown can run twice (or
    after a failed setup). A piece AWS refuses to remove (tasks still running, a network
    interface still attached) is reported ``failed`` with the reason, and the rest goes on.

    The bucket holds session data and is kept unless ``delete_bucket``; even then, a bucket
    that setup adopted (not tagged ``starburst=true``) only loses the objects under the
    prefix. The local profile file is left in place.

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
    run = _Teardown(aws)
    names = resource_names(settings.cluster, settings.region)
    provider = settings.ec2_capacity_provider or names.ec2
    run.step(
        "capacity provider", provider, lambda: run.capacity_provider(settings.cluster, provider)
    )
    run.step(
        "Auto Scaling group",
        run.group or names.ec2,
        lambda: run.auto_scaling_group(run.group or names.ec2),
    )
    run.step("launch template", names.ec2, lambda: run.launch_template(names.ec2))
    run.step("ECS cluster", settings.cluster, lambda: run.cluster(settings.cluster))
    roles = [
        _role_name(settings.execution_role_arn)
        if settings.execution_role_arn
        else names.execution_role,
        _role_name(settings.task_role_arn) if settings.task_role_arn else names.task_role,
        names.instance_role,
    ]
    for role in roles:
        run.step("IAM role", role, functools.partial(run.role, role))
    if settings.security_group:
        run.step(
            "security group",
            settings.security_group,
            lambda: run.security_group(settings.security_group),
        )
    run.step("log group", settings.log_group, lambda: run.log_group(settings.log_group))
    run.step(
        "ECR repository", settings.ecr_repository, lambda: run.repository(settings.ecr_repository)
    )
    run.step(
        "SSM parameter", settings.secret_parameter, lambda: run.parameter(settings.secret_parameter)
    )
    run.step(
        "S3 bucket",
        settings.bucket,
        lambda: run.bucket(settings.bucket, settings.prefix, delete_bucket),
    )
    return TeardownReport(tuple(run.rows))


@dataclass
class _Teardown:
    aws: Aws
    rows: list[ResourceStatus] = field(default_factory=list)
    group: str = ""  # the Auto Scaling group named by the capacity provider

    def step(self, kind: str, name: str, fn: Callable[[], tuple[str, str]]) -> None:
        try:
            status, detail = fn()
        except AwsCredentialsError:
            raise
        except AwsError as exc:
            # Keep going: the other resources can still be removed, and a second run retries.
            status, detail = FAILED, str(exc)
            logger.warning("teardown: could not remove %s %s: %s", kind, name, exc)
        else:
            if status == REMOVED:
                logger.info("teardown: removed %s %s", kind, name)
        self.rows.append(ResourceStatus(kind, name, status, detail))

    def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        return self.aws.call(service, operation, **params)

    def capacity_provider(self, cluster: str, name: str) -> tuple[str, str]:
        found = self.call("ecs", "describe_capacity_providers", capacityProviders=[name])[
            "capacityProviders"
        ]
        active = [p for p in found if p.get("status") == "ACTIVE"]
        if not active:
            return ABSENT, ""
        arn = active[0].get("autoScalingGroupProvider", {}).get("autoScalingGroupArn", "")
        self.group = arn.rsplit("autoScalingGroupName/", 1)[-1] if arn else ""
        # A capacity provider in use by a cluster cannot be deleted: detach it first.
        clusters = self.call("ecs", "describe_clusters", clusters=[cluster])["clusters"]
        for c in clusters:
            if c.get("status") == "ACTIVE" and name in c.get("capacityProviders", []):
                self.call(
                    "ecs",
                    "put_cluster_capacity_providers",
                    cluster=cluster,
                    capacityProviders=[p for p in c["capacityProviders"] if p != name],
                    defaultCapacityProviderStrategy=[
                        s
                        for s in c.get("defaultCapacityProviderStrategy", [])
                        if s.get("capacityProvider") != name
                    ],
                )
        self.call("ecs", "delete_capacity_provider", capacityProvider=name)
        return REMOVED, ""

    def auto_scaling_group(self, name: str) -> tuple[str, str]:
        found = self.call(
            "autoscaling", "describe_auto_scaling_groups", AutoScalingGroupNames=[name]
        )["AutoScalingGroups"]
        if not found:
            return ABSENT, ""
        # ForceDelete terminates any instance still running instead of refusing.
        self.call(
            "autoscaling", "delete_auto_scaling_group", AutoScalingGroupName=name, ForceDelete=True
        )
        return REMOVED, "its instances are terminated"

    def launch_template(self, name: str) -> tuple[str, str]:
        found = _absent(
            self.aws,
            "ec2",
            "describe_launch_templates",
            ["InvalidLaunchTemplateName.NotFoundException"],
            LaunchTemplateNames=[name],
        )
        if found is None or not found.get("LaunchTemplates"):
            return ABSENT, ""
        self.call(
            "ec2",
            "delete_launch_template",
            LaunchTemplateId=found["LaunchTemplates"][0]["LaunchTemplateId"],
        )
        return REMOVED, ""

    def cluster(self, name: str) -> tuple[str, str]:
        found = self.call("ecs", "describe_clusters", clusters=[name])["clusters"]
        if not any(c.get("status") == "ACTIVE" for c in found):
            return ABSENT, ""
        try:
            self.call("ecs", "delete_cluster", cluster=name)
        except (AwsCredentialsError, AwsPermissionError):
            raise
        except AwsError as exc:
            if exc.code in (
                "ClusterContainsTasksException",
                "ClusterContainsServicesException",
                "ClusterContainsContainerInstancesException",
            ):
                raise AwsError(
                    f"the cluster still runs workers or instances ({exc.code}): stop "
                    "running sessions (or wait for instances to terminate) and run "
                    "teardown again",
                    exc.code,
                ) from exc
            raise
        return REMOVED, ""

    def role(self, name: str) -> tuple[str, str]:
        if _absent(self.aws, "iam", "get_role", ["NoSuchEntity"], RoleName=name) is None:
            return ABSENT, ""
        # IAM refuses to delete a role that still has policies or instance profiles.
        for policy in list(
            self.aws.paginate("iam", "list_role_policies", "PolicyNames", RoleName=name)
        ):
            self.call("iam", "delete_role_policy", RoleName=name, PolicyName=policy)
        for attached in list(
            self.aws.paginate(
                "iam", "list_attached_role_policies", "AttachedPolicies", RoleName=name
            )
        ):
            self.call("iam", "detach_role_policy", RoleName=name, PolicyArn=attached["PolicyArn"])
        profiles = self.call("iam", "list_instance_profiles_for_role", RoleName=name)[
            "InstanceProfiles"
        ]
        for profile in profiles:
            self.call(
                "iam",
                "remove_role_from_instance_profile",
                InstanceProfileName=profile["InstanceProfileName"],
                RoleName=name,
            )
            self.call(
                "iam", "delete_instance_profile", InstanceProfileName=profile["InstanceProfileName"]
            )
        self.call("iam", "delete_role", RoleName=name)
        return REMOVED, "and its instance profile" if profiles else ""

    def security_group(self, group_id: str) -> tuple[str, str]:
        try:
            self.call("ec2", "delete_security_group", GroupId=group_id)
        except (AwsCredentialsError, AwsPermissionError):
            raise
        except AwsError as exc:
            if exc.code == "InvalidGroup.NotFound":
                return ABSENT, ""
            if exc.code == "DependencyViolation":
                raise AwsError(
                    f"the security group {group_id} is still attached to network "
                    "interfaces of stopping workers: run teardown again in a few "
                    "minutes",
                    exc.code,
                ) from exc
            raise
        return REMOVED, ""

    def log_group(self, name: str) -> tuple[str, str]:
        gone = _absent(
            self.aws, "logs", "delete_log_group", ["ResourceNotFoundException"], logGroupName=name
        )
        return (ABSENT, "") if gone is None else (REMOVED, "with its worker logs")

    def repository(self, name: str) -> tuple[str, str]:
        gone = _absent(
            self.aws,
            "ecr",
            "delete_repository",
            ["RepositoryNotFoundException"],
            repositoryName=name,
            force=True,
        )
        return (ABSENT, "") if gone is None else (REMOVED, "with its images")

    def parameter(self, name: str) -> tuple[str, str]:
        gone = _absent(self.aws, "ssm", "delete_parameter", ["ParameterNotFound"], Name=name)
        return (ABSENT, "") if gone is None else (REMOVED, "")

    def bucket(self, bucket: str, prefix: str, delete: bool) -> tuple[str, str]:
        tags = _absent(
            self.aws, "s3", "get_bucket_tagging", ["NoSuchTagSet", "NoSuchBucket"], Bucket=bucket
        )
        if (
            tags is None
            and _absent(self.aws, "s3", "head_bucket", ["404", "NoSuchBucket"], Bucket=bucket)
            is None
        ):
            return ABSENT, ""
        if not delete:
            return KEPT, "it holds session data: pass delete_bucket=True (--delete-bucket)"
        ours = any(
            t.get("Key") == TAG_KEY and t.get("Value") == TAG_VALUE
            for t in (tags or {}).get("TagSet", [])
        )
        if not ours:
            count = self._empty(bucket, f"{prefix}/")
            return KEPT, (
                f"not created by setup: deleted only the {count} object(s) under {prefix}/"
            )
        self._empty(bucket, "")
        self.call("s3", "delete_bucket", Bucket=bucket)
        return REMOVED, "emptied and deleted"

    def _empty(self, bucket: str, prefix: str) -> int:
        """Delete every object version and delete marker under ``prefix``; their count."""
        deleted = 0
        while True:
            page = self.call(
                "s3", "list_object_versions", Bucket=bucket, Prefix=prefix, MaxKeys=1000
            )
            objects = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in (*page.get("Versions", []), *page.get("DeleteMarkers", []))
            ]
            if not objects:
                return deleted
            # DeleteObjects takes at most 1,000 keys per request.
            result = self.call(
                "s3",
                "delete_objects",
                Bucket=bucket,
                Delete={"Objects": objects[:1000], "Quiet": True},
            )
            if result.get("Errors"):
                first = result["Errors"][0]
                raise AwsError(
                    f"could not empty the bucket {bucket}: {first.get('Key')}: "
                    f"{first.get('Code')} {first.get('Message')}",
                    str(first.get("Code", "")),
                )
            deleted += len(objects[:1000])
