"""``backend=AwsBackend(...)`` end to end on moto, the way a user runs it.

``setup()`` creates everything (bucket, cluster, roles, security group, SSM key, log group)
and writes the profile; an image is pushed to moto's ECR; then ``StarburstExecutor`` and
``DetachedExecutor`` with an ``AwsBackend`` (or its shorthand ``"aws"``) start workers with
RunTask, which the test-side ECS agent turns into local worker processes built only from the
launch request.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import executor_tasks
import pytest
from ecs_agent import LocalEcsAgent, strict_list_tasks

from starburst_executor import (
    AwsBackend,
    CostAlertWarning,
    CostLimitError,
    DetachedExecutor,
    StarburstExecutor,
    cli,
)
from starburst_executor.aws.client import Aws
from starburst_executor.aws.options import AwsSessionBackend
from starburst_executor.aws.settings import AwsSettings
from starburst_executor.aws.setup import setup
from starburst_executor.errors import AwsNotSetUpError

pytestmark = pytest.mark.slow
_TESTS = Path(__file__).resolve().parent.parent


def _push_image(settings: AwsSettings) -> str:
    """A manifest in moto's ECR under a tag, as `starburst image build` would push."""
    ecr = boto3.session.Session().client("ecr", region_name=settings.region)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "digest": "sha256:" + "0" * 64,
            "size": 1,
            "mediaType": "application/vnd.docker.container.image.v1+json",
        },
        "layers": [],
    }
    ecr.put_image(
        repositoryName=settings.ecr_repository,
        imageManifest=json.dumps(manifest),
        imageTag="py-test",
    )
    uri = ecr.describe_repositories(repositoryNames=[settings.ecr_repository])["repositories"][0][
        "repositoryUri"
    ]
    ecr.close()
    return f"{uri}:py-test"


@pytest.fixture
def profile(
    moto_aws_client: Aws, moto_serves_tls: None, monkeypatch: pytest.MonkeyPatch
) -> AwsSettings:
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


def test_executor_runs_on_ecs_after_setup(
    profile: AwsSettings,
    agent: LocalEcsAgent,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO, logger="starburst_executor")
    backend = AwsBackend(cpu=0.5, memory="1GB")
    with StarburstExecutor(backend=backend, max_workers=2) as ex:
        assert ex.store.url == profile.store_url  # the profile's bucket by default
        # The manifest keeps what was asked and what it became, typed.
        config = ex._writer.manifest.backend_config
        assert isinstance(config, AwsSessionBackend) and config.requested == backend
        assert (config.options.cpu, config.options.memory_mib) == (0.5, 1024)
        assert list(ex.map(executor_tasks.square, range(30), chunksize=3)) == [
            x * x for x in range(30)
        ]
        assert ex.submit(executor_tasks.add, 2, 3).result(timeout=60) == 5
    # The estimate was logged before launch, in one record, and the measured cost after;
    # nothing was printed (the library logs, the application decides what to show).
    messages = [r.getMessage() for r in caplog.records]
    estimate = [m for m in messages if "Estimated cost" in m]
    assert len(estimate) == 1 and "/hour" in estimate[0]
    assert any("Actual cost" in m for m in messages[messages.index(estimate[0]) :])
    assert capsys.readouterr().err == ""
    agent.wait_idle(timeout=20)
    tasks = _tasks(profile)
    assert tasks and {t["lastStatus"] for t in tasks} == {"STOPPED"}  # none left running
    assert agent.errors == []


def test_detached_session_on_ecs_reattaches_and_collects(
    profile: AwsSettings, agent: LocalEcsAgent, capsys: pytest.CaptureFixture[str]
) -> None:
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
    worker = again._writer.workers()[0].worker
    logs = boto3.session.Session().client("logs", region_name=profile.region)
    stream = f"starburst/worker/{worker.removeprefix('ecs-')}"
    logs.create_log_stream(logGroupName=profile.log_group, logStreamName=stream)
    logs.put_log_events(
        logGroupName=profile.log_group,
        logStreamName=stream,
        logEvents=[{"timestamp": int(time.time() * 1000), "message": "hello"}],
    )
    assert cli.main(["logs", sid]) == 0
    assert f"[{worker}]" in capsys.readouterr().out
    again.cleanup()
    agent.wait_idle(timeout=30)
    assert {t["lastStatus"] for t in _tasks(profile)} == {"STOPPED"}


