"""IAM: the execution and task roles (trust, inline policy, managed policies), the EC2
instances' role and instance profile, and ECS's service-linked role; ensured, checked,
removed.

The documents themselves come from :mod:`starburst_executor.aws.policies`; this module only
makes the live roles equal to them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starburst_executor.aws import policies
from starburst_executor.aws.resources.base import (
    ABSENT,
    CREATED,
    EXISTS,
    REMOVED,
    UPDATED,
    CheckFailed,
    Place,
    Run,
    absent,
    tags,
)
from starburst_executor.errors import AwsCredentialsError, AwsError, AwsPermissionError

__all__ = [
    "ECS_SERVICE_LINKED_ROLE",
    "INLINE_POLICY",
    "RoleSpec",
    "check_role",
    "ensure_instance_profile",
    "ensure_role",
    "ensure_service_linked_role",
    "remove_role",
    "role_name",
]

INLINE_POLICY = "starburst"
ECS_SERVICE_LINKED_ROLE = "AWSServiceRoleForECS"


def role_name(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class RoleSpec:
    """A role as setup wants it.

    Attributes:
        name: the role name.
        trust: its trust policy.
        inline: the inline policy ``starburst`` (None: none of ours).
        managed: ARNs of AWS-managed policies attached to it.
        description: what it is for (shown in the IAM console).
    """

    name: str
    trust: dict[str, Any]
    inline: dict[str, Any] | None
    managed: Sequence[str]
    description: str


def _state(place: Place, spec: RoleSpec) -> tuple[dict[str, Any] | None, list[str]]:
    """(the role or None, what differs: "trust policy", "inline policy", managed ARNs)."""
    found = absent(place.aws, "iam", "get_role", ["NoSuchEntity"], RoleName=spec.name)
    if found is None:
        return None, []
    role: dict[str, Any] = found["Role"]
    problems = []
    if not policies.same_policy(role.get("AssumeRolePolicyDocument", {}), spec.trust):
        problems.append("trust policy")
    if spec.inline is not None:
        current = absent(
            place.aws,
            "iam",
            "get_role_policy",
            ["NoSuchEntity"],
            RoleName=spec.name,
            PolicyName=INLINE_POLICY,
        )
        if current is None:
            problems.append("missing inline policy")
        elif not policies.same_policy(current["PolicyDocument"], spec.inline):
            problems.append("inline policy")
    attached = {
        p["PolicyArn"]
        for p in place.aws.paginate(
            "iam", "list_attached_role_policies", "AttachedPolicies", RoleName=spec.name
        )
    }
    problems += [arn for arn in spec.managed if arn not in attached]
    return role, problems


def ensure_role(run: Run, spec: RoleSpec) -> str:
    """Create the role or make it equal to ``spec``; its ARN."""
    role, problems = _state(run, spec)
    status = EXISTS
    if role is None:
        role = run.call(
            "iam",
            "create_role",
            RoleName=spec.name,
            Description=spec.description,
            AssumeRolePolicyDocument=json.dumps(spec.trust),
            Tags=tags("Key"),
        )["Role"]
        status = CREATED
        problems = (["inline policy"] if spec.inline is not None else []) + list(spec.managed)
    changes = []
    for problem in problems:
        if problem == "trust policy":
            run.call(
                "iam",
                "update_assume_role_policy",
                RoleName=spec.name,
                PolicyDocument=json.dumps(spec.trust),
            )
        elif problem in ("inline policy", "missing inline policy"):
            run.call(
                "iam",
                "put_role_policy",
                RoleName=spec.name,
                PolicyName=INLINE_POLICY,
                PolicyDocument=json.dumps(spec.inline),
            )
            problem = "inline policy"
        else:
            run.call("iam", "attach_role_policy", RoleName=spec.name, PolicyArn=problem)
            problem = problem.rsplit("/", 1)[-1]
        changes.append(problem)
    if status == EXISTS and changes:
        status = UPDATED
    run.add("IAM role", spec.name, status, "set " + ", ".join(changes) if status == UPDATED else "")
    return str(role["Arn"])


def check_role(place: Place, spec: RoleSpec) -> str:
    role, problems = _state(place, spec)
    if role is None:
        raise CheckFailed(f"the role {spec.name} does not exist")
    if "trust policy" in problems:
        raise CheckFailed(f"the role {spec.name} has another trust policy than setup writes")
    if "missing inline policy" in problems:
        raise CheckFailed(f"the role {spec.name} lacks its inline policy '{INLINE_POLICY}'")
    if "inline policy" in problems:
        raise CheckFailed(
            f"the role {spec.name}'s inline policy differs from what setup writes "
            "(names changed, or edited by hand)"
        )
    if problems:
        raise CheckFailed(f"the role {spec.name} lacks the managed policy {', '.join(problems)}")
    return f"{spec.name} with the expected policies"


def remove_role(place: Place, name: str) -> tuple[str, str]:
    """Delete the role with its policies and instance profiles."""
    if absent(place.aws, "iam", "get_role", ["NoSuchEntity"], RoleName=name) is None:
        return ABSENT, ""
    # IAM refuses to delete a role that still has policies or instance profiles.
    for policy in list(
        place.aws.paginate("iam", "list_role_policies", "PolicyNames", RoleName=name)
    ):
        place.call("iam", "delete_role_policy", RoleName=name, PolicyName=policy)
    for attached in list(
        place.aws.paginate("iam", "list_attached_role_policies", "AttachedPolicies", RoleName=name)
    ):
        place.call("iam", "detach_role_policy", RoleName=name, PolicyArn=attached["PolicyArn"])
    profiles = place.call("iam", "list_instance_profiles_for_role", RoleName=name)[
        "InstanceProfiles"
    ]
    for profile in profiles:
        place.call(
            "iam",
            "remove_role_from_instance_profile",
            InstanceProfileName=profile["InstanceProfileName"],
            RoleName=name,
        )
        place.call(
            "iam", "delete_instance_profile", InstanceProfileName=profile["InstanceProfileName"]
        )
    place.call("iam", "delete_role", RoleName=name)
    return REMOVED, "and its instance profile" if profiles else ""


def ensure_instance_profile(run: Run, name: str) -> bool:
    """An instance profile of the same name holding the role ``name``; True if this run
    created it or added the role (EC2 may not see it for a few seconds)."""
    found = absent(
        run.aws, "iam", "get_instance_profile", ["NoSuchEntity"], InstanceProfileName=name
    )
    if found is None:
        found = run.call(
            "iam", "create_instance_profile", InstanceProfileName=name, Tags=tags("Key")
        )
        status = CREATED
    else:
        status = EXISTS
    if not any(r["RoleName"] == name for r in found["InstanceProfile"].get("Roles", [])):
        run.call("iam", "add_role_to_instance_profile", InstanceProfileName=name, RoleName=name)
        status = CREATED if status == CREATED else UPDATED
    run.add("instance profile", name, status)
    return status != EXISTS


def ensure_service_linked_role(run: Run) -> bool:
    """ECS's service-linked role, which PutClusterCapacityProviders needs (ECS creates it
    with the account's first cluster, but not always before the call that needs it). True
    if this run created it (it may take a few seconds to be usable).

    Not removed by teardown: it belongs to ECS and to every cluster of the account.
    """
    if absent(run.aws, "iam", "get_role", ["NoSuchEntity"], RoleName=ECS_SERVICE_LINKED_ROLE):
        run.add("service-linked role", ECS_SERVICE_LINKED_ROLE, EXISTS)
        return False
    try:
        run.call("iam", "create_service_linked_role", AWSServiceName="ecs.amazonaws.com")
    except (AwsCredentialsError, AwsPermissionError):
        raise
    except AwsError as exc:
        # AWS answers InvalidInput ("has been taken in this account") when it exists, and
        # some emulators EntityAlreadyExists: either way it is there.
        if exc.code not in ("InvalidInput", "EntityAlreadyExists"):
            raise
        run.add("service-linked role", ECS_SERVICE_LINKED_ROLE, EXISTS)
        return False
    run.add("service-linked role", ECS_SERVICE_LINKED_ROLE, CREATED, "for ECS capacity providers")
    return True
