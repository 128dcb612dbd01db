"""``ECSLauncher``: workers as ECS tasks (Fargate, Fargate Spot, or an EC2 capacity provider).

Each worker is one ECS task running the image's entry point (``python -m
starburst_executor.worker``, the same one a local worker runs). What a task needs travels as
follows:

- the **task definition** (:mod:`starburst_executor.aws.task_definition`: registered once per
  distinct spec, reused by every session with the same image and size) carries the CPU and
  memory, the image's architecture, the roles, the ``awslogs`` configuration (streams
  ``starburst/worker/{task id}``) and the signing key as a ``secrets`` entry that ECS
  resolves from SSM Parameter Store at start: the key never travels in the request, the store
  or a log. It sets no command: the image's ENTRYPOINT is the contract;
- the RunTask **overrides** carry only small ``STARBURST_*`` settings (store URL, session id,
  poll pace) and the region: ECS limits overrides to 8,192 characters, and payloads travel
  through the store, never through the environment;
- the worker finds its own id, ``ecs-{task id}``, from the ECS task metadata endpoint, so a
  stopped task ARN names the worker whose claims must be released.

RunTask starts at most 10 tasks per call (an AWS limit); every call carries a
``clientToken`` (one per logical call, reused when the SDK call is retried, so a retry never
starts a second batch of tasks), ``startedBy`` = the session id (what :meth:`stop` lists by)
and a ``starburst-session`` tag. Failures in the response are reported, not ignored.

The session's tasks are found by ``ListTasks`` with ``startedBy`` as the *only* filter (ECS:
"When you specify startedBy as the filter, it must be the only filter that you use"), then
``DescribeTasks`` and a client-side filter on their status. A launcher counts the session's
tasks ECS already runs or is still starting (another client of a detached session, or this
session before a reattach: Fargate takes 25-105 s to start a task, long before its worker
registers in the store) as its own, so a reattach never runs more than ``max_workers``.

The account's vCPU quota (:mod:`starburst_executor.aws.quota`: Fargate On-Demand/Spot, or the
EC2 On-Demand/Spot Standard quotas) caps how many workers run at once; beyond it, workers
start in waves as others finish. On EC2, an instance holds as many workers as its CPU,
memory and network interfaces allow (each awsvpc task takes one ENI).

The launcher is driven by one thread (the executor's manager thread); it is not thread-safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from starburst_executor.aws import task_definition
from starburst_executor.aws.client import Aws
from starburst_executor.aws.cost import ec2_packing
from starburst_executor.aws.failures import explain_failure
from starburst_executor.aws.logs import tail
from starburst_executor.aws.options import EcsOptions, session_backend
from starburst_executor.aws.quota import Quota
from starburst_executor.aws.task_definition import CONTAINER_NAME, STOP_TIMEOUT
from starburst_executor.errors import AwsError, AwsLaunchError, AwsNotSetUpError
from starburst_executor.launchers.base import WorkerExit
from starburst_executor.protocol import ExitCode, SessionManifest

__all__ = [
    "CONTAINER_NAME",
    "OVERRIDES_MAX",
    "RUN_TASK_MAX",
    "STOP_TIMEOUT",
    "ECSLauncher",
    "started_by",
]

logger = logging.getLogger(__name__)

SESSION_TAG = "starburst-session"
STOP_REASON = "starburst: session ended"

RUN_TASK_MAX = 10  # RunTask starts at most 10 tasks per call (ECS API reference, "count")
DESCRIBE_TASKS_MAX = 100  # DescribeTasks takes at most 100 task ARNs per call
STARTED_BY_MAX = 36  # RunTask "startedBy": up to 36 letters, digits, hyphens, underscores
OVERRIDES_MAX = 8192  # ECS: "the total size of overrides ... cannot exceed 8,192 characters"
_OVERRIDES_BUDGET = 2048  # we send a few small settings; anything near the limit is a bug
_EXIT_CANNOT_START = 2  # the manager breaks the pool on this code (worker cannot start)
FAILED_STARTS_MAX = 3  # this many tasks in a row failing to start, none running: give up
_LOG_TAIL_LINES = 20  # of a worker that exited with an error: shown in the pool's error
_BACKOFF_FIRST = 15.0  # after RunTask failures, wait this long before asking again ...
_BACKOFF_MAX = 300.0  # ... doubling up to this

_STARTED_BY_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def started_by(session_id: str) -> str:
    """The RunTask ``startedBy`` value of a session: the id itself when it fits ECS's 36
    characters (letters, digits, ``-`` and ``_``), else a prefix and a hash, so distinct
    sessions stay distinct. The full id is always in the ``starburst-session`` tag."""
    clean = _STARTED_BY_CHARS.sub("_", session_id)
    if clean == session_id and len(clean) <= STARTED_BY_MAX:
        return clean
    digest = hashlib.sha256(session_id.encode()).hexdigest()[:8]
    return f"{clean[: STARTED_BY_MAX - 9]}-{digest}"


def _task_id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class ECSLauncher:
    """Starts a session's workers as ECS tasks and reports when they stop.

    Args:
        aws: the AWS access (region, retries, error translation).
        options: how the workers run (cluster, image, size, network, roles).
        session_id: the session the workers serve.
        store_url: the store the workers use (``s3://bucket/prefix``).
        poll_max: the workers' longest wait between looks for work (``STARBURST_POLL_MAX``);
            also the default pace of :meth:`poll`'s DescribeTasks calls.
        quota: the Fargate vCPU quota (default: read from Service Quotas); ignored on EC2.
        describe_every: at most one round of DescribeTasks per this many seconds
            (default ``poll_max``); :meth:`poll` returns ``[]`` in between.
    """

    def __init__(
        self,
        aws: Aws,
        options: EcsOptions,
        session_id: str,
        store_url: str,
        *,
        poll_max: float = 2.0,
        quota: Quota | None = None,
        describe_every: float | None = None,
    ) -> None:
        self.aws = aws
        self.options = options
        self.session_id = session_id
        self.store_url = store_url
        self.poll_max = poll_max
        self.started_by = started_by(session_id)
        self.notices: list[str] = []
        self._quota = quota
        self._describe_every = poll_max if describe_every is None else describe_every
        self._task_definition: str | None = None
        self._asg_name: str | None = None  # EC2 capacity: the Auto Scaling group to grow
        self._identity: tuple[str, str] | None = None  # (partition, account)
        self._running: dict[str, str] = {}  # task ARN -> worker id, not yet seen STOPPED
        self._next_describe = 0.0
        self._limit: int | None = None  # workers at once (quota); None: not limited
        self._limit_known = False
        self._waves_noted = False
        self._backoff_until = 0.0
        self._backoff = _BACKOFF_FIRST
        self._failed_starts = 0  # consecutive tasks that failed to start
        self._adopted = False  # the session's tasks already in ECS have been counted

    @classmethod
    def for_session(cls, manifest: SessionManifest, poll_max: float) -> ECSLauncher:
        """The launcher of an existing session, from the options its manifest recorded
        (:class:`~starburst_executor.aws.options.AwsSessionBackend`): a reattaching client
        starts workers exactly as the first one did.

        Raises:
            SessionError: the session was not started on ECS.
        """
        options = session_backend(manifest).options
        return cls(
            Aws(options.region), options, manifest.session_id, manifest.store_url, poll_max=poll_max
        )

    # -- task definition ---------------------------------------------------------------------

    def _caller(self) -> tuple[str, str]:
        if self._identity is None:
            answer = self.aws.call("sts", "get_caller_identity")
            partition = str(answer.get("Arn", "arn:aws:")).split(":")[1] or "aws"
            self._identity = (partition, str(answer["Account"]))
        return self._identity

    def _secret_arn(self) -> str:
        name = self.options.secret_parameter
        if name.startswith("arn:"):
            return name
        partition, account = self._caller()
        path = name if name.startswith("/") else f"/{name}"
        return f"arn:{partition}:ssm:{self.options.region}:{account}:parameter{path}"

    def task_definition_spec(self) -> dict[str, Any]:
        """The RegisterTaskDefinition request (without ``family``), as sent to ECS."""
        return task_definition.spec(self.options, self._secret_arn())

    def ensure_task_definition(self) -> str:
        """The ARN of an ACTIVE task definition for these options, registered if none exists
        (see :mod:`starburst_executor.aws.task_definition`); cached per launcher. When this
        call registers a new one, older unused definitions of the prefix are retired.

        Raises:
            AwsError: ECS refused the registration (the message names the call).
        """
        if self._task_definition is not None:
            return self._task_definition
        arn, registered = task_definition.ensure(
            self.aws, self.options, self.task_definition_spec()
        )
        if registered:
            logger.info("session %s: registered task definition %s", self.session_id, arn)
            task_definition.retire_unused(self.aws, self.options, keep=arn)
        self._task_definition = arn
        return arn

    # -- starting ----------------------------------------------------------------------------

    def _overrides(self) -> dict[str, Any]:
        env = {
            "STARBURST_STORE": self.store_url,
            "STARBURST_SESSION": self.session_id,
            "STARBURST_POLL_MAX": f"{self.poll_max:g}",
            "AWS_REGION": self.options.region,
        }
        overrides = {
            "containerOverrides": [
                {
                    "name": CONTAINER_NAME,
                    "environment": [{"name": k, "value": v} for k, v in env.items()],
                }
            ]
        }
        size = len(json.dumps(overrides, separators=(",", ":")))
        if size > _OVERRIDES_BUDGET:
            # Requirement: overrides stay far below ECS's 8,192 characters; only a very long
            # store URL can get here.
            raise AwsLaunchError(
                f"session {self.session_id}: the worker settings take {size} characters, more "
                f"than the {_OVERRIDES_BUDGET} we allow ourselves of ECS's {OVERRIDES_MAX} "
                f"override limit: use a shorter store prefix than {self.store_url!r}"
            )
        return overrides

    def _placement(self) -> dict[str, Any]:
        o = self.options
        if not o.subnets:
            raise AwsNotSetUpError(
                "no subnets for the workers: run `starburst setup` (it records the default "
                "VPC's subnets) or set STARBURST_SUBNETS=subnet-a,subnet-b"
            )
        vpc: dict[str, Any] = {"subnets": list(o.subnets)}
        if o.security_group:
            vpc["securityGroups"] = [o.security_group]
        if o.launch_type == "FARGATE":
            # A capacity provider strategy rather than launchType: FARGATE_SPOT is only
            # reachable that way, and ECS refuses a request that names both.
            provider = "FARGATE_SPOT" if o.spot else "FARGATE"
            vpc["assignPublicIp"] = "ENABLED" if o.assign_public_ip else "DISABLED"
        else:
            provider = o.ec2_capacity_provider
            if not provider:
                raise AwsNotSetUpError(
                    "launch_type='EC2' needs the capacity provider that "
                    "`starburst setup --ec2` creates"
                )
            # assignPublicIp is Fargate-only: EC2 tasks in awsvpc mode get none.
        return {
            "capacityProviderStrategy": [{"capacityProvider": provider, "weight": 1, "base": 0}],
            "networkConfiguration": {"awsvpcConfiguration": vpc},
        }

    def _at_once(self) -> int | None:
        """How many workers may run at once (the vCPU quota), ``None`` when unlimited."""
        if not self._limit_known:
            quota = self._quota or Quota(self.aws)
            self._quota = quota
            if self.options.launch_type == "FARGATE":
                self._limit = quota.max_workers(self.options.cpu, self.options.spot)
            else:
                packing = ec2_packing(self.aws, self.options)
                self._limit = quota.max_ec2_workers(
                    packing.vcpus, packing.per_instance, self.options.spot
                )
            for notice in quota.notices:
                if notice not in self.notices:
                    self.notices.append(notice)
            self._limit_known = True
        return self._limit

    def _note(self, message: str) -> None:
        logger.info("session %s: %s", self.session_id, message)
        self.notices.append(message)

    def start(self, count: int) -> list[str]:
        """Start up to ``count`` more workers; returns the ids (``ecs-{task id}``) of those
        that ECS accepted.

        Fewer start when the Fargate vCPU quota does not allow more at once (the rest start in
        waves, as later calls find room), or when ECS reports failures for some tasks
        (logged). Nothing starts for a while after a call in which ECS started nothing.

        Raises:
            AwsLaunchError: ECS started none of the tasks (failures in its answer, or a
                refused RunTask call) while none of this session's workers is running: the
                message explains each reason and what to do. Or the quota allows no worker.
            AwsNotSetUpError: no subnets, capacity provider or cluster.
            AwsPermissionError, AwsCredentialsError: as for any AWS call.
        """
        if count <= 0:
            return []
        self._adopt()
        limit = self._at_once()
        running = len(self._running)
        allowed = count if limit is None else max(0, min(count, limit - running))
        if allowed < count:
            if allowed > 0 or not self._waves_noted:
                self._note(
                    f"quota allows {limit} workers at once; running in waves: "
                    f"{count - allowed} more start as workers finish"
                )
            self._waves_noted = True
        else:
            self._waves_noted = False
        if allowed == 0 or time.monotonic() < self._backoff_until:
            return []
        overrides = self._overrides()  # local checks first: no AWS call if they fail
        placement = self._placement()
        self.ensure_task_definition()
        self._ensure_ec2_capacity(running + allowed)
        started: list[str] = []
        failures: list[dict[str, Any]] = []
        remaining = allowed
        while remaining > 0:
            batch = min(RUN_TASK_MAX, remaining)
            remaining -= batch
            try:
                answer = self._run_task(batch, overrides, placement)
            except AwsLaunchError as exc:
                if not self._running:
                    raise
                # Some workers run: carry on with them, and try again later.
                failures.append({"reason": exc.code or "error", "detail": str(exc)})
                break
            for task in answer.get("tasks", ()):
                arn = str(task["taskArn"])
                worker = f"ecs-{_task_id(arn)}"
                self._running[arn] = worker
                started.append(worker)
            failures.extend(answer.get("failures", ()))
            if answer.get("failures") and not answer.get("tasks"):
                break  # the next call would fail the same way
        if failures:
            self._failed_run(failures, started, allowed)
        else:
            self._backoff = _BACKOFF_FIRST
        logger.info(
            "session %s: started %d ECS worker(s)%s",
            self.session_id,
            len(started),
            f" of {allowed}" if len(started) < allowed else "",
        )
        return started

    def _ensure_ec2_capacity(self, workers: int) -> None:
        """Let the EC2 Auto Scaling group grow to what ``workers`` workers need.

        Setup parks the group at a MaxSize of zero so that an idle account costs nothing;
        ECS managed scaling only scales between MinSize and MaxSize, so without this no
        instance would ever start. MaxSize is only raised, never lowered: managed scaling
        takes the group back to zero instances when the tasks are gone.
        """
        if self.options.launch_type != "EC2":
            return
        if self._asg_name is None:
            providers = self.aws.call(
                "ecs",
                "describe_capacity_providers",
                capacityProviders=[self.options.ec2_capacity_provider],
            )["capacityProviders"]
            if not providers:
                raise AwsNotSetUpError(
                    f"capacity provider {self.options.ec2_capacity_provider!r} is missing: run "
                    "`starburst setup --ec2`"
                )
            arn = str(providers[0]["autoScalingGroupProvider"]["autoScalingGroupArn"])
            self._asg_name = arn.split("autoScalingGroupName/")[-1]
        per = max(1, ec2_packing(self.aws, self.options).per_instance)
        needed = math.ceil(workers / per)
        groups = self.aws.call(
            "autoscaling", "describe_auto_scaling_groups", AutoScalingGroupNames=[self._asg_name]
        )["AutoScalingGroups"]
        if groups and int(groups[0]["MaxSize"]) < needed:
            self.aws.call(
                "autoscaling",
                "update_auto_scaling_group",
                AutoScalingGroupName=self._asg_name,
                MaxSize=needed,
            )
            self._note(f"raised the EC2 group's MaxSize to {needed} instances ({per} workers each)")

    def _run_task(
        self, count: int, overrides: dict[str, Any], placement: dict[str, Any]
    ) -> dict[str, Any]:
        definition = self.ensure_task_definition()
        try:
            return self._run_task_with(definition, count, overrides, placement)
        except AwsLaunchError as exc:
            # Another client may have retired our cached definition (task_definition's rule):
            # register it again, once. Decided by its status, not by the error's text.
            if exc.code != "ClientException" or task_definition.is_active(self.aws, definition):
                raise
            logger.info(
                "session %s: task definition %s was deregistered; registering it again",
                self.session_id,
                definition,
            )
            self._task_definition = None
            return self._run_task_with(self.ensure_task_definition(), count, overrides, placement)

    def _run_task_with(
        self, definition: str, count: int, overrides: dict[str, Any], placement: dict[str, Any]
    ) -> dict[str, Any]:
        # One token per logical call: Aws.call retries with these same parameters, so a retry
        # of a call that reached ECS returns its tasks instead of starting more.
        try:
            return self.aws.call(
                "ecs",
                "run_task",
                cluster=self.options.cluster,
                taskDefinition=definition,
                count=count,
                clientToken=uuid.uuid4().hex,
                startedBy=self.started_by,
                tags=[{"key": SESSION_TAG, "value": self.session_id}],
                # Also the definition's "managed-by" tag and ECS's aws:ecs:clusterName tag, so
                # costs can be told apart per session and per cluster. (Tagging at launch needs
                # the ecs:TagResource permission.)
                propagateTags="TASK_DEFINITION",
                enableECSManagedTags=True,
                overrides=overrides,
                **placement,
            )
        except AwsError as exc:
            if exc.code == "ClusterNotFoundException":
                raise AwsNotSetUpError(
                    f"the ECS cluster {self.options.cluster} does not exist in "
                    f"{self.options.region}: run `starburst setup`"
                ) from exc
            if type(exc) is AwsError:  # credentials and permission errors keep their type
                raise AwsLaunchError(
                    f"session {self.session_id}: ECS refused to start workers on cluster "
                    f"{self.options.cluster}: {exc}",
                    exc.code,
                ) from exc
            raise

    def _failed_run(self, failures: list[dict[str, Any]], started: list[str], asked: int) -> None:
        reasons = sorted({explain_failure(f, self.options) for f in failures})
        self._backoff_until = time.monotonic() + self._backoff
        wait, self._backoff = self._backoff, min(self._backoff * 2, _BACKOFF_MAX)
        if not started and not self._running:
            raise AwsLaunchError(
                f"session {self.session_id}: ECS started none of {asked} worker(s) on cluster "
                f"{self.options.cluster}: " + "; ".join(reasons),
                str(failures[0].get("reason", "")),
            )
        logger.warning(
            "session %s: ECS started %d of %d worker(s); next try in %.0f s. %s",
            self.session_id,
            len(started),
            asked,
            wait,
            "; ".join(reasons),
        )

    # -- following tasks ---------------------------------------------------------------------

    def running(self) -> int:
        """Workers started and not yet seen STOPPED, counting the session's tasks that ECS
        already ran or was starting when this launcher first looked (see the module doc)."""
        self._adopt()
        return len(self._running)

    def worker_ids(self) -> dict[str, str]:
        """Worker ids by task ARN, of the tasks not yet seen STOPPED."""
        return dict(self._running)

    def live_workers(self) -> list[str]:
        """Worker ids of every task of this session that has not stopped (by whichever
        client it was started), from ECS; for ``starburst logs --follow``.

        Raises:
            AwsError: ECS refused.
        """
        return sorted(f"ecs-{_task_id(arn)}" for arn in self._session_tasks(wanted_running=False))

    def _adopt(self) -> None:
        """Once per launcher: count the session's tasks already in ECS (desired RUNNING, any
        last status from PROVISIONING to RUNNING) as this launcher's own, so that it starts
        only what is missing. A failed look is logged and retried at the next call."""
        if self._adopted:
            return
        try:
            tasks = self._session_tasks(wanted_running=True)
        except AwsError as exc:
            logger.warning(
                "session %s: cannot list its ECS tasks (%s); will try again", self.session_id, exc
            )
            return
        self._adopted = True
        for arn in tasks:
            if arn not in self._running:
                self._running[arn] = f"ecs-{_task_id(arn)}"
        if tasks:
            logger.info(
                "session %s: %d of its ECS worker(s) already run or start",
                self.session_id,
                len(tasks),
            )

    def _describe(self, arns: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        tasks: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        for chunk in _chunks(arns, DESCRIBE_TASKS_MAX):
            answer = self.aws.call(
                "ecs", "describe_tasks", cluster=self.options.cluster, tasks=chunk
            )
            tasks.extend(answer.get("tasks", ()))
            failures.extend(answer.get("failures", ()))
        return tasks, failures

    def poll(self) -> list[WorkerExit]:
        """Workers whose task stopped since the last call (at most one DescribeTasks round
        per ``describe_every`` seconds; ``[]`` in between)."""
        if not self._running or time.monotonic() < self._next_describe:
            return []
        self._next_describe = time.monotonic() + self._describe_every
        try:
            tasks, failures = self._describe(list(self._running))
        except AwsError as exc:
            # Following the workers is not worth failing the session for: the next round
            # tries again, and the workers' leases cover what goes unseen meanwhile.
            logger.warning(
                "session %s: cannot follow its ECS workers (%s); trying again in %g s",
                self.session_id,
                exc,
                self._describe_every,
            )
            return []
        ended: list[WorkerExit] = []
        for task in tasks:
            arn = str(task.get("taskArn", ""))
            if arn not in self._running:
                continue
            status = task.get("lastStatus")
            if status == "RUNNING":
                self._failed_starts = 0
            if status != "STOPPED":
                continue
            exit_ = self._exit_of(self._running.pop(arn), task)
            if exit_.code not in (None, 0, ExitCode.SIGTERM) and exit_.reason.startswith(
                "exit code"
            ):
                # It failed by itself: its explanation is only in CloudWatch (the manager
                # shows it when the pool breaks: "could not start ... Its log:").
                exit_ = replace(exit_, log_tail=self._log_tail(exit_.worker))
            ended.append(exit_)
        for failure in failures:
            arn = str(failure.get("arn", ""))
            if failure.get("reason") == "MISSING" and arn in self._running:
                # ECS forgets stopped tasks after about an hour.
                ended.append(
                    WorkerExit(
                        self._running.pop(arn),
                        None,
                        "ECS no longer knows this task (stopped long ago)",
                    )
                )
        for exit_ in ended:
            level = logging.INFO if exit_.code in (0, None) else logging.WARNING
            logger.log(
                level,
                "session %s: worker %s stopped: %s",
                self.session_id,
                exit_.worker,
                exit_.reason,
            )
        return ended

    def _log_tail(self, worker: str) -> str:
        try:
            return tail(self.aws, self.options.log_group, worker, _LOG_TAIL_LINES)
        except AwsError as exc:
            return f"(its CloudWatch log could not be read: {exc})"

    def _exit_of(self, worker: str, task: dict[str, Any]) -> WorkerExit:
        """A stopped task as a :class:`WorkerExit` with a readable reason."""
        containers = task.get("containers") or [{}]
        container = next((c for c in containers if c.get("name") == CONTAINER_NAME), containers[0])
        code: int | None = container.get("exitCode")
        stop_code = str(task.get("stopCode", "") or "")
        stopped = str(task.get("stoppedReason", "") or "")
        detail = str(container.get("reason", "") or "")
        said = stopped or detail or stop_code or "no reason given"
        # stopCode is the signal; the reason text ("Your Spot Task was interrupted.") is the
        # fallback for answers without one (moto never sets stopCode).
        if stop_code == "SpotInterruption" or "spot" in stopped.lower():
            # The worker hands its claim back on SIGTERM; a non-zero code makes the manager
            # release anything left at once rather than after the lease expires.
            return WorkerExit(
                worker,
                code if code else ExitCode.SIGTERM,
                f"Spot interruption: AWS reclaimed the capacity ({said})",
            )
        if detail.startswith("OutOfMemoryError") or "OutOfMemory" in stopped:
            return WorkerExit(
                worker,
                code if code is not None else 137,
                f"out of memory: the worker used more than its "
                f"{self.options.memory_mib} MiB ({detail or stopped}); give it "
                f"more with memory=",
            )
        if (
            stop_code == "TaskFailedToStart"
            or "CannotPullContainer" in said
            or "ResourceInitializationError" in said
        ):
            self._failed_starts += 1
            reason = f"failed to start: {said}"
            if "CannotPullContainer" in said:
                reason += (
                    f" (check that the image {self.options.image} exists and the "
                    "execution role may pull it; `starburst image build` pushes one)"
                )
            if self._failed_starts >= FAILED_STARTS_MAX and not self._running:
                # Every recent task failed the same way: starting more would loop forever.
                return WorkerExit(
                    worker,
                    _EXIT_CANNOT_START,
                    f"{reason}; {self._failed_starts} tasks in a row failed to "
                    "start, so no more are started",
                )
            return WorkerExit(worker, code, reason)
        self._failed_starts = 0
        if stopped.startswith("starburst:"):
            return WorkerExit(worker, code, f"stopped by starburst ({stopped[10:].strip()})")
        if stop_code == "UserInitiated":
            return WorkerExit(worker, code, f"stopped by user: {stopped or 'StopTask'}")
        if code is not None:
            return WorkerExit(worker, code, f"exit code {code}" + (f" ({said})" if said else ""))
        return WorkerExit(worker, None, said)

    # -- stopping ----------------------------------------------------------------------------

    def _session_tasks(self, *, wanted_running: bool) -> set[str]:
        """This session's tasks that have not stopped, including those started by another
        launcher (another client of a detached session).

        ``ListTasks`` gets ``startedBy`` alone (ECS: it "must be the only filter that you
        use"); the status filter is applied here, on ``DescribeTasks``' answer.

        Args:
            wanted_running: only tasks ECS still wants running (desired status RUNNING);
                False: also those already asked to stop and still stopping.
        """
        listed = [
            str(arn)
            for arn in self.aws.paginate(
                "ecs",
                "list_tasks",
                "taskArns",
                cluster=self.options.cluster,
                startedBy=self.started_by,
            )
        ]
        tasks, _ = self._describe(listed) if listed else ([], [])
        return {
            str(t["taskArn"])
            for t in tasks
            if t.get("lastStatus") != "STOPPED"
            and (not wanted_running or t.get("desiredStatus") == "RUNNING")
        }

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every task of this session (StopTask: ECS sends SIGTERM, the workers hand
        back their claims) and wait up to ``timeout`` seconds for them to stop.

        Tasks still stopping after ``timeout`` are logged, not waited for: ECS finishes
        stopping them (SIGKILL after the task definition's ``stopTimeout``).
        """
        try:
            arns = sorted(self._session_tasks(wanted_running=False) | set(self._running))
        except AwsError as exc:
            logger.error(
                "session %s: cannot list its ECS tasks to stop them (%s); stopping "
                "the %d known to this process",
                self.session_id,
                exc,
                len(self._running),
            )
            arns = sorted(self._running)
        if not arns:
            return

        def stop_one(arn: str) -> None:
            try:
                self.aws.call(
                    "ecs", "stop_task", cluster=self.options.cluster, task=arn, reason=STOP_REASON
                )
            except AwsError as exc:
                logger.warning("session %s: StopTask %s failed: %s", self.session_id, arn, exc)

        with ThreadPoolExecutor(min(8, len(arns)), thread_name_prefix="starburst-stop") as pool:
            list(pool.map(stop_one, arns))
        logger.info("session %s: asked ECS to stop %d worker(s)", self.session_id, len(arns))
        deadline = time.monotonic() + timeout
        pending = set(arns)
        while pending:
            try:
                tasks, _ = self._describe(sorted(pending))
            except AwsError as exc:
                logger.warning(
                    "session %s: cannot follow the stopping tasks: %s", self.session_id, exc
                )
                break
            for task in tasks:
                if task.get("lastStatus") == "STOPPED":
                    pending.discard(str(task.get("taskArn")))
                    self._running.pop(str(task.get("taskArn")), None)
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        if pending:
            logger.info(
                "session %s: %d worker(s) still stopping after %.0f s; ECS finishes stopping them",
                self.session_id,
                len(pending),
                timeout,
            )
