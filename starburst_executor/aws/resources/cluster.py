"""The ECS cluster: created, given its capacity providers (FARGATE, FARGATE_SPOT and the EC2
one), checked, and removed together with the task definitions the launcher registered for
it."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from starburst_executor.aws.resources.base import (
    ABSENT,
    CREATED,
    EXISTS,
    IAM_PROPAGATION_ATTEMPTS,
    IAM_PROPAGATION_DELAY,
    REMOVED,
    UPDATED,
    CheckFailed,
    Place,
    Run,
    tags,
)
from starburst_executor.errors import AwsCredentialsError, AwsError, AwsPermissionError

__all__ = [
    "FARGATE_PROVIDERS",
    "check",
    "describe",
    "ensure",
    "ensure_providers",
    "remove",
    "remove_task_definitions",
]

logger = logging.getLogger(__name__)

FARGATE_PROVIDERS = ("FARGATE", "FARGATE_SPOT")
# DeleteTaskDefinitions takes at most 10 task definitions per call.
_DELETE_BATCH = 10


def describe(place: Place, name: str) -> dict[str, Any] | None:
    """The ACTIVE cluster ``name``, or None."""
    found = place.call("ecs", "describe_clusters", clusters=[name])["clusters"]
    active = [c for c in found if c.get("status") == "ACTIVE"]
    return active[0] if active else None


def ensure(run: Run, name: str) -> str:
    """Create the cluster if it is missing; ``created`` or ``exists`` (reported by
    :func:`ensure_providers`, which completes it)."""
    if describe(run, name) is not None:
        return EXISTS
    run.call("ecs", "create_cluster", clusterName=name, tags=tags("key"))
    return CREATED


def _service_linked_role_pending(exc: AwsError) -> bool:
    # ECS answers a capacity-provider change made before its service-linked role is usable
    # with a generic InvalidParameterException; only the message tells this case apart.
    text = str(exc).lower()
    return exc.code == "InvalidParameterException" and "service linked role" in text.replace(
        "-", " "
    )


def ensure_providers(
    run: Run, name: str, status: str, providers: Sequence[str], *, wait_for_role: bool = False
) -> None:
    """Attach the missing capacity providers (keeping those already there).

    Args:
        wait_for_role: ECS's service-linked role was just created: retry while ECS cannot
            use it yet.
    """
    found = describe(run, name)
    current = list(found.get("capacityProviders", [])) if found else []
    missing = [p for p in providers if p not in current]
    if missing:
        strategy = (found or {}).get("defaultCapacityProviderStrategy") or [
            {"capacityProvider": "FARGATE", "weight": 1}
        ]
        attempts = IAM_PROPAGATION_ATTEMPTS if wait_for_role else 1
        for attempt in range(1, attempts + 1):
            try:
                run.call(
                    "ecs",
                    "put_cluster_capacity_providers",
                    cluster=name,
                    capacityProviders=current + missing,
                    defaultCapacityProviderStrategy=strategy,
                )
                break
            except (AwsCredentialsError, AwsPermissionError):
                raise
            except AwsError as exc:
                if attempt == attempts or not _service_linked_role_pending(exc):
                    raise
                logger.info("setup: waiting for ECS's new service-linked role (%s)", exc)
                time.sleep(IAM_PROPAGATION_DELAY)
        if status == EXISTS:
            status = UPDATED
    detail = (
        "added capacity providers " + ", ".join(missing)
        if status == UPDATED
        else "capacity providers " + ", ".join(current + missing)
    )
    run.add("ECS cluster", name, status, detail)


def check(place: Place, name: str, providers: Sequence[str]) -> str:
    found = describe(place, name)
    if found is None:
        raise CheckFailed(f"the ECS cluster {name} does not exist (or is inactive)")
    attached = found.get("capacityProviders", [])
    missing = [p for p in providers if p not in attached]
    if missing:
        raise CheckFailed(f"the cluster {name} lacks the capacity provider(s) {', '.join(missing)}")
    return f"{name} ACTIVE with {', '.join(attached)}"


def remove(place: Place, name: str) -> tuple[str, str]:
    if describe(place, name) is None:
        return ABSENT, ""
    try:
        place.call("ecs", "delete_cluster", cluster=name)
    except (AwsCredentialsError, AwsPermissionError):
        raise
    except AwsError as exc:
        if exc.code in (
            "ClusterContainsTasksException",
            "ClusterContainsServicesException",
            "ClusterContainsContainerInstancesException",
        ):
            raise AwsError(
                f"the cluster still runs workers or instances ({exc.code}): stop running "
                "sessions (or wait for instances to terminate) and run teardown again",
                exc.code,
            ) from exc
        raise
    return REMOVED, ""


def remove_task_definitions(place: Place, family: str) -> tuple[str, str]:
    """Deregister (and delete) every task definition the launcher registered under
    ``family``: its families are ``{family}-{12 hex digits}``.

    ListTaskDefinitions only filters by a full family name, so the families are found with
    ListTaskDefinitionFamilies (a prefix match), then filtered exactly: another cluster's
    family may share the prefix.
    """
    own = re.compile(re.escape(family) + r"-[0-9a-f]{12}")
    families = [
        f
        for f in place.aws.paginate(
            "ecs", "list_task_definition_families", "families", familyPrefix=family, status="ALL"
        )
        if own.fullmatch(f)
    ]
    pairs: list[tuple[str, str]] = []
    for f in families:
        for status in ("ACTIVE", "INACTIVE"):
            pairs += [
                (str(arn), status)
                for arn in place.aws.paginate(
                    "ecs",
                    "list_task_definitions",
                    "taskDefinitionArns",
                    familyPrefix=f,
                    status=status,
                )
            ]
    if not pairs:
        return ABSENT, ""
    for arn, status in pairs:
        if status == "ACTIVE":
            place.call("ecs", "deregister_task_definition", taskDefinition=arn)
    every = [arn for arn, _ in pairs]
    for i in range(0, len(every), _DELETE_BATCH):
        # Deregistered definitions stay listed (INACTIVE) until deleted.
        place.call("ecs", "delete_task_definitions", taskDefinitions=every[i : i + _DELETE_BATCH])
    return REMOVED, f"{len(every)} revision(s) in {len(families)} families"
