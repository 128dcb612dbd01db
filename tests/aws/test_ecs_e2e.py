"""End to end on moto: the executor, ``ECSLauncher``, and workers that ECS "runs".

moto records every RunTask; the local ECS agent (``ecs_agent.py``) turns each task into a
worker process built only from what ECS would give the container (the task definition's
command, the overrides' environment, the signing key resolved from SSM, the task metadata
endpoint). The session lives on moto's S3. So these tests prove that a launch request
carries everything a worker needs, and that the pieces recover from a Spot interruption.

The executor is built with the local backend and its launcher swapped for an
``ECSLauncher`` before the first submit (``use_launcher``): ``backend="aws"`` reads a profile
that ``starburst setup`` writes. Once that is wired for tests, ``make_executor`` becomes
``StarburstExecutor(backend="aws", ...)`` and ``use_launcher`` goes away.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import executor_tasks
import pytest
from ecs_agent import LocalEcsAgent, provision_world

from starburst_executor import StarburstExecutor
from starburst_executor.aws import task_definition
from starburst_executor.aws.client import Aws
from starburst_executor.aws.launcher import ECSLauncher
from starburst_executor.aws.options import EcsOptions
from starburst_executor.aws.quota import Quota
from starburst_executor.errors import BrokenStarburstExecutor
from starburst_executor.launchers.base import WorkerExit
from starburst_executor.protocol import ExitCode, SessionKeys

pytestmark = pytest.mark.slow

BUCKET = "starburst-e2e"
_TESTS = Path(__file__).resolve().parent.parent


@pytest.fixture
def world(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> EcsOptions:
    """moto's ECS, SSM and S3 set up for one session; workers can import ``executor_tasks``."""
    options = EcsOptions(**provision_world())
    s3 = boto3.session.Session().client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s3.close()
    # The client signs with the key ECS hands the workers (from SSM), as backend="aws" does.
    monkeypatch.setenv("STARBURST_SECRET_KEY", "5a" * 32)
    # Workers import the tests' task module by name, as a user's workers import the user's
    # code baked into the image.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(_TESTS.parent), str(_TESTS)]))
    return options


@pytest.fixture
def agent(world: EcsOptions, tmp_path: Path) -> Iterator[LocalEcsAgent]:
    with LocalEcsAgent(tmp_path / "agent", kill_after=10.0) as running:
        yield running


def use_launcher(ex: StarburstExecutor, launcher: ECSLauncher) -> None:
    """Make ``ex`` start its workers with ``launcher`` (before its first submit)."""
    ex._launcher = launcher
    ex._manager._launcher = launcher


def make_executor(options: EcsOptions, **kwargs: Any) -> tuple[StarburstExecutor, ECSLauncher]:
    ex = StarburstExecutor(store=f"s3://{BUCKET}/e2e", **kwargs)
    launcher = ECSLauncher(
        Aws(options.region),
        options,
        ex.session_id,
        ex.store.url,
        poll_max=0.2,
        quota=Quota(vcpus=4),
        describe_every=0.2,
    )
    use_launcher(ex, launcher)
    return ex, launcher


def all_tasks(options: EcsOptions) -> list[dict[str, Any]]:
    ecs = boto3.session.Session().client("ecs", region_name=options.region)
    arns = ecs.list_tasks(cluster=options.cluster)["taskArns"]
    tasks = ecs.describe_tasks(cluster=options.cluster, tasks=arns)["tasks"] if arns else []
    ecs.close()
    return list(tasks)


def test_tasks_run_on_ecs_workers_and_survive_a_spot_interruption(
    world: EcsOptions,
    agent: LocalEcsAgent,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "starburst_executor")
    ex, launcher = make_executor(world, max_workers=2)
    try:
        # Plain work: results come back through S3 from workers started by RunTask.
        assert list(ex.map(executor_tasks.square, range(40), chunksize=4)) == [
            x * x for x in range(40)
        ]
        assert 1 <= agent.started <= 2
        # The workers knew their ECS identity (metadata endpoint) and got only small
        # settings from the overrides, the key from SSM and nothing else of this process.
        names = {
            info.key.rsplit("/", 1)[-1]
            for info in ex.store.list(SessionKeys(ex.session_id).workers)
        }
        assert names  # (a worker still booting may not have written its record yet)
        assert names <= {f"ecs-{arn.rsplit('/', 1)[-1]}" for arn in agent.processes()}
        env = agent.environment(next(iter(agent.processes())))
        assert env["STARBURST_SESSION"] == ex.session_id
        assert env["STARBURST_STORE"] == ex.store.url
        assert env["STARBURST_SECRET_KEY"] == "5a" * 32

        # A Spot interruption of the worker running a task: the task still completes.
        marks = tmp_path / "marks"
        marks.mkdir()
        future = ex.submit(executor_tasks.announce_and_sleep, str(marks), 2.0)
        agent.wait_for(lambda: any(marks.glob("started-*")), 30, "the task to start")
        first_pid = int(next(marks.glob("started-*")).name.split("-", 1)[1])  # started-{pid}
        victim = agent.task_of_pid(first_pid)
        assert victim is not None
        agent.interrupt(victim)
        finished_pid = future.result(timeout=60)
        assert finished_pid != first_pid  # retried on another worker
        assert not (marks / f"finished-{first_pid}").exists()
        assert agent.exits[victim] == ExitCode.SIGTERM  # it handed its claim back and exited
        assert "SIGTERM, released batch" in agent.log(victim)
        victim_worker = f"ecs-{victim.rsplit('/', 1)[-1]}"
        agent.wait_for(
            lambda: victim_worker in caplog.text and "Spot interruption" in caplog.text,
            10,
            "the launcher to report the interruption",
        )
        reported = [
            r.getMessage()
            for r in caplog.records
            if victim_worker in r.getMessage() and "Spot interruption" in r.getMessage()
        ]
        assert reported and "stopped" in reported[0]
    finally:
        ex.shutdown(wait=True)

    # Shutdown stopped every task of the session, and every process ended.
    agent.wait_idle(timeout=20)
    assert not agent.alive()
    tasks = all_tasks(world)
    assert len(tasks) == agent.started >= 2
    assert {t["lastStatus"] for t in tasks} == {"STOPPED"}
    assert launcher.running() == 0
    assert agent.errors == []


