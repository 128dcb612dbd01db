"""The ECR repository of the worker image: created with scan-on-push and a rule keeping the
last images; checked; deleted with its images."""

from __future__ import annotations

import json
from typing import Any

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

__all__ = ["KEEP_IMAGES", "check", "ensure", "remove"]

KEEP_IMAGES = 10

_LIFECYCLE = {
    "rules": [
        {
            "rulePriority": 1,
            "description": f"keep the last {KEEP_IMAGES} worker images",
            "selection": {
                "tagStatus": "any",
                "countType": "imageCountMoreThan",
                "countNumber": KEEP_IMAGES,
            },
            "action": {"type": "expire"},
        }
    ]
}


def _state(place: Place, name: str) -> tuple[dict[str, Any] | None, list[str]]:
    """(the repository or None, what differs from setup's settings)."""
    found = absent(
        place.aws,
        "ecr",
        "describe_repositories",
        ["RepositoryNotFoundException"],
        repositoryNames=[name],
    )
    if found is None:
        return None, []
    repo: dict[str, Any] = found["repositories"][0]
    problems = []
    if not repo.get("imageScanningConfiguration", {}).get("scanOnPush"):
        problems.append("scan on push")
    policy = absent(
        place.aws,
        "ecr",
        "get_lifecycle_policy",
        ["LifecyclePolicyNotFoundException"],
        repositoryName=name,
    )
    if policy is None or json.loads(policy["lifecyclePolicyText"]) != _LIFECYCLE:
        problems.append("lifecycle policy")
    return repo, problems


def ensure(run: Run, name: str) -> None:
    """Create the repository, or bring scan-on-push and the lifecycle rule back."""
    repo, problems = _state(run, name)
    if repo is None:
        run.call(
            "ecr",
            "create_repository",
            repositoryName=name,
            imageScanningConfiguration={"scanOnPush": True},
            encryptionConfiguration={"encryptionType": "AES256"},
            tags=tags("Key"),
        )
        problems = ["lifecycle policy"]
    if "scan on push" in problems:
        run.call(
            "ecr",
            "put_image_scanning_configuration",
            repositoryName=name,
            imageScanningConfiguration={"scanOnPush": True},
        )
    if "lifecycle policy" in problems:
        run.call(
            "ecr",
            "put_lifecycle_policy",
            repositoryName=name,
            lifecyclePolicyText=json.dumps(_LIFECYCLE),
        )
    if repo is None:
        run.add("ECR repository", name, CREATED)
    elif problems:
        run.add("ECR repository", name, UPDATED, "set " + ", ".join(problems))
    else:
        run.add("ECR repository", name, EXISTS)


def check(place: Place, name: str) -> str:
    repo, problems = _state(place, name)
    if repo is None:
        raise CheckFailed(f"the ECR repository {name} does not exist")
    if problems:
        raise CheckFailed(f"the ECR repository {name} lacks " + ", ".join(problems))
    return f"{name} scans on push and keeps the last {KEEP_IMAGES} images"


def remove(place: Place, name: str) -> tuple[str, str]:
    gone = absent(
        place.aws,
        "ecr",
        "delete_repository",
        ["RepositoryNotFoundException"],
        repositoryName=name,
        force=True,
    )
    return (ABSENT, "") if gone is None else (REMOVED, "with its images")
