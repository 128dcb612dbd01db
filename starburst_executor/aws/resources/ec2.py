"""EC2 capacity for ``launch_type="EC2"``: the launch template (ECS-optimised AMI, user data
joining the cluster), the Auto Scaling group (Spot, parked at zero) and the ECS capacity
provider with managed scaling; ensured, checked, removed.

The instances' IAM role and instance profile live in :mod:`.iam`; their network (the S3
gateway endpoint awsvpc tasks need) in :mod:`.network`.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starburst_executor.aws.resources.base import (
    ABSENT,
    CREATED,
    EXISTS,
    IAM_PROPAGATION_ATTEMPTS,
    IAM_PROPAGATION_DELAY,
    REMOVED,
    TAG_KEY,
    TAG_VALUE,
    UPDATED,
    CheckFailed,
    Place,
    Run,
    absent,
    tags,
)
from starburst_executor.errors import AwsCredentialsError, AwsError, AwsPermissionError

__all__ = [
    "Capacity",
    "architecture",
    "check",
    "ecs_ami",
    "ensure_auto_scaling_group",
    "ensure_capacity_provider",
    "ensure_launch_template",
    "group_of_provider",
    "remove_auto_scaling_group",
    "remove_capacity_provider",
    "remove_launch_template",
    "user_data",
]

logger = logging.getLogger(__name__)

_AMI_PARAMETER = "/aws/service/ecs/optimized-ami/{os}/{arch}recommended/image_id"
_TEMPLATE_NOT_FOUND = ["InvalidLaunchTemplateName.NotFoundException"]


@dataclass(frozen=True)
class Capacity:
    """The EC2 capacity as setup wants it.

    Attributes:
        name: the launch template, Auto Scaling group and capacity provider.
        cluster: the ECS cluster the instances join.
        instance_profile: the instances' profile (and role) name.
        instance_types: what the group may launch (one architecture).
        security_group: the instances' group.
        subnets: where instances start.
    """

    name: str
    cluster: str
    instance_profile: str
    instance_types: tuple[str, ...]
    security_group: str
    subnets: tuple[str, ...]


def user_data(cluster: str) -> str:
    """The container instances' ECS agent settings (``/etc/ecs/ecs.config``)."""
    return (
        "#!/bin/bash\n"
        "cat >> /etc/ecs/ecs.config <<'EOF'\n"
        f"ECS_CLUSTER={cluster}\n"
        # Drain the instance on a Spot interruption notice so ECS stops its tasks (the worker
        # gets SIGTERM and releases its claim) within the two-minute warning.
        "ECS_ENABLE_SPOT_INSTANCE_DRAINING=true\n"
        # awsvpc tasks could otherwise reach the instance metadata service and take the
        # instance role's credentials (ECS's security best practices).
        "ECS_AWSVPC_BLOCK_IMDS=true\n"
        "EOF\n"
    )


def architecture(place: Place, instance_types: Sequence[str]) -> str:
    """``x86_64`` or ``arm64``: the one architecture every type supports.

    Raises:
        ValueError: an unknown type, or types of different architectures.
    """
    try:
        found = place.call("ec2", "describe_instance_types", InstanceTypes=list(instance_types))[
            "InstanceTypes"
        ]
    except (AwsCredentialsError, AwsPermissionError):
        raise
    except AwsError as exc:
        if exc.code == "InvalidInstanceType":
            raise ValueError(
                f"unknown instance type among {', '.join(instance_types)}: {exc}"
            ) from exc
        raise
    archs = {t["InstanceType"]: set(t["ProcessorInfo"]["SupportedArchitectures"]) for t in found}
    unknown = [t for t in instance_types if t not in archs]
    if unknown:
        raise ValueError(f"{place.region} has no instance type {', '.join(unknown)}")
    common = set.intersection(*archs.values()) & {"x86_64", "arm64"}
    if not common:
        raise ValueError(
            "the instance types mix architectures ("
            + ", ".join(f"{t}: {'/'.join(sorted(a))}" for t, a in archs.items())
            + "); one launch template has one AMI: pick types of one architecture"
        )
    return "x86_64" if "x86_64" in common else "arm64"


