"""``starburst doctor`` against moto: green after setup, and each failure with its fix."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from botocore.stub import Stubber

from starburst_executor.aws.client import Aws
from starburst_executor.aws.doctor import Check, format_checks
from starburst_executor.aws.doctor import doctor as run_doctor
from starburst_executor.aws.settings import AwsSettings
from starburst_executor.aws.setup import setup

ACCOUNT = "123456789012"
REPOSITORY = "starburst-worker"
IMAGE = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/{REPOSITORY}:py311-abc123"

ALL_CHECKS = [
    "credentials",
    "region",
    "profile",
    "bucket",
    "bucket security",
    "execution role",
    "task role",
    "ECS cluster",
    "log group",
    "network",
    "signing key",
    "ECR repository",
    "worker image",
    "image starts",
    "Fargate vCPU quota",
]
# No docker for the image check unless a test provides one: a real docker would try to pull
# the (fake) ECR image from AWS.
NO_DOCKER = "/nonexistent/docker"


def doctor(aws: Aws, settings: AwsSettings | None, docker: str = NO_DOCKER) -> list[Check]:
    return run_doctor(aws, settings, docker=docker)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def push_image(aws: Aws, tag: str) -> None:
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 2,
            "digest": "sha256:" + "a" * 64,
        },
        "layers": [],
    }
    aws.call(
        "ecr",
        "put_image",
        repositoryName=REPOSITORY,
        imageTag=tag,
        imageManifest=json.dumps(manifest),
    )


@pytest.fixture
def ready(moto_aws_client: Aws, moto_serves_tls: None) -> AwsSettings:
    """A set-up account with a worker image pushed and recorded in the profile."""
    settings = setup(moto_aws_client).settings
    push_image(moto_aws_client, "py311-abc123")
    settings = dataclasses.replace(settings, image=IMAGE)
    settings.save()
    return settings


@pytest.mark.slow
def test_all_green_after_setup_except_the_unknown_quota(
    moto_aws_client: Aws, ready: AwsSettings
) -> None:
    checks = doctor(moto_aws_client, AwsSettings.load())
    assert [c.name for c in checks] == ALL_CHECKS
    failed = [c for c in checks if not c.ok]
    assert failed == []
    warnings = [c for c in checks if c.warning]
    # moto has no Service Quotas for Fargate and no GetDownloadUrlForLayer (the image's
    # config cannot be read without docker): warnings, not failures.
    assert [c.name for c in warnings] == ["image starts", "Fargate vCPU quota"]
    assert "unknown (default assumed: 6 vCPU)" in warnings[1].detail
    assert "not verified" in warnings[0].detail
    assert "reachable and writable" in by_name(checks)["bucket"].detail
    text = format_checks(checks)
    assert text.count("✓") == len(ALL_CHECKS) - 2 and "✗" not in text
    assert "15 checks: 13 passed, 0 failed, 2 warning(s)" in text


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_profile_whose_resources_are_gone_says_run_setup(moto_aws_client: Aws) -> None:
    settings = AwsSettings(
        region="us-east-1",
        bucket="starburst-gone",
        image=IMAGE,
        execution_role_arn=f"arn:aws:iam::{ACCOUNT}:role/gone-execution",
        task_role_arn=f"arn:aws:iam::{ACCOUNT}:role/gone-task",
        subnets=("subnet-0123456789abcdef0",),
        security_group="sg-0123456789abcdef0",
    )
    checks = by_name(doctor(moto_aws_client, settings))
    for name in (
        "bucket",
        "execution role",
        "task role",
        "ECS cluster",
        "log group",
        "network",
        "signing key",
    ):
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


@pytest.mark.slow
def test_missing_image(moto_aws_client: Aws, ready: AwsSettings) -> None:
    untagged = dataclasses.replace(ready, image=IMAGE.replace("py311-abc123", "py311-old"))
    image = by_name(doctor(moto_aws_client, untagged))["worker image"]
    assert not image.ok and "is not in ECR" in image.detail
    assert image.fix.startswith("run `starburst image build`")

    none = by_name(doctor(moto_aws_client, dataclasses.replace(ready, image="")))
    assert not none["worker image"].ok
    assert none["worker image"].fix.startswith("run `starburst image build`")
    assert all(c.ok for name, c in none.items() if name not in ("worker image", "image starts"))


@pytest.mark.slow
def test_drift_is_reported_with_a_fix(moto_aws_client: Aws, ready: AwsSettings) -> None:
    aws = moto_aws_client
    aws.call(
        "ec2",
        "authorize_security_group_ingress",
        GroupId=ready.security_group,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            }
        ],
    )
    aws.call("s3", "delete_bucket_policy", Bucket=ready.bucket)
    aws.call(
        "iam",
        "put_role_policy",
        RoleName=ready.task_role_arn.rsplit("/", 1)[-1],
        PolicyName="starburst",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "s3:GetObject",
                        "Resource": "arn:aws:s3:::other-bucket/*",
                    }
                ],
            }
        ),
    )
    checks = by_name(doctor(aws, ready))
    assert "inbound" in checks["network"].detail and not checks["network"].ok
    assert "plain-HTTP" in checks["bucket security"].detail
    assert "differs" in checks["task role"].detail
    for name in ("network", "bucket security", "task role"):
        assert "starburst setup" in checks[name].fix
    setup(aws)  # the fix the checks name
    assert all(c.ok for c in doctor(aws, ready))


@pytest.mark.slow
def test_a_denied_check_names_the_permission(moto_aws_client: Aws, ready: AwsSettings) -> None:
    with Stubber(moto_aws_client.client("ssm")) as stub:
        stub.add_client_error(
            "get_parameter", service_error_code="AccessDeniedException", http_status_code=400
        )
        checks = by_name(doctor(moto_aws_client, ready))
    key = checks["signing key"]
    assert not key.ok
    assert "ssm:GetParameter" in key.fix


def test_format_checks_marks_each_outcome() -> None:
    text = format_checks(
        [
            Check("credentials", True, "account 1"),
            Check("bucket", False, "missing", "run `starburst setup`"),
            Check("Fargate vCPU quota", True, "unknown", "see the console", warning=True),
        ]
    )
    assert text.splitlines() == [
        "✓ credentials: account 1",
        "✗ bucket: missing",
        "    fix: run `starburst setup`",
        "! Fargate vCPU quota: unknown",
        "    note: see the console",
        "3 checks: 1 passed, 1 failed, 1 warning(s)",
    ]


# -- the image starts: architecture and entrypoint ---------------------------------------------


def fake_docker(tmp_path: Any, inspect: dict[str, Any]) -> str:
    """A docker executable answering ``image inspect`` with ``inspect`` (no daemon, no pull).

    It proves how doctor judges an image's config, not that docker reports it so: the
    container e2e tests run the real docker on a real image."""
    import stat
    import sys

    script = tmp_path / "docker"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"assert sys.argv[1:3] == ['image', 'inspect'], sys.argv\n"
        f"print(json.dumps([{inspect!r}]))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


GOOD = {
    "Architecture": "amd64",
    "Config": {"Entrypoint": ["/usr/local/bin/starburst-worker"], "Cmd": None},
}


@pytest.mark.parametrize(
    "inspect, architecture, problem",
    [
        (GOOD, "", None),
        ({**GOOD, "Architecture": "arm64"}, "ARM64", None),
        (
            {
                "Architecture": "amd64",
                "Config": {"Entrypoint": ["python", "-m", "starburst_executor.worker"], "Cmd": []},
            },
            "",
            None,
        ),
        ({**GOOD, "Architecture": "arm64"}, "", "built for arm64 (ARM64) but tasks run on X86_64"),
        (
            {"Architecture": "amd64", "Config": {"Entrypoint": None, "Cmd": ["python3"]}},
            "",
            "does not start the worker",
        ),
        # the issue-7 fault: the worker as ENTRYPOINT and again as arguments
        (
            {
                "Architecture": "amd64",
                "Config": {
                    "Entrypoint": ["python", "-m", "starburst_executor.worker"],
                    "Cmd": ["python", "-m", "starburst_executor.worker"],
                },
            },
            "",
            "adds arguments",
        ),
    ],
)
@pytest.mark.slow
def test_image_starts_judges_architecture_and_entrypoint(
    moto_aws_client: Aws,
    ready: AwsSettings,
    tmp_path: Any,
    inspect: dict[str, Any],
    architecture: str,
    problem: str | None,
) -> None:
    settings = dataclasses.replace(ready, image_architecture=architecture)
    check = by_name(doctor(moto_aws_client, settings, fake_docker(tmp_path, inspect)))[
        "image starts"
    ]
    if problem is None:
        assert check.ok and not check.warning, check
        assert "read with docker" in check.detail
    else:
        assert not check.ok and problem in check.detail, check
        assert "starburst image build" in check.fix


@pytest.mark.slow
def test_image_config_is_read_from_ecr_without_docker(
    moto_aws_client: Aws, ready: AwsSettings
) -> None:
    # moto implements no GetDownloadUrlForLayer: the two registry calls are stubbed, and the
    # config blob is served from 127.0.0.1 as ECR's pre-signed URL would serve it.
    import http.server
    import threading

    blob = json.dumps(
        {"architecture": "arm64", "config": {"Entrypoint": ["/usr/local/bin/starburst-worker"]}}
    ).encode()

    class Blob(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(blob)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Blob)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    digest = "sha256:" + "c" * 64
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": len(blob),
            "digest": digest,
        },
        "layers": [],
    }
    try:
        ecr = moto_aws_client.client("ecr")
        with Stubber(ecr) as stub:
            stub.add_response(
                "describe_repositories",
                {
                    "repositories": [
                        {
                            "repositoryName": REPOSITORY,
                            "imageScanningConfiguration": {"scanOnPush": True},
                        }
                    ]
                },
            )
            stub.add_client_error(
                "get_lifecycle_policy", service_error_code="LifecyclePolicyNotFoundException"
            )
            stub.add_response("describe_images", {"imageDetails": [{"imageDigest": digest}]})
            stub.add_response(
                "batch_get_image",
                {"images": [{"imageManifest": json.dumps(manifest)}], "failures": []},
            )
            stub.add_response(
                "get_download_url_for_layer",
                {
                    "downloadUrl": f"http://127.0.0.1:{server.server_port}/blob",
                    "layerDigest": digest,
                },
            )
            checks = by_name(doctor(moto_aws_client, ready))
    finally:
        server.shutdown()
    check = checks["image starts"]
    assert not check.ok and "built for arm64" in check.detail and "ECR" not in check.fix
    assert not checks["ECR repository"].ok  # the stubbed repository lacks its lifecycle rule


@pytest.mark.slow
def test_ec2_capacity_and_its_s3_endpoint_are_checked(
    moto_aws_client: Aws, moto_serves_tls: None
) -> None:
    aws = moto_aws_client
    settings = setup(aws, ec2=True).settings
    checks = by_name(doctor(aws, settings))
    assert checks["EC2 capacity"].ok, checks["EC2 capacity"]
    assert checks["S3 endpoint"].ok, checks["S3 endpoint"]
    endpoints = aws.call("ec2", "describe_vpc_endpoints")["VpcEndpoints"]
    aws.call("ec2", "delete_vpc_endpoints", VpcEndpointIds=[e["VpcEndpointId"] for e in endpoints])
    endpoint = by_name(doctor(aws, settings))["S3 endpoint"]
    assert not endpoint.ok and "cannot reach S3" in endpoint.detail
    assert "starburst setup" in endpoint.fix
    setup(aws, ec2=True)
    assert by_name(doctor(aws, settings))["S3 endpoint"].ok


@pytest.mark.slow
def test_a_bucket_key_the_task_role_lacks_fails(moto_aws_client: Aws, ready: AwsSettings) -> None:
    aws = moto_aws_client
    key = aws.call("kms", "create_key")["KeyMetadata"]
    aws.call(
        "s3",
        "put_bucket_encryption",
        Bucket=ready.bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {
                        "SSEAlgorithm": "aws:kms",
                        "KMSMasterKeyID": key["Arn"],
                    }
                }
            ]
        },
    )
    check = by_name(doctor(aws, ready))["bucket security"]
    assert not check.ok and key["Arn"] in check.detail
    settings = setup(aws).settings  # grants it
    assert settings.bucket_kms_key == key["Arn"]
    assert by_name(doctor(aws, dataclasses.replace(settings, image=IMAGE)))["bucket security"].ok
