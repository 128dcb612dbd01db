"""The workers' ECS task definition: its spec, its registration, and its retirement.

The image's ``ENTRYPOINT`` (``python -m starburst_executor.worker``, set by the Dockerfile
that ``starburst image build`` renders) is the contract: the task definition sets neither
``entryPoint`` nor ``command``. Docker appends ``command`` to the ENTRYPOINT, so a
``command`` repeating the entry point made every worker run ``python -m
starburst_executor.worker python -m starburst_executor.worker`` and exit 2 ("unrecognized
arguments").

The family is ``{task_family}-{hash of the spec}``: identical specs (same image, size, roles,
log group, secret, architecture) share one family and one revision across sessions, and a
changed spec gets its own family rather than piling revisions onto one.

Retirement rule (:func:`retire_unused`): when a launcher registers a *new* family, it
deregisters the other ACTIVE task definitions under the same ``{task_family}-`` prefix that
(a) were registered more than :data:`RETIRE_AFTER` seconds ago and (b) no task of the cluster
uses (desired status RUNNING). The age guard protects a client that looked a definition up a
moment ago and is about to RunTask with it; a client that still meets a retired definition
(a reattach days later) registers it again (:func:`ensure` treats INACTIVE as absent), and a
launcher whose cached definition was retired under it re-registers once
(``ECSLauncher._run_task``). Tasks already running on a deregistered definition keep running
(AWS: "existing tasks ... continue to run without disruption").
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import datetime
from typing import Any

from starburst_executor.aws.client import Aws
from starburst_executor.aws.options import EcsOptions
from starburst_executor.errors import AwsError

__all__ = [
    "CONTAINER_NAME",
    "LOG_STREAM_PREFIX",
    "RETIRE_AFTER",
    "STOP_TIMEOUT",
    "ensure",
    "family_of",
    "retire_unused",
    "spec",
]

logger = logging.getLogger(__name__)

CONTAINER_NAME = "worker"
LOG_STREAM_PREFIX = "starburst"  # streams are "{prefix}/{container}/{task id}"
STOP_TIMEOUT = 120  # seconds between SIGTERM and SIGKILL: Spot gives two minutes' notice
RETIRE_AFTER = 24 * 3600.0  # a definition younger than this is never deregistered
_DESCRIBE_TASKS_MAX = 100  # DescribeTasks takes at most 100 task ARNs per call


def spec(options: EcsOptions, secret_arn: str) -> dict[str, Any]:
    """The RegisterTaskDefinition request (without ``family``), as sent to ECS.

    Args:
        options: the workers' size, image, roles, logs and architecture.
        secret_arn: the SSM parameter ARN of the signing key (ECS injects it at start).
    """
    o = options
    cpu_units = round(o.cpu * 1024)  # ECS counts 1,024 CPU units per vCPU
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": o.image,
        "essential": True,
        # No entryPoint, no command: the image's ENTRYPOINT starts the worker (module doc).
        # The task-level memory is what Fargate enforces; the container-level hard limit
        # equals it (moto's RunTask fails without one; AWS accepts it as harmless).
        "memory": o.memory_mib,
        "environment": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
        "secrets": [{"name": "STARBURST_SECRET_KEY", "valueFrom": secret_arn}],
        # SIGTERM, then this long to hand back claims before SIGKILL. Fargate allows up to
        # 120 s, which is also the notice a Spot interruption gives.
        "stopTimeout": STOP_TIMEOUT,
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": o.log_group,
                "awslogs-region": o.region,
                "awslogs-stream-prefix": LOG_STREAM_PREFIX,
            },
        },
    }
    result: dict[str, Any] = {
        "networkMode": "awsvpc",
        "requiresCompatibilities": [o.launch_type],
        "cpu": str(cpu_units),
        "memory": str(o.memory_mib),
        # The image's architecture: without it Fargate runs X86_64, and an arm64 image (built
        # on Apple Silicon or Graviton) fails every task with "exec format error".
        "runtimePlatform": {
            "cpuArchitecture": o.cpu_architecture,
            "operatingSystemFamily": "LINUX",
        },
        "containerDefinitions": [container],
    }
    if o.execution_role_arn:
        result["executionRoleArn"] = o.execution_role_arn
    if o.task_role_arn:
        result["taskRoleArn"] = o.task_role_arn
    return result


def family_of(options: EcsOptions, request: dict[str, Any]) -> str:
    """``{task_family}-{12 hex digits of the spec's hash}``."""
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:12]
    return f"{options.task_family}-{digest}"


