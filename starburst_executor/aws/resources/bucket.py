"""The session bucket: created (or adopted), made private, encrypted, TLS-only and expiring
the session prefix; checked; emptied and deleted (or only its prefix emptied when adopted).

An adopted bucket keeps its own lifecycle rules and policy statements: setup adds or
replaces only its own (rule ``starburst-expire-{prefix}``, statement ``TLS_SID``). Its default
encryption is kept too; when that is a customer-managed KMS key, every reader and writer
needs ``kms:Decrypt`` / ``kms:GenerateDataKey`` / ``kms:Encrypt`` on that key, so
:func:`ensure` returns the key's ARN and setup grants it to the task role and names it in
the user policy (the key's own key policy must let IAM policies of the account grant it,
which the default key policy does).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from starburst_executor.aws import policies
from starburst_executor.aws.resources.base import (
    ABSENT,
    CREATED,
    EXISTS,
    KEPT,
    REMOVED,
    TAG_KEY,
    TAG_VALUE,
    UPDATED,
    CheckFailed,
    Place,
    Run,
    absent,
    tagged,
    tags,
)
from starburst_executor.errors import AwsCredentialsError, AwsError, AwsPermissionError

__all__ = ["BucketSpec", "check", "check_reachable", "ensure", "remove"]

_PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}
_KMS_ALGORITHMS = ("aws:kms", "aws:kms:dsse")


@dataclass(frozen=True)
class BucketSpec:
    """The bucket as setup wants it: ``prefix`` holds sessions, expiring after ``days``."""

    bucket: str
    prefix: str
    days: int

    @property
    def rule_id(self) -> str:
        return f"starburst-expire-{self.prefix}"

    def lifecycle_rule(self) -> dict[str, Any]:
        return {
            "ID": self.rule_id,
            "Status": "Enabled",
            "Filter": {"Prefix": f"{self.prefix}/"},
            "Expiration": {"Days": self.days},
            # Parts of uploads a worker never completed would otherwise be billed forever.
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }


# -- reading the state (setup and doctor judge with these) ----------------------------------


def _region(place: Place, bucket: str) -> str | None:
    """The bucket's region, or None when it does not exist."""
    try:
        place.call("s3", "head_bucket", Bucket=bucket)
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
    location = place.call("s3", "get_bucket_location", Bucket=bucket).get("LocationConstraint")
    # us-east-1 answers None; the legacy "EU" means eu-west-1.
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location)


def _encryption_rules(place: Place, bucket: str) -> list[dict[str, Any]]:
    found = absent(
        place.aws,
        "s3",
        "get_bucket_encryption",
        ["ServerSideEncryptionConfigurationNotFoundError"],
        Bucket=bucket,
    )
    rules = (found or {}).get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
    return [r.get("ApplyServerSideEncryptionByDefault", {}) for r in rules]


def _policy_statements(place: Place, bucket: str) -> list[dict[str, Any]] | None:
    found = absent(place.aws, "s3", "get_bucket_policy", ["NoSuchBucketPolicy"], Bucket=bucket)
    if found is None:
        return None
    statements = json.loads(found["Policy"]).get("Statement", [])
    return [statements] if isinstance(statements, dict) else list(statements)


def _public_access_blocked(place: Place, bucket: str) -> bool:
    found = absent(
        place.aws,
        "s3",
        "get_public_access_block",
        ["NoSuchPublicAccessBlockConfiguration"],
        Bucket=bucket,
    )
    config = (found or {}).get("PublicAccessBlockConfiguration", {})
    return all(config.get(k) for k in _PUBLIC_ACCESS_BLOCK)


def _lifecycle_rules(place: Place, bucket: str) -> list[dict[str, Any]]:
    found = absent(
        place.aws,
        "s3",
        "get_bucket_lifecycle_configuration",
        ["NoSuchLifecycleConfiguration"],
        Bucket=bucket,
    )
    return list((found or {}).get("Rules", []))


def _lifecycle_ok(rules: list[dict[str, Any]], spec: BucketSpec) -> bool:
    wanted = spec.lifecycle_rule()
    mine = next((r for r in rules if r.get("ID") == spec.rule_id), None)
    return mine is not None and all(mine.get(k) == v for k, v in wanted.items())


def _tls_ok(statements: list[dict[str, Any]] | None, wanted: dict[str, Any]) -> bool:
    return any(policies.same_policy(s, wanted) for s in statements or [])


