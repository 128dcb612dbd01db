"""An ECS emulation that runs moto's tasks as Docker containers of the task's real image.

:class:`ContainerEcsAgent` watches moto's ECS as :class:`~ecs_agent.LocalEcsAgent` does (its
polling, stopping and exit-code reporting are inherited; read that module for what moto
lacks) but starts each task the way ECS does, with ``docker run --network host``:

- **Command**: the task definition's ``entryPoint`` replaces the image's ENTRYPOINT (its first
  element as ``--entrypoint``, the rest as arguments: Docker's flag takes one string) and drops
  the image's CMD, as Docker's API does; ``command`` replaces CMD and is appended to the
  ENTRYPOINT. A definition with neither runs the image as built.
- **Environment**: the definition's ``environment``, then the RunTask container overrides, then
  the ``secrets`` (SSM ``GetParameters`` with decryption, as the *execution role*: its policy
  is exercised), then what ECS itself injects: ``AWS_REGION``, ``AWS_DEFAULT_REGION``,
  ``AWS_EXECUTION_ENV``, ``ECS_CONTAINER_METADATA_URI_V4`` and, when the definition has a
  task role, ``AWS_CONTAINER_CREDENTIALS_FULL_URI``. Plus ``AWS_ENDPOINT_URL`` (moto: what the
  VPC's DNS would resolve) and the agent's ``env`` (test instrumentation). No other AWS
  credentials reach the container. Values travel in the docker client's environment
  (``-e NAME``), never on its command line.
- **Task role credentials**: an HTTP server on 127.0.0.1 answers ``GET /creds/{task id}`` with
  ``AccessKeyId``/``SecretAccessKey``/``Token``/``Expiration`` from an STS AssumeRole of the
  definition's ``taskRoleArn`` (botocore's container provider accepts a loopback full URI).
  With moto in this process the role is assumed through moto's STS model directly: ECS, not
  an IAM principal, assumes it (and moto 5.2 cannot evaluate a ``Service`` principal).
- **Stopping**: ``docker kill --signal TERM``, then ``docker kill`` (SIGKILL) after the
  container's ``stopTimeout`` (ECS's default: 30 s). The worker is PID 1 in its container,
  as on ECS (no init process): it must handle SIGTERM itself.
- **Exit**: the ``docker run`` process exits with the container's code; a container that
  exits by itself is stopped in ECS with ``Essential container in task exited`` and its real
  exit code is written into moto's task model (inherited).
- **Logs**: the container's output (stdout and stderr) goes to ``{log_dir}/{task id}.log`` and
  to CloudWatch Logs as the ``awslogs`` driver names it: group ``awslogs-group``, stream
  ``{awslogs-stream-prefix}/{container name}/{task id}``, shipped every ``interval`` and at
  exit with the execution role's credentials.

Images: ``images`` maps an image reference as the definition names it (an ECR URI, with or
without tag or digest) to a local image; the container runs with ``--pull never``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from ecs_agent import LocalEcsAgent, _Task, send_json

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DEFAULT_STOP_TIMEOUT", "ContainerEcsAgent"]

logger = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 30.0  # ECS's stopTimeout when a container definition gives none
_LABEL = "starburst-e2e-agent"
_DOCKER_ENV = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CERT_PATH",
               "DOCKER_TLS_VERIFY", "LANG", "LC_ALL", "TMPDIR")  # fmt: skip


def _account_region(arn: str) -> tuple[str, str]:
    _, _, _, region, account, _ = arn.split(":", 5)
    return account, region


class ContainerEcsAgent(LocalEcsAgent):
    """Runs moto's ECS tasks as Docker containers (see the module docstring).

    Args:
        log_dir: where each task's output goes (``{task id}.log``).
        images: image reference in the task definition -> local image.
        session: the agent's own boto3 session (an administrator's key when IAM is enforced).
        region: the region whose clusters are watched.
        endpoint_url: moto's endpoint (default: ``AWS_ENDPOINT_URL``); also the containers'.
        interval: seconds between looks at ECS (and between log shipments).
        kill_after: the longest wait between SIGTERM and SIGKILL when the agent stops.
        env: extra environment for every container (after everything else).
        mounts: host path -> container path, with Docker's options (``/x:ro``), for test
            instrumentation.
        docker: the docker executable.
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        images: Mapping[str, str] | None = None,
        session: Any = None,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        interval: float = 0.2,
        kill_after: float = 10.0,
        env: dict[str, str] | None = None,
        mounts: Mapping[str, str] | None = None,
        docker: str = "docker",
    ) -> None:
        self._session = session or boto3.session.Session()
        super().__init__(
            log_dir,
            region=region,
            endpoint_url=endpoint_url,
            interval=interval,
            kill_after=kill_after,
            env=env,
            session=self._session,
        )
        self.images = dict(images or {})
        self.mounts = dict(mounts or {})
        self.docker = docker
        self._label = uuid.uuid4().hex[:12]
        self._creds_server: ThreadingHTTPServer | None = None
        self._credentials: dict[str, dict[str, str]] = {}  # role ARN + task id -> answer
        self._role_clients: dict[tuple[str, str], Any] = {}  # (role ARN, service) -> client
        self._shipped: dict[str, int] = {}  # task ARN -> log bytes shipped
        self._streams: set[str] = set()
        self._ship_lock = threading.Lock()
        self._shipper: threading.Thread | None = None
        self.launched_at: dict[str, float] = {}  # task ARN -> time.monotonic() of docker run
        self.credential_requests = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the metadata and credentials endpoints, the polling and log threads."""
        agent = self

        class Credentials(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                answer = None
                if len(parts) == 2 and parts[0] == "creds":
                    try:
                        answer = agent._task_credentials(parts[1])
                    except Exception as exc:  # noqa: BLE001 - reported to the test
                        agent.errors.append(f"credentials for {parts[1]}: {exc!r}")
                if answer is None:
                    self.send_error(404)
                    return
                send_json(self, answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._creds_server = ThreadingHTTPServer(("127.0.0.1", 0), Credentials)
        self._creds_server.daemon_threads = True
        threading.Thread(
            target=self._creds_server.serve_forever, name="ecs-agent-credentials", daemon=True
        ).start()
        super().start()
        self._shipper = threading.Thread(target=self._ship_loop, name="ecs-agent-logs", daemon=True)
        self._shipper.start()
        return self

    def stop(self) -> None:
        """Stop every container (SIGTERM, SIGKILL after ``kill_after``), ship the last logs,
        remove any container left, and close the endpoints."""
        super().stop()
        if self._shipper is not None:
            self._shipper.join()
        with self._lock:
            tasks = list(self._tasks.values())
        for task in tasks:
            self._ship(task)
        leftover = subprocess.run(
            [self.docker, "ps", "-aq", "--filter", f"label={_LABEL}={self._label}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.split()
        if leftover:
            subprocess.run(
                [self.docker, "rm", "-f", *leftover], capture_output=True, timeout=60, check=False
            )
        if self._creds_server is not None:
            self._creds_server.shutdown()
            self._creds_server.server_close()
        for client in self._role_clients.values():
            client.close()

    @property
    def credentials_url(self) -> str:
        assert self._creds_server is not None, "the agent is not started"
        host, port = self._creds_server.server_address[:2]
        return f"http://{host!s}:{port}/creds"

    def container_name(self, task_arn: str) -> str:
        """The Docker name of a task's container."""
        return f"sb-{self._label}-{task_arn.rsplit('/', 1)[-1]}"

    # -- roles -------------------------------------------------------------------------------

    def _assume(self, role_arn: str, session_name: str) -> dict[str, str]:
        """Credentials of ``role_arn``, as ECS obtains them for a task."""
        account, _ = _account_region(role_arn.replace("iam::", f"iam:{self.region}:", 1))
        try:
            from moto.sts.models import sts_backends

            backend = sts_backends[account]["aws"]
        except (ImportError, KeyError):
            backend = None
        if backend is not None:
            role = backend.assume_role(
                region_name=self.region,
                role_session_name=session_name,
                role_arn=role_arn,
                # moto annotates these str, yet its own STS handler passes None when absent
                policy=None,  # type: ignore[arg-type]
                duration=3600,
                external_id=None,  # type: ignore[arg-type]
            )
            return {
                "AccessKeyId": role.access_key_id,
                "SecretAccessKey": role.secret_access_key,
                "Token": role.session_token,
                "Expiration": role.expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "RoleArn": role_arn,
            }
        sts = self._session.client("sts", region_name=self.region, endpoint_url=self._endpoint)
        try:
            answer = sts.assume_role(RoleArn=role_arn, RoleSessionName=session_name)["Credentials"]
        finally:
            sts.close()
        return {
            "AccessKeyId": answer["AccessKeyId"],
            "SecretAccessKey": answer["SecretAccessKey"],
            "Token": answer["SessionToken"],
            "Expiration": answer["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
            "RoleArn": role_arn,
        }

    def _task_credentials(self, task_id: str) -> dict[str, str] | None:
        task = self._by_id(task_id)
        if task is None:
            return None
        role = self._task_definition_of(task).get("taskRoleArn")
        if not role:
            return None
        with self._lock:
            self.credential_requests += 1
            cached = self._credentials.get(task_id)
        if cached is None:
            cached = self._assume(role, f"ecs-task-{task_id}")
            with self._lock:
                self._credentials[task_id] = cached
        return cached

    def _as_execution_role(self, definition: Mapping[str, Any], service: str) -> Any:
        """A client acting as the definition's execution role (the agent's own without one)."""
        role = definition.get("executionRoleArn")
        # boto3-stubs types client() only for literal service names, not for a str variable.
        if not role:
            return (
                self._ssm
                if service == "ssm"
                else self._session.client(  # type: ignore[call-overload]
                    service, region_name=self.region, endpoint_url=self._endpoint
                )
            )
        key = (role, service)
        if key not in self._role_clients:
            creds = self._assume(role, "ecs-agent")
            as_role = boto3.session.Session(
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["Token"],
                region_name=self.region,
            )
            # boto3-stubs again: no client() overload for a str service name.
            self._role_clients[key] = as_role.client(  # type: ignore[call-overload]
                service, endpoint_url=self._endpoint
            )
        return self._role_clients[key]

    # -- launching ---------------------------------------------------------------------------

    def _task_definition_of(self, task: _Task) -> dict[str, Any]:
        return self._definition(task.env["__definition"])

    def _local_image(self, reference: str) -> str:
        candidates = [reference, reference.split("@", 1)[0]]
        name = candidates[-1]
        if ":" in name.rsplit("/", 1)[-1]:
            candidates.append(name.rsplit(":", 1)[0])
        return next((self.images[c] for c in candidates if c in self.images), reference)

    def _launch(self, cluster: str, task: dict[str, Any]) -> None:
        arn = task["taskArn"]
        task_id = arn.rsplit("/", 1)[-1]
        _, region = _account_region(arn)
        try:
            definition = self._definition(task["taskDefinitionArn"])
            containers = definition["containerDefinitions"]
            if len(containers) != 1:
                raise ValueError(f"the agent runs one container per task, not {len(containers)}")
            container = containers[0]
            name = container["name"]
            env = {e["name"]: e["value"] for e in container.get("environment", [])}
            for override in task.get("overrides", {}).get("containerOverrides", []):
                if override.get("name") == name:
                    env.update({e["name"]: e["value"] for e in override.get("environment", [])})
            secrets = container.get("secrets", [])
            if secrets:
                ssm = self._as_execution_role(definition, "ssm")
                by_ref = {s["valueFrom"]: s["name"] for s in secrets}
                answer = ssm.get_parameters(Names=list(by_ref), WithDecryption=True)
                if answer.get("InvalidParameters"):
                    raise ValueError(f"secrets not in SSM: {answer['InvalidParameters']}")
                for parameter in answer["Parameters"]:
                    ref = parameter["ARN"] if parameter["ARN"] in by_ref else parameter["Name"]
                    env[by_ref[ref]] = parameter["Value"]
            env.update(
                {
                    "AWS_REGION": region,
                    "AWS_DEFAULT_REGION": region,
                    "AWS_EXECUTION_ENV": "AWS_ECS_FARGATE",
                    "ECS_CONTAINER_METADATA_URI_V4": f"{self.metadata_url}/{task_id}",
                }
            )
            if definition.get("taskRoleArn"):
                env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = f"{self.credentials_url}/{task_id}"
            if self._endpoint:
                env["AWS_ENDPOINT_URL"] = self._endpoint
            env.update(self._extra_env)
            argv = [
                self.docker,
                "run",
                "--rm",
                "--name",
                self.container_name(arn),
                "--network",
                "host",
                "--pull",
                "never",
                "--label",
                f"{_LABEL}={self._label}",
            ]
            for host, inside in self.mounts.items():
                argv += ["-v", f"{host}:{inside}"]
            for variable in env:
                argv += ["-e", variable]
            args = list(container.get("command") or [])
            entry = list(container.get("entryPoint") or [])
            if entry:
                argv += ["--entrypoint", entry[0]]
                args = entry[1:] + args
            argv += [self._local_image(container["image"]), *args]
        except Exception as exc:  # a task ECS could not start either: record it, move on
            logger.exception("ECS agent cannot start task %s", arn)
            self.errors.append(f"{arn}: {exc!r}")
            with self._lock:
                self._ignored.add(arn)
            return
        client_env = {k: v for k, v in os.environ.items() if k in _DOCKER_ENV}
        client_env.update(env)
        proc, log = self._spawn(argv, client_env, task_id)
        stop_timeout = float(container.get("stopTimeout", DEFAULT_STOP_TIMEOUT))
        recorded = dict(env, __definition=task["taskDefinitionArn"])
        with self._lock:
            self._tasks[arn] = _Task(arn, cluster, proc, log, env=recorded, kill_after=stop_timeout)
            self.launched_at[arn] = time.monotonic()
        self._mirror(arn, exit_code=None, clear_exit=True)
        logger.info("ECS agent: task %s runs as container %s", task_id, self.container_name(arn))

    def environment(self, task_arn: str) -> dict[str, str]:
        """The environment a task's container was started with."""
        env = super().environment(task_arn)
        env.pop("__definition", None)
        return env

    # -- stopping ----------------------------------------------------------------------------

    def _docker_kill(self, task: _Task, signal_name: str) -> bool:
        done = subprocess.run(
            [self.docker, "kill", "--signal", signal_name, self.container_name(task.arn)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return done.returncode == 0

    def _send_term(self, task: _Task) -> None:
        if not self._docker_kill(task, "TERM"):
            # Not created yet (or gone): the client forwards signals to its container.
            task.proc.terminate()

    def _send_kill(self, task: _Task) -> None:
        if not self._docker_kill(task, "KILL"):
            task.proc.kill()

    # -- logs --------------------------------------------------------------------------------

    def _ship_loop(self) -> None:
        while not self._stop.wait(max(self.interval, 0.5)):
            with self._lock:
                tasks = list(self._tasks.values())
            for task in tasks:
                try:
                    self._ship(task)
                except Exception as exc:  # top of a thread: record, keep shipping
                    logger.exception("ECS agent: shipping the log of %s failed", task.arn)
                    self.errors.append(f"logs of {task.arn}: {exc!r}")

    def _ship_logs(self, task: _Task) -> None:
        # Called once the container has exited, before ECS shows the task stopped.
        self._ship(task)

    def _ship(self, task: _Task) -> None:
        """Send the log's new complete lines to CloudWatch (all of it once the task ended)."""
        definition = self._task_definition_of(task)
        container = definition["containerDefinitions"][0]
        config = container.get("logConfiguration") or {}
        if config.get("logDriver") != "awslogs":
            return
        options = config.get("options", {})
        group = options["awslogs-group"]
        stream = (
            f"{options['awslogs-stream-prefix']}/{container['name']}/{task.arn.rsplit('/', 1)[-1]}"
        )
        with self._ship_lock:
            offset = self._shipped.get(task.arn, 0)
            try:
                data = task.log.read_bytes()[offset:]
            except FileNotFoundError:
                return
            if task.exit_code is None:
                data = data[: data.rfind(b"\n") + 1]  # complete lines only while it runs
            if not data:
                return
            logs = self._as_execution_role(definition, "logs")
            if stream not in self._streams:
                try:
                    logs.create_log_stream(logGroupName=group, logStreamName=stream)
                except logs.exceptions.ResourceAlreadyExistsException:
                    pass
                self._streams.add(stream)
            now = int(time.time() * 1000)
            lines = data.decode(errors="replace").splitlines()
            for i in range(0, len(lines), 1000):
                events = [
                    {"timestamp": now, "message": line or " "} for line in lines[i : i + 1000]
                ]
                logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)
            self._shipped[task.arn] = offset + len(data)
