"""The workers' network: the VPC and subnets (chosen, validated), the security group (no
inbound rules), and an S3 gateway VPC endpoint for EC2 workers; ensured, checked, removed.

Why a gateway endpoint, and why only it. Tasks use the ``awsvpc`` network mode on Fargate and
on EC2 alike (one task definition shape, a security group per task, and
``ECS_AWSVPC_BLOCK_IMDS`` keeps tasks away from the instance role). Fargate tasks get a public
IP (``assignPublicIp``) and so reach S3, ECR and CloudWatch in a default VPC, which has an
internet gateway but no NAT. An awsvpc task on EC2 gets no public IP: its own traffic, which
is the worker's S3 reads and writes and nothing else, has no route out. The other traffic of
an EC2 task does not leave through the task's interface: the ECS agent and Docker on the
instance pull the image from ECR, fetch the SSM secret and ship the awslogs stream over the
instance's own interface, which has a public IP (the launch template asks for one). So the
one missing route is S3's, and an S3 *gateway* endpoint gives it for free (no hourly or
per-GB charge) on the subnets' route tables.

The alternatives, rejected: interface endpoints for ecr.api, ecr.dkr, logs and ssm would give
tasks a private route to everything but cost about $0.01 per hour per endpoint per AZ
(~$90 a month for four endpoints in three AZs) whether or not anything runs, and are not
needed, see above; a NAT gateway costs more still; ``bridge``/``host`` network mode would
route task traffic through the instance's public IP with no endpoint and no per-instance ENI
limit, but gives up per-task security groups, needs a second task-definition shape, and
exposes the instance metadata service (the instance role) to every task unless the hop limit
is pinned. Trade-off kept: awsvpc on EC2 packs at most (ENIs per instance - 1) tasks per
instance, which the launcher must count.

The endpoint is created only for EC2 capacity: it changes how the whole VPC reaches S3 in
this region (requests arrive from private addresses, so bucket policies of other workloads
that test ``aws:SourceIp`` would stop matching), which Fargate-only setups do not need. It is
tagged with the cluster that created it and removed by that cluster's teardown; an S3 gateway
endpoint someone else made is used as it is, and never removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
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
    tagged,
    tags,
)
from starburst_executor.errors import AwsCredentialsError, AwsError, AwsPermissionError

__all__ = [
    "CLUSTER_TAG",
    "MAX_SUBNETS",
    "Network",
    "check",
    "check_endpoint",
    "choose",
    "ensure_endpoint",
    "ensure_security_group",
    "remove_endpoint",
    "remove_security_group",
]

# ECS takes at most 16 subnets in a task's awsvpcConfiguration (RunTask).
MAX_SUBNETS = 16
CLUSTER_TAG = "starburst:cluster"


@dataclass(frozen=True)
class Network:
    """The VPC and the subnets workers run in."""

    vpc_id: str
    subnets: tuple[str, ...]


def _spread(subnets: Sequence[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """At most ``limit`` subnets, taken in turn from each availability zone."""
    by_zone: dict[str, list[dict[str, Any]]] = {}
    for s in subnets:
        by_zone.setdefault(str(s.get("AvailabilityZone", "")), []).append(s)
    turns = zip_longest(*(by_zone[z] for z in sorted(by_zone)))
    picked = [s for turn in turns for s in turn if s is not None][:limit]
    return sorted(picked, key=lambda s: (s.get("AvailabilityZone", ""), s["SubnetId"]))


def choose(run: Run, vpc_id: str | None, subnet_ids: Sequence[str] = ()) -> Network:
    """The VPC (the default one unless named) and its subnets (all, unless named).

    Raises:
        ValueError: a named subnet does not exist or is in another VPC.
        AwsError: no default VPC, or a VPC without subnets.
    """
    if subnet_ids:
        found = absent(
            run.aws,
            "ec2",
            "describe_subnets",
            ["InvalidSubnetID.NotFound", "InvalidSubnetID.Malformed"],
            SubnetIds=list(subnet_ids),
        )
        listed = {str(s["SubnetId"]): s for s in (found or {}).get("Subnets", [])}
        missing = [s for s in subnet_ids if s not in listed]
        if missing:
            raise ValueError(f"no subnet {', '.join(missing)} in {run.region}")
        vpcs = {str(s["VpcId"]) for s in listed.values()}
        vpc_id = vpc_id or (vpcs.pop() if len(vpcs) == 1 else None)
        foreign = [s for s, d in listed.items() if d["VpcId"] != vpc_id]
        if vpc_id is None or foreign:
            raise ValueError(
                f"the subnets must all be in {'the VPC ' + vpc_id if vpc_id else 'one VPC'}: "
                + ", ".join(f"{s} is in {listed[s]['VpcId']}" for s in foreign or listed)
            )
        candidates = list(listed.values())
    else:
        if vpc_id is None:
            vpcs_found = run.call(
                "ec2", "describe_vpcs", Filters=[{"Name": "isDefault", "Values": ["true"]}]
            )["Vpcs"]
            if not vpcs_found:
                raise AwsError(
                    f"{run.region} has no default VPC: pass the VPC for the workers "
                    "(vpc_id=..., `starburst setup --vpc-id VPC --subnets a,b,c`)"
                )
            vpc_id = str(vpcs_found[0]["VpcId"])
        candidates = list(
            run.aws.paginate(
                "ec2",
                "describe_subnets",
                "Subnets",
                Filters=[{"Name": "vpc-id", "Values": [vpc_id]}],
            )
        )
        if not candidates:
            raise AwsError(f"the VPC {vpc_id} has no subnets: workers need at least one")
    chosen = _spread(candidates, MAX_SUBNETS)
    ids = tuple(str(s["SubnetId"]) for s in chosen)
    zones = len({s.get("AvailabilityZone") for s in chosen})
    detail = f"{len(ids)} subnets in {zones} availability zone(s)"
    if len(candidates) > MAX_SUBNETS:
        detail += f" (kept {MAX_SUBNETS} of {len(candidates)}: ECS takes at most 16 per task)"
        run.notes.append(
            f"the VPC {vpc_id} has {len(candidates)} subnets; workers use {MAX_SUBNETS} of them, "
            f"spread over {zones} availability zones (ECS takes at most {MAX_SUBNETS} per task)"
        )
    run.add("subnets", vpc_id, EXISTS, detail)
    return Network(vpc_id, ids)


# -- security group --------------------------------------------------------------------------


def _group(place: Place, *, group_id: str = "", name: str = "", vpc_id: str = "") -> Any:
    if group_id:
        found = absent(
            place.aws,
            "ec2",
            "describe_security_groups",
            ["InvalidGroup.NotFound", "InvalidGroupId.NotFound", "InvalidGroupId.Malformed"],
            GroupIds=[group_id],
        )
    else:
        found = place.call(
            "ec2",
            "describe_security_groups",
            Filters=[
                {"Name": "group-name", "Values": [name]},
                {"Name": "vpc-id", "Values": [vpc_id]},
            ],
        )
    groups = (found or {}).get("SecurityGroups", [])
    return groups[0] if groups else None


def ensure_security_group(run: Run, name: str, vpc_id: str) -> str:
    """The workers' group in ``vpc_id``, with no inbound rules; its id."""
    group = _group(run, name=name, vpc_id=vpc_id)
    if group is None:
        # A new group has no inbound rules and allows all outbound traffic, which is what
        # workers need: they only call out (S3, ECR, logs); nothing connects to them.
        group_id = str(
            run.call(
                "ec2",
                "create_security_group",
                GroupName=name,
                VpcId=vpc_id,
                Description="starburst workers: no inbound traffic",
                TagSpecifications=[{"ResourceType": "security-group", "Tags": tags("Key")}],
            )["GroupId"]
        )
        run.add("security group", group_id, CREATED, f"{name}, no inbound rules")
        return group_id
    group_id = str(group["GroupId"])
    inbound = group.get("IpPermissions", [])
    if inbound:
        run.call("ec2", "revoke_security_group_ingress", GroupId=group_id, IpPermissions=inbound)
        run.add(
            "security group", group_id, UPDATED, f"{name}: removed {len(inbound)} inbound rule(s)"
        )
    else:
        run.add("security group", group_id, EXISTS, f"{name}, no inbound rules")
    return group_id