def test_a_worker_that_exits_by_itself_is_reported_with_its_code(
    world: EcsOptions,
    agent: LocalEcsAgent,
) -> None:
    # idle_timeout=1: the worker finishes its work, idles, and exits 0 by itself; the agent
    # reports it to ECS as ECS would ("Essential container in task exited").
    ex, launcher = make_executor(world, max_workers=1, idle_timeout=1)
    try:
        assert ex.submit(executor_tasks.add, 2, 3).result(timeout=60) == 5
        agent.wait_for(lambda: len(agent.exits) == 1, 30, "the idle worker to exit")
        ((arn, code),) = agent.exits.items()
        assert code == 0
        deadline = time.monotonic() + 10
        ended: list[WorkerExit] = []
        while not ended and time.monotonic() < deadline:
            ended = launcher.poll()
            time.sleep(0.1)
        (exit_,) = ended
        assert agent.mirrors_exit_codes  # moto in this process: its task shows the real code
        assert exit_.worker == f"ecs-{arn.rsplit('/', 1)[-1]}"
        assert exit_.code == 0
        assert "exit code 0" in exit_.reason
        assert "Essential container in task exited" in exit_.reason
    finally:
        ex.shutdown(wait=True)
    agent.wait_idle(timeout=20)


# -- workers that cannot start -------------------------------------------------------------------


def _with_container(monkeypatch: pytest.MonkeyPatch, **extra: Any) -> None:
    """Make the launcher register task definitions whose container also has ``extra``."""
    real = task_definition.spec

    def spec(options: EcsOptions, secret_arn: str) -> dict[str, Any]:
        request = real(options, secret_arn)
        request["containerDefinitions"][0].update(extra)
        return request

    monkeypatch.setattr(task_definition, "spec", spec)


def test_a_command_repeating_the_entrypoint_makes_the_worker_exit_2(
    world: EcsOptions,
    agent: LocalEcsAgent,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old task definition (``command`` = the worker module) on an image whose ENTRYPOINT
    is that module: Docker runs both, the worker refuses its arguments and exits 2, and the
    pool breaks with the worker's own message, read from CloudWatch. (With the command back in
    ``task_definition.spec``, every other test here fails the same way.)"""
    _with_container(monkeypatch, command=["python", "-m", "starburst_executor.worker"])
    ex, launcher = make_executor(world, max_workers=1)
    try:
        with pytest.raises(BrokenStarburstExecutor, match="could not start") as caught:
            ex.submit(executor_tasks.add, 1, 2).result(timeout=60)
        assert "unrecognized arguments: python -m starburst_executor.worker" in str(caught.value)
        assert set(agent.exits.values()) == {2}
    finally:
        ex.shutdown(wait=True)
    agent.wait_idle(timeout=20)


def test_the_start_failure_error_carries_the_workers_cloudwatch_log(
    world: EcsOptions,
    agent: LocalEcsAgent,
) -> None:
    """A worker that fails at start (its store holds no such session) exits 2 with a message
    that only its log holds; the pool's error shows it (fetched from CloudWatch Logs, where
    the agent ships the output as the awslogs driver does)."""
    ex = StarburstExecutor(store=f"s3://{BUCKET}/e2e")
    launcher = ECSLauncher(
        Aws(world.region),
        world,
        ex.session_id,
        f"s3://{BUCKET}/elsewhere",
        poll_max=0.2,
        quota=Quota(vcpus=4),
        describe_every=0.2,
    )
    use_launcher(ex, launcher)
    try:
        with pytest.raises(BrokenStarburstExecutor, match="could not start") as caught:
            ex.submit(executor_tasks.add, 1, 2).result(timeout=60)
        message = str(caught.value)
        assert f"session {ex.session_id} does not exist in s3://{BUCKET}/elsewhere" in message
        assert agent.started == 1  # exit code 2: no second try
    finally:
        ex.shutdown(wait=True)
    agent.wait_idle(timeout=20)


def test_a_worker_that_stops_before_registering_is_a_failed_start_whatever_its_code(
    world: EcsOptions,
    agent: LocalEcsAgent,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """moto reports exit code 0 for every container; a worker that never registers must break
    the pool after a few tries, not be replaced forever (38 containers in 40 s, seen on
    moto). Here the process really exits 0 without registering."""
    _with_container(monkeypatch, entryPoint=["python", "-c", "print('no worker here')"])
    ex, launcher = make_executor(world, max_workers=1)
    try:
        with pytest.raises(BrokenStarburstExecutor, match="exited before starting"):
            ex.submit(executor_tasks.add, 1, 2).result(timeout=60)
        assert set(agent.exits.values()) == {0}
        assert 3 <= agent.started <= 4
    finally:
        ex.shutdown(wait=True)
    agent.wait_idle(timeout=20)
