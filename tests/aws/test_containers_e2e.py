"""``backend="aws"`` end to end in real containers of the project's image, IAM enforced.

One world for the module (they run in file order; the last test tears it down):

- moto on its own port, in this process, with IAM enforced (``iam_world.py``): an
  administrator runs ``starburst setup``; every session runs as a user holding exactly the
  user policy the project generates; workers hold only the task role's credentials, served by
  the agent's container credentials endpoint; ECS itself (the agent) acts with the execution
  role for the signing key and the logs.
- the container ECS agent (``container_agent.py``) runs each RunTask as ``docker run
  --network host`` of the worker image built from this checkout, with ECS's semantics.
- every AWS call of the client (this process and its subprocesses) and of the workers (in
  the containers, through a mounted ``sitecustomize``) is recorded (``call_log.py``), and
  :func:`test_every_recorded_call_is_allowed_by_the_generated_policies` checks each against
  the generated policies.

The tasks travel with ``code_files`` (``container_tasks.py``): the image holds only the
package. Timings are printed (``-s`` shows them) and kept in ``World.timings``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import call_log
import container_tasks
import pytest
from container_agent import ContainerEcsAgent
from iam_world import ADMIN_POLICY, EnforcedIam, Identity, create_user, moto_api
from servers import MotoServer

from starburst_executor import AwsBackend, DetachedExecutor, StarburstExecutor, cli
from starburst_executor.aws import policies
from starburst_executor.aws.client import Aws
from starburst_executor.aws.settings import AwsSettings
from starburst_executor.aws.setup import setup, teardown
from starburst_executor.errors import AwsError

pytestmark = pytest.mark.slow

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account (MOTO_ACCOUNT_ID pins it)
_HERE = Path(__file__).resolve().parent
TASKS = _HERE / "container_tasks.py"
_MOUNT = "/starburst-call-log"
EXIT_SIGTERM = 143


@dataclass
class World:
    """Everything the module's tests share."""

    endpoint: str
    home: Path
    settings: AwsSettings
    admin: Identity
    user: Identity
    nobody: Identity
    agent: ContainerEcsAgent
    log_root: Path
    user_policy: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def calls(self) -> Path:
        return self.log_root / "calls"

    def admin_aws(self) -> Aws:
        return Aws(REGION, session=self.admin.session(REGION), retry_sleep=lambda _: None)

    def user_env(self) -> dict[str, str]:
        """The client's environment: the user's key, moto, this module's profile."""
        return {
            **self.user.env(),
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "STARBURST_HOME": str(self.home),
        }


def _scope(settings: AwsSettings) -> policies.Scope:
    return policies.Scope(
        partition="aws",
        region=settings.region,
        account=ACCOUNT,
        bucket=settings.bucket,
        prefix=settings.prefix,
        cluster=settings.cluster,
        task_family=settings.task_family,
        execution_role_arn=settings.execution_role_arn,
        task_role_arn=settings.task_role_arn,
        secret_parameter=settings.secret_parameter,
        log_group=settings.log_group,
        ecr_repository=settings.ecr_repository,
    )


def _push_image(session: Any, settings: AwsSettings, local_image: str) -> str:
    """Record the local image in moto's ECR (a manifest naming its config digest), as
    `starburst image build` pushes it; returns the repository URI."""
    config = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", local_image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "digest": config,
            "size": 1,
            "mediaType": "application/vnd.docker.container.image.v1+json",
        },
        "layers": [],
    }
    ecr = session.client("ecr", region_name=REGION)
    ecr.put_image(
        repositoryName=settings.ecr_repository, imageManifest=json.dumps(manifest), imageTag="e2e"
    )
    uri = str(
        ecr.describe_repositories(repositoryNames=[settings.ecr_repository])["repositories"][0][
            "repositoryUri"
        ]
    )
    ecr.close()
    return uri