def kms_key(place: Place, rules: list[dict[str, Any]]) -> str:
    """The ARN of the customer-managed KMS key of the bucket's default encryption, or "".

    SSE-S3 and the AWS-managed ``aws/s3`` key need no grant (its key policy lets every
    principal of the account use it through S3).

    Raises:
        AwsError: the key cannot be resolved (no ``kms:DescribeKey``, or it is gone).
    """
    for rule in rules:
        if rule.get("SSEAlgorithm") not in _KMS_ALGORITHMS:
            continue
        key = str(rule.get("KMSMasterKeyID") or "")
        if not key or key.endswith("alias/aws/s3"):
            return ""
        if key.startswith("arn:") and ":key/" in key:
            return key  # an explicit key ARN: AWS-managed keys are named by their alias
        try:
            metadata = place.call("kms", "describe_key", KeyId=key)["KeyMetadata"]
        except AwsError as exc:
            raise AwsError(
                f"the bucket's default encryption uses the KMS key {key}, which setup cannot "
                f"resolve ({exc}). Allow kms:DescribeKey on it, or use a bucket encrypted "
                "with SSE-S3 (--bucket)",
                exc.code,
            ) from exc
        return "" if metadata.get("KeyManager") == "AWS" else str(metadata["Arn"])
    return ""


# -- setup -----------------------------------------------------------------------------------


def ensure(run: Run, spec: BucketSpec) -> str:
    """Create or adopt the bucket and bring it to :class:`BucketSpec`.

    Returns:
        The ARN of the customer-managed KMS key encrypting it, or "".

    Raises:
        AwsError: the bucket is in another region or owned by someone else; its KMS key
            cannot be resolved.
    """
    bucket = spec.bucket
    region = _region(run, bucket)
    if region is None:
        params: dict[str, Any] = {"Bucket": bucket}
        # us-east-1 rejects a LocationConstraint naming itself; every other region needs one.
        if run.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": run.region}
        run.call("s3", "create_bucket", **params)
        run.call("s3", "put_bucket_tagging", Bucket=bucket, Tagging={"TagSet": tags("Key")})
        status, detail = CREATED, ""
    elif region != run.region:
        raise AwsError(
            f"the bucket {bucket} is in {region}, not {run.region}: run "
            f"setup in {region} (AWS_REGION={region}) or pass another --bucket"
        )
    else:
        found = absent(run.aws, "s3", "get_bucket_tagging", ["NoSuchTagSet"], Bucket=bucket)
        ours = tagged((found or {}).get("TagSet", []))
        status, detail = EXISTS, "" if ours else "adopted: teardown never deletes it"
    changes: list[str] = []
    if not _public_access_blocked(run, bucket):
        run.call(
            "s3",
            "put_public_access_block",
            Bucket=bucket,
            PublicAccessBlockConfiguration=_PUBLIC_ACCESS_BLOCK,
        )
        changes.append("public access block")
    rules = _encryption_rules(run, bucket)
    if not any(r.get("SSEAlgorithm") for r in rules):
        run.call(
            "s3",
            "put_bucket_encryption",
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}],
            },
        )
        changes.append("encryption")
        rules = [{"SSEAlgorithm": "AES256"}]
    key = kms_key(run, rules)  # a key the owner chose is kept: it encrypts at rest too
    if key:
        detail = ", ".join(filter(None, [detail, f"KMS key {key}: granted to the task role"]))
    statements = _policy_statements(run, bucket)
    wanted = policies.tls_statement(bucket, run.partition)
    if not _tls_ok(statements, wanted):
        # Keep an adopted bucket's own statements; replace only ours.
        kept = [s for s in statements or [] if s.get("Sid") != policies.TLS_SID]
        document = {"Version": policies.VERSION, "Statement": [*kept, wanted]}
        run.call("s3", "put_bucket_policy", Bucket=bucket, Policy=json.dumps(document))
        changes.append("TLS-only policy")
    rules_now = _lifecycle_rules(run, bucket)
    if not _lifecycle_ok(rules_now, spec):
        others = [r for r in rules_now if r.get("ID") != spec.rule_id]
        run.call(
            "s3",
            "put_bucket_lifecycle_configuration",
            Bucket=bucket,
            LifecycleConfiguration={"Rules": [*others, spec.lifecycle_rule()]},
        )
        changes.append(f"lifecycle ({spec.days} days)")
    if changes and status == EXISTS:
        status, detail = UPDATED, ", ".join(filter(None, [detail, "set " + ", ".join(changes)]))
    run.add("S3 bucket", bucket, status, detail)
    return key