def test_checks_before_any_launch(profile: AwsSettings, agent: LocalEcsAgent) -> None:
    with pytest.raises(ValueError, match="Fargate does not run 1 vCPU with 1 GB"):
        StarburstExecutor(backend=AwsBackend(cpu=1, memory="1GB"))
    with pytest.raises(ValueError, match="ceiling"):
        StarburstExecutor(backend="aws", max_workers=501)
    with pytest.raises(ValueError, match="region mismatch"):
        StarburstExecutor(backend=AwsBackend(region="eu-west-1"))
    with pytest.raises(CostLimitError, match="max_hourly_cost"):
        StarburstExecutor(backend=AwsBackend(max_hourly_cost=0.01), max_workers=50)
    with pytest.raises(AwsNotSetUpError, match="starburst image build"):
        StarburstExecutor(backend=AwsBackend(image=profile.image.rsplit(":", 1)[0] + ":missing"))
    with pytest.raises(TypeError, match="unexpected keyword argument 'cpu'"):
        StarburstExecutor(cpu=2)  # type: ignore[call-arg]  # AWS options live on AwsBackend
    assert agent.started == 0  # nothing was launched by any of these


def test_a_cost_above_the_alert_threshold_warns_and_launches(
    profile: AwsSettings, agent: LocalEcsAgent
) -> None:
    with pytest.warns(CostAlertWarning, match="above cost_alert_threshold") as caught:
        ex = StarburstExecutor(backend=AwsBackend(cost_alert_threshold=0.0001), max_workers=1)
    assert caught[0].filename == __file__  # the warning names the user's line
    with ex:
        assert ex.submit(executor_tasks.add, 2, 3).result(timeout=60) == 5


def test_backend_aws_without_setup_says_what_to_run(moto_aws_client: Aws) -> None:
    with pytest.raises(AwsNotSetUpError, match="starburst setup"):
        StarburstExecutor(backend="aws")


