"""The CloudWatch log group of the workers: created with a retention; checked; deleted with
its logs."""

from __future__ import annotations

from starburst_executor.aws.resources.base import (
    ABSENT,
    CREATED,
    EXISTS,
    REMOVED,
    TAG_KEY,
    TAG_VALUE,
    UPDATED,
    CheckFailed,
    Place,
    Run,
    absent,
)

__all__ = ["RETENTION_DAYS", "check", "ensure", "remove"]

# CloudWatch Logs accepts only these retention periods (PutRetentionPolicy).
RETENTION_DAYS = frozenset(
    {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557}
    | {2922, 3288, 3653}
)


def ensure(run: Run, name: str, days: int) -> None:
    groups = run.call("logs", "describe_log_groups", logGroupNamePrefix=name)["logGroups"]
    group = next((g for g in groups if g["logGroupName"] == name), None)
    if group is None:
        run.call("logs", "create_log_group", logGroupName=name, tags={TAG_KEY: TAG_VALUE})
        run.call("logs", "put_retention_policy", logGroupName=name, retentionInDays=days)
        run.add("log group", name, CREATED, f"retention {days} days")
    elif group.get("retentionInDays") != days:
        run.call("logs", "put_retention_policy", logGroupName=name, retentionInDays=days)
        run.add("log group", name, UPDATED, f"retention {days} days")
    else:
        run.add("log group", name, EXISTS, f"retention {days} days")


def check(place: Place, name: str) -> str:
    # DescribeLogStreams on the group itself, not DescribeLogGroups: the user policy grants
    # the logs read actions on this group's ARN only.
    found = absent(
        place.aws,
        "logs",
        "describe_log_streams",
        ["ResourceNotFoundException"],
        logGroupName=name,
        limit=1,
    )
    if found is None:
        raise CheckFailed(f"the log group {name} does not exist")
    return f"{name} exists"


def remove(place: Place, name: str) -> tuple[str, str]:
    gone = absent(
        place.aws, "logs", "delete_log_group", ["ResourceNotFoundException"], logGroupName=name
    )
    return (ABSENT, "") if gone is None else (REMOVED, "with its worker logs")