def remove_security_group(place: Place, group_id: str) -> tuple[str, str]:
    try:
        place.call("ec2", "delete_security_group", GroupId=group_id)
    except (AwsCredentialsError, AwsPermissionError):
        raise
    except AwsError as exc:
        if exc.code in ("InvalidGroup.NotFound", "InvalidGroupId.NotFound"):
            return ABSENT, ""
        if exc.code == "DependencyViolation":
            raise AwsError(
                f"the security group {group_id} is still attached to network interfaces of "
                "stopping workers: run teardown again in a few minutes",
                exc.code,
            ) from exc
        raise
    return REMOVED, ""


# -- S3 gateway endpoint ---------------------------------------------------------------------


def _service(place: Place) -> str:
    return f"com.amazonaws.{place.region}.s3"


def _route_tables(place: Place, network: Network) -> list[str]:
    """The route tables of the subnets: each one's own, else the VPC's main table."""
    tables = place.call(
        "ec2", "describe_route_tables", Filters=[{"Name": "vpc-id", "Values": [network.vpc_id]}]
    )["RouteTables"]
    own: dict[str, str] = {}
    main = ""
    for table in tables:
        for association in table.get("Associations", []):
            if association.get("Main"):
                main = str(table["RouteTableId"])
            elif association.get("SubnetId"):
                own[str(association["SubnetId"])] = str(table["RouteTableId"])
    needed = {own.get(s, main) for s in network.subnets}
    return sorted(t for t in needed if t)


