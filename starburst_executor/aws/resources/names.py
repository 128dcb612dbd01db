"""The names setup gives its resources, derived from the cluster name and region, each
within its service's length limit.

A name that would be too long keeps a readable head and the part that says what it is, and
puts an 8-character hash of the full name in between, so a re-run derives the very same name
and finds the resource again, and two long cluster names that share a head still differ.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = ["CLUSTER_NAME", "ResourceNames", "fit", "resource_names"]

# ECS cluster names: up to 255 letters, digits, hyphens and underscores (CreateCluster).
CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")

# Limits (characters) from each service's API reference.
IAM_ROLE_MAX = 64  # CreateRole RoleName; the instance profile shares the role's name
SECURITY_GROUP_MAX = 255  # CreateSecurityGroup GroupName
# CreateLaunchTemplate LaunchTemplateName; the Auto Scaling group and the capacity provider
# share that name and allow 255, so this shorter limit is the one that binds.
LAUNCH_TEMPLATE_MAX = 128
LOG_GROUP_MAX = 512
PARAMETER_MAX = 1011  # SSM parameter names, including the path
# The launcher appends "-" and a 12-character digest; ECS families are at most 255.
TASK_FAMILY_MAX = 255 - 13
ECR_REPOSITORY_MAX = 256


def fit(stem: str, suffix: str, limit: int) -> str:
    """``stem + suffix`` if it fits in ``limit`` characters, else a shortened ``stem``, a
    hash of the whole name, and ``suffix``: deterministic, so re-runs find it again."""
    name = stem + suffix
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    head = stem[: max(1, limit - len(suffix) - len(digest) - 1)].rstrip("-_")
    return f"{head}-{digest}{suffix}"[:limit]


@dataclass(frozen=True)
class ResourceNames:
    """The names setup gives its resources, derived from the cluster name and region.

    IAM names are global to the account, so roles carry the region; the others are
    regional already.
    """

    cluster: str
    region: str

    @property
    def base(self) -> str:
        return self.cluster if self.cluster.startswith("starburst") else f"starburst-{self.cluster}"

    @property
    def _default(self) -> bool:
        return self.cluster == "starburst"

    @property
    def execution_role(self) -> str:
        return fit(self.base, f"-execution-{self.region}", IAM_ROLE_MAX)

    @property
    def task_role(self) -> str:
        return fit(self.base, f"-task-{self.region}", IAM_ROLE_MAX)

    @property
    def instance_role(self) -> str:
        """The EC2 instances' role, and their instance profile of the same name."""
        return fit(self.base, f"-ec2-{self.region}", IAM_ROLE_MAX)

    @property
    def security_group(self) -> str:
        return fit(self.base, "-workers", SECURITY_GROUP_MAX)

    @property
    def ec2(self) -> str:
        """The launch template, Auto Scaling group and capacity provider."""
        return fit(self.base, "-ec2", LAUNCH_TEMPLATE_MAX)

    @property
    def log_group(self) -> str:
        if self._default:
            return "/starburst/workers"
        return fit(f"/starburst/{self.cluster}", "/workers", LOG_GROUP_MAX)

    @property
    def secret_parameter(self) -> str:
        if self._default:
            return "/starburst/secret-key"
        return fit(f"/starburst/{self.cluster}", "/secret-key", PARAMETER_MAX)

    @property
    def task_family(self) -> str:
        return "starburst-worker" if self._default else fit(self.base, "-worker", TASK_FAMILY_MAX)

    @property
    def repository(self) -> str:
        # ECR names are lowercase; cluster names may not be.
        return self.task_family.lower()[:ECR_REPOSITORY_MAX]


def resource_names(cluster: str, region: str) -> ResourceNames:
    """The names :func:`~starburst_executor.aws.setup.setup` uses for ``cluster`` in
    ``region``."""
    return ResourceNames(cluster, region)
