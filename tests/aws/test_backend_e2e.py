"""``backend="aws"`` end to end on moto, the way a user runs it.

``setup()`` creates everything (bucket, cluster, roles, security group, SSM key, log group)
and writes the profile; an image is pushed to moto's ECR; then ``StarburstExecutor`` and
``DetachedExecutor`` with ``backend="aws"`` start workers with RunTask, which the test-side
ECS agent turns into local worker processes built only from the launch request.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import executor_tasks
import pytest
from ecs_agent import LocalEcsAgent

from starburst_executor import CostLimitError, DetachedExecutor, StarburstExecutor, cli
from starburst_executor.aws.client import Aws
from starburst_executor.aws.settings import AwsSettings
from starburst_executor.aws.setup import setup
from starburst_executor.errors import AwsNotSetUpError

pytestmark = pytest.mark.slow
_TESTS = Path(__file__).resolve().parent.parent


def _push_image(settings: AwsSettings) -> str:
    """A manifest in moto's ECR under a tag, as `starburst image build` would push."""
    ecr = boto3.session.Session().client("ecr", region_name=settings.region)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"digest": "sha256:" + "0" * 64, "size": 1,
                           "mediaType": "application/vnd.docker.container.image.v1+json"},
                "layers": []}
    ecr.put_image(repositoryName=settings.ecr_repository, imageManifest=json.dumps(manifest),
                  imageTag="py-test")
    uri = ecr.describe_repositories(repositoryNames=[settings.ecr_repository])[
        "repositories"][0]["repositoryUri"]
    ecr.close()
    return f"{uri}:py-test"


@pytest.fixture
def profile(moto_aws_client: Aws, moto_serves_tls: None,
            monkeypatch: pytest.MonkeyPatch) -> AwsSettings:
    setup(moto_aws_client)
    settings = AwsSettings.load()
    settings = dataclasses.replace(settings, image=_push_image(settings))
    settings.save()
    # Workers import the tests' task module by name, as a user's image holds the user's code.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(_TESTS.parent), str(_TESTS)]))
    return settings


@pytest.fixture
def agent(profile: AwsSettings, tmp_path: Path) -> Iterator[LocalEcsAgent]:
    with LocalEcsAgent(tmp_path / "agent", kill_after=10.0) as running:
        yield running


def _tasks(settings: AwsSettings) -> list[dict[str, object]]:
    ecs = boto3.session.Session().client("ecs", region_name=settings.region)
    arns = ecs.list_tasks(cluster=settings.cluster, desiredStatus="RUNNING")["taskArns"]
    arns += ecs.list_tasks(cluster=settings.cluster, desiredStatus="STOPPED")["taskArns"]
    tasks = ecs.describe_tasks(cluster=settings.cluster, tasks=arns)["tasks"] if arns else []
    ecs.close()
    return list(tasks)


def test_executor_runs_on_ecs_after_setup(profile: AwsSettings, agent: LocalEcsAgent,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with StarburstExecutor(backend="aws", max_workers=2, cpu=0.5, memory="1GB") as ex:
        assert ex.store.url == profile.store_url  # the profile's bucket by default
        assert list(ex.map(executor_tasks.square, range(30), chunksize=3)) == [
            x * x for x in range(30)]
        assert ex.submit(executor_tasks.add, 2, 3).result(timeout=60) == 5
    # The estimate was shown before launch, in one line.
    err = capsys.readouterr().err
    assert "Estimated cost" in err and "/hour" in err
    agent.wait_idle(timeout=20)
    tasks = _tasks(profile)
    assert tasks and {t["lastStatus"] for t in tasks} == {"STOPPED"}  # none left running
    assert agent.errors == []


def test_detached_session_on_ecs_reattaches_and_collects(
        profile: AwsSettings, agent: LocalEcsAgent, capsys: pytest.CaptureFixture[str]) -> None:
    ex = DetachedExecutor(backend="aws", max_workers=2, name="ecs-run")
    for i in range(6):
        ex.submit(executor_tasks.square, i)
    ex.submit(executor_tasks.raise_at, 3, 3)
    sid = ex.session_id
    ex.detach()

    again = DetachedExecutor.attach(sid)
    results = again.collect(wait=True, timeout=90, poll_interval=0.1)
    assert [r.value for r in results[:6]] == [i * i for i in range(6)]
    assert not results[6].ok
    status = again.status()
    assert (status.completed, status.failed, status.state) == (6, 1, "finished")
    assert status.cost is not None and status.cost["cost"] > 0  # measured runtime, priced
    assert "$" in str(status)

    # `starburst logs SID` reads the workers' CloudWatch streams (awslogs driver names them
    # starburst/worker/{task id}; the local agent does not, so write one line the way it would).
    worker = again._reader.workers()[0].worker
    logs = boto3.session.Session().client("logs", region_name=profile.region)
    stream = f"starburst/worker/{worker.removeprefix('ecs-')}"
    logs.create_log_stream(logGroupName=profile.log_group, logStreamName=stream)
    logs.put_log_events(logGroupName=profile.log_group, logStreamName=stream,
                        logEvents=[{"timestamp": int(time.time() * 1000), "message": "hello"}])
    assert cli.main(["logs", sid]) == 0
    assert f"[{worker}]" in capsys.readouterr().out
    again.cleanup()
    agent.wait_idle(timeout=30)
    assert {t["lastStatus"] for t in _tasks(profile)} == {"STOPPED"}


def test_checks_before_any_launch(profile: AwsSettings, agent: LocalEcsAgent) -> None:
    with pytest.raises(ValueError, match="Fargate does not run 1 vCPU with 1 GB"):
        StarburstExecutor(backend="aws", cpu=1, memory="1GB")
    with pytest.raises(ValueError, match="ceiling"):
        StarburstExecutor(backend="aws", max_workers=501)
    with pytest.raises(ValueError, match="region mismatch"):
        StarburstExecutor(backend="aws", region="eu-west-1")
    with pytest.raises(CostLimitError, match="max_hourly_cost"):
        StarburstExecutor(backend="aws", max_workers=50, max_hourly_cost=0.01)
    with pytest.raises(AwsNotSetUpError, match="starburst image build"):
        StarburstExecutor(backend="aws", image=profile.image.rsplit(":", 1)[0] + ":missing")
    with pytest.raises(ValueError, match="only for backend='aws'"):
        StarburstExecutor(cpu=2)
    assert agent.started == 0  # nothing was launched by any of these


def test_backend_aws_without_setup_says_what_to_run(moto_aws_client: Aws) -> None:
    with pytest.raises(AwsNotSetUpError, match="starburst setup"):
        StarburstExecutor(backend="aws")


def test_aws_quickstart_example_runs(profile: AwsSettings, agent: LocalEcsAgent) -> None:
    example = _TESTS.parent / "examples" / "aws_quickstart.py"
    result = subprocess.run([sys.executable, str(example), "--workers", "2", "--tasks", "4",
                             "--cpu", "0.25", "--memory", "512MB"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "pi ~= 3.1" in result.stdout
    assert "Estimated cost" in result.stderr
    assert "cost: $" in result.stdout  # the measured cost, as data
    assert "cost" in result.stderr.lower().split("estimated cost", 1)[1]  # and on the console