def _endpoints(place: Place, vpc_id: str) -> list[dict[str, Any]]:
    found = place.call(
        "ec2",
        "describe_vpc_endpoints",
        Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]},
            {"Name": "service-name", "Values": [_service(place)]},
        ],
    )["VpcEndpoints"]
    return [
        e
        for e in found
        if e.get("VpcEndpointType", "Gateway") == "Gateway"
        and str(e.get("State", "")).lower() not in ("deleted", "deleting", "failed", "rejected")
    ]


def _endpoint_state(
    place: Place, network: Network, cluster: str
) -> tuple[dict[str, Any] | None, list[str]]:
    """(the S3 gateway endpoint in the VPC, preferring this cluster's, or None; the needed
    route tables it does not cover)."""
    needed = _route_tables(place, network)
    endpoints = _endpoints(place, network.vpc_id)
    covered: set[str] = {t for e in endpoints for t in e.get("RouteTableIds", [])}
    mine = [e for e in endpoints if tagged(e.get("Tags", []), CLUSTER_TAG, cluster)]
    candidates = mine or endpoints
    return (candidates[0] if candidates else None), [t for t in needed if t not in covered]


def ensure_endpoint(run: Run, network: Network, cluster: str) -> str:
    """An S3 gateway endpoint on the subnets' route tables (see the module note); its id."""
    endpoint, missing = _endpoint_state(run, network, cluster)
    if endpoint is None:
        created = run.call(
            "ec2",
            "create_vpc_endpoint",
            VpcEndpointType="Gateway",
            VpcId=network.vpc_id,
            ServiceName=_service(run),
            RouteTableIds=missing,
            TagSpecifications=[
                {"ResourceType": "vpc-endpoint", "Tags": tags("Key", **{CLUSTER_TAG: cluster})}
            ],
        )["VpcEndpoint"]
        endpoint_id = str(created["VpcEndpointId"])
        run.add(
            "S3 endpoint",
            endpoint_id,
            CREATED,
            f"gateway on {', '.join(missing)}: EC2 workers reach S3",
        )
        return endpoint_id
    endpoint_id = str(endpoint["VpcEndpointId"])
    ours = tagged(endpoint.get("Tags", []), CLUSTER_TAG, cluster)
    if missing:
        run.call("ec2", "modify_vpc_endpoint", VpcEndpointId=endpoint_id, AddRouteTableIds=missing)
        run.add("S3 endpoint", endpoint_id, UPDATED, f"added route tables {', '.join(missing)}")
    else:
        run.add(
            "S3 endpoint", endpoint_id, EXISTS, "gateway" + ("" if ours else ", not ours: kept")
        )
    return endpoint_id


