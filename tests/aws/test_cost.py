"""Cost estimates, rates (Pricing API, Spot history, built-in table), guardrails, reports.

Figures are computed by hand from the built-in table (or from the stubbed price list) so a
change in the arithmetic shows up as a wrong number, not just a different one.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import pytest
from botocore.stub import ANY, Stubber

from starburst_executor.aws import cost
from starburst_executor.aws.billing import report, worker_spans
from starburst_executor.aws.client import Aws
from starburst_executor.aws.cost import (
    PRICING_API,
    TABLE_SOURCE,
    CostEstimate,
    check_budget,
    ec2_rate,
    estimate,
    fargate_rates,
    instance_shape,
    tasks_per_instance,
)
from starburst_executor.aws.options import EcsOptions
from starburst_executor.errors import CostLimitError
from starburst_executor.protocol import WorkerRecord, WorkerState

# The built-in table's us-east-1 Fargate rates, written out: the test fails if they drift.
VCPU, GB = 0.04048, 0.004445
SPOT_VCPU, SPOT_GB = 0.01214, 0.001334
C7A_XLARGE = 0.20532
# Public IPv4 per address-hour, and the S3 requests of polling per worker-hour and per client
# hour (1,920 LIST + 900 GET a worker, 1,800 LIST the client; $0.005 / $0.0004 per 1,000).
IPV4 = 0.005
S3_WORKER_HOUR = (1920 * 0.005 + 900 * 0.0004) / 1000
S3_CLIENT_HOUR = 1800 * 0.005 / 1000


def s3(workers: int) -> float:
    return workers * S3_WORKER_HOUR + S3_CLIENT_HOUR


def no_sleep(_: float) -> None:
    pass


@pytest.fixture
def moto_aws(aws_env: str) -> Aws:
    """An Aws client on moto, which has no Pricing API: every pricing call fails."""
    return Aws("us-east-1", retry_sleep=no_sleep)


@pytest.fixture
def offline_aws() -> Aws:
    """An Aws client whose calls must all be stubbed (no endpoint is reachable)."""
    return Aws("us-east-1", retry_sleep=no_sleep)


def fargate(**changes: Any) -> EcsOptions:
    base = EcsOptions(
        region="us-east-1",
        cluster="c",
        image="i",
        cpu=1.0,
        memory_mib=2048,
        launch_type="FARGATE",
        spot=False,
    )
    return replace(base, **changes)


def ec2(**changes: Any) -> EcsOptions:
    return fargate(launch_type="EC2", ec2_capacity_provider="cp", **changes)


def price_item(usagetype: str, usd: str, unit: str = "hours", **attributes: str) -> str:
    """One PriceList entry as the Pricing API returns it: a JSON document in a string."""
    sku = "ABCDEFGH12345678"
    return json.dumps(
        {
            "product": {
                "productFamily": "Compute",
                "attributes": {
                    "regionCode": "us-east-1",
                    "location": "US East (N. Virginia)",
                    "usagetype": usagetype,
                    **attributes,
                },
                "sku": sku,
            },
            "serviceCode": "AmazonECS",
            "terms": {
                "OnDemand": {
                    f"{sku}.JRTCKXETXF": {
                        "priceDimensions": {
                            f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                                "unit": unit,
                                "endRange": "Inf",
                                "beginRange": "0",
                                "appliesTo": [],
                                "description": f"{usagetype} rate",
                                "rateCode": f"{sku}.JRTCKXETXF.6YS6EN2CT7",
                                "pricePerUnit": {"USD": usd},
                            }
                        },
                        "sku": sku,
                        "effectiveDate": "2026-11-01T00:00:00Z",
                        "offerTermCode": "JRTCKXETXF",
                        "termAttributes": {},
                    }
                }
            },
            "version": "20261101000000",
            "publicationDate": "2026-11-01T00:00:00Z",
        }
    )


FARGATE_FILTERS = [
    {"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-east-1"},
    {"Type": "CONTAINS", "Field": "usagetype", "Value": "Fargate-"},
]


def ec2_filters(instance_type: str) -> list[dict[str, str]]:
    values = {
        "regionCode": "us-east-1",
        "instanceType": instance_type,
        "tenancy": "Shared",
        "operatingSystem": "Linux",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in values.items()]


# --------------------------------------------------------------------------- Fargate


def test_fargate_estimate_falls_back_to_the_table_when_the_pricing_api_fails(moto_aws: Aws) -> None:
    est = estimate(moto_aws, fargate(), 10)
    assert est.source == TABLE_SOURCE
    assert est.per_worker_hour == pytest.approx(1 * VCPU + 2 * GB + IPV4, rel=1e-12)
    # $0.4937 of compute, $0.05 of public IPv4 addresses, ~$0.109 of S3 polling
    assert est.hourly == pytest.approx(10 * (1 * VCPU + 2 * GB + IPV4) + s3(10), rel=1e-12)
    assert (est.ipv4_hourly, est.s3_hourly) == pytest.approx((0.05, s3(10)))
    assert est.total is None and est.instances == 0
    assert str(est) == (
        "Estimated cost: $0.65/hour for 10 Fargate workers (1 vCPU, 2 GB), "
        "incl. public IPv4 $0.05 and S3 requests ~$0.11"
        "; S3 requests ~$0.03 per 1,000 batches (~8 per batch) "
        "(rates: built-in table, 2026-11, us-east-1)"
    )


def test_the_estimate_prices_the_workers_the_quota_runs_at_once(moto_aws: Aws) -> None:
    est = estimate(moto_aws, fargate(assign_public_ip=False), 50, at_once=6)
    assert (est.workers, est.requested) == (6, 50)
    assert est.hourly == pytest.approx(6 * (1 * VCPU + 2 * GB) + s3(6), rel=1e-12)
    assert "for 6 Fargate workers (1 vCPU, 2 GB) at once (quota waves; 50 asked)" in str(est)
    assert "IPv4" not in str(est)


def test_arm64_fargate_is_a_fifth_cheaper(moto_aws: Aws) -> None:
    vcpu, gb, source = fargate_rates(moto_aws, "us-east-1", spot=False, architecture="ARM64")
    assert (vcpu, gb) == pytest.approx((0.8 * VCPU, 0.8 * GB))
    assert "ARM64" in source
    est = estimate(moto_aws, fargate(cpu_architecture="ARM64", assign_public_ip=False), 1)
    assert est.per_worker_hour == pytest.approx(0.8 * (VCPU + 2 * GB))
    assert "ARM64 worker" in str(est)


def test_fargate_spot_uses_the_table_spot_rates_and_says_so(moto_aws: Aws) -> None:
    est = estimate(
        moto_aws,
        fargate(cpu=4.0, memory_mib=8192, spot=True, assign_public_ip=False),
        50,
        expected_hours=1 / 3,
    )
    hourly = 50 * (4 * SPOT_VCPU + 8 * SPOT_GB) + s3(50)  # $2.9616 + $0.507
    assert est.hourly == pytest.approx(hourly, rel=1e-12)
    assert est.total == pytest.approx(hourly / 3, rel=1e-12)
    assert est.source == f"{TABLE_SOURCE} (Fargate Spot)"
    assert str(est) == (
        "Estimated cost: $3.47/hour for 50 Fargate Spot workers (4 vCPU, 8 GB), "
        "incl. S3 requests ~$0.51; S3 requests ~$0.03 per 1,000 batches (~8 per batch), "
        "~$1.16 for 20 minutes (rates: built-in "
        "table, 2026-11 (Fargate Spot), us-east-1)"
    )


def test_fargate_rates_from_the_pricing_api(offline_aws: Aws) -> None:
    with Stubber(offline_aws.client("pricing")) as stub:
        stub.add_response(
            "get_products",
            {
                "FormatVersion": "aws_v1",
                "PriceList": [
                    price_item("USE1-Fargate-vCPU-Hours:perCPU", "0.0500000000"),
                    price_item("USE1-Fargate-GB-Hours", "0.0060000000", unit="GB-Hours"),
                    # neighbours the query also returns, which must not be taken for x86 rates:
                    price_item("USE1-Fargate-ARM-vCPU-Hours:perCPU", "0.0320000000"),
                    price_item("USE1-Fargate-EphemeralStorage-GB-Hours", "0.0001110000"),
                    price_item("USE1-Fargate-Windows-OS-Hours:perCPU", "0.0460000000"),
                ],
            },
            {"ServiceCode": "AmazonECS", "Filters": FARGATE_FILTERS, "FormatVersion": "aws_v1"},
        )
        assert fargate_rates(offline_aws, "us-east-1", spot=False) == (0.05, 0.006, PRICING_API)
        stub.assert_no_pending_responses()


def test_fargate_estimate_from_the_pricing_api(offline_aws: Aws) -> None:
    with Stubber(offline_aws.client("pricing")) as stub:
        stub.add_response(
            "get_products",
            {
                "PriceList": [
                    price_item("USE1-Fargate-vCPU-Hours:perCPU", "0.05"),
                    price_item("USE1-Fargate-GB-Hours", "0.006"),
                ]
            },
        )
        est = estimate(
            offline_aws,
            fargate(cpu=2.0, memory_mib=4096, assign_public_ip=False),
            3,
            expected_hours=2,
        )
    hourly = 3 * (2 * 0.05 + 4 * 0.006) + s3(3)  # $0.372 + $0.039
    assert est.hourly == pytest.approx(hourly, rel=1e-12)
    assert est.total == pytest.approx(2 * hourly, rel=1e-12)
    assert str(est).endswith("~$0.82 for 2.0 hours (rates: AWS Pricing API, us-east-1)")


def test_a_price_list_without_fargate_rates_falls_back_to_the_table(offline_aws: Aws) -> None:
    with Stubber(offline_aws.client("pricing")) as stub:
        stub.add_response("get_products", {"PriceList": []})
        assert fargate_rates(offline_aws, "us-east-1", False) == (VCPU, GB, TABLE_SOURCE)


def test_a_denied_pricing_call_falls_back_to_the_table(offline_aws: Aws) -> None:
    with Stubber(offline_aws.client("pricing")) as stub:
        stub.add_client_error("get_products", "AccessDeniedException", "not allowed", 400)
        assert fargate_rates(offline_aws, "eu-west-1", False) == (0.04656, 0.00511, TABLE_SOURCE)


def test_a_region_missing_from_the_table_uses_us_east_1_figures_and_says_so(moto_aws: Aws) -> None:
    vcpu, gb, source = fargate_rates(moto_aws, "sa-east-1", False)
    assert (vcpu, gb) == (VCPU, GB)
    assert "us-east-1 figures" in source and "sa-east-1" in source
    spot_vcpu, _, spot_source = fargate_rates(moto_aws, "sa-east-1", True)
    assert spot_vcpu == pytest.approx(VCPU * 0.30)
    assert "typical Fargate Spot discount" in spot_source


# --------------------------------------------------------------------------- EC2


@pytest.mark.parametrize(
    ("vcpus", "mib", "cpu", "memory", "fits"),
    [
        (4, 8192, 1.0, 2048, 3),  # 8 GiB registers ~7.5 GiB: three 2 GB workers, not four
        (4, 16384, 1.0, 2048, 4),  # CPU-bound
        (4, 8192, 0.5, 1024, 7),
        (16, 32768, 4.0, 8192, 3),
        (4, 8192, 8.0, 16384, 0),  # does not fit at all
    ],
)
def test_tasks_per_instance(vcpus: int, mib: int, cpu: float, memory: int, fits: int) -> None:
    assert tasks_per_instance(vcpus, mib, cpu, memory) == fits


def test_ec2_estimate_packs_workers_onto_whole_instances(offline_aws: Aws) -> None:
    with Stubber(offline_aws.client("pricing")) as stub:
        stub.add_response(
            "get_products",
            {
                "PriceList": [
                    price_item(
                        "BoxUsage:c7a.xlarge",
                        "0.2053200000",
                        unit="Hrs",
                        instanceType="c7a.xlarge",
                        operatingSystem="Linux",
                    ),
                ]
            },
            {
                "ServiceCode": "AmazonEC2",
                "Filters": ec2_filters("c7a.xlarge"),
                "FormatVersion": "aws_v1",
            },
        )
        est = estimate(offline_aws, ec2(instance_type="c7a.xlarge"), 10)
    # 3 workers per c7a.xlarge (4 vCPU, 8 GiB) -> 4 instances for 10 workers.
    assert (est.instance_type, est.instances) == ("c7a.xlarge", 4)
    assert est.hourly == pytest.approx(4 * C7A_XLARGE + s3(10), rel=1e-12)  # $0.82128 + S3
    assert est.per_worker_hour == pytest.approx(C7A_XLARGE / 3, rel=1e-12)
    assert str(est) == (
        "Estimated cost: $0.93/hour for 10 EC2 workers (1 vCPU, 2 GB) on 4 "
        "c7a.xlarge instances, incl. S3 requests ~$0.11; S3 requests ~$0.03 per 1,000 "
        "batches (~8 per batch) (rates: AWS Pricing API, "
        "us-east-1)"
    )


def test_ec2_spot_is_the_median_of_the_latest_price_per_zone(offline_aws: Aws) -> None:
    old = datetime(2026, 11, 1, tzinfo=timezone.utc)
    new = datetime(2026, 11, 2, tzinfo=timezone.utc)
    history = [
        {
            "AvailabilityZone": "us-east-1a",
            "InstanceType": "c7a.xlarge",
            "SpotPrice": "0.0900",
            "ProductDescription": "Linux/UNIX",
            "Timestamp": new,
        },
        {
            "AvailabilityZone": "us-east-1a",
            "InstanceType": "c7a.xlarge",
            "SpotPrice": "0.5000",
            "ProductDescription": "Linux/UNIX",
            "Timestamp": old,
        },  # superseded
        {
            "AvailabilityZone": "us-east-1b",
            "InstanceType": "c7a.xlarge",
            "SpotPrice": "0.0700",
            "ProductDescription": "Linux/UNIX",
            "Timestamp": new,
        },
        {
            "AvailabilityZone": "us-east-1c",
            "InstanceType": "c7a.xlarge",
            "SpotPrice": "0.1100",
            "ProductDescription": "Linux/UNIX",
            "Timestamp": new,
        },
    ]
    with (
        Stubber(offline_aws.client("pricing")) as pricing,
        Stubber(offline_aws.client("ec2")) as ec2_stub,
    ):
        pricing.add_response(
            "get_products",
            {"PriceList": [price_item("BoxUsage:c7a.xlarge", "0.20532", unit="Hrs")]},
        )
        ec2_stub.add_response(
            "describe_spot_price_history",
            {"SpotPriceHistory": history},
            {
                "InstanceTypes": ["c7a.xlarge"],
                "ProductDescriptions": ["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
                "StartTime": ANY,
            },
        )
        rate, source = ec2_rate(offline_aws, "us-east-1", "c7a.xlarge", spot=True)
    assert rate == pytest.approx(0.09)
    assert source == "EC2 Spot price history, median of Availability Zones"


def test_ec2_spot_without_history_is_on_demand_times_the_stated_discount(offline_aws: Aws) -> None:
    with (
        Stubber(offline_aws.client("pricing")) as pricing,
        Stubber(offline_aws.client("ec2")) as ec2_stub,
    ):
        pricing.add_client_error("get_products", "AccessDeniedException", "no", 400)
        ec2_stub.add_response("describe_spot_price_history", {"SpotPriceHistory": []})
        rate, source = ec2_rate(offline_aws, "us-east-1", "m7i.xlarge", spot=True)
    assert rate == pytest.approx(0.2016 * 0.40)
    assert source == f"{TABLE_SOURCE} x 0.4 (typical Spot discount)"


@pytest.mark.slow
def test_ec2_on_moto_uses_the_table_and_moto_spot_history(moto_aws: Aws) -> None:
    # moto has no Pricing API (-> table) but answers DescribeSpotPriceHistory with a fixed
    # $0.00001 in every zone.
    assert ec2_rate(moto_aws, "us-east-1", "c7a.xlarge", spot=False) == (C7A_XLARGE, TABLE_SOURCE)
    rate, source = ec2_rate(moto_aws, "us-east-1", "c7a.xlarge", spot=True)
    assert rate == pytest.approx(0.00001)
    assert source.startswith("EC2 Spot price history")


def test_ec2_defaults_and_regional_table_estimates(moto_aws: Aws) -> None:
    est = estimate(moto_aws, ec2(), 1)
    assert est.instance_type == cost.DEFAULT_EC2_INSTANCE_TYPE and est.instances == 1
    rate, source = ec2_rate(moto_aws, "eu-west-1", "c7a.xlarge", spot=False)
    assert rate == pytest.approx(C7A_XLARGE * 1.12)
    assert source == f"{TABLE_SOURCE}, regional estimate"


def test_an_instance_type_nobody_can_price_is_refused(moto_aws: Aws) -> None:
    with pytest.raises(ValueError, match=r"cannot price m5\.large.*pricing:GetProducts"):
        ec2_rate(moto_aws, "us-east-1", "m5.large", spot=False)


@pytest.mark.slow
def test_instance_shape_asks_ec2_for_types_outside_the_table(moto_aws: Aws) -> None:
    assert instance_shape(moto_aws, "c7i.xlarge") == (4, 8192)
    assert instance_shape(moto_aws, "m5.large") == (2, 8192)
    with pytest.raises(ValueError, match="no instance type"):
        instance_shape(moto_aws, "x9.nonsense")


def test_a_worker_larger_than_the_instance_is_refused(moto_aws: Aws) -> None:
    with pytest.raises(ValueError, match="does not fit on c7a.xlarge"):
        estimate(moto_aws, ec2(cpu=8.0, memory_mib=16384), 2)


def test_estimate_rejects_bad_arguments(moto_aws: Aws) -> None:
    with pytest.raises(ValueError, match="workers"):
        estimate(moto_aws, fargate(), 0)
    with pytest.raises(ValueError, match="expected_hours"):
        estimate(moto_aws, fargate(), 1, expected_hours=0)


# --------------------------------------------------------------------------- guardrails


def an_estimate(hourly: float, spot: bool = False) -> CostEstimate:
    return CostEstimate(
        workers=10,
        per_worker_hour=hourly / 10,
        hourly=hourly,
        expected_hours=None,
        total=None,
        source=TABLE_SOURCE,
        launch_type="FARGATE",
        spot=spot,
        region="us-east-1",
    )


def test_check_budget_refuses_above_max_hourly_cost() -> None:
    with pytest.raises(CostLimitError) as caught:
        check_budget(an_estimate(12.5), max_hourly_cost=10, cost_alert_threshold=None)
    assert str(caught.value) == (
        "refusing to launch: estimated $12.50/hour exceeds max_hourly_cost=$10.00; lower "
        "max_workers, cpu or memory, use spot=True, or raise the limit"
    )
    with pytest.raises(CostLimitError, match=r"cpu or memory, or raise the limit$"):
        check_budget(an_estimate(12.5, spot=True), 10, None)  # already Spot: no such hint


def test_check_budget_warns_above_the_alert_threshold() -> None:
    assert check_budget(an_estimate(6.0), max_hourly_cost=10, cost_alert_threshold=5) == (
        "Cost alert: estimated $6.00/hour is above cost_alert_threshold=$5.00"
    )
    assert check_budget(an_estimate(4.0), 10, 5) is None
    assert check_budget(an_estimate(4.0), None, None) is None
    assert check_budget(an_estimate(10.0), 10, None) is None  # at the limit is allowed


def test_check_budget_rejects_nonpositive_limits() -> None:
    with pytest.raises(ValueError, match="max_hourly_cost"):
        check_budget(an_estimate(1.0), 0, None)
    with pytest.raises(ValueError, match="cost_alert_threshold"):
        check_budget(an_estimate(1.0), None, -1)


# --------------------------------------------------------------------------- after the run


def test_report_sums_worker_time_and_counts_running_workers_until_now() -> None:
    spans = [
        (1000.0, 4600.0),  # 1 hour
        (1000.0, None),  # running: 0.5 hour until now
        (2000.0, 2010.0),
    ]  # 10 s, billed as the one-minute minimum
    rep = report(0.128, spans, now=2800.0)
    seconds = 3600 + 1800 + 60
    assert rep.worker_seconds == seconds
    assert rep.cost == pytest.approx(seconds / 3600 * 0.128)  # $0.19413
    assert (rep.workers, rep.running) == (3, 1)
    assert str(rep) == "Actual cost so far: $0.19 (1.5 worker-hours at $0.128/hour)"
    data = rep.to_dict()
    assert data["worker_hours"] == pytest.approx(seconds / 3600)
    assert json.loads(json.dumps(data)) == data


def test_report_of_a_finished_run() -> None:
    rep = report(0.0494, [(0.0, 3600.0 * 2)] * 30, now=1e9)
    assert rep.running == 0
    assert str(rep) == "Actual cost: $2.96 (60 worker-hours at $0.049/hour)"


def test_worker_spans_from_records() -> None:
    records = [
        WorkerRecord(worker="ecs-a", state=WorkerState.RUNNING, host="h", pid=1, started=100.0),
        WorkerRecord(worker="ecs-b", state=WorkerState.EXITED, host="h", pid=2, started=100.0),
        WorkerRecord(worker="ecs-c", state=WorkerState.EXITED, host="h", pid=3, started=100.0),
        WorkerRecord(
            worker="ecs-d", state=WorkerState.EXITED, host="h", pid=4, started=100.0, ended=150.0
        ),
    ]
    spans = worker_spans(records, last_modified={"ecs-b": 400.0, "ecs-d": 999.0})
    # a: running (ended=0); b: exited before `ended` existed: its record's store time;
    # c: nothing known, counted as running; d: its own `ended`.
    assert spans == [(100.0, None), (100.0, 400.0), (100.0, None), (100.0, 150.0)]


# --------------------------------------------------------------------------- EC2 packing


def test_awsvpc_tasks_per_instance_are_capped_by_network_interfaces() -> None:
    # c7a.2xlarge: 8 vCPU, 16 GiB: 16 half-vCPU 1 GiB workers by CPU, 15 by memory, but 4
    # network interfaces: the primary one plus 3 tasks (no ENI trunking).
    assert tasks_per_instance(8, 16384, 0.5, 1024) == 15
    assert tasks_per_instance(8, 16384, 0.5, 1024, enis=4) == 3


def test_ec2_packing_uses_the_instance_types_setup_saved(moto_aws: Aws) -> None:
    options = ec2(cpu=0.5, memory_mib=1024, instance_types=("c7a.4xlarge", "m5.large"))
    packing = cost.ec2_packing(moto_aws, options)
    # m5.large (2 vCPU, 8 GiB, 3 ENIs, asked from EC2): 2 tasks; c7a.4xlarge holds 7.
    assert (packing.instance_type, packing.per_instance, packing.enis) == ("m5.large", 2, 3)
    assert cost.ec2_packing(moto_aws, ec2(instance_type="c7a.4xlarge")).per_instance == 7


# --------------------------------------------------------------------------- the bill


def _record(
    worker: str, started: float, state: WorkerState = WorkerState.RUNNING, ended: float = 0.0
) -> WorkerRecord:
    return WorkerRecord(worker, state, "h", 1, started, ended=ended)


def _stub_tasks(aws: Aws, tasks: list[dict[str, Any]]) -> Stubber:
    stubber = Stubber(aws.client("ecs"))
    stubber.add_response("describe_tasks", {"tasks": tasks, "failures": []})
    return stubber


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def test_the_bill_runs_from_the_image_pull_to_the_tasks_stop(offline_aws: Aws) -> None:
    from starburst_executor.aws import billing

    billing._stopped_cache.clear()
    arn = "arn:aws:ecs:us-east-1:123456789012:task/c/"
    workers = [
        _record(
            "ecs-t1", 1_000_100.0, WorkerState.EXITED, ended=1_003_600.0
        ),  # registered after a pull
        _record("ecs-t2", 1_000_100.0),  # vanished: its record still says running
        _record("ecs-t3", 1_000_100.0),  # still running
    ]
    tasks = [
        {
            "taskArn": arn + "t1",
            "lastStatus": "STOPPED",
            "createdAt": _at(1_000_000.0),
            "pullStartedAt": _at(1_000_040.0),
            "stoppedAt": _at(1_003_640.0),
        },
        {
            "taskArn": arn + "t2",
            "lastStatus": "STOPPED",
            "createdAt": _at(1_000_000.0),
            "pullStartedAt": _at(1_000_040.0),
            "stoppedAt": _at(1_001_840.0),
        },
        {"taskArn": arn + "t3", "lastStatus": "RUNNING", "createdAt": _at(1_000_000.0)},
    ]
    with _stub_tasks(offline_aws, tasks):
        rep = billing.session_report(
            fargate(cluster="c"),
            0.1,
            workers,
            created=999_990.0,
            batches=10,
            now=1_007_200.0,
            aws=offline_aws,
        )
    # t1: 3,600 s from its pull; t2: 1,800 s to ECS's stop, not until now; t3: from createdAt
    # (no pull yet reported) until now, 7,200 s.
    assert rep.worker_seconds == pytest.approx(3600 + 1800 + 7200)
    assert (rep.workers, rep.running) == (3, 1)
    put_like = 10 * 5 + 3.5 * 1920 + (7_200 + 10) / 3600 * 1800  # 8 requests per batch:
    get_like = 10 * 3 + 3.5 * 900  # 5 class A, 3 class B
    assert (rep.s3_put_requests, rep.s3_get_requests) == (round(put_like), round(get_like))
    assert rep.cost == pytest.approx(
        3.5 * 0.1 + put_like * 0.005 / 1000 + get_like * 0.0004 / 1000, rel=1e-3
    )
    assert "S3 requests ~$" in str(rep) and "(estimated)" in str(rep)
    # Stopped tasks are not asked again.
    with _stub_tasks(offline_aws, [tasks[2]]) as stub:
        billing.session_report(
            fargate(cluster="c"),
            0.1,
            workers,
            created=999_990.0,
            batches=10,
            now=1_007_200.0,
            aws=offline_aws,
        )
        stub.assert_no_pending_responses()


def test_without_ecs_the_bill_falls_back_to_the_records(offline_aws: Aws) -> None:
    from starburst_executor.aws import billing

    billing._stopped_cache.clear()
    stubber = Stubber(offline_aws.client("ecs"))
    stubber.add_client_error(
        "describe_tasks", service_error_code="AccessDeniedException", http_status_code=400
    )
    with stubber:
        rep = billing.session_report(
            fargate(),
            0.1,
            [_record("ecs-x", 0.0, WorkerState.EXITED, 600.0)],
            created=0.0,
            batches=1,
            now=700.0,
            aws=offline_aws,
        )
    assert rep.worker_seconds == 600.0


def test_the_estimate_prices_the_requests_of_a_batch_count(moto_aws: Aws) -> None:
    est = estimate(moto_aws, fargate(assign_public_ip=False), 2, expected_hours=1.0, batches=20_000)
    per_batch = (5 * 0.005 + 3 * 0.0004) / 1000  # S3_REQUESTS_PER_BATCH: 8, 5 of them class A
    assert est.s3_per_batch == pytest.approx(per_batch)
    assert est.total == pytest.approx(est.hourly + 20_000 * per_batch)
    assert "S3 requests of 20,000 batches ~$0.52 (~8 per batch)" in str(est)


def test_counted_requests_replace_the_estimate_in_the_bill(offline_aws: Aws) -> None:
    from starburst_executor.aws import billing
    from starburst_executor.stores.counting import RequestCounts
    from starburst_executor.usage import RequestUsage

    usage = RequestUsage(
        RequestCounts(gets=382, puts=700, lists=19),
        RequestCounts(gets=1000, puts=1500, lists=500),
        3,
        "s3://b/p",
        "eu-central-1",
    )
    stubber = Stubber(offline_aws.client("ecs"))
    stubber.add_client_error("describe_tasks", service_error_code="AccessDeniedException")
    with stubber:
        rep = billing.session_report(
            fargate(),
            0.1,
            [_record("ecs-y", 0.0, WorkerState.EXITED, 600.0)],
            created=0.0,
            batches=1,
            now=700.0,
            aws=offline_aws,
            usage=usage,
        )
    assert (rep.s3_put_requests, rep.s3_get_requests, rep.s3_estimated) == (2719, 1382, False)
    assert rep.s3_cost == pytest.approx((2719 * 0.0054 + 1382 * 0.00043) / 1000)
    assert rep.compute == pytest.approx(600 / 3600 * 0.1)
    assert str(rep) == (
        "Actual cost: $0.03 (0.2 worker-hours at $0.100/hour = $0.02 compute; "
        "S3 requests $0.02 for 2,719 PUT/LIST and 1,382 GET)"
    )