def ecs_ami(run: Run, arch: str) -> str:
    """The recommended ECS-optimised AMI (Amazon Linux 2023, else 2) for ``arch``."""
    suffix = "arm64/" if arch == "arm64" else ""
    for os_name in ("amazon-linux-2023", "amazon-linux-2"):
        name = _AMI_PARAMETER.format(os=os_name, arch=suffix)
        found = absent(run.aws, "ssm", "get_parameter", ["ParameterNotFound"], Name=name)
        if found is not None:
            if os_name != "amazon-linux-2023":
                run.notes.append(f"no Amazon Linux 2023 ECS AMI parameter here; used {name}")
            return str(found["Parameter"]["Value"])
    # Last resort (SSM public parameters missing, e.g. in an emulator): Amazon's newest image
    # by name.
    pattern = "al2023-ami-ecs-hvm-*" + ("arm64" if arch == "arm64" else "x86_64")
    images = run.call(
        "ec2", "describe_images", Owners=["amazon"], Filters=[{"Name": "name", "Values": [pattern]}]
    )["Images"]
    if not images:
        parameter = _AMI_PARAMETER.format(os="amazon-linux-2023", arch=suffix)
        raise AwsError(
            f"cannot find the ECS-optimised AMI in {run.region}: neither the SSM parameter "
            f"{parameter} nor an image named {pattern}"
        )
    newest = max(images, key=lambda i: i.get("CreationDate", ""))
    run.notes.append(
        f"the SSM parameter for the ECS-optimised AMI is missing; used the newest {pattern} "
        f"image, {newest['ImageId']}"
    )
    return str(newest["ImageId"])


# -- launch template -------------------------------------------------------------------------


def _template_data(spec: Capacity, ami: str) -> dict[str, Any]:
    return {
        "ImageId": ami,
        "IamInstanceProfile": {"Name": spec.instance_profile},
        "UserData": base64.b64encode(user_data(spec.cluster).encode()).decode(),
        # The instance's own interface needs a public IP: through it the ECS agent pulls the
        # image from ECR, reads the secret and ships logs (a default VPC has no NAT).
        "NetworkInterfaces": [
            {
                "DeviceIndex": 0,
                "AssociatePublicIpAddress": True,
                "Groups": [spec.security_group],
                "DeleteOnTermination": True,
            }
        ],
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tags("Key")}],
    }


def _template_state(place: Place, spec: Capacity, ami: str | None) -> tuple[str | None, list[str]]:
    """(the template id or None, the fields of its default version that differ; the AMI is
    compared only when ``ami`` is given)."""
    found = absent(
        place.aws,
        "ec2",
        "describe_launch_templates",
        _TEMPLATE_NOT_FOUND,
        LaunchTemplateNames=[spec.name],
    )
    if found is None or not found.get("LaunchTemplates"):
        return None, []
    template_id = str(found["LaunchTemplates"][0]["LaunchTemplateId"])
    current = place.call(
        "ec2",
        "describe_launch_template_versions",
        LaunchTemplateId=template_id,
        Versions=["$Default"],
    )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    wanted = _template_data(spec, ami or "")
    differs = [k for k in ("ImageId", "UserData") if current.get(k) != wanted[k]]
    if ami is None and "ImageId" in differs:
        differs.remove("ImageId")
    if current.get("IamInstanceProfile", {}).get("Name") != spec.instance_profile:
        differs.append("IamInstanceProfile")
    groups = [g for ni in current.get("NetworkInterfaces", []) for g in ni.get("Groups", [])]
    if groups != [spec.security_group]:
        differs.append("NetworkInterfaces")
    return template_id, differs


def ensure_launch_template(run: Run, spec: Capacity, ami: str) -> str:
    data = _template_data(spec, ami)
    template_id, differs = _template_state(run, spec, ami)
    if template_id is None:
        run.call(
            "ec2",
            "create_launch_template",
            LaunchTemplateName=spec.name,
            LaunchTemplateData=data,
            TagSpecifications=[{"ResourceType": "launch-template", "Tags": tags("Key")}],
        )
        run.add("launch template", spec.name, CREATED, f"AMI {ami}")
        return spec.name
    if not differs:
        run.add("launch template", spec.name, EXISTS, f"AMI {ami}")
        return spec.name
    version = run.call(
        "ec2",
        "create_launch_template_version",
        LaunchTemplateId=template_id,
        LaunchTemplateData=data,
    )["LaunchTemplateVersion"]["VersionNumber"]
    run.call(
        "ec2", "modify_launch_template", LaunchTemplateId=template_id, DefaultVersion=str(version)
    )
    run.add(
        "launch template",
        spec.name,
        UPDATED,
        f"version {version}: new {', '.join(differs)} (AMI {ami})",
    )
    return spec.name