def check_endpoint(place: Place, network: Network, cluster: str) -> str:
    endpoint, missing = _endpoint_state(place, network, cluster)
    if endpoint is None:
        raise CheckFailed(
            f"the VPC {network.vpc_id} has no S3 gateway endpoint: EC2 workers (awsvpc tasks "
            "get no public IP) cannot reach S3"
        )
    if missing:
        raise CheckFailed(
            f"the S3 gateway endpoint {endpoint['VpcEndpointId']} is not on the route "
            f"table(s) {', '.join(missing)} of the workers' subnets"
        )
    return f"S3 gateway endpoint {endpoint['VpcEndpointId']}"


def remove_endpoint(place: Place, vpc_id: str, cluster: str) -> tuple[str, str]:
    """Delete the S3 gateway endpoint this cluster's setup created (tagged), if any."""
    if not vpc_id:
        return ABSENT, "the profile names no VPC"
    mine = [e for e in _endpoints(place, vpc_id) if tagged(e.get("Tags", []), CLUSTER_TAG, cluster)]
    if not mine:
        return ABSENT, ""
    ids = [str(e["VpcEndpointId"]) for e in mine]
    answer = place.call("ec2", "delete_vpc_endpoints", VpcEndpointIds=ids)
    failed = answer.get("Unsuccessful", [])
    if failed:
        error = failed[0].get("Error", {})
        raise AwsError(
            f"could not delete the S3 endpoint {failed[0].get('ResourceId')}: "
            f"{error.get('Code')} {error.get('Message')}",
            str(error.get("Code", "")),
        )
    return REMOVED, ", ".join(ids)


# -- doctor ----------------------------------------------------------------------------------


def check(place: Place, subnets: Sequence[str], group_id: str) -> str:
    """The subnets exist in one VPC (at most 16), the group has no inbound rules and lets
    workers call out."""
    if not subnets or not group_id:
        raise CheckFailed("the profile names no subnets or no security group")
    if len(subnets) > MAX_SUBNETS:
        raise CheckFailed(f"the profile names {len(subnets)} subnets; ECS takes at most 16")
    found = absent(
        place.aws,
        "ec2",
        "describe_subnets",
        ["InvalidSubnetID.NotFound", "InvalidSubnetID.Malformed"],
        SubnetIds=list(subnets),
    )
    if found is None or len(found.get("Subnets", [])) != len(subnets):
        raise CheckFailed(f"some of the subnets {', '.join(subnets)} no longer exist")
    group = _group(place, group_id=group_id)
    if group is None:
        raise CheckFailed(f"the security group {group_id} does not exist")
    if {s["VpcId"] for s in found["Subnets"]} != {group.get("VpcId")}:
        raise CheckFailed(f"the subnets and the security group {group_id} are in different VPCs")
    if group.get("IpPermissions"):
        raise CheckFailed(
            f"the security group {group_id} allows inbound traffic; workers accept no connections"
        )
    if not group.get("IpPermissionsEgress"):
        raise CheckFailed(
            f"the security group {group_id} allows no outbound traffic: workers could not "
            "reach S3 or ECR",
            f"allow outbound HTTPS in {group_id} (setup creates it so)",
        )
    return f"{len(subnets)} subnets; security group {group_id} has no inbound rules"
