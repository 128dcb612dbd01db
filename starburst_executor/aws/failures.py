"""Readable explanations of ECS RunTask ``failures[]``: what went wrong and what to do.

Matched on ECS's documented reason codes ("Amazon ECS API failure reasons" in the ECS
developer guide), never on their wording, except for the two Fargate failures that come with
no code at all (see ``_TEXT_HINTS``).
"""

from __future__ import annotations

from typing import Any

from starburst_executor.aws.options import EcsOptions

__all__ = ["explain_failure"]

_FAILURE_HINTS = (
    # (reason code, what to do). The codes are ECS's documented failure reasons ("Amazon
    # ECS API failure reasons" in the ECS developer guide): "RESOURCE:CPU", "AGENT" ...
    # matched on the code before any ":" detail.
    (
        "RESOURCE",
        (
            "the EC2 capacity provider's instances lack free {what}: wait for its Auto "
            "Scaling group to add instances, raise its maximum size, or ask for smaller "
            "workers (cpu=, memory=)"
        ),
    ),
    ("AGENT", "the ECS agent on the container instance is disconnected: check the instance"),
    (
        "ATTRIBUTE",
        (
            "no container instance has the attributes the task needs (architecture, "
            "platform): check the capacity provider's instance type"
        ),
    ),
    (
        "MISSING",
        (
            "ECS could not find a resource the task needs ({arn}): check that cluster "
            "{cluster} exists in {region} (run `starburst setup`) and that the task "
            "definition is active"
        ),
    ),
    ("INACTIVE", "the cluster or container instance is inactive: run `starburst setup` again"),
)
# Two Fargate failures come with no code, only a sentence ("Capacity is unavailable at this
# time. ...", "You've reached the limit on the number of tasks you can run concurrently").
# They are matched on a few words, case-insensitively and with any apostrophe (AWS has used
# both ' and U+2019 in its messages), because there is nothing else to match.
_TEXT_HINTS = (
    (
        "capacity is unavailable",
        (
            "AWS has no {capacity} capacity for this size right now: it will be retried; "
            "more subnets in other Availability Zones help, or spot=False"
        ),
    ),
    (
        "you've reached the limit",
        ("the account's {quota} quota is used up: request an increase in Service Quotas ({codes})"),
    ),
)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})


def explain_failure(failure: dict[str, Any], options: EcsOptions) -> str:
    """One line: the failure's reason, detail and ARN, and the advice for its code."""
    reason = str(failure.get("reason", "unknown"))
    detail = str(failure.get("detail", "") or "")
    arn = str(failure.get("arn", "") or "")
    if options.launch_type != "FARGATE":
        capacity = "EC2"
        quota = "EC2 vCPU"
        codes = "ec2 L-1216C47A On-Demand, L-34B43A08 Spot"
    else:
        capacity = "Fargate Spot" if options.spot else "Fargate"
        quota = "Fargate vCPU"
        codes = "fargate L-3032A538 On-Demand, L-36FBB829 Spot"
    text = f"{reason}" + (f" ({detail})" if detail else "") + (f" for {arn}" if arn else "")
    code = reason.split(":", 1)[0].strip().upper()
    hint = next((h for c, h in _FAILURE_HINTS if code == c), None)
    if hint is None:
        said = f"{reason} {detail}".lower().translate(_APOSTROPHES)
        hint = next((h for words, h in _TEXT_HINTS if words in said), None)
    if hint is None:
        return text
    what = reason.split(":", 1)[1].lower() if ":" in reason else "resources"
    return f"{text}: " + hint.format(
        what=what,
        arn=arn or "?",
        cluster=options.cluster,
        region=options.region,
        capacity=capacity,
        quota=quota,
        codes=codes,
    )