def ensure(aws: Aws, options: EcsOptions, request: dict[str, Any]) -> tuple[str, bool]:
    """The ARN of an ACTIVE task definition for ``request``, registered if none exists.

    Returns:
        ``(arn, registered)``: ``registered`` is True when this call registered it.

    Raises:
        AwsError: ECS refused the registration (the message names the call).
    """
    family = family_of(options, request)
    try:
        found = aws.call("ecs", "describe_task_definition", taskDefinition=family)
        definition = found["taskDefinition"]
        if definition.get("status", "ACTIVE") == "ACTIVE":
            return str(definition["taskDefinitionArn"]), False
    except AwsError as exc:
        if exc.code != "ClientException":  # ECS's answer for "no such task definition"
            raise
    registered = aws.call(
        "ecs",
        "register_task_definition",
        family=family,
        tags=[{"key": "managed-by", "value": "starburst"}],
        **request,
    )
    return str(registered["taskDefinition"]["taskDefinitionArn"]), True


def is_active(aws: Aws, arn: str) -> bool:
    """Whether the task definition ``arn`` is still ACTIVE (False once deregistered)."""
    try:
        found = aws.call("ecs", "describe_task_definition", taskDefinition=arn)
    except AwsError as exc:
        if exc.code != "ClientException":
            raise
        return False
    return str(found["taskDefinition"].get("status", "ACTIVE")) == "ACTIVE"


def _in_use(aws: Aws, cluster: str) -> set[str]:
    """Task definition ARNs of the cluster's tasks that ECS still wants running."""
    arns = list(aws.paginate("ecs", "list_tasks", "taskArns", cluster=cluster))
    used: set[str] = set()
    for i in range(0, len(arns), _DESCRIBE_TASKS_MAX):
        answer = aws.call(
            "ecs", "describe_tasks", cluster=cluster, tasks=arns[i : i + _DESCRIBE_TASKS_MAX]
        )
        for task in answer.get("tasks", ()):
            if task.get("lastStatus") != "STOPPED":
                used.add(str(task.get("taskDefinitionArn", "")))
    return used


def _age(definition: dict[str, Any], now: float) -> float:
    registered = definition.get("registeredAt")
    if isinstance(registered, datetime):
        return now - registered.timestamp()
    if isinstance(registered, (int, float)):
        return now - float(registered)
    return 0.0  # unknown age: treat as new, never retired


def retire_unused(aws: Aws, options: EcsOptions, keep: str) -> list[str]:
    """Deregister the starburst task definitions of this prefix that nothing uses (see the
    module docstring for the rule); returns the ARNs deregistered.

    Best effort: a failure is logged, never raised (a leftover definition costs nothing).
    """
    retired: list[str] = []
    try:
        # ListTaskDefinitionFamilies matches a real prefix; ListTaskDefinitions' familyPrefix
        # is "the full family name" (ECS API reference), hence two steps.
        families = aws.paginate(
            "ecs",
            "list_task_definition_families",
            "families",
            familyPrefix=f"{options.task_family}-",
            status="ACTIVE",
        )
        candidates = [
            str(arn)
            for family in list(families)
            for arn in aws.paginate(
                "ecs",
                "list_task_definitions",
                "taskDefinitionArns",
                familyPrefix=str(family),
                status="ACTIVE",
            )
            if str(arn) != keep
        ]
        if not candidates:
            return retired
        used = _in_use(aws, options.cluster)
        now = time.time()
        for arn in candidates:
            if arn in used:
                continue
            definition = aws.call("ecs", "describe_task_definition", taskDefinition=arn)[
                "taskDefinition"
            ]
            if _age(definition, now) < RETIRE_AFTER:
                continue
            aws.call("ecs", "deregister_task_definition", taskDefinition=arn)
            retired.append(arn)
    except AwsError as exc:
        logger.warning("could not retire unused task definitions of %s: %s", keep, exc)
    if retired:
        logger.info("deregistered %d unused task definition(s): %s", len(retired), retired)
    return retired
