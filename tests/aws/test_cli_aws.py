"""The AWS commands of the real ``starburst`` console script, against moto.

moto runs in the test process; the command runs in a subprocess and reaches it through
``AWS_ENDPOINT_URL`` (boto3's standard setting), exactly as a user's shell would.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from starburst_executor.aws.settings import AwsSettings

pytestmark = pytest.mark.slow


def _console_script() -> list[str]:
    beside = Path(sys.executable).with_name("starburst")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("starburst")
    return [found] if found else [sys.executable, "-m", "starburst_executor.cli"]


def starburst(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_console_script(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def moto(moto_one_account: str, moto_serves_tls: None) -> str:
    return moto_one_account


def test_setup_twice_then_doctor_then_teardown(moto: str) -> None:
    first = starburst("setup", "--region", "us-east-1")
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    settings = AwsSettings.load()
    assert settings.region == "us-east-1" and settings.bucket.startswith("starburst-")

    second = starburst("setup", "--region", "us-east-1")
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout.lower()

    # no docker: a real one would try to pull the image from AWS
    doctor = starburst("doctor", "--docker", "/nonexistent/docker")
    assert doctor.returncode == 1  # no image yet
    assert "starburst image build" in doctor.stdout

    down = starburst("teardown")
    assert down.returncode == 0, down.stderr
    assert settings.bucket in down.stdout  # said what it kept
    ecs = boto3.session.Session().client("ecs", region_name="us-east-1")
    clusters = ecs.describe_clusters(clusters=[settings.cluster])["clusters"]
    assert all(c["status"] == "INACTIVE" for c in clusters)


def test_image_build_runs_docker_and_records_the_image(moto: str, tmp_path: Path) -> None:
    assert starburst("setup", "--region", "us-east-1").returncode == 0
    calls = tmp_path / "docker-calls.jsonl"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        # docker's answers: the built image's architecture, the pushed digest
        "if sys.argv[1:3] == ['image', 'inspect']: print('amd64')\n"
        "if sys.argv[1] == 'push': print('t: digest: sha256:' + 'e' * 64 + ' size: 9')\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("numpy==2.1.0\n")
    env = {"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    built = starburst("image", "build", "--requirements", str(reqs), env=env)
    assert built.returncode == 0, built.stderr
    commands = [json.loads(line)[0] for line in calls.read_text().splitlines()]
    assert commands == ["login", "build", "image", "push"]
    settings = AwsSettings.load()
    assert settings.image.endswith(
        f".dkr.ecr.us-east-1.amazonaws.com/starburst-worker@sha256:{'e' * 64}"
    )
    assert settings.image_architecture == "X86_64"
    assert settings.image in built.stdout


def test_image_build_without_docker_says_what_to_do(moto: str, tmp_path: Path) -> None:
    assert starburst("setup", "--region", "us-east-1").returncode == 0
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = starburst("image", "build", "--docker", str(empty / "docker"))
    assert result.returncode == 1
    assert "docker" in result.stderr and "install" in result.stderr.lower()


def test_commands_before_setup_say_to_run_setup(moto: str) -> None:
    result = starburst("teardown")
    assert result.returncode == 1
    assert "starburst setup" in result.stderr


def test_setup_with_named_subnets(moto: str) -> None:
    ec2 = boto3.session.Session().client("ec2", region_name="us-east-1")
    (vpc,) = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    subnets = sorted(
        s["SubnetId"]
        for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])[
            "Subnets"
        ]
    )[:2]
    done = starburst(
        "setup", "--region", "us-east-1", "--vpc-id", vpc["VpcId"], "--subnets", ",".join(subnets)
    )
    assert done.returncode == 0, done.stderr
    assert sorted(AwsSettings.load().subnets) == subnets

    other = ec2.create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
    refused = starburst(
        "setup", "--region", "us-east-1", "--vpc-id", other, "--subnets", subnets[0]
    )
    assert refused.returncode == 1
    assert f"{subnets[0]} is in {vpc['VpcId']}" in refused.stderr


def test_setup_prints_the_policies_and_creates_nothing(moto: str) -> None:
    printed = starburst("setup", "--region", "us-east-1", "--ec2", "--print-policy")
    assert printed.returncode == 0, printed.stderr
    document = json.loads(printed.stdout)
    actions = {a for s in document["Statement"] for a in s["Action"]}
    assert {
        "iam:CreateRole",
        "ec2:CreateVpcEndpoint",
        "iam:CreateServiceLinkedRole",
        "autoscaling:CreateAutoScalingGroup",
        "ecs:DeleteTaskDefinitions",
    } <= actions
    user = json.loads(starburst("setup", "--region", "us-east-1", "--print-policy", "user").stdout)
    user_actions = {a for s in user["Statement"] for a in s["Action"]}
    assert {
        "ecs:RunTask",
        "ecs:DescribeCapacityProviders",
        "ec2:DescribeInstanceTypes",
        "sts:GetCallerIdentity",
    } <= user_actions
    ecs = boto3.session.Session().client("ecs", region_name="us-east-1")
    assert ecs.list_clusters()["clusterArns"] == []
    assert starburst("teardown").returncode == 1  # no profile was written
