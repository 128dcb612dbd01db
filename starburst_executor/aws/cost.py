"""What a session's workers cost: the estimate before launch, the guardrails, the bill after.

- Rates: :func:`fargate_rates` and :func:`ec2_rate` ask the AWS Pricing API (and, for EC2
  Spot, the Spot price history) and fall back to the dated built-in table below when it cannot
  answer (no ``pricing:GetProducts`` permission, no network, moto). Every figure says where it
  came from.
- :func:`estimate` -> :class:`CostEstimate`: ``str()`` is one readable line; the fields are data.
- :func:`check_budget`: ``max_hourly_cost`` refuses to launch (:class:`CostLimitError`),
  ``cost_alert_threshold`` returns a warning line.
- the bill after the run is :mod:`starburst_executor.aws.billing`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

from starburst_executor.aws.client import Aws
from starburst_executor.aws.options import EcsOptions
from starburst_executor.errors import AwsError, CostLimitError
from starburst_executor.stores.counting import S3_REQUEST_PRICES, request_cost

__all__ = [
    "DEFAULT_EC2_INSTANCE_TYPE",
    "PRICING_API",
    "TABLE_DATE",
    "TABLE_SOURCE",
    "PUBLIC_IPV4_HOUR",
    "S3_GET_PER_1000",
    "S3_PUT_PER_1000",
    "S3_REQUESTS_PER_BATCH",
    "CostEstimate",
    "Ec2Packing",
    "check_budget",
    "ec2_packing",
    "ec2_rate",
    "estimate",
    "fargate_rates",
    "s3_request_cost",
    "instance_enis",
    "instance_shape",
    "tasks_per_instance",
]

logger = logging.getLogger(__name__)

TABLE_DATE = "2026-11"
TABLE_SOURCE = f"built-in table, {TABLE_DATE}"
PRICING_API = "AWS Pricing API"
SPOT_HISTORY = "EC2 Spot price history"

# The instance type assumed for launch_type="EC2" when none is given; it must match the
# launch template that `starburst setup --ec2` creates.
DEFAULT_EC2_INSTANCE_TYPE = "c7a.xlarge"


class _FargateRow(NamedTuple):
    vcpu_hour: float
    gb_hour: float
    spot_vcpu_hour: float
    spot_gb_hour: float


# Fargate, Linux/x86, USD per vCPU-hour and per GB-hour, recorded 2026-11 from
# https://aws.amazon.com/fargate/pricing/ (On-Demand; unchanged since the January 2019 price
# cut). Fargate Spot has no fixed price and is not in the Pricing API: AWS's page shows the
# current figure, which moves with spare capacity. The Spot columns are the ~70 %-off level
# that page has shown through 2025-2026, rounded; refresh them with the On-Demand ones.
_FARGATE: dict[str, _FargateRow] = {
    "us-east-1": _FargateRow(0.04048, 0.004445, 0.01214, 0.001334),
    "us-east-2": _FargateRow(0.04048, 0.004445, 0.01214, 0.001334),
    "us-west-2": _FargateRow(0.04048, 0.004445, 0.01214, 0.001334),
    "eu-west-1": _FargateRow(0.04656, 0.00511, 0.01397, 0.001533),
    "eu-central-1": _FargateRow(0.04656, 0.00511, 0.01397, 0.001533),
    "ap-southeast-2": _FargateRow(0.04856, 0.00532, 0.01457, 0.001596),
}
# Fargate Spot for a region missing above: On-Demand times this (the usual ~70 % discount).
_FARGATE_SPOT_FRACTION = 0.30
# Fargate Linux/ARM64 (Graviton) On-Demand is 20 % below x86 in every region of the pricing
# page (us-east-1: $0.03238 per vCPU-hour, $0.00356 per GB-hour, recorded 2026-11). Fargate
# Spot does not run ARM64.
_FARGATE_ARM_FRACTION = 0.80

# S3 Standard request prices live with the request counter (stores/counting.py, by region):
# class A (PUT, COPY, POST, LIST) and class B (GET and the rest) per 1,000 in us-east-1.
S3_PUT_PER_1000, S3_GET_PER_1000 = S3_REQUEST_PRICES["us-east-1"]
# A public IPv4 address costs $0.005 per hour since 2024-02 (VPC pricing page); a Fargate task
# with assignPublicIp ENABLED holds one for its whole life.
PUBLIC_IPV4_HOUR = 0.005

# EC2 On-Demand, Linux, shared tenancy, USD per instance-hour in us-east-1, recorded 2026-11
# from https://aws.amazon.com/ec2/pricing/on-demand/. us-east-2 and us-west-2 charge the same
# for these families; the other regions are approximated by _EC2_REGION_FACTOR.
_EC2_US_EAST_1: dict[str, float] = {
    "c7a.xlarge": 0.20532,
    "c7a.2xlarge": 0.41064,
    "c7a.4xlarge": 0.82128,
    "c7i.xlarge": 0.1785,
    "c7i.2xlarge": 0.357,
    "c7i.4xlarge": 0.714,
    "m7a.xlarge": 0.23184,
    "m7a.2xlarge": 0.46368,
    "m7i.xlarge": 0.2016,
    "m7i.2xlarge": 0.4032,
    "m7i.4xlarge": 0.8064,
    "r7i.xlarge": 0.2646,
    "r7i.2xlarge": 0.5292,
    "c8a.xlarge": 0.21558,
}
_EC2_REGION_FACTOR: dict[str, float] = {
    "us-east-1": 1.0,
    "us-east-2": 1.0,
    "us-west-2": 1.0,
    "eu-west-1": 1.12,
    "eu-central-1": 1.15,
    "ap-southeast-2": 1.26,
}
# EC2 Spot when the Spot price history cannot be read: On-Demand times this. Spot discounts
# for these families have mostly sat between 55 % and 70 %; 0.40 errs on the expensive side.
_EC2_SPOT_FRACTION = 0.40

# vCPUs and memory (MiB) of the types above (AWS instance type pages); other types are asked
# from ec2:DescribeInstanceTypes.
_SHAPES: dict[str, tuple[int, int]] = {
    "c7a.xlarge": (4, 8192),
    "c7a.2xlarge": (8, 16384),
    "c7a.4xlarge": (16, 32768),
    "c7i.xlarge": (4, 8192),
    "c7i.2xlarge": (8, 16384),
    "c7i.4xlarge": (16, 32768),
    "m7a.xlarge": (4, 16384),
    "m7a.2xlarge": (8, 32768),
    "m7i.xlarge": (4, 16384),
    "m7i.2xlarge": (8, 32768),
    "m7i.4xlarge": (16, 65536),
    "r7i.xlarge": (4, 32768),
    "r7i.2xlarge": (8, 65536),
    "c8a.xlarge": (4, 8192),
}
# Network interfaces of the types above (EC2 instance type pages, "Maximum network
# interfaces"); other types are asked from ec2:DescribeInstanceTypes (NetworkInfo).
_ENIS: dict[str, int] = {
    "c7a.xlarge": 4,
    "c7a.2xlarge": 4,
    "c7a.4xlarge": 8,
    "c7i.xlarge": 4,
    "c7i.2xlarge": 4,
    "c7i.4xlarge": 8,
    "m7a.xlarge": 4,
    "m7a.2xlarge": 4,
    "m7i.xlarge": 4,
    "m7i.2xlarge": 4,
    "m7i.4xlarge": 8,
    "r7i.xlarge": 4,
    "r7i.2xlarge": 4,
    "c8a.xlarge": 4,
}
# The ECS agent registers less memory than the instance has (kernel and platform overhead: AWS's
# "Container instance memory management" page shows an 8 GiB m4.large registering 7985 MiB).
# 94 % leaves room for the agent too, so three 2 GB workers fit on an 8 GiB instance, not four:
# a fourth would wait for a second instance, and the estimate counts that instance.
_ECS_MEMORY_FRACTION = 0.94

# S3 requests of a running session, for the estimate before launch and for the bill of a
# session whose processes did not count their requests (sessions count them since usage.py;
# the counted figures replace these). Two parts, both assumptions, named here:
# - idle polling (S3_*_PER_*_HOUR): an idle worker lists the batches every poll interval (2 s
#   on S3), reads the control record every 4 s and scans the claims every half lease (about
#   120 times an hour); the client lists completions every poll interval while it waits;
# - S3_REQUESTS_PER_BATCH, about 8 per batch: 5 class A (upload the batch, claim it, write its
#   result and its completion event, close the claim) and 3 class B (the worker reads the
#   batch, the client the result, and one read of the claim or control record). Measured on
#   SeaweedFS through a counting proxy (tests/test_request_usage.py prints it): 5 to 10.
S3_LIST_PER_WORKER_HOUR = 3600 / 2.0 + 120
S3_GET_PER_WORKER_HOUR = 3600 / 4.0
S3_LIST_PER_CLIENT_HOUR = 3600 / 2.0
S3_PUTS_PER_BATCH = 5
S3_GETS_PER_BATCH = 3
S3_REQUESTS_PER_BATCH = S3_PUTS_PER_BATCH + S3_GETS_PER_BATCH

# Fargate and Linux EC2 both bill per second with a one-minute minimum.
_MINIMUM_BILLED_SECONDS = 60.0

_FARGATE_VCPU = re.compile(r"^(?:[A-Z0-9]+-)?Fargate-vCPU-Hours:perCPU$")
_FARGATE_GB = re.compile(r"^(?:[A-Z0-9]+-)?Fargate-GB-Hours$")
_FARGATE_ARM_VCPU = re.compile(r"^(?:[A-Z0-9]+-)?Fargate-ARM-vCPU-Hours:perCPU$")
_FARGATE_ARM_GB = re.compile(r"^(?:[A-Z0-9]+-)?Fargate-ARM-GB-Hours$")


# --------------------------------------------------------------------------- rates


def fargate_rates(
    aws: Aws, region: str, spot: bool, architecture: str = "X86_64"
) -> tuple[float, float, str]:
    """Fargate Linux rates in ``region``: ``(usd_per_vcpu_hour, usd_per_gb_hour, source)``.

    On-Demand rates come from the Pricing API (``AmazonECS``), else from the built-in table.
    Fargate Spot prices are not published by any API, so Spot always comes from the table
    (and the source says so). ``architecture="ARM64"``: the Graviton rates (On-Demand only:
    Fargate Spot does not run ARM64, so ``spot`` is ignored for it).

    Never raises for an AWS failure: the table answers instead (the reason is logged).
    """
    arm = architecture.upper() == "ARM64"
    if spot and not arm:
        row = _FARGATE.get(region)
        if row is not None:
            return row.spot_vcpu_hour, row.spot_gb_hour, f"{TABLE_SOURCE} (Fargate Spot)"
        vcpu, gb, source = fargate_rates(aws, region, False)
        return (
            vcpu * _FARGATE_SPOT_FRACTION,
            gb * _FARGATE_SPOT_FRACTION,
            f"{source} x {_FARGATE_SPOT_FRACTION:g} (typical Fargate Spot discount)",
        )
    try:
        found = _fargate_from_api(aws, region, arm)
    except AwsError as exc:
        logger.info(
            "the Pricing API did not answer for Fargate in %s (%s): using the %s",
            region,
            exc.code or exc,
            TABLE_SOURCE,
        )
        found = None
    if found is not None:
        return found[0], found[1], PRICING_API
    factor, note = (_FARGATE_ARM_FRACTION, " (ARM64: x86 x 0.8)") if arm else (1.0, "")
    row = _FARGATE.get(region)
    if row is not None:
        return row.vcpu_hour * factor, row.gb_hour * factor, TABLE_SOURCE + note
    row = _FARGATE["us-east-1"]
    return (
        row.vcpu_hour * factor,
        row.gb_hour * factor,
        f"{TABLE_SOURCE}, us-east-1 figures: none for {region}{note}",
    )


def ec2_rate(aws: Aws, region: str, instance_type: str, spot: bool) -> tuple[float, str]:
    """The hourly price of one Linux ``instance_type`` in ``region``: ``(usd_per_hour, source)``.

    On-Demand: the Pricing API (``AmazonEC2``), else the built-in table. Spot: the median over
    Availability Zones of the latest ``ec2:DescribeSpotPriceHistory`` price (read in the
    client's region), else On-Demand times a typical Spot fraction (stated in the source).

    Raises:
        ValueError: neither the Pricing API nor the table knows ``instance_type``.
    """
    try:
        price = _ec2_from_api(aws, region, instance_type)
    except AwsError as exc:
        logger.info(
            "the Pricing API did not answer for %s in %s (%s): using the %s",
            instance_type,
            region,
            exc.code or exc,
            TABLE_SOURCE,
        )
        price = None
    if price is not None:
        on_demand, source = price, PRICING_API
    elif instance_type in _EC2_US_EAST_1:
        factor = _EC2_REGION_FACTOR.get(region)
        on_demand = _EC2_US_EAST_1[instance_type] * (factor or max(_EC2_REGION_FACTOR.values()))
        source = TABLE_SOURCE if factor == 1.0 else f"{TABLE_SOURCE}, regional estimate"
    else:
        known = ", ".join(sorted(_EC2_US_EAST_1))
        raise ValueError(
            f"cannot price {instance_type}: the AWS Pricing API did not answer (allow "
            f"pricing:GetProducts to your credentials) and the built-in table only knows {known}"
        )
    if not spot:
        return on_demand, source
    if region == aws.region:
        try:
            spot_price = _spot_median(aws, instance_type)
        except AwsError as exc:
            logger.info(
                "no Spot price history for %s in %s (%s)", instance_type, region, exc.code or exc
            )
            spot_price = None
        if spot_price is not None:
            return spot_price, f"{SPOT_HISTORY}, median of Availability Zones"
    return (
        on_demand * _EC2_SPOT_FRACTION,
        f"{source} x {_EC2_SPOT_FRACTION:g} (typical Spot discount)",
    )


def instance_shape(aws: Aws, instance_type: str) -> tuple[int, int]:
    """``(vcpus, memory_mib)`` of an EC2 instance type: the table, else DescribeInstanceTypes.

    Raises:
        ValueError: EC2 does not know ``instance_type``.
    """
    if instance_type in _SHAPES:
        return _SHAPES[instance_type]
    found = _describe_instance_type(aws, instance_type)
    return int(found["VCpuInfo"]["DefaultVCpus"]), int(found["MemoryInfo"]["SizeInMiB"])


def instance_enis(aws: Aws, instance_type: str) -> int:
    """How many network interfaces an EC2 instance type supports: the table, else
    ``ec2:DescribeInstanceTypes`` (``NetworkInfo.MaximumNetworkInterfaces``).

    Raises:
        ValueError: EC2 does not know ``instance_type``.
    """
    if instance_type in _ENIS:
        return _ENIS[instance_type]
    found = _describe_instance_type(aws, instance_type)
    return int(found.get("NetworkInfo", {}).get("MaximumNetworkInterfaces", 2))


def _describe_instance_type(aws: Aws, instance_type: str) -> dict[str, Any]:
    """``ec2:DescribeInstanceTypes`` of one type.

    Raises:
        ValueError: EC2 does not know ``instance_type``.
    """
    try:
        types = aws.call("ec2", "describe_instance_types", InstanceTypes=[instance_type])[
            "InstanceTypes"
        ]
    except AwsError as exc:
        if exc.code in ("InvalidInstanceType", "InvalidParameterValue"):
            raise ValueError(f"EC2 has no instance type {instance_type!r}") from exc
        raise
    if not types:
        raise ValueError(f"EC2 has no instance type {instance_type!r}")
    return dict(types[0])


def tasks_per_instance(
    instance_vcpus: int, instance_mib: int, cpu: float, memory_mib: int, enis: int | None = None
) -> int:
    """How many workers of ``cpu`` vCPUs and ``memory_mib`` fit on one container instance.

    ECS places by registered CPU units (1,024 per vCPU) and registered memory, which is less
    than the instance's (see ``_ECS_MEMORY_FRACTION``). With ``enis`` (the type's network
    interfaces), also by ENIs: each awsvpc task takes one, and the instance keeps its primary
    one, so ``enis - 1`` tasks fit without ENI trunking (ECS developer guide, "Amazon ECS
    task networking options for EC2": trunking needs an opt-in and Nitro types).
    """
    by_cpu = int(instance_vcpus * 1024 // round(cpu * 1024))
    by_memory = int(instance_mib * _ECS_MEMORY_FRACTION) // memory_mib
    fit = min(by_cpu, by_memory)
    return fit if enis is None else min(fit, max(0, enis - 1))


@dataclass(frozen=True)
class Ec2Packing:
    """How workers pack onto the EC2 capacity provider's instances.

    Attributes:
        instance_type: the type packing is computed for (the smallest fit of those setup
            saved: the conservative one); ``vcpus``, ``memory_mib``, ``enis`` its shape.
        per_instance: workers per instance (CPU, memory and network interfaces).
    """

    instance_type: str
    vcpus: int
    memory_mib: int
    enis: int
    per_instance: int


def ec2_packing(aws: Aws, options: EcsOptions) -> Ec2Packing:
    """The packing of ``options``' workers on the instance types setup saved
    (``options.instance_types``), else ``options.instance_type``, else
    :data:`DEFAULT_EC2_INSTANCE_TYPE`: the type holding the fewest workers.

    Raises:
        ValueError: EC2 does not know an instance type.
    """
    names = options.instance_types or (options.instance_type or DEFAULT_EC2_INSTANCE_TYPE,)
    packings = []
    for name in names:
        vcpus, mib = instance_shape(aws, name)
        enis = instance_enis(aws, name)
        fit = tasks_per_instance(vcpus, mib, options.cpu, options.memory_mib, enis)
        packings.append(Ec2Packing(name, vcpus, mib, enis, fit))
    return min(packings, key=lambda p: (p.per_instance, p.vcpus))


def _price_list(
    aws: Aws, service: str, filters: dict[str, str], contains: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    spec = [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()]
    spec += [{"Type": "CONTAINS", "Field": k, "Value": v} for k, v in (contains or {}).items()]
    items = aws.paginate(
        "pricing",
        "get_products",
        "PriceList",
        ServiceCode=service,
        Filters=spec,
        FormatVersion="aws_v1",
    )
    # Each item is a JSON document as a string (older SDKs: already decoded).
    return [json.loads(item) if isinstance(item, str) else item for item in items]


def _on_demand_hourly(product: dict[str, Any]) -> float | None:
    """The USD price per hour of a price-list product's On-Demand term (``None`` if none)."""
    for term in product.get("terms", {}).get("OnDemand", {}).values():
        for dimension in term.get("priceDimensions", {}).values():
            unit = str(dimension.get("unit", "")).lower()
            usd = dimension.get("pricePerUnit", {}).get("USD")
            if usd is None or not ("hr" in unit or "hour" in unit):
                continue
            price = float(usd)
            if price > 0:
                return price
    return None


def _fargate_from_api(aws: Aws, region: str, arm: bool = False) -> tuple[float, float] | None:
    # One query for every Fargate usage type of the region; the usage type carries a region
    # prefix ("USE1-", "EU-", ...), so it is matched by pattern rather than spelled out.
    products = _price_list(
        aws, "AmazonECS", {"regionCode": region}, contains={"usagetype": "Fargate-"}
    )
    vcpu: list[float] = []
    gb: list[float] = []
    for product in products:
        usage = str(product.get("product", {}).get("attributes", {}).get("usagetype", ""))
        price = _on_demand_hourly(product)
        if price is None:
            continue
        if (_FARGATE_ARM_VCPU if arm else _FARGATE_VCPU).match(usage):
            vcpu.append(price)
        elif (_FARGATE_ARM_GB if arm else _FARGATE_GB).match(usage):
            gb.append(price)
    if not vcpu or not gb:
        kind = "ARM64" if arm else "x86"
        logger.info("the Pricing API has no Fargate Linux/%s rates for %s", kind, region)
        return None
    # Should there ever be several, the highest keeps the budget guard on the safe side.
    return max(vcpu), max(gb)


def _ec2_from_api(aws: Aws, region: str, instance_type: str) -> float | None:
    products = _price_list(
        aws,
        "AmazonEC2",
        {
            "regionCode": region,
            "instanceType": instance_type,
            "tenancy": "Shared",
            "operatingSystem": "Linux",
            "preInstalledSw": "NA",
            "capacitystatus": "Used",
        },
    )
    prices = [p for p in map(_on_demand_hourly, products) if p is not None]
    if not prices:
        logger.info(
            "the Pricing API has no Linux On-Demand price for %s in %s", instance_type, region
        )
        return None
    return max(prices)


def _spot_median(aws: Aws, instance_type: str) -> float | None:
    # With a StartTime of now, AWS returns the price in effect per Availability Zone (and
    # product description); older records can still come back, so keep the latest per zone.
    history = aws.call(
        "ec2",
        "describe_spot_price_history",
        InstanceTypes=[instance_type],
        ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
        StartTime=datetime.now(timezone.utc),
    ).get("SpotPriceHistory", [])
    latest: dict[str, tuple[Any, float]] = {}
    for record in history:
        zone, when, price = (
            record["AvailabilityZone"],
            record["Timestamp"],
            float(record["SpotPrice"]),
        )
        if zone not in latest or when > latest[zone][0]:
            latest[zone] = (when, price)
    prices = [price for _, price in latest.values() if price > 0]
    return float(statistics.median(prices)) if prices else None


# --------------------------------------------------------------------------- estimate


def _usd(amount: float) -> str:
    if amount == 0 or amount >= 0.01:
        return f"${amount:,.2f}"
    if amount >= 0.0001:
        return f"${amount:.4f}"
    return "under $0.0001"


def _rate(amount: float) -> str:
    """A per-hour rate: three decimals so small per-worker rates stay readable."""
    return f"${amount:,.3f}" if amount >= 0.001 else _usd(amount)


def _hours(hours: float) -> str:
    if hours >= 10:
        return f"{hours:,.0f}"
    return f"{hours:.1f}" if hours >= 0.1 else f"{hours:.2f}"


def _duration(hours: float) -> str:
    if hours < 1:
        minutes = max(1, round(hours * 60))
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return "1 hour" if hours == 1 else f"{_hours(hours)} hours"


def s3_request_cost(put_like: float, get_like: float, region: str | None = None) -> float:
    """USD for S3 requests: PUT/COPY/POST/LIST and GET-class counts at the Standard prices
    of ``region`` (us-east-1's by default)."""
    return request_cost(put_like, get_like, region)


@dataclass(frozen=True)
class CostEstimate:
    """What a session's workers are expected to cost.

    Attributes:
        workers: how many workers run at once, which the estimate prices (at most the asked
            ``requested``: the vCPU quota runs the rest in waves, never all together).
        per_worker_hour: USD per worker-hour: compute (EC2: the instance price shared by the
            workers one instance holds) plus the public IPv4 address of a Fargate task.
        hourly: USD per hour for all of them (EC2: whole instances), with public IPv4
            addresses and an estimate of the S3 requests of polling.
        expected_hours: how long the run is expected to take, if known; ``total`` is then
            ``hourly * expected_hours``.
        source: where the rates came from ("AWS Pricing API", "built-in table, 2026-11" ...).
        launch_type: "FARGATE" or "EC2"; ``spot``: Spot capacity.
        region, cpu, memory_mib: the worker size and where it runs.
        instance_type, instances: EC2 only: the instance type and how many are needed.
        requested: the workers asked for (``max_workers``).
        ipv4_hourly: of ``hourly``, public IPv4 addresses ($0.005 an hour each).
        s3_hourly: of ``hourly``, S3 requests (polling; an estimate: per-batch requests come
            on top and depend on the work).
        architecture: "X86_64" or "ARM64".
        s3_per_batch: USD of S3 requests per batch (``S3_REQUESTS_PER_BATCH`` assumed).
        batches: the batches the estimate was asked for, if any; ``s3_batches``: their S3
            requests' USD, in ``total`` (not in ``hourly``).
    """

    workers: int
    per_worker_hour: float
    hourly: float
    expected_hours: float | None
    total: float | None
    source: str
    launch_type: str
    spot: bool
    region: str = ""
    cpu: float = 1.0
    memory_mib: int = 2048
    instance_type: str = ""
    instances: int = 0
    requested: int = 0
    ipv4_hourly: float = 0.0
    s3_hourly: float = 0.0
    architecture: str = "X86_64"
    s3_per_batch: float = 0.0
    batches: int | None = None

    @property
    def s3_batches(self) -> float:
        return (self.batches or 0) * self.s3_per_batch

    def __str__(self) -> str:
        kind = "Fargate" if self.launch_type == "FARGATE" else "EC2"
        plural = "s" if self.workers != 1 else ""
        arm = " ARM64" if self.architecture == "ARM64" else ""
        line = (
            f"Estimated cost: {_usd(self.hourly)}/hour for {self.workers} "
            f"{kind}{' Spot' if self.spot else ''}{arm} worker{plural} "
            f"({self.cpu:g} vCPU, {self.memory_mib / 1024:g} GB)"
        )
        if self.requested > self.workers:
            line += f" at once (quota waves; {self.requested} asked)"
        if self.instance_type:
            line += (
                f" on {self.instances} {self.instance_type} "
                f"instance{'s' if self.instances != 1 else ''}"
            )
        extras = []
        if self.ipv4_hourly:
            extras.append(f"public IPv4 {_usd(self.ipv4_hourly)}")
        if self.s3_hourly:
            extras.append(f"S3 requests ~{_usd(self.s3_hourly)}")
        if extras:
            line += ", incl. " + " and ".join(extras)
        if self.batches is not None:
            line += (
                f"; S3 requests of {self.batches:,} batches ~{_usd(self.s3_batches)} "
                f"(~{S3_REQUESTS_PER_BATCH} per batch)"
            )
        elif self.s3_per_batch:
            line += (
                f"; S3 requests ~{_usd(1000 * self.s3_per_batch)} per 1,000 batches "
                f"(~{S3_REQUESTS_PER_BATCH} per batch)"
            )
        if self.total is not None and self.expected_hours is not None:
            line += f", ~{_usd(self.total)} for {_duration(self.expected_hours)}"
        return f"{line} (rates: {self.source}, {self.region})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(
    aws: Aws,
    options: EcsOptions,
    workers: int,
    expected_hours: float | None = None,
    *,
    at_once: int | None = None,
    batches: int | None = None,
) -> CostEstimate:
    """Estimate the hourly cost of ``workers`` workers sized and placed as ``options`` says.

    Prices the workers that run at once: ``min(workers, at_once)`` (``at_once``: what the vCPU
    quota allows, see :mod:`starburst_executor.aws.quota`). Fargate: ``cpu * vcpu_rate +
    memory_gb * gb_rate`` per worker, plus a public IPv4 address per task when
    ``assign_public_ip``. EC2: whole instances as packed by :func:`ec2_packing`. Both: the S3
    requests of polling (``S3_*_PER_*_HOUR``) in ``hourly``, and per batch
    (``S3_REQUESTS_PER_BATCH``) in ``s3_per_batch``; with ``batches``, those batches' requests
    are added to ``total`` (``expected_hours`` given) and shown.

    Raises:
        ValueError: ``workers < 1``, ``expected_hours <= 0``, a worker larger than the
            instance type, or an instance type that cannot be priced.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if expected_hours is not None and expected_hours <= 0:
        raise ValueError(f"expected_hours must be positive, got {expected_hours}")
    if batches is not None and batches < 0:
        raise ValueError(f"batches must be >= 0, got {batches}")
    running = workers if at_once is None else max(1, min(workers, at_once))
    instance_type = ""
    instances = 0
    ipv4 = 0.0
    if options.launch_type == "FARGATE":
        vcpu_rate, gb_rate, source = fargate_rates(
            aws, options.region, options.spot, options.cpu_architecture
        )
        ipv4 = PUBLIC_IPV4_HOUR if options.assign_public_ip else 0.0
        per_worker = options.cpu * vcpu_rate + options.memory_mib / 1024 * gb_rate + ipv4
        compute = running * per_worker
    else:
        packing = ec2_packing(aws, options)
        instance_type, fit = packing.instance_type, packing.per_instance
        if fit < 1:
            raise ValueError(
                f"a worker of {options.cpu:g} vCPU and {options.memory_mib / 1024:g} GB does "
                f"not fit on {instance_type} ({packing.vcpus} vCPU, "
                f"{packing.memory_mib / 1024:g} GB, about {_ECS_MEMORY_FRACTION:.0%} of it "
                f"usable by tasks, {packing.enis} network interfaces): use a larger "
                "instance_type or smaller workers"
            )
        rate, source = ec2_rate(aws, options.region, instance_type, options.spot)
        instances = math.ceil(running / fit)
        per_worker = rate / fit
        compute = instances * rate
    region = options.region
    s3 = running * s3_request_cost(S3_LIST_PER_WORKER_HOUR, S3_GET_PER_WORKER_HOUR, region)
    s3 += s3_request_cost(S3_LIST_PER_CLIENT_HOUR, 0, region)
    per_batch = s3_request_cost(S3_PUTS_PER_BATCH, S3_GETS_PER_BATCH, region)
    hourly = compute + s3
    total = hourly * expected_hours if expected_hours is not None else None
    if total is not None and batches:
        total += batches * per_batch
    return CostEstimate(
        workers=running,
        per_worker_hour=per_worker,
        hourly=hourly,
        expected_hours=expected_hours,
        total=total,
        source=source,
        launch_type=options.launch_type,
        spot=options.spot,
        region=options.region,
        cpu=options.cpu,
        memory_mib=options.memory_mib,
        instance_type=instance_type,
        instances=instances,
        requested=workers,
        ipv4_hourly=running * ipv4,
        s3_hourly=s3,
        architecture=options.cpu_architecture,
        s3_per_batch=per_batch,
        batches=batches,
    )


def check_budget(
    cost: CostEstimate, max_hourly_cost: float | None, cost_alert_threshold: float | None
) -> str | None:
    """Apply the user's cost guardrails to an estimate.

    Returns:
        A warning line when the hourly estimate is above ``cost_alert_threshold``, else None.

    Raises:
        CostLimitError: the hourly estimate is above ``max_hourly_cost``; nothing may launch.
        ValueError: a limit that is not positive.
    """
    for name, value in (
        ("max_hourly_cost", max_hourly_cost),
        ("cost_alert_threshold", cost_alert_threshold),
    ):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be a positive number of dollars per hour, got {value!r}")
    if max_hourly_cost is not None and cost.hourly > max_hourly_cost:
        remedies = "lower max_workers, cpu or memory, "
        remedies += "use spot=True, or raise the limit" if not cost.spot else "or raise the limit"
        raise CostLimitError(
            f"refusing to launch: estimated {_usd(cost.hourly)}/hour exceeds "
            f"max_hourly_cost={_usd(max_hourly_cost)}; {remedies}"
        )
    if cost_alert_threshold is not None and cost.hourly > cost_alert_threshold:
        return (
            f"Cost alert: estimated {_usd(cost.hourly)}/hour is above "
            f"cost_alert_threshold={_usd(cost_alert_threshold)}"
        )
    return None