# -- doctor ----------------------------------------------------------------------------------


def check_reachable(place: Place, spec: BucketSpec) -> str:
    """The session prefix can be listed, written and deleted (one probe object)."""
    prefix = f"{spec.prefix}/" if spec.prefix else ""
    # A prefixed listing, not HeadBucket: the user policy allows ListBucket only under the
    # prefix, which HeadBucket (no prefix) would not satisfy.
    listed = absent(
        place.aws,
        "s3",
        "list_objects_v2",
        ["NoSuchBucket"],
        Bucket=spec.bucket,
        Prefix=prefix,
        MaxKeys=1,
    )
    if listed is None:
        raise CheckFailed(f"the bucket {spec.bucket} does not exist")
    probe = f"{prefix}.starburst-doctor/{uuid.uuid4().hex}"
    place.call("s3", "put_object", Bucket=spec.bucket, Key=probe, Body=b"")
    place.call("s3", "delete_object", Bucket=spec.bucket, Key=probe)
    return f"s3://{spec.bucket}/{prefix} is reachable and writable"


def check(place: Place, spec: BucketSpec, granted_key: str = "") -> str:
    """Encrypted, TLS-only, not public, expiring the prefix as setup sets it; a KMS key the
    profile does not name (``granted_key``) is a failure: workers could not use it."""
    bucket = spec.bucket
    problems: list[str] = []
    rules = _encryption_rules(place, bucket)
    algorithms = [str(r.get("SSEAlgorithm")) for r in rules if r.get("SSEAlgorithm")]
    if not algorithms:
        problems.append("no default encryption")
    else:
        key = kms_key(place, rules)
        if key and key != granted_key:
            problems.append(f"a KMS key ({key}) the task role is not granted")
    statements = _policy_statements(place, bucket)
    if not _tls_ok(statements, policies.tls_statement(bucket, place.partition)):
        problems.append("no policy denying plain-HTTP requests")
    if not _public_access_blocked(place, bucket):
        problems.append("public access not fully blocked")
    if not _lifecycle_ok(_lifecycle_rules(place, bucket), spec):
        problems.append(f"no lifecycle rule expiring {spec.prefix}/ after {spec.days} days")
    if problems:
        raise CheckFailed(f"the bucket {bucket} has " + "; ".join(problems))
    return (
        f"encrypted ({', '.join(algorithms)}), TLS only, not public, "
        f"sessions expire after {spec.days} days"
    )


# -- teardown --------------------------------------------------------------------------------


def remove(place: Place, spec: BucketSpec, delete: bool) -> tuple[str, str]:
    """Keep the bucket unless ``delete``; even then, an adopted bucket (no starburst tag)
    only loses the objects under the prefix."""
    bucket = spec.bucket
    found = absent(
        place.aws, "s3", "get_bucket_tagging", ["NoSuchTagSet", "NoSuchBucket"], Bucket=bucket
    )
    if (
        found is None
        and absent(place.aws, "s3", "head_bucket", ["404", "NoSuchBucket"], Bucket=bucket) is None
    ):
        return ABSENT, ""
    if not delete:
        return KEPT, "it holds session data: pass delete_bucket=True (--delete-bucket)"
    if not tagged((found or {}).get("TagSet", []), TAG_KEY, TAG_VALUE):
        count = _empty(place, bucket, f"{spec.prefix}/")
        return (
            KEPT,
            f"not created by setup: deleted only the {count} object(s) under {spec.prefix}/",
        )
    _empty(place, bucket, "")
    place.call("s3", "delete_bucket", Bucket=bucket)
    return REMOVED, "emptied and deleted"


def _empty(place: Place, bucket: str, prefix: str) -> int:
    """Delete every object version and delete marker under ``prefix``; their count."""
    deleted = 0
    while True:
        page = place.call("s3", "list_object_versions", Bucket=bucket, Prefix=prefix, MaxKeys=1000)
        objects = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in (*page.get("Versions", []), *page.get("DeleteMarkers", []))
        ]
        if not objects:
            return deleted
        # DeleteObjects takes at most 1,000 keys per request.
        result = place.call(
            "s3", "delete_objects", Bucket=bucket, Delete={"Objects": objects[:1000], "Quiet": True}
        )
        if result.get("Errors"):
            first = result["Errors"][0]
            raise AwsError(
                f"could not empty the bucket {bucket}: {first.get('Key')}: "
                f"{first.get('Code')} {first.get('Message')}",
                str(first.get("Code", "")),
            )
        deleted += len(objects[:1000])