@pytest.fixture(scope="module")
def world(worker_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("containers-e2e")
    home = root / "starburst-home"
    timings: dict[str, float] = {}
    with pytest.MonkeyPatch.context() as mp, MotoServer() as moto:
        endpoint = moto.endpoint_url
        for name in (
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL_S3",
            "STARBURST_SECRET_KEY",
            "STARBURST_STORE",
        ):
            mp.delenv(name, raising=False)
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "bootstrap",
            "AWS_SECRET_ACCESS_KEY": "bootstrap",
            "AWS_CONFIG_FILE": str(root / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(root / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "STARBURST_HOME": str(home),
            "MOTO_ACCOUNT_ID": ACCOUNT,
            "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
        }.items():
            mp.setenv(name, value)
        moto_api(endpoint, "reset")
        moto_api(
            endpoint,
            "state-manager/set-transition",
            {
                "model_name": "ecs::task",
                "transition": {"progression": "manual", "times": 1_000_000_000},
            },
        )
        # The only calls moto lets through unchecked: the administrator's own creation.
        iam = boto3.session.Session().client("iam", region_name=REGION)
        admin = create_user(iam, "starburst-admin", ADMIN_POLICY)
        nobody = create_user(iam, "starburst-nobody", None)
        iam.close()
        log_root = call_log.hook_dir(root / "call-log")
        with EnforcedIam(endpoint):
            started = time.monotonic()
            setup(Aws(REGION, session=admin.session(REGION), retry_sleep=lambda _: None))
            timings["setup_s"] = time.monotonic() - started
            settings = AwsSettings.load()
            user_policy = policies.user_policy(_scope(settings))
            admin_iam = admin.session(REGION).client("iam")
            user = create_user(admin_iam, "starburst-user", user_policy)
            admin_iam.close()
            # The user pushes the image (ECR actions of the user policy), as image build does.
            repository = _push_image(user.session(REGION), settings, worker_image)
            settings = dataclasses.replace(settings, image=f"{repository}:e2e")
            settings.save()
            call_log.install(log_root / "calls", "client")
            agent = ContainerEcsAgent(
                root / "agent",
                images={repository: worker_image},
                session=admin.session(REGION),
                endpoint_url=endpoint,
                kill_after=15.0,
                env={
                    call_log.ENV_DIR: f"{_MOUNT}/calls",
                    call_log.ENV_WHO: "worker",
                    "PYTHONPATH": f"{_MOUNT}/hook",
                },
                mounts={
                    str(log_root / "hook"): f"{_MOUNT}/hook:ro",
                    str(log_root / "calls"): f"{_MOUNT}/calls",
                },
            )
            try:
                with agent:
                    yield World(
                        endpoint,
                        home,
                        settings,
                        admin,
                        user,
                        nobody,
                        agent,
                        log_root,
                        user_policy,
                        timings,
                    )
            finally:
                call_log.uninstall()
                print(f"\ncontainer e2e timings: {json.dumps(timings)}")
        moto_api(endpoint, "reset")


@pytest.fixture
def as_user(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    """This test's client runs as the user holding the generated user policy."""
    for name, value in world.user_env().items():
        monkeypatch.setenv(name, value)
    return world


def _timed(world: World, name: str, started: float) -> None:
    world.timings[name] = round(time.monotonic() - started, 2)


def _ecs_tasks(world: World, **filters: Any) -> list[dict[str, Any]]:
    ecs = world.admin.session(REGION).client("ecs")
    arns = ecs.list_tasks(cluster=world.settings.cluster, **filters)["taskArns"]
    tasks = ecs.describe_tasks(cluster=world.settings.cluster, tasks=arns)["tasks"] if arns else []
    ecs.close()
    return list(tasks)


def _session_tasks(world: World, sid: str) -> list[str]:
    """The ECS tasks the agent ran for a session (from the overrides they were started with)."""
    return [
        arn
        for arn in world.agent.processes()
        if world.agent.environment(arn).get("STARBURST_SESSION") == sid
    ]


def _check_containers(world: World, arns: list[str]) -> None:
    """What ECS gave each container: task role credentials only, through the endpoint."""
    assert arns
    for arn in arns:
        env = world.agent.environment(arn)
        assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env
        assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"].endswith(arn.rsplit("/", 1)[-1])
        assert "STARBURST_SECRET_KEY" in env  # the secret, from SSM as the execution role


def test_iam_is_enforced(as_user: World) -> None:
    world = as_user
    # Deliberate denials: not part of what the client or workers do.
    with call_log.paused():
        # Someone without a policy is refused ecs:RunTask; the user is refused what the generated
        # policy does not give (creating roles); both by moto, before anything runs.
        ecs = world.nobody.session(REGION).client("ecs")
        with pytest.raises(ecs.exceptions.ClientError, match="AccessDenied"):
            ecs.run_task(cluster=world.settings.cluster, taskDefinition="anything")
        ecs.close()
        iam = world.user.session(REGION).client("iam")
        with pytest.raises(iam.exceptions.ClientError, match="AccessDenied"):
            iam.create_role(RoleName="escalate", AssumeRolePolicyDocument="{}")
        iam.close()
        nobody = Aws(REGION, session=world.nobody.session(REGION), retry_sleep=lambda _: None)
        # moto answers a JSON-protocol service's denial in XML, which botocore cannot parse into a
        # code: the choke point names the action and the 403 (AWS sends AccessDeniedException).
        with pytest.raises(AwsError, match="ecs:ListTasks.*403"):
            nobody.call("ecs", "list_tasks", cluster=world.settings.cluster)
        # The task role reaches the session prefix only.
        creds = world.agent._assume(world.settings.task_role_arn, "probe")
        s3 = boto3.session.Session(
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["Token"],
        ).client("s3", region_name=REGION)
        s3.put_object(Bucket=world.settings.bucket, Key=f"{world.settings.prefix}/probe", Body=b"x")
        with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
            s3.put_object(Bucket=world.settings.bucket, Key="elsewhere/probe", Body=b"x")
        s3.close()


def test_executor_maps_100_items_over_two_containers(as_user: World) -> None:
    world = as_user
    started = time.monotonic()
    with StarburstExecutor(
        backend=AwsBackend(cpu=0.5, memory="1GB"), max_workers=2, code_files=[TASKS]
    ) as ex:
        results = ex.map(container_tasks.square_where, range(100), [0.05] * 100, chunksize=5)
        first = next(results)
        first_at = time.monotonic()
        rest = list(results)
        sid = ex.session_id
    _timed(world, "map_100_s", started)
    launched = [world.agent.launched_at[a] for a in _session_tasks(world, sid)]
    world.timings["docker_run_to_first_result_s"] = round(first_at - min(launched), 2)
    values = [first, *rest]
    assert [v for v, _ in values] == [x * x for x in range(100)]
    workers = {task for _, task in values}
    assert len(workers) >= 2, f"one container did all the work: {workers}"
    arns = _session_tasks(world, sid)
    assert workers <= {a.rsplit("/", 1)[-1] for a in arns}
    _check_containers(world, arns)
    world.agent.wait_for(
        lambda: all(a in world.agent.exits for a in arns), 30, "the session's containers to exit"
    )
    assert {world.agent.exits[a] for a in arns} <= {0, EXIT_SIGTERM}
    assert {t["lastStatus"] for t in _ecs_tasks(world, desiredStatus="STOPPED")} == {"STOPPED"}
    assert world.agent.errors == []


def test_detached_session_survives_its_client_and_is_collected(as_user: World) -> None:
    world = as_user
    started = time.monotonic()
    script = (
        "import container_tasks\n"
        "from starburst_executor import DetachedExecutor\n"
        f"ex = DetachedExecutor(backend='aws', max_workers=2, name='e2e-detached', "
        f"code_files=[{str(TASKS)!r}])\n"
        "for i in range(12):\n"
        "    ex.submit(container_tasks.square_where, i, 0.2)\n"
        "print(ex.session_id)\n"
        "ex.detach()\n"
    )
    env = {
        **os.environ,
        call_log.ENV_DIR: str(world.calls),
        call_log.ENV_WHO: "client",
        "PYTHONPATH": os.pathsep.join(
            [str(world.log_root / "hook"), str(_HERE), str(_HERE.parent.parent)]
        ),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    sid = done.stdout.strip().splitlines()[-1]
    again = DetachedExecutor.attach(sid)
    results = again.collect(wait=True, timeout=120, poll_interval=0.2)
    assert [r.value[0] for r in results] == [i * i for i in range(12)]
    status = again.status()
    assert (status.completed, status.failed) == (12, 0)
    again.cleanup()
    arns = _session_tasks(world, sid)
    assert 1 <= len(arns) <= 2
    _check_containers(world, arns)
    world.agent.wait_for(
        lambda: all(a in world.agent.exits for a in arns),
        60,
        "the detached session's containers to exit",
    )
    _timed(world, "detached_s", started)
    assert world.agent.errors == []


def test_spot_stop_of_a_container_mid_task_hands_its_batch_over(as_user: World) -> None:
    world = as_user
    started = time.monotonic()
    with StarburstExecutor(backend="aws", max_workers=2, code_files=[TASKS]) as ex:
        futures = [ex.submit(container_tasks.slow_where, i, 1.5) for i in range(4)]
        sid = ex.session_id

        def running() -> list[str]:
            return [
                a
                for a in _session_tasks(world, sid)
                if "slow-start" in world.agent.log(a) and a not in world.agent.exits
            ]

        world.agent.wait_for(lambda: bool(running()), 60, "a container to start a task")
        victim = running()[0]
        world.agent.interrupt(victim)
        values = [f.result(timeout=120) for f in futures]
    _timed(world, "spot_s", started)
    assert [v for v, _ in values] == [0, 1, 2, 3]  # every result, once, in order
    victim_id = victim.rsplit("/", 1)[-1]
    assert victim_id not in {task for _, task in values}  # its work finished elsewhere
    world.agent.wait_for(lambda: victim in world.agent.exits, 30, "the victim to exit")
    assert world.agent.exits[victim] == EXIT_SIGTERM  # it handled SIGTERM as PID 1
    assert "released" in world.agent.log(victim)
    assert world.agent.errors == []


def test_logs_command_shows_a_tasks_output_from_cloudwatch(
    as_user: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world = as_user
    started = time.monotonic()
    marker = f"hello-from-container-{time.time_ns()}"
    with StarburstExecutor(backend="aws", max_workers=1, code_files=[TASKS]) as ex:
        assert ex.submit(container_tasks.shout, marker).result(timeout=90) == marker
        sid = ex.session_id
    arns = _session_tasks(world, sid)
    world.agent.wait_for(
        lambda: all(a in world.agent.exits for a in arns),
        30,
        "the container to exit (its log shipped)",
    )
    capsys.readouterr()
    assert cli.main(["logs", sid]) == 0
    out = capsys.readouterr().out
    assert marker in out
    assert any(f"ecs-{a.rsplit('/', 1)[-1]}" in out for a in arns)
    _timed(world, "logs_s", started)


def _role_of_keys() -> dict[str, str]:
    """Access key id -> role ARN of every role credential moto's STS handed out."""
    from moto.sts.models import sts_backends

    return {r.access_key_id: r.role_arn for r in sts_backends[ACCOUNT]["aws"].assumed_roles}


def _managed_document(world: World, arn: str) -> dict[str, Any]:
    iam = world.admin.session(REGION).client("iam")
    version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
    iam.close()
    return policies.parse_document(document)


def test_every_recorded_call_is_allowed_by_the_generated_policies(as_user: World) -> None:
    world = as_user
    s = world.settings
    calls = call_log.read_calls(world.calls)
    roles = _role_of_keys()
    client = [c for c in calls if c.key == world.user.access_key_id]
    worker = [c for c in calls if roles.get(c.key or "") == s.task_role_arn]
    execution = [c for c in calls if roles.get(c.key or "") == s.execution_role_arn]
    # Workers used the task role's credentials for every call, and nothing else.
    in_containers = [c for c in calls if c.who == "worker"]
    assert in_containers and all(roles.get(c.key or "") == s.task_role_arn for c in in_containers)
    assert client and worker and execution
    scope = {"region": REGION, "account": ACCOUNT}
    task_policy = policies.task_role_policy(bucket=s.bucket, prefix=s.prefix)
    execution_policies = [
        policies.execution_role_policy(
            secret_parameter=s.secret_parameter, log_group=s.log_group, **scope
        ),
        _managed_document(
            world, policies.managed_policy_arn(policies.ECS_EXECUTION_MANAGED_POLICY)
        ),
    ]
    problems = (
        call_log.violations(client, [world.user_policy], **scope)
        + call_log.violations(worker, [task_policy], **scope)
        + call_log.violations(execution, execution_policies, **scope)
    )
    operations = sorted({f"{c.who}:{c.service}.{c.operation}" for c in client + worker})
    print("\nrecorded operations:", ", ".join(operations))
    assert problems == [], "\n".join(problems)
    # And the check has teeth: the task role without its listing statement is caught.
    listing_removed = {
        **task_policy,
        "Statement": [st for st in task_policy["Statement"] if "s3:ListBucket" not in st["Action"]],
    }
    missing = call_log.violations(worker, [listing_removed], **scope)
    assert missing and all("s3:ListBucket" in m for m in missing)
    # Actions a call implies are checked too: RunTask passes the roles and tags the tasks.
    for implied_action in ("iam:PassRole", "ecs:TagResource"):
        without = {
            **world.user_policy,
            "Statement": [
                st
                for st in world.user_policy["Statement"]
                if implied_action not in call_log._listify(st["Action"])
            ],
        }
        missing = call_log.violations(client, [without], **scope)
        assert any(f"RunTask needs {implied_action}" in m for m in missing), missing


def _image_check(checks: list[Any]) -> Any:
    return next(c for c in checks if c.name == "image starts")


def test_doctor_fails_on_an_image_with_the_wrong_entrypoint(
    as_user: World, worker_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from starburst_executor.aws.doctor import doctor

    world = as_user
    started = time.monotonic()
    settings = world.settings
    wrong = f"{settings.image.rsplit(':', 1)[0]}:wrong-entrypoint"
    dockerfile = f'FROM {worker_image}\nENTRYPOINT ["python", "-c", "import sys; sys.exit(2)"]\n'
    subprocess.run(
        ["docker", "build", "-q", "-t", wrong, "-"],
        input=dockerfile,
        text=True,
        capture_output=True,
        check=True,
        timeout=120,
    )
    # What `docker pull` of the profile's image would leave on this machine.
    subprocess.run(["docker", "tag", worker_image, settings.image], check=True, timeout=30)
    try:
        good = _image_check(doctor(Aws(REGION), settings))
        assert good.ok and not good.warning, good
        dataclasses.replace(settings, image=wrong).save()
        capsys.readouterr()
        assert cli.main(["doctor"]) != 0
        out = capsys.readouterr().out
        assert "ENTRYPOINT" in out and "image build" in out, out
    finally:
        settings.save()
        subprocess.run(
            ["docker", "rmi", wrong, settings.image], capture_output=True, timeout=60, check=False
        )
    _timed(world, "doctor_s", started)


def test_setup_again_changes_nothing_and_teardown_leaves_nothing(as_user: World) -> None:
    world = as_user
    started = time.monotonic()
    aws = world.admin_aws()
    again = setup(aws)
    assert not again.changed, str(again)
    report = teardown(aws, AwsSettings.load(), delete_bucket=True)
    assert report.ok, str(report)
    session = world.admin.session(REGION)
    s3, ecs, iam, logs, ecr, ssm = (
        session.client(n) for n in ("s3", "ecs", "iam", "logs", "ecr", "ssm")
    )
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == []
    clusters = ecs.describe_clusters(clusters=ecs.list_clusters()["clusterArns"] or ["x"])
    assert [c["clusterName"] for c in clusters["clusters"] if c["status"] == "ACTIVE"] == []
    roles = [r["RoleName"] for r in iam.list_roles()["Roles"]]
    assert not [r for r in roles if r.startswith(world.settings.cluster)], roles
    assert logs.describe_log_groups()["logGroups"] == []
    assert ecr.describe_repositories()["repositories"] == []
    assert ssm.describe_parameters()["Parameters"] == []
    for client in (s3, ecs, iam, logs, ecr, ssm):
        client.close()
    _timed(world, "setup_again_and_teardown_s", started)
