"""A local ECS agent for tests: moto records RunTask, this agent runs what it records.

:class:`LocalEcsAgent` polls moto's ECS (ListClusters, ListTasks per cluster, DescribeTasks,
every ``interval`` seconds) and turns each new task into a local process, built only from
what ECS itself would hand a container, so a test proves that the launch request carries
everything the worker needs:

- the argv Docker would run: the image has no existence here, so its ENTRYPOINT is taken to
  be :data:`IMAGE_ENTRYPOINT` (``python -m starburst_executor.worker``, what the project's
  Dockerfile sets) with an empty CMD; the task definition's ``entryPoint`` replaces it and
  its ``command`` is appended to it, exactly as ``docker run --entrypoint ... IMAGE CMD``
  does (:func:`docker_argv`; a leading ``python`` becomes ``sys.executable``). So a task
  definition whose ``command`` repeats the entry point runs the worker with bogus arguments
  and exits 2, as it would on ECS;
- the environment: the task definition's ``environment``, then the RunTask container
  overrides, then the ``secrets`` resolved from moto's SSM Parameter Store (``valueFrom``),
  over a base of the test's ``AWS_*`` settings (endpoint, dummy credentials: what the task
  role and the VPC would provide), ``PATH`` and ``PYTHONPATH``. Nothing else of the test
  process leaks in: no ``STARBURST_*`` variable, in particular no signing key;
- the ECS task metadata endpoint v4, emulated by a small HTTP server on 127.0.0.1
  (``GET /{task id}/task`` answers ``{"TaskARN": ...}``), passed as
  ``ECS_CONTAINER_METADATA_URI_V4``, so the real worker code names itself ``ecs-{task id}``.

The process's output goes to ``{task id}.log`` and, when it exits, to moto's CloudWatch Logs
(PutLogEvents) under the stream the ``awslogs`` driver would use,
``{awslogs-stream-prefix}/{container name}/{task id}`` in ``awslogs-group``: one event per
line, shipped before the task is reported stopped (the driver flushes at container exit).

``ListTasks`` is made as strict as AWS documents it while the agent runs
(:func:`strict_list_tasks`): "When you specify startedBy as the filter, it must be the only
filter that you use"; moto would apply both.

Stopping, as ECS does it: when moto shows a task's ``desiredStatus`` STOPPED (someone called
StopTask) the agent sends SIGTERM, and SIGKILL ``kill_after`` seconds later. When a process
exits by itself the agent calls StopTask with ECS's reason ``Essential container in task
exited (exit code N)`` and records the code (:attr:`exits`). :meth:`interrupt` plays a Fargate
Spot interruption: StopTask with ECS's reason ``Your Spot Task was interrupted.``, then
SIGTERM.

What moto (5.2) cannot record, and what the agent does about it:

- moto's StopTask moves a task to STOPPED at once (AWS passes through DEACTIVATING and
  STOPPING while the container shuts down), so the launcher may see STOPPED while the
  process is still handing back its claim;
- moto never sets ``stopCode`` and reports every container's ``exitCode`` as 0. When moto
  runs in this process (``ThreadedMotoServer``, as in the test fixtures) the agent writes
  them into moto's task model: ``exitCode`` = the process's code when it exits,
  ``stopCode`` = ``EssentialContainerExited`` or ``SpotInterruption``, and, during an
  interruption, no ``exitCode`` until the process has exited. Against an out-of-process
  moto (``moto_server``) it cannot, :attr:`mirrors_exit_codes` is False, and the launcher
  sees ``exitCode`` 0 and no ``stopCode``: it must (and does) cope.
- moto ignores ``clientToken`` (no idempotency) and ``propagateTags``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from unittest import mock

import boto3

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "IMAGE_ENTRYPOINT",
    "SPOT_REASON",
    "LocalEcsAgent",
    "docker_argv",
    "provision_world",
    "send_json",
    "strict_list_tasks",
]

logger = logging.getLogger(__name__)

SPOT_REASON = "Your Spot Task was interrupted."
_BASE_ENV = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
# The ENTRYPOINT of the project's worker image (worker/Dockerfile); its CMD is empty.
IMAGE_ENTRYPOINT = ("python", "-m", "starburst_executor.worker")
_LIST_TASKS_FILTERS = ("containerInstance", "family", "serviceName", "desiredStatus", "launchType")


def docker_argv(
    container: dict[str, Any],
    entrypoint: tuple[str, ...] = IMAGE_ENTRYPOINT,
    cmd: tuple[str, ...] = (),
) -> list[str]:
    """What Docker runs for an ECS container definition on an image with this ENTRYPOINT and
    CMD: ``entryPoint`` replaces the ENTRYPOINT (and, as ``docker run --entrypoint`` does,
    drops the image's CMD); ``command`` replaces CMD; the argv is ENTRYPOINT + CMD."""
    entry = container.get("entryPoint")
    command = container.get("command")
    if entry:
        return [*entry, *(command or [])]
    return [*entrypoint, *(command if command else cmd)]


@contextlib.contextmanager
def strict_list_tasks() -> Iterator[None]:
    """Make the in-process moto refuse ``ListTasks`` with ``startedBy`` and another filter
    (AWS: startedBy "must be the only filter that you use"; moto applies both)."""
    from moto.ecs.exceptions import InvalidParameterException
    from moto.ecs.responses import EC2ContainerServiceResponse

    original = EC2ContainerServiceResponse.list_tasks

    def list_tasks(self: Any) -> Any:
        if self._get_param("startedBy"):
            others = [f for f in _LIST_TASKS_FILTERS if self._get_param(f)]
            if others:
                raise InvalidParameterException(
                    f"startedBy must be the only filter; also given: {', '.join(others)}"
                )
        return original(self)

    with mock.patch.object(EC2ContainerServiceResponse, "list_tasks", list_tasks):
        yield


@dataclass
class _Task:
    arn: str
    cluster: str
    proc: subprocess.Popen[bytes]
    log: Path
    term_at: float | None = None  # when SIGTERM was sent
    exit_code: int | None = None
    stopped_in_ecs: bool = False  # desiredStatus STOPPED seen or set by us
    interrupted: bool = False
    env: dict[str, str] = field(default_factory=dict)
    log_group: str = ""  # where the awslogs driver would ship the output ("" : nowhere)
    log_stream: str = ""
    kill_after: float | None = None  # the task's own stopTimeout (None: the agent's)


def send_json(handler: BaseHTTPRequestHandler, answer: object) -> None:
    """Answer an HTTP request with ``answer`` as JSON (the agents' emulated ECS endpoints)."""
    body = json.dumps(answer).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class LocalEcsAgent:
    """Runs moto's ECS tasks as local processes (see the module docstring).

    Args:
        log_dir: where each task's output goes (``{task id}.log``).
        region: the region whose clusters are watched.
        endpoint_url: moto's endpoint (default: ``AWS_ENDPOINT_URL``).
        interval: seconds between looks at ECS.
        kill_after: seconds between SIGTERM and SIGKILL (ECS: the ``stopTimeout``).
        env: extra environment for every process (applied under the task's own).
        session: the boto3 session of the agent's own ECS and SSM calls (default: a new one
            from the environment).
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        interval: float = 0.2,
        kill_after: float = 10.0,
        env: dict[str, str] | None = None,
        session: Any = None,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.region = region
        self.interval = interval
        self.kill_after = kill_after
        self._extra_env = dict(env or {})
        session = session or boto3.session.Session()
        self._endpoint = endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        self._ecs: Any = session.client("ecs", region_name=region, endpoint_url=endpoint)
        self._ssm: Any = session.client("ssm", region_name=region, endpoint_url=endpoint)
        self._logs: Any = session.client("logs", region_name=region, endpoint_url=endpoint)
        self._strict = strict_list_tasks()
        self._lock = threading.Lock()
        self._tasks: dict[str, _Task] = {}
        self._ignored: set[str] = set()  # tasks seen already stopped, or failed to launch
        self._definitions: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: ThreadingHTTPServer | None = None
        self.errors: list[str] = []  # what went wrong in the agent's thread
        self.mirrors_exit_codes = True  # becomes False if moto's model is out of reach

    def _spawn(
        self, argv: list[str], env: dict[str, str], task_id: str
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """Start one task's process, its output in ``{log_dir}/{task id}.log``, in a process
        session of its own (as a container is isolated from the agent)."""
        log = self.log_dir / f"{task_id}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        return proc, log

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the metadata endpoint and the polling thread."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        agent = self

        class Metadata(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                task = agent._by_id(parts[0]) if len(parts) == 2 and parts[1] == "task" else None
                if task is None:
                    self.send_error(404)
                    return
                send_json(
                    self, {"TaskARN": task.arn, "Cluster": task.cluster, "KnownStatus": "RUNNING"}
                )

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Metadata)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, name="ecs-agent-metadata", daemon=True
        ).start()
        self._thread = threading.Thread(target=self._run, name="ecs-agent", daemon=True)
        self._strict.__enter__()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling, then SIGTERM every process left (SIGKILL after ``kill_after``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            tasks = list(self._tasks.values())
        for task in tasks:
            if task.proc.poll() is None:
                self._send_term(task)
        deadline = time.monotonic() + self.kill_after
        for task in tasks:
            try:
                task.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._send_kill(task)
                task.proc.wait()
            with self._lock:
                if task.exit_code is None:
                    task.exit_code = task.proc.returncode
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._ecs.close()
        self._ssm.close()
        self._logs.close()
        self._strict.__exit__(None, None, None)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- accessors ---------------------------------------------------------------------------

    @property
    def metadata_url(self) -> str:
        assert self._server is not None, "the agent is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def started(self) -> int:
        """How many tasks the agent has turned into processes."""
        with self._lock:
            return len(self._tasks)

    def processes(self) -> dict[str, subprocess.Popen[bytes]]:
        """Every process the agent started, by task ARN (running or not)."""
        with self._lock:
            return {arn: t.proc for arn, t in self._tasks.items()}

    def alive(self) -> list[str]:
        """Task ARNs whose process is still running."""
        with self._lock:
            return [arn for arn, t in self._tasks.items() if t.proc.poll() is None]

    @property
    def exits(self) -> dict[str, int]:
        """Exit codes of the processes that ended, by task ARN."""
        with self._lock:
            return {arn: t.exit_code for arn, t in self._tasks.items() if t.exit_code is not None}

    def environment(self, task_arn: str) -> dict[str, str]:
        """The environment a task's process was started with."""
        with self._lock:
            return dict(self._tasks[task_arn].env)

    def task_of_pid(self, pid: int) -> str | None:
        """The task ARN whose process has this pid."""
        with self._lock:
            return next((arn for arn, t in self._tasks.items() if t.proc.pid == pid), None)

    def log(self, task_arn: str) -> str:
        """What a task's process wrote (stdout and stderr)."""
        with self._lock:
            path = self._tasks[task_arn].log
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for(self, predicate: Any, timeout: float, what: str = "condition") -> None:
        """Wait until ``predicate()`` is true; ``TimeoutError`` naming ``what`` otherwise."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the ECS agent waited {timeout:g} s for {what}; errors: {self.errors}"
                )
            time.sleep(0.05)

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Wait until no process is left running."""
        self.wait_for(lambda: not self.alive(), timeout, "every process to exit")

    # -- Spot --------------------------------------------------------------------------------

    def interrupt(self, task_arn: str) -> None:
        """Play a Fargate Spot interruption of a task: StopTask with ECS's Spot reason (and,
        with an in-process moto, ``stopCode`` SpotInterruption and no exit code yet), then
        SIGTERM to its process."""
        with self._lock:
            task = self._tasks[task_arn]
            task.interrupted = task.stopped_in_ecs = True
        self._mirror(task_arn, stop_code="SpotInterruption", exit_code=None, clear_exit=True)
        self._ecs.stop_task(cluster=task.cluster, task=task_arn, reason=SPOT_REASON)
        self._terminate(task)

    # -- the loop ----------------------------------------------------------------------------

    def _by_id(self, task_id: str) -> _Task | None:
        with self._lock:
            return next((t for arn, t in self._tasks.items() if arn.endswith("/" + task_id)), None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._tick()
            except Exception as exc:  # top of a thread: record, keep the agent alive
                logger.exception("ECS agent tick failed")
                self.errors.append(repr(exc))

    def _tasks_in_ecs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for cluster in self._ecs.list_clusters().get("clusterArns", []):
            arns: list[str] = []
            token: str | None = None
            while True:
                page = self._ecs.list_tasks(
                    cluster=cluster, **({"nextToken": token} if token else {})
                )
                arns.extend(page.get("taskArns", []))
                token = page.get("nextToken")
                if not token:
                    break
            for i in range(0, len(arns), 100):
                for task in self._ecs.describe_tasks(cluster=cluster, tasks=arns[i : i + 100])[
                    "tasks"
                ]:
                    yield cluster, task

    def _tick(self) -> None:
        for cluster, task in self._tasks_in_ecs():
            arn = task["taskArn"]
            with self._lock:
                known = self._tasks.get(arn)
                ignored = arn in self._ignored
            if known is None and not ignored:
                if task.get("desiredStatus") == "RUNNING" and task.get("lastStatus") != "STOPPED":
                    self._launch(cluster, task)
                else:
                    with self._lock:
                        self._ignored.add(arn)
            elif known is not None and task.get("desiredStatus") == "STOPPED":
                with self._lock:
                    first = not known.stopped_in_ecs
                    known.stopped_in_ecs = True
                if first and known.exit_code is None:
                    self._mirror(arn, exit_code=None, clear_exit=True)
                if known.term_at is None and known.proc.poll() is None:
                    self._terminate(known)
        self._reap()

    def _terminate(self, task: _Task) -> None:
        with self._lock:
            if task.term_at is not None:
                return
            task.term_at = time.monotonic()
        if task.proc.poll() is None:
            self._send_term(task)

    def _send_term(self, task: _Task) -> None:
        """Ask a task to stop (SIGTERM to its process)."""
        task.proc.send_signal(signal.SIGTERM)

    def _send_kill(self, task: _Task) -> None:
        """Stop a task that outlived its stop timeout (SIGKILL to its process)."""
        task.proc.kill()

    def _reap(self) -> None:
        with self._lock:
            tasks = list(self._tasks.values())
        for task in tasks:
            code = task.proc.poll()
            if code is None:
                grace = self.kill_after if task.kill_after is None else task.kill_after
                if task.term_at is not None and time.monotonic() - task.term_at > grace:
                    self._send_kill(task)
                continue
            with self._lock:
                if task.exit_code is not None:
                    continue
                task.exit_code = code
                stopped = task.stopped_in_ecs
                task.stopped_in_ecs = True
            self._ship_logs(task)  # before ECS shows the task stopped, as the driver flushes
            if stopped:
                self._mirror(task.arn, exit_code=code)
            else:
                self._mirror(task.arn, exit_code=code, stop_code="EssentialContainerExited")
                self._ecs.stop_task(
                    cluster=task.cluster,
                    task=task.arn,
                    reason=f"Essential container in task exited (exit code {code})",
                )

    def _ship_logs(self, task: _Task) -> None:
        """Put the process's output into moto's CloudWatch Logs, one event per line, under
        the stream the awslogs driver would write (see the module docstring)."""
        if not task.log_group:
            return
        text = task.log.read_text(errors="replace") if task.log.exists() else ""
        lines = [line for line in text.splitlines() if line.strip()]
        with contextlib.suppress(self._logs.exceptions.ResourceAlreadyExistsException):
            self._logs.create_log_stream(logGroupName=task.log_group, logStreamName=task.log_stream)
        now = int(time.time() * 1000)
        for i in range(0, len(lines), 1000):
            self._logs.put_log_events(
                logGroupName=task.log_group,
                logStreamName=task.log_stream,
                logEvents=[{"timestamp": now, "message": line} for line in lines[i : i + 1000]],
            )

    # -- launching ---------------------------------------------------------------------------

    def _definition(self, arn: str) -> dict[str, Any]:
        if arn not in self._definitions:
            self._definitions[arn] = self._ecs.describe_task_definition(taskDefinition=arn)[
                "taskDefinition"
            ]
        return self._definitions[arn]

    def _secret(self, value_from: str) -> str:
        # valueFrom is a parameter ARN (arn:aws:ssm:REGION:ACCOUNT:parameter/NAME) or a name.
        name = value_from.split(":parameter", 1)[1] if ":parameter" in value_from else value_from
        answer = self._ssm.get_parameter(Name=name, WithDecryption=True)
        return str(answer["Parameter"]["Value"])

    def _launch(self, cluster: str, task: dict[str, Any]) -> None:
        arn = task["taskArn"]
        task_id = arn.rsplit("/", 1)[-1]
        try:
            definition = self._definition(task["taskDefinitionArn"])
            container = definition["containerDefinitions"][0]
            name = container["name"]
            command = docker_argv(container)
            if command and command[0] in ("python", "python3"):
                command[0] = sys.executable
            env = {k: v for k, v in os.environ.items() if k.startswith("AWS_") or k in _BASE_ENV}
            env.update(self._extra_env)
            # A worker whose secret did not arrive must not find another key on this machine.
            env["STARBURST_HOME"] = str(self.log_dir / "home")
            env.update({e["name"]: e["value"] for e in container.get("environment", [])})
            for override in task.get("overrides", {}).get("containerOverrides", []):
                if override.get("name") == name:
                    env.update({e["name"]: e["value"] for e in override.get("environment", [])})
            for secret in container.get("secrets", []):
                env[secret["name"]] = self._secret(secret["valueFrom"])
            env["ECS_CONTAINER_METADATA_URI_V4"] = f"{self.metadata_url}/{task_id}"
            log_options = (container.get("logConfiguration") or {}).get("options", {})
            log_group = str(log_options.get("awslogs-group", ""))
            log_stream = f"{log_options.get('awslogs-stream-prefix', '')}/{name}/{task_id}"
        except Exception as exc:  # a task ECS could not start either: record it, move on
            logger.exception("ECS agent cannot start task %s", arn)
            self.errors.append(f"{arn}: {exc!r}")
            with self._lock:
                self._ignored.add(arn)
            return
        proc, log = self._spawn(command, env, task_id)
        with self._lock:
            self._tasks[arn] = _Task(
                arn, cluster, proc, log, env=env, log_group=log_group, log_stream=log_stream
            )
        # moto reports exitCode 0 from RunTask on; AWS has none until the container exits.
        self._mirror(arn, exit_code=None, clear_exit=True)
        logger.info("ECS agent: task %s runs as pid %d", task_id, proc.pid)

    # -- moto's model ------------------------------------------------------------------------

    def _mirror(
        self,
        arn: str,
        *,
        exit_code: int | None,
        stop_code: str | None = None,
        clear_exit: bool = False,
    ) -> None:
        """Write what moto cannot record (exit code, stop code) into its in-process model."""
        model = self._moto_task(arn)
        if model is None:
            self.mirrors_exit_codes = False
            return
        container = model.containers[0]
        if clear_exit:
            container.exitCode = None
        elif exit_code is not None:
            container.exitCode = exit_code
            container.last_status = "STOPPED"
        if stop_code is not None:
            model.stop_code = stop_code

    @staticmethod
    def _moto_task(arn: str) -> Any:
        try:
            from moto.ecs.models import ecs_backends
        except ImportError:
            return None
        _, _, _, region, account, _ = arn.split(":", 5)
        try:
            backend = ecs_backends[account][region]
        except KeyError:
            return None
        for tasks in backend.tasks.values():
            if arn in tasks:
                return tasks[arn]
        return None


def provision_world(
    region: str = "us-east-1",
    *,
    cluster: str = "starburst",
    secret_hex: str = "5a" * 32,
    session: Any = None,
) -> dict[str, Any]:
    """The least AWS that ``ECSLauncher`` and the agent need, created in moto with plain
    boto3 (not ``starburst setup``): a cluster with the Fargate capacity providers, the
    default VPC's subnets, a security group, the signing key as an SSM SecureString and the
    log group. Returns the ``EcsOptions`` fields it made.

    The execution and task roles are ARNs only: moto's ECS does not check them, and creating
    them would load IAM's managed policies into moto (seconds per test, and per reset).
    """
    session = session or boto3.session.Session()
    ecs = session.client("ecs", region_name=region)
    ec2 = session.client("ec2", region_name=region)
    ssm = session.client("ssm", region_name=region)
    logs = session.client("logs", region_name=region)
    ecs.create_cluster(clusterName=cluster, capacityProviders=["FARGATE", "FARGATE_SPOT"])
    subnets = [
        s["SubnetId"]
        for s in ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])[
            "Subnets"
        ]
    ][:2]
    group = ec2.create_security_group(
        GroupName=f"{cluster}-workers", Description="starburst workers, no inbound"
    )["GroupId"]
    ssm.put_parameter(Name="/starburst/secret-key", Value=secret_hex, Type="SecureString")
    logs.create_log_group(logGroupName="/starburst/workers")
    for client in (ecs, ec2, ssm, logs):
        client.close()
    account = "123456789012"  # moto's default account
    return {
        "region": region,
        "cluster": cluster,
        "subnets": tuple(subnets),
        "security_group": group,
        "execution_role_arn": f"arn:aws:iam::{account}:role/{cluster}-execution",
        "task_role_arn": f"arn:aws:iam::{account}:role/{cluster}-task",
        "secret_parameter": "/starburst/secret-key",
        "log_group": "/starburst/workers",
        "image": f"{account}.dkr.ecr.{region}.amazonaws.com/starburst-worker:test",
    }