def remove_launch_template(place: Place, name: str) -> tuple[str, str]:
    found = absent(
        place.aws,
        "ec2",
        "describe_launch_templates",
        _TEMPLATE_NOT_FOUND,
        LaunchTemplateNames=[name],
    )
    if found is None or not found.get("LaunchTemplates"):
        return ABSENT, ""
    place.call(
        "ec2",
        "delete_launch_template",
        LaunchTemplateId=found["LaunchTemplates"][0]["LaunchTemplateId"],
    )
    return REMOVED, ""


# -- Auto Scaling group ----------------------------------------------------------------------


def _mixed(spec: Capacity) -> dict[str, Any]:
    return {
        "LaunchTemplate": {
            "LaunchTemplateSpecification": {"LaunchTemplateName": spec.name, "Version": "$Default"},
            "Overrides": [{"InstanceType": t} for t in spec.instance_types],
        },
        # All Spot above a zero on-demand base; sessions asking for on-demand use Fargate.
        "InstancesDistribution": {
            "OnDemandBaseCapacity": 0,
            "OnDemandPercentageAboveBaseCapacity": 0,
            "SpotAllocationStrategy": "price-capacity-optimized",
        },
    }


def _group(place: Place, name: str) -> dict[str, Any] | None:
    found = place.call("autoscaling", "describe_auto_scaling_groups", AutoScalingGroupNames=[name])[
        "AutoScalingGroups"
    ]
    return found[0] if found else None


def _group_types(group: dict[str, Any]) -> list[str]:
    overrides = group.get("MixedInstancesPolicy", {}).get("LaunchTemplate", {}).get("Overrides", [])
    return [str(o.get("InstanceType")) for o in overrides]


def ensure_auto_scaling_group(run: Run, spec: Capacity, *, fresh_profile: bool) -> str:
    """The group, parked at zero; its ARN. ``fresh_profile``: the instance profile was just
    created, so AWS may refuse it for some seconds."""
    group = _group(run, spec.name)
    if group is None:
        # Parked at zero: nothing runs (or costs) until a session raises MaxSize, and ECS
        # managed scaling then sets the desired count within it.
        params: dict[str, Any] = {
            "AutoScalingGroupName": spec.name,
            "MinSize": 0,
            "MaxSize": 0,
            "DesiredCapacity": 0,
            "VPCZoneIdentifier": ",".join(spec.subnets),
            "MixedInstancesPolicy": _mixed(spec),
            "CapacityRebalance": True,
            # Managed termination protection needs new instances protected from scale-in.
            "NewInstancesProtectedFromScaleIn": True,
            "Tags": [
                {"Key": TAG_KEY, "Value": TAG_VALUE, "PropagateAtLaunch": True},
                {"Key": "AmazonECSManaged", "Value": "", "PropagateAtLaunch": True},
            ],
        }
        _create_group(run, params, fresh_profile)
        run.add(
            "Auto Scaling group",
            spec.name,
            CREATED,
            f"min=max=desired=0, Spot: {', '.join(spec.instance_types)}",
        )
        created = _group(run, spec.name)
        if created is None:  # eventual consistency: not listed yet right after creation
            raise AwsError(
                f"the new Auto Scaling group {spec.name} is not listed yet: run setup again"
            )
        return str(created["AutoScalingGroupARN"])
    if _group_types(group) != list(spec.instance_types):
        # Sizes are left alone: a running session may have raised them.
        run.call(
            "autoscaling",
            "update_auto_scaling_group",
            AutoScalingGroupName=spec.name,
            MixedInstancesPolicy=_mixed(spec),
        )
        run.add(
            "Auto Scaling group",
            spec.name,
            UPDATED,
            f"instance types {', '.join(spec.instance_types)}",
        )
    else:
        run.add("Auto Scaling group", spec.name, EXISTS, f"Spot: {', '.join(spec.instance_types)}")
    return str(group["AutoScalingGroupARN"])


def _create_group(run: Run, params: dict[str, Any], fresh_profile: bool) -> None:
    # CreateAutoScalingGroup validates the launch template with a dry run, which refuses an
    # instance profile IAM has not propagated to EC2 yet (ValidationError, for some seconds
    # after it was created). Wait it out, only for a profile this run created.
    attempts = IAM_PROPAGATION_ATTEMPTS if fresh_profile else 1
    for attempt in range(1, attempts + 1):
        try:
            run.call("autoscaling", "create_auto_scaling_group", **params)
            return
        except AwsError as exc:
            if exc.code != "ValidationError" or attempt == attempts:
                raise
            logger.info("setup: waiting for the new instance profile to reach EC2 (%s)", exc)
            time.sleep(IAM_PROPAGATION_DELAY)


