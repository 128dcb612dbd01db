"""``starburst doctor`` against moto: green after setup, and each failure with its fix."""

from __future__ import annotations

import dataclasses
import json

import pytest
from botocore.stub import Stubber

from starburst_executor.aws.client import Aws
from starburst_executor.aws.doctor import Check, doctor, format_checks
from starburst_executor.aws.settings import AwsSettings
from starburst_executor.aws.setup import setup

ACCOUNT = "123456789012"
REPOSITORY = "starburst-worker"
IMAGE = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/{REPOSITORY}:py311-abc123"

ALL_CHECKS = ["credentials", "region", "profile", "bucket", "bucket security",
              "execution role", "task role", "ECS cluster", "log group", "network",
              "signing key", "worker image", "Fargate vCPU quota"]


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def push_image(aws: Aws, tag: str) -> None:
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2,
                   "digest": "sha256:" + "a" * 64},
        "layers": [],
    }
    aws.call("ecr", "put_image", repositoryName=REPOSITORY, imageTag=tag,
             imageManifest=json.dumps(manifest))


@pytest.fixture
def ready(moto_aws_client: Aws, moto_serves_tls: None) -> AwsSettings:
    """A set-up account with a worker image pushed and recorded in the profile."""
    settings = setup(moto_aws_client).settings
    push_image(moto_aws_client, "py311-abc123")
    settings = dataclasses.replace(settings, image=IMAGE)
    settings.save()
    return settings


def test_all_green_after_setup_except_the_unknown_quota(moto_aws_client: Aws,
                                                        ready: AwsSettings) -> None:
    checks = doctor(moto_aws_client, AwsSettings.load())
    assert [c.name for c in checks] == ALL_CHECKS
    failed = [c for c in checks if not c.ok]
    assert failed == []
    warnings = [c for c in checks if c.warning]
    # moto has no Service Quotas for Fargate: a warning, not a failure.
    assert [c.name for c in warnings] == ["Fargate vCPU quota"]
    assert "unknown (default assumed: 6 vCPU)" in warnings[0].detail
    assert "reachable and writable" in by_name(checks)["bucket"].detail
    text = format_checks(checks)
    assert text.count("✓") == len(ALL_CHECKS) - 1 and "✗" not in text
    assert "13 checks: 12 passed, 0 failed, 1 warning(s)" in text


def test_the_probe_leaves_nothing_behind(moto_aws_client: Aws, ready: AwsSettings) -> None:
    doctor(moto_aws_client, ready)
    listed = moto_aws_client.call("s3", "list_objects_v2", Bucket=ready.bucket)
    assert listed.get("Contents", []) == []


def test_before_setup_says_run_setup(moto_aws_client: Aws) -> None:
    checks = doctor(moto_aws_client, None)
    assert [c.name for c in checks] == ["credentials", "region", "profile"]
    profile = checks[-1]
    assert not profile.ok and profile.fix == "run `starburst setup`"
    assert "✗ profile" in format_checks(checks)
    assert "    fix: run `starburst setup`" in format_checks(checks)


def test_a_profile_whose_resources_are_gone_says_run_setup(moto_aws_client: Aws) -> None:
    settings = AwsSettings(
        region="us-east-1", bucket="starburst-gone", image=IMAGE,
        execution_role_arn=f"arn:aws:iam::{ACCOUNT}:role/gone-execution",
        task_role_arn=f"arn:aws:iam::{ACCOUNT}:role/gone-task",
        subnets=("subnet-0123456789abcdef0",), security_group="sg-0123456789abcdef0",
    )
    checks = by_name(doctor(moto_aws_client, settings))
    for name in ("bucket", "execution role", "task role", "ECS cluster", "log group",
                 "network", "signing key"):
        assert not checks[name].ok, name
        assert "starburst setup" in checks[name].fix, name
    assert "does not exist" in checks["bucket"].detail
    assert not checks["worker image"].ok
    assert checks["worker image"].fix.startswith("run `starburst image build`")


