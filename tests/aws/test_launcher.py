"""``ECSLauncher`` and ``Quota`` against moto's ECS (``aws_env``): what RunTask carries, how
tasks are batched, placed, followed and stopped, and how ECS failures and quotas surface.

The AWS world (cluster, subnets, roles, SSM key, log group) is made minimally with boto3 by
``ecs_agent.provision_world``; nothing here depends on ``starburst setup``. No process runs
here: the end-to-end test (``test_ecs_e2e.py``) runs workers through the local ECS agent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from ecs_agent import SPOT_REASON, provision_world, strict_list_tasks

from starburst_executor.aws import task_definition
from starburst_executor.aws.client import Aws
from starburst_executor.aws.failures import explain_failure
from starburst_executor.aws.launcher import (
    OVERRIDES_MAX,
    STOP_REASON,
    ECSLauncher,
    started_by,
)
from starburst_executor.aws.options import AwsSessionBackend, EcsOptions
from starburst_executor.aws.quota import DEFAULT_FARGATE_VCPUS, Quota
from starburst_executor.backends import AwsBackend, LocalBackend
from starburst_executor.errors import AwsLaunchError, AwsNotSetUpError, SessionError
from starburst_executor.protocol import ExitCode, SessionManifest

SESSION = "20261121-081500-3fa9c2"
STORE = "s3://starburst-test/sessions"


# One boto3 session for the module: botocore then loads each service model once, not per test.
_BOTO = boto3.session.Session(region_name="us-east-1")


@pytest.fixture
def options(aws_env: str) -> EcsOptions:
    return EcsOptions(**provision_world(session=_BOTO))


@pytest.fixture
def aws(aws_env: str) -> Iterator[Aws]:
    yield Aws("us-east-1", session=_BOTO, retry_sleep=lambda _: None)


# For tests of how responses are read: no server, every call answered by a botocore Stubber
# (an unexpected call fails the test), and options that need no lookup.
OFFLINE_OPTIONS = EcsOptions(
    region="us-east-1",
    cluster="starburst",
    image="example.com/starburst-worker:1",
    subnets=("subnet-1",),
    security_group="sg-1",
    execution_role_arn="arn:aws:iam::123456789012:role/x",
    task_role_arn="arn:aws:iam::123456789012:role/t",
    secret_parameter="arn:aws:ssm:us-east-1:123456789012:parameter/starburst/secret-key",
)
DEFINITION_ARN = "arn:aws:ecs:us-east-1:123456789012:task-definition/starburst-worker-x:1"


@pytest.fixture
def offline() -> Aws:
    return Aws("us-east-1", session=_BOTO, retry_sleep=lambda _: None)


# An operation and the response the stubbed ECS client gives it.
Answer = tuple[str, dict[str, Any]]


def stub_ecs(aws: Aws, *answers: Answer) -> Stubber:
    """A Stubber on ``aws``'s ECS client answering the given operations in order; a launcher
    first looks its task definition up, so RunTask answers follow a DescribeTaskDefinition."""
    stubber = Stubber(ecs(aws))
    for operation, response in answers:
        stubber.add_response(operation, response)
    return stubber


# A launcher's first look: the session's tasks already in ECS (ListTasks by startedBy alone).
NO_TASKS_YET: Answer = ("list_tasks", {"taskArns": []})
FOUND_DEFINITION: Answer = (
    "describe_task_definition",
    {"taskDefinition": {"taskDefinitionArn": DEFINITION_ARN, "status": "ACTIVE"}},
)


Calls = dict[str, list[dict[str, Any]]]


@pytest.fixture
def calls(aws: Aws) -> Calls:
    """The parameters of every ECS call ``aws`` makes, by operation name."""
    seen: Calls = {}

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        seen.setdefault(model.name, []).append(json.loads(json.dumps(params, default=str)))

    aws.client("ecs").meta.events.register("before-parameter-build.ecs", record)
    return seen


def make(
    aws: Aws, options: EcsOptions, *, session: str = SESSION, vcpus: float = 1000, **kwargs: Any
) -> ECSLauncher:
    kwargs.setdefault("describe_every", 0.0)
    return ECSLauncher(
        aws, options, session, STORE, poll_max=1.5, quota=Quota(vcpus=vcpus), **kwargs
    )


def ecs(aws: Aws) -> Any:
    return aws.client("ecs")


def describe(aws: Aws, options: EcsOptions, arns: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(0, len(arns), 100):
        out += ecs(aws).describe_tasks(
            cluster=options.cluster, tasks=arns[i : i + 100], include=["TAGS"]
        )["tasks"]
    return out


def arns_of(launcher: ECSLauncher) -> list[str]:
    return sorted(launcher.worker_ids())


# -- task definition ---------------------------------------------------------------------------


@pytest.mark.slow
def test_task_definition_carries_logs_secret_memory_and_no_payload(
    aws: Aws, options: EcsOptions
) -> None:
    arn = make(aws, options).ensure_task_definition()
    td = ecs(aws).describe_task_definition(taskDefinition=arn)["taskDefinition"]
    assert td["family"].startswith("starburst-worker-")
    assert td["networkMode"] == "awsvpc"
    assert td["requiresCompatibilities"] == ["FARGATE"]
    assert (td["cpu"], td["memory"]) == ("1024", "2048")
    assert td["executionRoleArn"] == options.execution_role_arn
    assert td["taskRoleArn"] == options.task_role_arn
    (container,) = td["containerDefinitions"]
    assert container["name"] == "worker"
    assert container["image"] == options.image
    # The image's ENTRYPOINT starts the worker; a command would be appended to it (Docker).
    assert "command" not in container and "entryPoint" not in container
    assert td["runtimePlatform"] == {"cpuArchitecture": "X86_64", "operatingSystemFamily": "LINUX"}
    assert container["memory"] == 2048
    assert container["stopTimeout"] == 120
    assert container["logConfiguration"] == {
        "logDriver": "awslogs",
        "options": {
            "awslogs-group": "/starburst/workers",
            "awslogs-region": "us-east-1",
            "awslogs-stream-prefix": "starburst",
        },
    }
    (secret,) = container["secrets"]
    assert secret["name"] == "STARBURST_SECRET_KEY"
    assert (
        secret["valueFrom"] == "arn:aws:ssm:us-east-1:123456789012:parameter/starburst/secret-key"
    )
    # The ARN names the parameter setup stored (ECS resolves it with the execution role).
    resolved = aws.client("ssm").get_parameters(Names=[secret["valueFrom"]], WithDecryption=True)
    assert resolved["Parameters"][0]["Value"] == "5a" * 32
    # Only harmless settings in the definition: no store, session, key or credentials.
    names = {e["name"] for e in container.get("environment", [])}
    assert names <= {"PYTHONUNBUFFERED"}


@pytest.mark.slow
def test_identical_specs_share_one_task_definition(
    aws: Aws, options: EcsOptions, calls: Calls
) -> None:
    first = make(aws, options).ensure_task_definition()
    again = make(aws, options, session="20261121-090000-aaaaaa").ensure_task_definition()
    assert again == first
    assert len(calls["RegisterTaskDefinition"]) == 1
    other = make(aws, options.with_image("example.com/other:1")).ensure_task_definition()
    assert other.rsplit("/", 1)[1].split(":")[0] != first.rsplit("/", 1)[1].split(":")[0]
    assert len(calls["RegisterTaskDefinition"]) == 2


# -- RunTask -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_task_in_calls_of_ten_with_unique_client_tokens(
    aws: Aws, options: EcsOptions, calls: Calls
) -> None:
    launcher = make(aws, options)
    workers = launcher.start(25)
    assert len(workers) == len(set(workers)) == 25
    assert all(w.startswith("ecs-") for w in workers)
    runs = calls["RunTask"]
    assert [c["count"] for c in runs] == [10, 10, 5]
    tokens = [c["clientToken"] for c in runs]
    assert all(tokens) and len(set(tokens)) == 3
    assert launcher.running() == 25
    tasks = describe(aws, options, arns_of(launcher))
    assert len(tasks) == 25
    assert {t["startedBy"] for t in tasks} == {SESSION}
    assert all({"key": "starburst-session", "value": SESSION} in t["tags"] for t in tasks)
    assert {f"ecs-{t['taskArn'].rsplit('/', 1)[1]}" for t in tasks} == set(workers)


@pytest.mark.slow
def test_overrides_hold_only_small_settings(aws: Aws, options: EcsOptions, calls: Calls) -> None:
    make(aws, options).start(1)
    (run,) = calls["RunTask"]
    overrides = run["overrides"]
    (container,) = overrides["containerOverrides"]
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert env == {
        "STARBURST_STORE": STORE,
        "STARBURST_SESSION": SESSION,
        "STARBURST_POLL_MAX": "1.5",
        "AWS_REGION": "us-east-1",
    }
    assert len(json.dumps(overrides)) < OVERRIDES_MAX // 8  # far below ECS's 8,192
    assert "launchType" not in run  # a capacity provider strategy instead


def test_a_store_url_too_long_for_the_overrides_is_refused(offline: Aws) -> None:
    launcher = ECSLauncher(
        offline, OFFLINE_OPTIONS, SESSION, "s3://b/" + "p" * 3000, quota=Quota(vcpus=8)
    )
    with stub_ecs(offline), pytest.raises(AwsLaunchError, match="shorter store prefix"):
        launcher.start(1)  # refused before any call


def test_started_by_fits_ecs_limit() -> None:
    assert started_by(SESSION) == SESSION
    long_a, long_b = "x" * 40 + "a", "x" * 40 + "b"
    assert len(started_by(long_a)) == 36 and len(started_by(long_b)) == 36
    assert started_by(long_a) != started_by(long_b)
    assert started_by("my session/1") != "my session/1"
    assert len(started_by("my session/1")) <= 36


@pytest.mark.parametrize(
    "launch_type, spot, provider",
    [
        ("FARGATE", True, "FARGATE_SPOT"),
        ("FARGATE", False, "FARGATE"),
        ("EC2", True, "starburst-ec2"),
    ],
)
@pytest.mark.slow
def test_capacity_provider_strategy(
    aws: Aws, options: EcsOptions, calls: Calls, launch_type: str, spot: bool, provider: str
) -> None:
    options = replace(
        options, launch_type=launch_type, spot=spot, ec2_capacity_provider="starburst-ec2"
    )
    if launch_type == "EC2":
        _register_container_instance(aws, options.cluster)
        group = _ec2_capacity_provider(aws, "starburst-ec2")
    launcher = make(aws, options)
    assert len(launcher.start(1)) == 1
    if launch_type == "EC2":
        # setup parks the group at MaxSize 0; the launcher lets managed scaling grow it
        (asg,) = aws.client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[group]
        )["AutoScalingGroups"]
        assert asg["MaxSize"] == 1
    (run,) = calls["RunTask"]
    assert run["capacityProviderStrategy"] == [
        {"capacityProvider": provider, "weight": 1, "base": 0}
    ]
    assert "launchType" not in run
    vpc = run["networkConfiguration"]["awsvpcConfiguration"]
    assert vpc["subnets"] == list(options.subnets)
    assert vpc["securityGroups"] == [options.security_group]
    assert ("assignPublicIp" in vpc) == (launch_type == "FARGATE")
    (task,) = describe(aws, options, arns_of(launcher))
    assert task["capacityProviderName"] == provider


def _ec2_capacity_provider(aws: Aws, name: str) -> str:
    """An Auto Scaling group at MaxSize 0 behind an ECS capacity provider, as setup makes."""
    ec2 = aws.client("ec2")
    image = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
    ec2.create_launch_template(
        LaunchTemplateName="lt-test",
        LaunchTemplateData={"ImageId": image, "InstanceType": "c7a.xlarge"},
    )
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]][:1]
    autoscaling = aws.client("autoscaling")
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="asg-test",
        MinSize=0,
        MaxSize=0,
        DesiredCapacity=0,
        LaunchTemplate={"LaunchTemplateName": "lt-test"},
        AvailabilityZones=zones,
    )
    (asg,) = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["asg-test"])[
        "AutoScalingGroups"
    ]
    ecs(aws).create_capacity_provider(
        name=name, autoScalingGroupProvider={"autoScalingGroupArn": asg["AutoScalingGroupARN"]}
    )
    return "asg-test"


def _register_container_instance(aws: Aws, cluster: str) -> None:
    ec2 = aws.client("ec2")
    image = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="m5.large")[
        "Instances"
    ][0]
    ecs(aws).register_container_instance(
        cluster=cluster, instanceIdentityDocument=json.dumps({"instanceId": instance["InstanceId"]})
    )


# -- failures ----------------------------------------------------------------------------------


def test_failures_without_any_task_raise_with_reason_and_advice(
    offline: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = replace(OFFLINE_OPTIONS, launch_type="EC2", ec2_capacity_provider="starburst-ec2")
    launcher = make(offline, options)
    # Growing the Auto Scaling group is shown on moto (test_capacity_provider_strategy).
    monkeypatch.setattr(launcher, "_ensure_ec2_capacity", lambda workers: None)
    arn = "arn:aws:ecs:us-east-1:123456789012:container-instance/starburst/abc"
    stubber = stub_ecs(
        offline,
        NO_TASKS_YET,
        FOUND_DEFINITION,
        ("run_task", {"tasks": [], "failures": [{"arn": arn, "reason": "RESOURCE:MEMORY"}]}),
    )
    with stubber, pytest.raises(AwsLaunchError) as info:
        launcher.start(3)
    message = str(info.value)
    assert "none of 3" in message and "RESOURCE:MEMORY" in message and arn in message
    assert "Auto Scaling group" in message  # what to do
    assert info.value.code == "RESOURCE:MEMORY"
    assert launcher.running() == 0


def test_missing_resource_failure_names_the_cluster(offline: Aws) -> None:
    launcher = make(offline, OFFLINE_OPTIONS)
    stubber = stub_ecs(
        offline,
        NO_TASKS_YET,
        FOUND_DEFINITION,
        ("run_task", {"tasks": [], "failures": [{"reason": "MISSING", "arn": "x"}]}),
    )
    with stubber, pytest.raises(AwsLaunchError, match="cluster starburst exists in us-east-1"):
        launcher.start(1)


@pytest.mark.parametrize(
    "code, error",
    [
        ("InvalidParameterException", AwsLaunchError),
        ("ClusterNotFoundException", AwsNotSetUpError),
    ],
)
def test_a_refused_run_task_call_is_a_launch_error(offline: Aws, code: str, error: type) -> None:
    launcher = make(offline, OFFLINE_OPTIONS)
    stubber = stub_ecs(offline, NO_TASKS_YET, FOUND_DEFINITION)
    stubber.add_client_error("run_task", service_error_code=code, service_message="refused")
    with stubber, pytest.raises(error) as info:
        launcher.start(1)
    assert "refused" in str(info.value.__cause__) and "starburst" in str(info.value)


def test_partial_start_warns_and_backs_off(offline: Aws, caplog: pytest.LogCaptureFixture) -> None:
    launcher = make(offline, OFFLINE_OPTIONS)
    task_arn = "arn:aws:ecs:us-east-1:123456789012:task/starburst/0123456789abcdef"
    stubber = stub_ecs(
        offline,
        NO_TASKS_YET,
        FOUND_DEFINITION,
        (
            "run_task",
            {
                "tasks": [{"taskArn": task_arn, "lastStatus": "PROVISIONING"}],
                "failures": [
                    {
                        "reason": "Capacity is unavailable at this time. Please try again later "
                        "or in a different availability zone"
                    }
                ],
            },
        ),
    )
    with stubber, caplog.at_level(logging.WARNING, "starburst_executor.aws.launcher"):
        assert launcher.start(2) == ["ecs-0123456789abcdef"]
        assert launcher.start(1) == []  # backing off: no RunTask (the stub has no second answer)
        stubber.assert_no_pending_responses()
    assert launcher.running() == 1
    assert "started 1 of 2" in caplog.text
    assert "Fargate Spot capacity" in caplog.text


# -- quota and waves ---------------------------------------------------------------------------


def test_quota_runs_workers_in_waves(
    aws: Aws, options: EcsOptions, calls: Calls, caplog: pytest.LogCaptureFixture
) -> None:
    launcher = make(aws, options, vcpus=2)  # cpu=1: two workers at once
    with caplog.at_level(logging.INFO, "starburst_executor.aws.launcher"):
        first = launcher.start(5)
        assert len(first) == 2
        assert launcher.start(3) == []  # the manager asks again: no room, no call, no notice
    assert len(calls["RunTask"]) == 1
    wave_notice = "quota allows 2 workers at once; running in waves: 3 more start as workers finish"
    assert launcher.notices == [wave_notice]
    assert caplog.text.count("running in waves") == 1
    for arn in arns_of(launcher):
        ecs(aws).stop_task(
            cluster=options.cluster,
            task=arn,
            reason="Essential container in task exited (exit code 0)",
        )
    ended = launcher.poll()
    assert sorted(e.worker for e in ended) == sorted(first)
    assert launcher.running() == 0
    second = launcher.start(3)
    assert len(second) == 2 and not set(second) & set(first)
    second_notice = (
        "quota allows 2 workers at once; running in waves: 1 more start as workers finish"
    )
    assert launcher.notices == [wave_notice, second_notice]


def test_quota_of_zero_refuses_with_how_to_ask(offline: Aws) -> None:
    with (
        stub_ecs(offline),
        pytest.raises(AwsLaunchError, match="your Fargate Spot vCPU quota is 0") as info,
    ):
        make(offline, OFFLINE_OPTIONS, vcpus=0).start(1)  # refused before any call
    assert "Service Quotas" in str(info.value) and "L-36FBB829" in str(info.value)


def test_quota_smaller_than_one_worker() -> None:
    with pytest.raises(AwsLaunchError, match="smaller than one worker"):
        Quota(vcpus=1).max_workers(2.0, spot=False)
    assert Quota(vcpus=2).max_workers(0.5, spot=True) == 4
    assert Quota(vcpus=6).max_workers(4, spot=True) == 1


@pytest.mark.slow
def test_quota_falls_back_to_a_stated_default_without_service_quotas(aws: Aws) -> None:
    quota = Quota(aws)  # moto has no Fargate quotas
    assert quota.fargate_vcpus(spot=True) == (DEFAULT_FARGATE_VCPUS, "default")
    assert quota.max_workers(1.0, spot=False) == int(DEFAULT_FARGATE_VCPUS)
    assert any("L-36FBB829" in n and "assuming" in n for n in quota.notices)


def test_quota_read_from_service_quotas(offline: Aws) -> None:
    client = offline.client("service-quotas")
    with Stubber(client) as stubber:
        stubber.add_response(
            "get_service_quota",
            {"Quota": {"Value": 40.0}},
            {"ServiceCode": "fargate", "QuotaCode": "L-3032A538"},
        )
        quota = Quota(offline)
        assert quota.fargate_vcpus(spot=False) == (40.0, "service-quotas")
        assert quota.max_workers(4, spot=False) == 10  # cached: no second call


# -- following tasks ---------------------------------------------------------------------------


def test_poll_reports_spot_interruption_with_nonzero_code(aws: Aws, options: EcsOptions) -> None:
    launcher = make(aws, options)
    (worker,) = launcher.start(1)
    (arn,) = arns_of(launcher)
    assert launcher.poll() == []  # running
    ecs(aws).stop_task(cluster=options.cluster, task=arn, reason=SPOT_REASON)
    (ended,) = launcher.poll()
    assert ended.worker == worker
    assert (
        ended.code == ExitCode.SIGTERM
    )  # moto reports exitCode 0; an interruption is not a success
    assert ended.reason.startswith("Spot interruption")
    assert launcher.running() == 0 and launcher.poll() == []


@pytest.mark.slow
def test_poll_is_rate_limited(aws: Aws, options: EcsOptions, calls: Calls) -> None:
    launcher = make(aws, options, describe_every=60.0)
    launcher.start(1)
    assert launcher.poll() == [] and launcher.poll() == []
    assert len(calls["DescribeTasks"]) == 1


def test_poll_survives_a_failing_describe(offline: Aws, caplog: pytest.LogCaptureFixture) -> None:
    launcher = make(offline, OFFLINE_OPTIONS)
    stopped = _stopped(
        stopCode="EssentialContainerExited", containers=[{"name": "worker", "exitCode": 0}]
    )
    stubber = stub_ecs(
        offline,
        NO_TASKS_YET,
        FOUND_DEFINITION,
        ("run_task", {"tasks": [{"taskArn": stopped["taskArn"]}], "failures": []}),
    )
    stubber.add_client_error(
        "describe_tasks", service_error_code="ServerException", http_status_code=500
    )
    for _ in range(5):  # Aws.call's retries of a transient error
        stubber.add_client_error(
            "describe_tasks", service_error_code="ServerException", http_status_code=500
        )
    stubber.add_response("describe_tasks", {"tasks": [stopped], "failures": []})
    with stubber, caplog.at_level(logging.WARNING, "starburst_executor.aws.launcher"):
        launcher.start(1)
        assert launcher.poll() == []
        assert "cannot follow its ECS workers" in caplog.text
        assert [e.code for e in launcher.poll()] == [0]


@pytest.mark.slow
def test_poll_describes_at_most_100_tasks_per_call(
    aws: Aws, options: EcsOptions, calls: Calls
) -> None:
    launcher = make(aws, options)
    assert len(launcher.start(150)) == 150
    assert launcher.poll() == []
    assert [len(c["tasks"]) for c in calls["DescribeTasks"]] == [100, 50]


def _stopped(**fields: Any) -> dict[str, Any]:
    task = {
        "taskArn": "arn:aws:ecs:us-east-1:123456789012:task/starburst/t1",
        "lastStatus": "STOPPED",
    }
    task.update(fields)
    return task


@pytest.mark.parametrize(
    "task, code, reason",
    [
        (
            _stopped(
                stopCode="SpotInterruption",
                stoppedReason=SPOT_REASON,
                containers=[{"name": "worker", "exitCode": 143}],
            ),
            143,
            "Spot interruption",
        ),
        (
            _stopped(
                stopCode="EssentialContainerExited",
                stoppedReason="Essential container in task exited",
                containers=[
                    {
                        "name": "worker",
                        "exitCode": 137,
                        "reason": "OutOfMemoryError: Container killed due to memory usage",
                    }
                ],
            ),
            137,
            "out of memory",
        ),
        (
            _stopped(
                stopCode="TaskFailedToStart",
                stoppedReason="CannotPullContainerError: pull image manifest has been retried 5 time(s)",
                containers=[{"name": "worker"}],
            ),
            None,
            "failed to start: CannotPullContainerError",
        ),
        (
            _stopped(
                stopCode="UserInitiated",
                stoppedReason="operator cleanup",
                containers=[{"name": "worker", "exitCode": 143}],
            ),
            143,
            "stopped by user: operator cleanup",
        ),
        (
            _stopped(
                stopCode="UserInitiated",
                stoppedReason=STOP_REASON,
                containers=[{"name": "worker", "exitCode": 0}],
            ),
            0,
            "stopped by starburst",
        ),
        (
            _stopped(
                stopCode="EssentialContainerExited",
                stoppedReason="Essential container in task exited",
                containers=[{"name": "worker", "exitCode": 0}],
            ),
            0,
            "exit code 0",
        ),
        (
            _stopped(
                stoppedReason="Host EC2 (instance i-1) terminated.", containers=[{"name": "worker"}]
            ),
            None,
            "Host EC2",
        ),
    ],
)
def test_stopped_tasks_become_readable_exits(
    offline: Aws, task: dict[str, Any], code: int | None, reason: str
) -> None:
    launcher = make(offline, OFFLINE_OPTIONS)
    with stub_ecs(
        offline,
        NO_TASKS_YET,
        FOUND_DEFINITION,
        ("run_task", {"tasks": [{"taskArn": task["taskArn"]}], "failures": []}),
        ("describe_tasks", {"tasks": [task], "failures": []}),
    ):
        assert launcher.start(1) == ["ecs-t1"]
        (ended,) = launcher.poll()
    assert (ended.worker, ended.code) == ("ecs-t1", code)
    assert reason in ended.reason


def test_tasks_that_keep_failing_to_start_break_the_pool(offline: Aws) -> None:
    launcher = make(offline, OFFLINE_OPTIONS)
    codes = []
    for i in range(3):
        arn = f"arn:aws:ecs:us-east-1:123456789012:task/starburst/t{i}"
        answers: list[Answer] = [
            ("run_task", {"tasks": [{"taskArn": arn}], "failures": []}),
            (
                "describe_tasks",
                {
                    "failures": [],
                    "tasks": [
                        _stopped(
                            taskArn=arn,
                            stopCode="TaskFailedToStart",
                            stoppedReason="CannotPullContainerError: image not found",
                        )
                    ],
                },
            ),
        ]
        with stub_ecs(offline, *([NO_TASKS_YET, FOUND_DEFINITION] if i == 0 else []), *answers):
            assert launcher.start(1) == [f"ecs-t{i}"]
            codes += [e.code for e in launcher.poll()]
    assert codes == [None, None, 2]  # 2: the manager's "worker cannot start"


# -- stopping ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_stop_stops_every_task_of_the_session(aws: Aws, options: EcsOptions) -> None:
    mine = make(aws, options)
    mine.start(2)
    other_client = make(aws, options)  # e.g. a reattached client of the same session
    other_client.start(1)
    unrelated = make(aws, options, session="20261121-090000-bbbbbb")
    unrelated.start(1)
    session_tasks = arns_of(mine) + arns_of(other_client)
    mine.stop(timeout=5)
    ours = describe(aws, options, session_tasks)
    assert len(ours) == 3
    assert {(t["lastStatus"], t["stoppedReason"]) for t in ours} == {("STOPPED", STOP_REASON)}
    (theirs,) = describe(aws, options, arns_of(unrelated))
    assert theirs["lastStatus"] == "RUNNING"
    assert mine.running() == 0


def test_stop_without_tasks_makes_no_stop_call(aws: Aws, options: EcsOptions, calls: Calls) -> None:
    make(aws, options).stop(timeout=1)
    assert "StopTask" not in calls


# -- from a session ----------------------------------------------------------------------------


def test_for_session_rebuilds_the_launcher_from_the_manifest() -> None:
    config = AwsSessionBackend(AwsBackend(cpu=0.5, spot=True), OFFLINE_OPTIONS, rate=0.0123)
    written = SessionManifest(
        session_id=SESSION,
        created=0.0,
        versions={},
        store_url=STORE,
        backend="aws",
        backend_config=config,
    )
    manifest = SessionManifest.from_dict(json.loads(json.dumps(written.to_dict())))
    assert manifest == written  # the backend record survives the store, typed
    launcher = ECSLauncher.for_session(manifest, poll_max=0.7)
    assert launcher.options == OFFLINE_OPTIONS
    assert (launcher.session_id, launcher.store_url, launcher.poll_max) == (SESSION, STORE, 0.7)
    assert launcher.aws.region == "us-east-1"
    local = replace(manifest, backend="local", backend_config=LocalBackend())
    with pytest.raises(SessionError, match="backend='local'"):
        ECSLauncher.for_session(local, poll_max=1)


# -- the session's tasks in ECS (reattach, cleanup) --------------------------------------------


@pytest.fixture
def strict(aws_env: str) -> Iterator[None]:
    """moto refuses ListTasks with startedBy and another filter, as AWS documents."""
    with strict_list_tasks():
        yield


def _pin_status(arns: list[str], status: str) -> None:
    """Set the lastStatus of tasks in the in-process moto (a Fargate task still starting)."""
    from moto.ecs.models import ecs_backends

    backend = ecs_backends["123456789012"]["us-east-1"]
    for tasks in backend.tasks.values():
        for arn in arns:
            if arn in tasks:
                tasks[arn].last_status = status


@pytest.mark.slow
def test_a_reattached_launcher_stops_every_task_of_the_session(
    aws: Aws, options: EcsOptions, strict: None, calls: Calls
) -> None:
    """cleanup() from another client: ListTasks gets startedBy alone (AWS: "it must be the
    only filter that you use"); statuses are filtered on DescribeTasks' answer."""
    first = make(aws, options)
    first.start(3)
    _pin_status(arns_of(first)[:1], "PENDING")  # one still starting
    reattached = make(aws, options)  # started none itself
    reattached.stop(timeout=5)
    assert {t["lastStatus"] for t in describe(aws, options, arns_of(first))} == {"STOPPED"}
    assert all(set(c) == {"cluster", "startedBy"} for c in calls["ListTasks"])


def test_a_new_launcher_counts_the_sessions_tasks_still_starting(
    aws: Aws, options: EcsOptions, strict: None, calls: Calls
) -> None:
    """Reattaching within a minute: the session's tasks are still PENDING and no worker has
    registered; the new launcher counts them, so the manager starts none in their place."""
    first = make(aws, options)
    first.start(3)
    arns = arns_of(first)
    _pin_status(arns[:2], "PENDING")
    ecs(aws).stop_task(cluster=options.cluster, task=arns[2], reason="done")  # not counted
    again = make(aws, options)
    assert again.running() == 2
    assert sorted(again.worker_ids()) == arns[:2]
    assert again.worker_ids()[arns[0]] == f"ecs-{arns[0].rsplit('/', 1)[1]}"
    other_session = make(aws, options, session="20261121-090000-cccccc")
    assert other_session.running() == 0
    assert len(calls["RunTask"]) == 1  # only the first launcher's


# -- task definitions --------------------------------------------------------------------------


@pytest.mark.slow
def test_arm64_images_get_an_arm64_runtime_platform(aws: Aws, options: EcsOptions) -> None:
    arm = replace(options, cpu_architecture="ARM64", spot=False)
    td = ecs(aws).describe_task_definition(taskDefinition=make(aws, arm).ensure_task_definition())[
        "taskDefinition"
    ]
    assert td["runtimePlatform"] == {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"}


@pytest.mark.slow
def test_an_older_task_definition_nothing_uses_is_retired(
    aws: Aws, options: EcsOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(task_definition, "RETIRE_AFTER", 0.0)  # moto's are all seconds old
    idle = make(aws, options).ensure_task_definition()
    busy_launcher = make(aws, options.with_image("example.com/busy:1"))
    busy_launcher.start(1)  # a task runs on this one: kept
    busy = busy_launcher.ensure_task_definition()
    new = make(aws, options.with_image("example.com/new:1")).ensure_task_definition()

    def status(arn: str) -> str:
        return str(
            ecs(aws).describe_task_definition(taskDefinition=arn)["taskDefinition"]["status"]
        )

    assert (status(idle), status(busy), status(new)) == ("INACTIVE", "ACTIVE", "ACTIVE")
    # A later session with the retired spec registers it again.
    again = make(aws, options).ensure_task_definition()
    assert status(again) == "ACTIVE" and again != idle


@pytest.mark.slow
def test_young_task_definitions_are_not_retired(aws: Aws, options: EcsOptions) -> None:
    first = make(aws, options).ensure_task_definition()  # a client may be about to use it
    make(aws, options.with_image("example.com/new:1")).ensure_task_definition()
    td = ecs(aws).describe_task_definition(taskDefinition=first)["taskDefinition"]
    assert td["status"] == "ACTIVE"


# -- quotas: EC2, and failures matched by code ---------------------------------------------------


@pytest.mark.slow
def test_ec2_workers_at_once_follow_the_ec2_vcpu_quota_and_network_interfaces(
    aws: Aws, options: EcsOptions, calls: Calls
) -> None:
    options = replace(
        options,
        launch_type="EC2",
        spot=True,
        ec2_capacity_provider="starburst-ec2",
        cpu=0.5,
        memory_mib=1024,
    )
    _register_container_instance(aws, options.cluster)
    _ec2_capacity_provider(aws, "starburst-ec2")
    # c7a.xlarge: 4 vCPU and 8 GiB hold 8 such workers by CPU, 7 by memory, but its 4 network
    # interfaces only 3 awsvpc tasks; a quota of 8 vCPU holds 2 instances: 6 workers at once.
    launcher = make(aws, options, vcpus=8)
    assert len(launcher.start(10)) == 6
    assert [c["count"] for c in calls["RunTask"]] == [6]
    assert any(n.startswith("quota allows 6 workers at once") for n in launcher.notices)
    (asg,) = aws.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=["asg-test"]
    )["AutoScalingGroups"]
    assert asg["MaxSize"] == 2  # 6 workers, 3 per instance


def test_ec2_quota_read_by_code(offline: Aws) -> None:
    client = offline.client("service-quotas")
    with Stubber(client) as stubber:
        stubber.add_response(
            "get_service_quota",
            {"Quota": {"Value": 32.0}},
            {"ServiceCode": "ec2", "QuotaCode": "L-34B43A08"},
        )
        stubber.add_response(
            "get_service_quota",
            {"Quota": {"Value": 3.0}},
            {"ServiceCode": "ec2", "QuotaCode": "L-1216C47A"},
        )
        quota = Quota(offline)
        assert quota.max_ec2_workers(4, 3, spot=True) == 24
        with pytest.raises(AwsLaunchError, match="L-1216C47A"):
            quota.max_ec2_workers(4, 3, spot=False)


@pytest.mark.parametrize(
    "reason",
    [
        "You've reached the limit on the number of tasks you can run concurrently",
        "You\u2019ve reached the limit on the number of tasks you can run concurrently",
        "YOU'VE REACHED THE LIMIT on the number of vCPUs",
    ],
)
def test_quota_failures_are_recognised_whatever_the_apostrophe(reason: str) -> None:
    explained = explain_failure({"reason": reason}, OFFLINE_OPTIONS)
    assert "Fargate vCPU quota is used up" in explained and "L-36FBB829" in explained


def test_failure_codes_are_matched_on_the_code() -> None:
    ec2 = replace(OFFLINE_OPTIONS, launch_type="EC2")
    assert "Auto Scaling group" in explain_failure({"reason": "RESOURCE:ENI"}, ec2)
    assert "lack free eni" in explain_failure({"reason": "RESOURCE:ENI"}, ec2)
    assert explain_failure({"reason": "AGENTLESS"}, ec2) == "AGENTLESS"  # no prefix match