def test_aws_quickstart_example_runs(profile: AwsSettings, agent: LocalEcsAgent) -> None:
    example = _TESTS.parent / "examples" / "aws_quickstart.py"
    result = subprocess.run(
        [
            sys.executable,
            str(example),
            "--workers",
            "2",
            "--tasks",
            "4",
            "--cpu",
            "0.25",
            "--memory",
            "512MB",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "pi ~= 3.1" in result.stdout
    assert "Estimated cost" in result.stderr  # the library's INFO records, the example shows
    assert "cost: $" in result.stdout  # the measured cost, as data
    assert "Actual cost" in result.stderr.split("Estimated cost", 1)[1]  # and on the console


def _pin_pending() -> None:
    """Every ECS task in the in-process moto shows lastStatus PENDING: Fargate still
    provisioning it (25-105 s on AWS), its worker not yet registered."""
    from moto.ecs.models import ecs_backends

    for tasks in ecs_backends["123456789012"]["us-east-1"].tasks.values():
        for task in tasks.values():
            if task.last_status != "STOPPED":
                task.last_status = "PENDING"


def test_reattaching_while_workers_start_runs_no_more_than_max_workers(
    profile: AwsSettings,
) -> None:
    """No agent: the tasks never start a worker, as in the first minute of a Fargate session.
    The reattached client counts the session's ECS tasks (PENDING included), not registered
    workers, so it starts none; and its cleanup() stops them all (ListTasks by startedBy
    alone, which moto is made to require as AWS does)."""
    with strict_list_tasks():
        ex = DetachedExecutor(backend="aws", max_workers=2, name="slow-start")
        # Four batches (a durable map writes each chunk as one), so the pool is full: 2.
        ex.map(executor_tasks.square, range(4), chunksize=1)
        sid = ex.session_id
        ex.detach()
        assert len(_tasks(profile)) == 2
        _pin_pending()

        again = DetachedExecutor.attach(sid)
        with pytest.raises(TimeoutError):
            again.collect(wait=True, timeout=2, poll_interval=0.1)
        again.submit(executor_tasks.square, 5)  # the manager keeps the pool: still 2
        time.sleep(1.5)  # several manager rounds (maintain_every 0.5 s): nothing to wait for
        assert len(_tasks(profile)) == 2
        again.cleanup()
    assert {t["lastStatus"] for t in _tasks(profile)} == {"STOPPED"}


def test_a_store_outside_the_task_roles_reach_is_refused(profile: AwsSettings) -> None:
    with pytest.raises(ValueError, match=f"can only reach s3://{profile.bucket}/"):
        StarburstExecutor(backend="aws", store="s3://someone-elses-bucket/x")
    with pytest.raises(ValueError, match="prefix"):
        StarburstExecutor(backend="aws", store=f"s3://{profile.bucket}/other-prefix")
    with pytest.raises(ValueError, match="can only reach"):
        StarburstExecutor(backend="aws", store="/tmp/local-dir")
    inside = f"{profile.store_url}/project-a"
    with StarburstExecutor(backend="aws", store=inside, max_workers=1) as ex:
        assert ex.store.url == inside


def test_an_arm64_image_runs_on_fargate_on_demand(
    profile: AwsSettings, caplog: pytest.LogCaptureFixture
) -> None:
    dataclasses.replace(profile, image_architecture="ARM64").save()
    with pytest.raises(ValueError, match="Fargate Spot does not run ARM64"):
        StarburstExecutor(backend=AwsBackend(spot=True))
    with StarburstExecutor(backend="aws", max_workers=1) as ex:  # the profile's spot: fallback
        config = ex._writer.manifest.backend_config
        assert isinstance(config, AwsSessionBackend)
        assert (config.options.cpu_architecture, config.options.spot) == ("ARM64", False)
    assert any(
        r.levelno == logging.WARNING and "Fargate Spot does not run" in r.getMessage()
        for r in caplog.records
    )


def test_logs_follow_shows_only_the_session_and_ends_with_it(
    profile: AwsSettings, agent: LocalEcsAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    """`starburst logs SID --follow` on a finished session: the session's workers' lines (the
    agent ships each process's output as the awslogs driver does), nothing from before the
    session was created nor from another session's stream, and exit 0 without waiting."""
    logs = boto3.session.Session().client("logs", region_name=profile.region)
    before = int(time.time() * 1000) - 5_000
    ex = DetachedExecutor(backend="aws", max_workers=1, name="followed")
    ex.submit(executor_tasks.add, 2, 3)
    sid = ex.session_id
    assert [r.value for r in ex.collect(wait=True, timeout=60, poll_interval=0.1)] == [5]
    ex.cleanup()  # closed, workers stopped, data kept
    agent.wait_idle(timeout=30)
    (arn,) = agent.processes()
    task_id = arn.rsplit("/", 1)[1]
    ours = f"starburst/worker/{task_id}"
    agent.wait_for(
        lambda: logs.describe_log_streams(logGroupName=profile.log_group, logStreamNamePrefix=ours)[
            "logStreams"
        ],
        10,
        "the agent to ship the worker's output",
    )
    logs.put_log_events(
        logGroupName=profile.log_group,
        logStreamName=ours,
        logEvents=[{"timestamp": before, "message": "before the session"}],
    )
    logs.create_log_stream(logGroupName=profile.log_group, logStreamName="starburst/worker/other")
    logs.put_log_events(
        logGroupName=profile.log_group,
        logStreamName="starburst/worker/other",
        logEvents=[{"timestamp": int(time.time() * 1000), "message": "not ours"}],
    )
    logs.close()
    capsys.readouterr()
    done: list[int] = []
    follower = threading.Thread(
        target=lambda: done.append(cli.main(["logs", sid, "--follow"])), daemon=True
    )
    follower.start()
    follower.join(timeout=30)
    assert done == [0], "logs --follow did not end with the session"
    out = capsys.readouterr().out
    assert f"[ecs-{task_id}]" in out and f"of session {sid} exits" in out
    assert "before the session" not in out and "not ours" not in out