def test_no_credentials(moto_one_account: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    aws = Aws("us-east-1", retry_sleep=lambda _: None)  # a fresh session: no cached keys
    settings = AwsSettings(region="us-east-1", bucket="b-ucket")
    checks = doctor(aws, settings)
    assert [c.name for c in checks] == ["credentials", "region", "profile"]
    credentials = checks[0]
    assert not credentials.ok
    assert "no AWS credentials" in credentials.detail
    assert "AWS_PROFILE" in credentials.fix and "aws sso login" in credentials.fix


def test_region_mismatch(moto_aws_client: Aws, ready: AwsSettings) -> None:
    settings = dataclasses.replace(ready, region="eu-west-1")
    checks = doctor(moto_aws_client, settings)
    assert [c.name for c in checks] == ["credentials", "region", "profile"]
    region = checks[1]
    assert not region.ok
    assert "us-east-1" in region.detail and "eu-west-1" in region.detail
    assert region.fix.startswith("export AWS_REGION=eu-west-1")


def test_missing_image(moto_aws_client: Aws, ready: AwsSettings) -> None:
    untagged = dataclasses.replace(ready, image=IMAGE.replace("py311-abc123", "py311-old"))
    image = by_name(doctor(moto_aws_client, untagged))["worker image"]
    assert not image.ok and "is not in ECR" in image.detail
    assert image.fix.startswith("run `starburst image build`")

    none = by_name(doctor(moto_aws_client, dataclasses.replace(ready, image="")))
    assert not none["worker image"].ok
    assert none["worker image"].fix.startswith("run `starburst image build`")
    assert all(c.ok for name, c in none.items() if name != "worker image")


def test_drift_is_reported_with_a_fix(moto_aws_client: Aws, ready: AwsSettings) -> None:
    aws = moto_aws_client
    aws.call("ec2", "authorize_security_group_ingress", GroupId=ready.security_group,
             IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                             "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    aws.call("s3", "delete_bucket_policy", Bucket=ready.bucket)
    aws.call("iam", "put_role_policy", RoleName=ready.task_role_arn.rsplit("/", 1)[-1],
             PolicyName="starburst", PolicyDocument=json.dumps({
                 "Version": "2012-10-17", "Statement": [{
                     "Effect": "Allow", "Action": "s3:GetObject",
                     "Resource": "arn:aws:s3:::other-bucket/*"}]}))
    checks = by_name(doctor(aws, ready))
    assert "inbound" in checks["network"].detail and not checks["network"].ok
    assert "plain-HTTP" in checks["bucket security"].detail
    assert "differs" in checks["task role"].detail
    for name in ("network", "bucket security", "task role"):
        assert "starburst setup" in checks[name].fix
    setup(aws)  # the fix the checks name
    assert all(c.ok for c in doctor(aws, ready))


def test_a_denied_check_names_the_permission(moto_aws_client: Aws, ready: AwsSettings) -> None:
    with Stubber(moto_aws_client.client("ssm")) as stub:
        stub.add_client_error("get_parameter", service_error_code="AccessDeniedException",
                              http_status_code=400)
        checks = by_name(doctor(moto_aws_client, ready))
    key = checks["signing key"]
    assert not key.ok
    assert "ssm:GetParameter" in key.fix


def test_format_checks_marks_each_outcome() -> None:
    text = format_checks([
        Check("credentials", True, "account 1"),
        Check("bucket", False, "missing", "run `starburst setup`"),
        Check("Fargate vCPU quota", True, "unknown", "see the console", warning=True),
    ])
    assert text.splitlines() == [
        "✓ credentials: account 1",
        "✗ bucket: missing",
        "    fix: run `starburst setup`",
        "! Fargate vCPU quota: unknown",
        "    note: see the console",
        "3 checks: 1 passed, 1 failed, 1 warning(s)",
    ]