def remove_auto_scaling_group(place: Place, name: str) -> tuple[str, str]:
    if _group(place, name) is None:
        return ABSENT, ""
    # ForceDelete terminates any instance still running instead of refusing.
    place.call(
        "autoscaling", "delete_auto_scaling_group", AutoScalingGroupName=name, ForceDelete=True
    )
    return REMOVED, "its instances are terminated"


# -- capacity provider -----------------------------------------------------------------------


def _provider(place: Place, name: str) -> dict[str, Any] | None:
    found = place.call("ecs", "describe_capacity_providers", capacityProviders=[name])[
        "capacityProviders"
    ]
    active = [p for p in found if p.get("status") == "ACTIVE"]
    return active[0] if active else None


def group_of_provider(place: Place, name: str) -> str:
    """The Auto Scaling group name behind the capacity provider ``name`` ("" if none)."""
    provider = _provider(place, name)
    arn = str((provider or {}).get("autoScalingGroupProvider", {}).get("autoScalingGroupArn", ""))
    return arn.rsplit("autoScalingGroupName/", 1)[-1] if arn else ""


def ensure_capacity_provider(run: Run, name: str, group_arn: str) -> str:
    provider = _provider(run, name)
    if provider is not None:
        current = provider.get("autoScalingGroupProvider", {}).get("autoScalingGroupArn")
        if current != group_arn:
            raise AwsError(
                f"the ECS capacity provider {name} belongs to another Auto Scaling group "
                f"({current}); delete it or run teardown first"
            )
        run.add("capacity provider", name, EXISTS, "managed scaling")
        return name
    run.call(
        "ecs",
        "create_capacity_provider",
        name=name,
        tags=tags("key"),
        autoScalingGroupProvider={
            "autoScalingGroupArn": group_arn,
            "managedScaling": {
                "status": "ENABLED",
                "targetCapacity": 100,
                "minimumScalingStepSize": 1,
                "maximumScalingStepSize": 10,
            },
            "managedTerminationProtection": "ENABLED",
            "managedDraining": "ENABLED",
        },
    )
    run.add("capacity provider", name, CREATED, "managed scaling, target 100%")
    return name


def remove_capacity_provider(place: Place, cluster: str, name: str) -> tuple[str, str]:
    if _provider(place, name) is None:
        return ABSENT, ""
    # A capacity provider in use by a cluster cannot be deleted: detach it first.
    clusters = place.call("ecs", "describe_clusters", clusters=[cluster])["clusters"]
    for c in clusters:
        if c.get("status") == "ACTIVE" and name in c.get("capacityProviders", []):
            place.call(
                "ecs",
                "put_cluster_capacity_providers",
                cluster=cluster,
                capacityProviders=[p for p in c["capacityProviders"] if p != name],
                defaultCapacityProviderStrategy=[
                    s
                    for s in c.get("defaultCapacityProviderStrategy", [])
                    if s.get("capacityProvider") != name
                ],
            )
    place.call("ecs", "delete_capacity_provider", capacityProvider=name)
    return REMOVED, ""


# -- doctor ----------------------------------------------------------------------------------


def check(place: Place, spec: Capacity) -> str:
    """The capacity provider, its group (the saved instance types) and the launch template
    (profile, group, user data) as setup makes them; the AMI is not compared (setup moves
    it to the newest recommended one)."""
    group_name = group_of_provider(place, spec.name)
    if not group_name:
        raise CheckFailed(f"the ECS capacity provider {spec.name} does not exist")
    group = _group(place, group_name)
    if group is None:
        raise CheckFailed(f"the Auto Scaling group {group_name} does not exist")
    if spec.instance_types and _group_types(group) != list(spec.instance_types):
        raise CheckFailed(
            f"the Auto Scaling group {group_name} launches {', '.join(_group_types(group))}, "
            f"not the profile's {', '.join(spec.instance_types)}"
        )
    template_id, differs = _template_state(place, spec, None)
    if template_id is None:
        raise CheckFailed(f"the launch template {spec.name} does not exist")
    if differs:
        raise CheckFailed(f"the launch template {spec.name} has another {', '.join(differs)}")
    return f"{spec.name}: Spot {', '.join(_group_types(group))}, MaxSize {group.get('MaxSize')}"
