"""``setup`` and ``teardown`` against moto: what they create, read back from AWS."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest
from botocore.stub import Stubber

from starburst_executor import config
from starburst_executor.aws import policies
from starburst_executor.aws.client import Aws
from starburst_executor.aws.settings import AwsSettings, profile_path
from starburst_executor.aws.setup import SetupReport, resource_names, setup, teardown
from starburst_executor.errors import AwsError, AwsPermissionError

ACCOUNT = "123456789012"  # moto's
BUCKET = f"starburst-{ACCOUNT}-us-east-1"


def statuses(report: Any) -> dict[tuple[str, str], str]:
    return {(r.kind, r.name): r.status for r in report.resources}


def status_of(report: SetupReport, kind: str) -> str:
    (status,) = {r.status for r in report.resources if r.kind == kind}
    return status


@pytest.mark.slow
def test_setup_creates_every_resource_as_configured(moto_aws_client: Aws) -> None:
    aws = moto_aws_client
    report = setup(aws, lifecycle_days=7, log_retention_days=30)
    s = report.settings
    names = resource_names("starburst", "us-east-1")

    assert set(statuses(report).values()) == {"created", "exists"}  # subnets: adopted
    assert status_of(report, "subnets") == "exists"
    assert report.changed and "created" in str(report)

    # bucket: private, encrypted, TLS only, expiring the prefix
    assert s.bucket == BUCKET and s.prefix == "starburst"
    block = aws.call("s3", "get_public_access_block", Bucket=BUCKET)
    assert all(block["PublicAccessBlockConfiguration"].values())
    assert len(block["PublicAccessBlockConfiguration"]) == 4
    encryption = aws.call("s3", "get_bucket_encryption", Bucket=BUCKET)
    (rule,) = encryption["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    policy = json.loads(aws.call("s3", "get_bucket_policy", Bucket=BUCKET)["Policy"])
    (deny,) = policy["Statement"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert f"arn:aws:s3:::{BUCKET}/*" in deny["Resource"]
    (lifecycle,) = aws.call("s3", "get_bucket_lifecycle_configuration", Bucket=BUCKET)["Rules"]
    assert lifecycle["Status"] == "Enabled"
    assert lifecycle["Filter"] == {"Prefix": "starburst/"}
    assert lifecycle["Expiration"] == {"Days": 7}
    assert aws.call("s3", "get_bucket_location", Bucket=BUCKET)["LocationConstraint"] is None
    tags = aws.call("s3", "get_bucket_tagging", Bucket=BUCKET)["TagSet"]
    assert {"Key": "starburst", "Value": "true"} in tags

    # ECR: scan on push, keep the last 10
    (repo,) = aws.call("ecr", "describe_repositories", repositoryNames=[s.ecr_repository])[
        "repositories"
    ]
    assert repo["imageScanningConfiguration"]["scanOnPush"] is True
    text = aws.call("ecr", "get_lifecycle_policy", repositoryName=s.ecr_repository)[
        "lifecyclePolicyText"
    ]
    (ecr_rule,) = json.loads(text)["rules"]
    assert ecr_rule["selection"]["countType"] == "imageCountMoreThan"
    assert ecr_rule["selection"]["countNumber"] == 10

    # ECS cluster with both Fargate capacity providers
    (cluster,) = aws.call("ecs", "describe_clusters", clusters=[s.cluster])["clusters"]
    assert cluster["status"] == "ACTIVE"
    assert set(cluster["capacityProviders"]) == {"FARGATE", "FARGATE_SPOT"}

    # logs
    (group,) = aws.call("logs", "describe_log_groups", logGroupNamePrefix=s.log_group)["logGroups"]
    assert group["logGroupName"] == "/starburst/workers"
    assert group["retentionInDays"] == 30

    # network: the default VPC's subnets, a group with no inbound rules
    (vpc,) = aws.call("ec2", "describe_vpcs", Filters=[{"Name": "isDefault", "Values": ["true"]}])[
        "Vpcs"
    ]
    subnets = aws.call(
        "ec2", "describe_subnets", Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}]
    )["Subnets"]
    assert set(s.subnets) == {x["SubnetId"] for x in subnets} and s.subnets
    (sg,) = aws.call("ec2", "describe_security_groups", GroupIds=[s.security_group])[
        "SecurityGroups"
    ]
    assert sg["VpcId"] == vpc["VpcId"]
    assert sg["IpPermissions"] == []
    assert sg["IpPermissionsEgress"]  # the default allow-all outbound rule

    # roles: trust, inline policies, managed policy, tags
    for arn, inline in [
        (
            s.execution_role_arn,
            policies.execution_role_policy(
                secret_parameter=s.secret_parameter,
                log_group=s.log_group,
                region="us-east-1",
                account=ACCOUNT,
            ),
        ),
        (s.task_role_arn, policies.task_role_policy(bucket=BUCKET, prefix="starburst")),
    ]:
        name = arn.rsplit("/", 1)[-1]
        role = aws.call("iam", "get_role", RoleName=name)["Role"]
        assert policies.same_policy(
            role["AssumeRolePolicyDocument"], policies.ecs_tasks_trust_policy(ACCOUNT)
        )
        assert {"Key": "starburst", "Value": "true"} in role["Tags"]
        stored = aws.call("iam", "get_role_policy", RoleName=name, PolicyName="starburst")
        assert policies.same_policy(stored["PolicyDocument"], inline)
    assert s.execution_role_arn.endswith(names.execution_role)
    attached = aws.call("iam", "list_attached_role_policies", RoleName=names.execution_role)[
        "AttachedPolicies"
    ]
    assert [p["PolicyName"] for p in attached] == ["AmazonECSTaskExecutionRolePolicy"]
    assert (
        aws.call("iam", "list_attached_role_policies", RoleName=names.task_role)["AttachedPolicies"]
        == []
    )

    # the signing key: this client's, as a SecureString
    parameter = aws.call("ssm", "get_parameter", Name=s.secret_parameter, WithDecryption=True)[
        "Parameter"
    ]
    assert parameter["Type"] == "SecureString"
    assert parameter["Value"] == config.secret_key().hex()

    # the profile
    assert report.profile_path == profile_path(None)
    assert AwsSettings.load() == s
    assert s.ec2_capacity_provider == "" and s.image == ""


@pytest.mark.slow
def test_second_setup_changes_nothing(moto_aws_client: Aws) -> None:
    first = setup(moto_aws_client)
    second = setup(moto_aws_client)
    assert not second.changed
    assert set(statuses(second).values()) == {"exists"}
    assert statuses(second).keys() == statuses(first).keys()
    assert "nothing to do" in str(second)
    assert second.settings == first.settings


@pytest.mark.slow
def test_setup_repairs_drift(moto_aws_client: Aws) -> None:
    aws = moto_aws_client
    s = setup(aws).settings
    aws.call(
        "ec2",
        "authorize_security_group_ingress",
        GroupId=s.security_group,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            }
        ],
    )
    aws.call("logs", "put_retention_policy", logGroupName=s.log_group, retentionInDays=1)
    aws.call("s3", "delete_bucket_encryption", Bucket=s.bucket)
    aws.call(
        "iam",
        "delete_role_policy",
        RoleName=s.task_role_arn.rsplit("/", 1)[-1],
        PolicyName="starburst",
    )

    report = setup(aws)
    changed = {k: v for k, v in statuses(report).items() if v != "exists"}
    assert changed == {
        ("security group", s.security_group): "updated",
        ("log group", s.log_group): "updated",
        ("S3 bucket", s.bucket): "updated",
        ("IAM role", s.task_role_arn.rsplit("/", 1)[-1]): "updated",
    }
    (sg,) = aws.call("ec2", "describe_security_groups", GroupIds=[s.security_group])[
        "SecurityGroups"
    ]
    assert sg["IpPermissions"] == []
    assert not setup(aws).changed


@pytest.mark.slow
def test_setup_adopts_an_existing_bucket_and_keeps_its_rules(moto_aws_client: Aws) -> None:
    aws = moto_aws_client
    bucket = "my-lab-data"
    aws.call("s3", "create_bucket", Bucket=bucket)
    aws.call("s3", "put_object", Bucket=bucket, Key="raw/data.csv", Body=b"1,2,3")
    aws.call(
        "s3",
        "put_bucket_lifecycle_configuration",
        Bucket=bucket,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "archive-raw",
                    "Status": "Enabled",
                    "Filter": {"Prefix": "raw/"},
                    "Expiration": {"Days": 365},
                }
            ]
        },
    )
    own = {
        "Sid": "LabReaders",
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/raw/*",
    }
    aws.call(
        "s3",
        "put_bucket_policy",
        Bucket=bucket,
        Policy=json.dumps({"Version": "2012-10-17", "Statement": [own]}),
    )

    report = setup(aws, bucket=bucket, prefix="runs")
    (row,) = [r for r in report.resources if r.kind == "S3 bucket"]
    assert row.status == "updated" and row.detail.startswith("adopted")
    assert report.settings.bucket == bucket and report.settings.prefix == "runs"
    rules = {
        r["ID"]: r
        for r in aws.call("s3", "get_bucket_lifecycle_configuration", Bucket=bucket)["Rules"]
    }
    assert rules["archive-raw"]["Expiration"] == {"Days": 365}
    assert rules["starburst-expire-runs"]["Filter"] == {"Prefix": "runs/"}
    statements = json.loads(aws.call("s3", "get_bucket_policy", Bucket=bucket)["Policy"])[
        "Statement"
    ]
    assert [st["Sid"] for st in statements] == ["LabReaders", policies.TLS_SID]
    # adopted, not created: no starburst tag, so teardown will not delete it
    with pytest.raises(AwsError) as untagged:
        aws.call("s3", "get_bucket_tagging", Bucket=bucket)
    assert untagged.value.code == "NoSuchTagSet"
    assert not setup(aws, bucket=bucket, prefix="runs").changed


@pytest.mark.slow
def test_setup_outside_us_east_1_names_the_region(
    moto_one_account: str, _shared_boto3_session: Any
) -> None:
    aws = Aws("eu-west-1", session=_shared_boto3_session, retry_sleep=lambda _: None)
    report = setup(aws)
    assert report.settings.bucket == f"starburst-{ACCOUNT}-eu-west-1"
    location = aws.call("s3", "get_bucket_location", Bucket=report.settings.bucket)
    assert location["LocationConstraint"] == "eu-west-1"
    assert report.settings.execution_role_arn.endswith("starburst-execution-eu-west-1")
    assert not setup(aws).changed


@pytest.mark.slow
def test_setup_keeps_the_profile_image_and_choices(moto_aws_client: Aws) -> None:
    first = setup(moto_aws_client).settings
    image = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/starburst-worker:py311-abc"
    dataclasses.replace(first, image=image, cpu=4.0, memory="8GB").save()
    report = setup(moto_aws_client, log_retention_days=30)
    assert report.settings.image == image
    assert (report.settings.cpu, report.settings.memory) == (4.0, "8GB")
    assert report.settings.log_retention_days == 30
    assert statuses(report)[("profile", str(profile_path(None)))] == "updated"
    assert AwsSettings.load().image == image


@pytest.mark.slow
def test_an_existing_signing_key_is_kept_and_the_difference_noted(moto_aws_client: Aws) -> None:
    aws = moto_aws_client
    other = "ab" * 32
    aws.call("ssm", "put_parameter", Name="/starburst/secret-key", Value=other, Type="SecureString")
    report = setup(aws)
    assert statuses(report)[("SSM parameter", "/starburst/secret-key")] == "exists"
    assert (
        aws.call("ssm", "get_parameter", Name="/starburst/secret-key", WithDecryption=True)[
            "Parameter"
        ]["Value"]
        == other
    )
    assert config.secret_key().hex() != other  # the local key is untouched too
    assert any("differs" in note for note in report.notes)
    assert "differs" in str(report)


@pytest.mark.slow
def test_ec2_capacity_spot_parked_at_zero(moto_aws_client: Aws) -> None:
    aws = moto_aws_client
    report = setup(aws, ec2=True, instance_types=("c7a.xlarge", "c6a.xlarge"))
    s = report.settings
    names = resource_names("starburst", "us-east-1")
    assert s.ec2_capacity_provider == names.ec2
    for kind in ("launch template", "Auto Scaling group", "capacity provider", "instance profile"):
        assert status_of(report, kind) == "created", kind

    expected_ami = aws.call(
        "ssm",
        "get_parameter",
        Name=("/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"),
    )
    (version,) = aws.call(
        "ec2",
        "describe_launch_template_versions",
        LaunchTemplateName=names.ec2,
        Versions=["$Default"],
    )["LaunchTemplateVersions"]
    data = version["LaunchTemplateData"]
    assert data["ImageId"] == expected_ami["Parameter"]["Value"]
    user_data = base64.b64decode(data["UserData"]).decode()
    assert "ECS_CLUSTER=starburst\n" in user_data
    # awsvpc tasks must not reach the instance role through the metadata service
    assert "ECS_AWSVPC_BLOCK_IMDS=true\n" in user_data
    assert "ECS_ENABLE_SPOT_INSTANCE_DRAINING=true\n" in user_data
    assert s.instance_types == ("c7a.xlarge", "c6a.xlarge")  # saved for the launcher
    assert data["IamInstanceProfile"]["Name"] == names.instance_role
    assert data["NetworkInterfaces"][0]["Groups"] == [s.security_group]

    (group,) = aws.call(
        "autoscaling", "describe_auto_scaling_groups", AutoScalingGroupNames=[names.ec2]
    )["AutoScalingGroups"]
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (0, 0, 0)
    mixed = group["MixedInstancesPolicy"]
    assert [o["InstanceType"] for o in mixed["LaunchTemplate"]["Overrides"]] == [
        "c7a.xlarge",
        "c6a.xlarge",
    ]
    assert mixed["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 0
    assert group["NewInstancesProtectedFromScaleIn"] is True

    (provider,) = aws.call("ecs", "describe_capacity_providers", capacityProviders=[names.ec2])[
        "capacityProviders"
    ]
    asg_provider = provider["autoScalingGroupProvider"]
    assert asg_provider["autoScalingGroupArn"] == group["AutoScalingGroupARN"]
    assert asg_provider["managedScaling"]["status"] == "ENABLED"
    assert asg_provider["managedTerminationProtection"] == "ENABLED"
    (cluster,) = aws.call("ecs", "describe_clusters", clusters=["starburst"])["clusters"]
    assert set(cluster["capacityProviders"]) == {"FARGATE", "FARGATE_SPOT", names.ec2}
    attached = aws.call("iam", "list_attached_role_policies", RoleName=names.instance_role)[
        "AttachedPolicies"
    ]
    assert [p["PolicyName"] for p in attached] == ["AmazonEC2ContainerServiceforEC2Role"]

    again = setup(aws, ec2=True, instance_types=("c7a.xlarge", "c6a.xlarge"))
    assert not again.changed
    # A later run without --ec2 leaves the EC2 capacity and the profile's provider alone.
    assert setup(aws).settings.ec2_capacity_provider == names.ec2


def test_ec2_refuses_mixed_architectures(moto_aws_client: Aws) -> None:
    with pytest.raises(ValueError, match="architectures"):
        setup(moto_aws_client, ec2=True, instance_types=("c7a.xlarge", "c7g.xlarge"))


@pytest.mark.slow
def test_ec2_falls_back_when_the_ami_parameter_is_missing(
    moto_aws_client: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    # moto ships the SSM public parameters; a region or emulator without them must still work.
    real_call = Aws.call

    def call(self: Aws, service: str, operation: str, **params: Any) -> dict[str, Any]:
        if (service, operation) == ("ssm", "get_parameter") and params["Name"].startswith(
            "/aws/service/ecs/"
        ):
            params = {**params, "Name": "/no/such/parameter"}
        return real_call(self, service, operation, **params)

    monkeypatch.setattr(Aws, "call", call)
    report = setup(moto_aws_client, ec2=True)
    assert status_of(report, "launch template") == "created"
    assert any("SSM parameter for the ECS-optimised AMI is missing" in n for n in report.notes)


@pytest.mark.slow
def test_teardown_removes_everything_but_the_bucket(moto_aws_client: Aws) -> None:
    aws = moto_aws_client
    s = setup(aws, ec2=True).settings
    names = resource_names("starburst", "us-east-1")
    report = teardown(aws, s)
    assert report.ok
    by_kind = {r.kind: r.status for r in report.resources if r.kind != "IAM role"}
    assert by_kind == {
        "capacity provider": "removed",
        "Auto Scaling group": "removed",
        "launch template": "removed",
        "ECS cluster": "removed",
        "security group": "removed",
        "log group": "removed",
        "ECR repository": "removed",
        "SSM parameter": "removed",
        "S3 bucket": "kept",
        "S3 endpoint": "removed",
        "task definitions": "absent",
    }
    assert {r.status for r in report.resources if r.kind == "IAM role"} == {"removed"}
    assert "kept" in str(report) and "delete_bucket=True" in str(report)

    clusters = aws.call("ecs", "describe_clusters", clusters=[s.cluster])["clusters"]
    assert all(c["status"] != "ACTIVE" for c in clusters)
    roles = {r["RoleName"] for r in aws.call("iam", "list_roles")["Roles"]}
    assert not roles & {names.execution_role, names.task_role, names.instance_role}
    assert aws.call("iam", "list_instance_profiles")["InstanceProfiles"] == []
    assert aws.call("autoscaling", "describe_auto_scaling_groups")["AutoScalingGroups"] == []
    assert (
        aws.call("logs", "describe_log_groups", logGroupNamePrefix="/starburst")["logGroups"] == []
    )
    assert aws.call("ecr", "describe_repositories")["repositories"] == []
    with pytest.raises(AwsError, match="ParameterNotFound"):
        aws.call("ssm", "get_parameter", Name=s.secret_parameter)
    aws.call("s3", "head_bucket", Bucket=s.bucket)  # still there

    second = teardown(aws, s)
    assert second.ok
    assert {r.status for r in second.resources} == {"absent", "kept"}


@pytest.mark.slow
def test_teardown_deletes_the_bucket_only_when_asked_and_only_if_setup_made_it(
    moto_aws_client: Aws, moto_serves_tls: None
) -> None:
    aws = moto_aws_client
    s = setup(aws).settings
    for i in range(3):
        aws.call("s3", "put_object", Bucket=s.bucket, Key=f"starburst/s1/{i}", Body=b"x")
    report = teardown(aws, s, delete_bucket=True)
    assert [r.status for r in report.resources if r.kind == "S3 bucket"] == ["removed"]
    assert s.bucket not in {b["Name"] for b in aws.call("s3", "list_buckets")["Buckets"]}

    # an adopted bucket loses only the session prefix
    aws.call("s3", "create_bucket", Bucket="my-lab-data")
    aws.call("s3", "put_object", Bucket="my-lab-data", Key="raw/keep.csv", Body=b"1")
    adopted = setup(aws, bucket="my-lab-data").settings
    aws.call("s3", "put_object", Bucket="my-lab-data", Key="starburst/s1/0", Body=b"x")
    report = teardown(aws, adopted, delete_bucket=True)
    (row,) = [r for r in report.resources if r.kind == "S3 bucket"]
    assert row.status == "kept" and "not created by setup" in row.detail
    keys = [
        o["Key"]
        for o in aws.call("s3", "list_objects_v2", Bucket="my-lab-data").get("Contents", [])
    ]
    assert keys == ["raw/keep.csv"]


@pytest.mark.slow
def test_access_denied_names_the_missing_permission(moto_aws_client: Aws) -> None:
    aws = moto_aws_client
    ecs = aws.client("ecs")
    with Stubber(ecs) as stub:
        stub.add_response(
            "describe_clusters",
            {
                "clusters": [],
                "failures": [
                    {
                        "arn": f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/starburst",
                        "reason": "MISSING",
                    }
                ],
            },
        )
        stub.add_client_error(
            "create_cluster",
            service_error_code="AccessDeniedException",
            service_message="User is not authorized to perform ecs:CreateCluster",
            http_status_code=400,
        )
        with pytest.raises(AwsPermissionError) as caught:
            setup(aws)
    assert caught.value.permission == "ecs:CreateCluster"
    assert "ecs:CreateCluster" in str(caught.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prefix": "/"}, "prefix must not be empty"),
        ({"cluster": "a" * 256}, "cluster name"),
        ({"cluster": "no spaces"}, "cluster name"),
        ({"lifecycle_days": 0}, "lifecycle_days"),
        ({"log_retention_days": 10}, "log_retention_days"),
        ({"ec2": True, "instance_types": ()}, "instance type"),
    ],
)
def test_bad_arguments_fail_before_any_call(kwargs: dict[str, Any], message: str) -> None:
    class NoCalls(Aws):
        def __init__(self) -> None:
            self.region = "us-east-1"

        def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
            raise AssertionError(f"unexpected call {service}.{operation}")

    with pytest.raises(ValueError, match=message):
        setup(NoCalls(), **kwargs)


def test_teardown_refuses_another_region(moto_aws_client: Aws) -> None:
    settings = AwsSettings(region="eu-west-1", bucket="b")
    with pytest.raises(ValueError, match="eu-west-1"):
        teardown(moto_aws_client, settings)


@pytest.mark.slow
def test_ec2_waits_for_a_new_instance_profile_to_reach_ec2(
    moto_aws_client: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    # AWS refuses the group for a few seconds while the new profile propagates; moto never
    # does, so the first refusal is stubbed.
    from starburst_executor.aws import setup as setup_module

    sleeps: list[float] = []
    monkeypatch.setattr("starburst_executor.aws.setup.time.sleep", sleeps.append)
    real_call = Aws.call
    refusals = ["Invalid IamInstanceProfile"]

    def call(self: Aws, service: str, operation: str, **params: Any) -> dict[str, Any]:
        if operation == "create_auto_scaling_group" and refusals:
            from starburst_executor.errors import AwsError

            raise AwsError(refusals.pop(), "ValidationError")
        return real_call(self, service, operation, **params)

    monkeypatch.setattr(Aws, "call", call)
    report = setup(moto_aws_client, ec2=True)
    assert status_of(report, "Auto Scaling group") == "created"
    assert sleeps == [setup_module.IAM_PROPAGATION_DELAY]


# -- issue 7: real-account failures ------------------------------------------------------------


def default_vpc(aws: Aws) -> str:
    (vpc,) = aws.call("ec2", "describe_vpcs", Filters=[{"Name": "isDefault", "Values": ["true"]}])[
        "Vpcs"
    ]
    return str(vpc["VpcId"])


def s3_endpoints(aws: Aws, vpc: str) -> list[dict[str, Any]]:
    found = aws.call(
        "ec2", "describe_vpc_endpoints", Filters=[{"Name": "vpc-id", "Values": [vpc]}]
    )["VpcEndpoints"]
    return [
        e
        for e in found
        if e["ServiceName"] == "com.amazonaws.us-east-1.s3"
        and e["State"].lower() not in ("deleted", "deleting")
    ]


@pytest.mark.slow
def test_ec2_workers_get_an_s3_gateway_endpoint(moto_aws_client: Aws) -> None:
    # awsvpc tasks on EC2 get no public IP and a default VPC has no NAT: without a gateway
    # endpoint on the subnets' route table the workers cannot reach S3.
    aws = moto_aws_client
    report = setup(aws, ec2=True)
    vpc = default_vpc(aws)
    (endpoint,) = s3_endpoints(aws, vpc)
    assert endpoint["VpcEndpointType"] == "Gateway"
    (main,) = [
        t["RouteTableId"]
        for t in aws.call(
            "ec2", "describe_route_tables", Filters=[{"Name": "vpc-id", "Values": [vpc]}]
        )["RouteTables"]
        if any(a.get("Main") for a in t.get("Associations", []))
    ]
    assert endpoint["RouteTableIds"] == [main]
    assert {"Key": "starburst:cluster", "Value": "starburst"} in endpoint["Tags"]
    assert status_of(report, "S3 endpoint") == "created"
    assert report.settings.vpc_id == vpc

    again = setup(aws, ec2=True)
    assert status_of(again, "S3 endpoint") == "exists" and not again.changed
    assert len(s3_endpoints(aws, vpc)) == 1


@pytest.mark.slow
def test_fargate_only_setup_leaves_the_vpc_routes_alone(moto_aws_client: Aws) -> None:
    aws = moto_aws_client
    setup(aws)
    assert s3_endpoints(aws, default_vpc(aws)) == []


@pytest.mark.slow
def test_an_existing_s3_endpoint_is_used_and_kept(moto_aws_client: Aws) -> None:
    aws = moto_aws_client
    vpc = default_vpc(aws)
    tables = [
        t["RouteTableId"]
        for t in aws.call(
            "ec2", "describe_route_tables", Filters=[{"Name": "vpc-id", "Values": [vpc]}]
        )["RouteTables"]
    ]
    theirs = aws.call(
        "ec2",
        "create_vpc_endpoint",
        VpcId=vpc,
        VpcEndpointType="Gateway",
        ServiceName="com.amazonaws.us-east-1.s3",
        RouteTableIds=tables,
    )["VpcEndpoint"]["VpcEndpointId"]
    settings = setup(aws, ec2=True).settings
    assert [e["VpcEndpointId"] for e in s3_endpoints(aws, vpc)] == [theirs]
    report = teardown(aws, settings)
    assert [r.status for r in report.resources if r.kind == "S3 endpoint"] == ["absent"]
    assert [e["VpcEndpointId"] for e in s3_endpoints(aws, vpc)] == [theirs]


@pytest.mark.slow
def test_teardown_with_delete_bucket_leaves_nothing(
    moto_aws_client: Aws, moto_serves_tls: None
) -> None:
    aws = moto_aws_client
    s = setup(aws, ec2=True).settings
    container = [{"name": "worker", "image": "x", "memory": 512}]
    for family in (
        "starburst-worker-0123456789ab",
        "starburst-worker-0123456789ab",
        "starburst-worker-ba9876543210",
    ):
        aws.call("ecs", "register_task_definition", family=family, containerDefinitions=container)
    # another cluster's family shares the prefix: not ours
    aws.call(
        "ecs",
        "register_task_definition",
        family="starburst-worker-x-worker-0123456789ab",
        containerDefinitions=container,
    )
    aws.call("s3", "put_object", Bucket=s.bucket, Key="starburst/s1/0", Body=b"x")

    report = teardown(aws, s, delete_bucket=True)
    assert report.ok, str(report)
    (definitions,) = [r for r in report.resources if r.kind == "task definitions"]
    assert definitions.status == "removed" and "3 revision(s) in 2 families" in definitions.detail
    listed = set(aws.call("ecs", "list_task_definitions")["taskDefinitionArns"])
    assert {a.rsplit("/", 1)[-1] for a in listed} == {"starburst-worker-x-worker-0123456789ab:1"}
    assert s3_endpoints(aws, s.vpc_id) == []
    assert s.bucket not in {b["Name"] for b in aws.call("s3", "list_buckets")["Buckets"]}
    with pytest.raises(AwsError, match="ParameterNotFound"):
        aws.call("ssm", "get_parameter", Name=s.secret_parameter)
    groups = aws.call(
        "ec2",
        "describe_security_groups",
        Filters=[{"Name": "group-name", "Values": ["starburst-workers"]}],
    )["SecurityGroups"]
    assert groups == []
    assert aws.call("ec2", "describe_launch_templates")["LaunchTemplates"] == []
    assert (
        aws.call("ecs", "describe_capacity_providers", capacityProviders=[s.ec2_capacity_provider])[
            "capacityProviders"
        ]
        == []
    )


@pytest.mark.slow
def test_setup_uses_the_named_subnets_of_the_named_vpc(moto_aws_client: Aws) -> None:
    aws = moto_aws_client
    vpc = default_vpc(aws)
    subnets = sorted(
        x["SubnetId"]
        for x in aws.call("ec2", "describe_subnets", Filters=[{"Name": "vpc-id", "Values": [vpc]}])[
            "Subnets"
        ]
    )[:2]
    report = setup(aws, vpc_id=vpc, subnets=subnets)
    assert sorted(report.settings.subnets) == subnets
    assert report.settings.vpc_id == vpc
    (sg,) = aws.call("ec2", "describe_security_groups", GroupIds=[report.settings.security_group])[
        "SecurityGroups"
    ]
    assert sg["VpcId"] == vpc
    # the VPC follows from the subnets when not named
    assert setup(aws, subnets=subnets).settings.vpc_id == vpc


@pytest.mark.slow
def test_setup_refuses_subnets_of_another_vpc(moto_aws_client: Aws) -> None:
    aws = moto_aws_client
    other = aws.call("ec2", "create_vpc", CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    foreign = aws.call("ec2", "create_subnet", VpcId=other, CidrBlock="10.9.1.0/24")["Subnet"][
        "SubnetId"
    ]
    with pytest.raises(ValueError, match=f"{foreign} is in {other}"):
        setup(aws, vpc_id=default_vpc(aws), subnets=[foreign])
    with pytest.raises(ValueError, match="no subnet subnet-00000000"):
        setup(aws, subnets=["subnet-00000000"])


@pytest.mark.slow
def test_at_most_16_subnets_spread_over_the_zones(moto_aws_client: Aws) -> None:
    # RunTask's awsvpcConfiguration takes at most 16 subnets.
    aws = moto_aws_client
    vpc = aws.call("ec2", "create_vpc", CidrBlock="10.8.0.0/16")["Vpc"]["VpcId"]
    zones = ["us-east-1a", "us-east-1b", "us-east-1c"]
    for i in range(20):
        aws.call(
            "ec2",
            "create_subnet",
            VpcId=vpc,
            CidrBlock=f"10.8.{i}.0/24",
            AvailabilityZone=zones[i % 3],
        )
    report = setup(aws, vpc_id=vpc)
    chosen = aws.call("ec2", "describe_subnets", SubnetIds=list(report.settings.subnets))["Subnets"]
    assert len(chosen) == 16
    per_zone = sorted(sum(s["AvailabilityZone"] == z for s in chosen) for z in zones)
    assert per_zone == [5, 5, 6]
    assert any("16 of them" in n for n in report.notes)
    assert not setup(aws, vpc_id=vpc).changed


@pytest.mark.parametrize("region", ["ap-southeast-2", "us-gov-west-1"])
@pytest.mark.slow
def test_long_cluster_names_fit_every_limit(
    moto_one_account: str, _shared_boto3_session: Any, region: str
) -> None:
    aws = Aws(region, session=_shared_boto3_session, retry_sleep=lambda _: None)
    cluster = "c" * 60
    names = resource_names(cluster, region)
    for role in (names.execution_role, names.task_role, names.instance_role):
        assert len(role) <= 64, role
        assert role.endswith(region)
    assert len(names.ec2) <= 128
    assert names.execution_role != resource_names("c" * 59 + "d", region).execution_role
    # moto has no ECS-optimised AMI (parameter or image) in GovCloud: EC2 capacity (launch
    # template, group, instance role) is created in ap-southeast-2 only.
    ec2 = not region.startswith("us-gov")
    report = setup(aws, cluster=cluster, ec2=ec2)
    assert report.settings.execution_role_arn.endswith("/" + names.execution_role)
    assert report.settings.execution_role_arn.startswith(
        "arn:aws-us-gov:" if not ec2 else "arn:aws:"
    )
    assert not setup(aws, cluster=cluster, ec2=ec2).changed  # found again
    assert teardown(aws, report.settings, delete_bucket=True).ok


def create_kms_bucket(aws: Aws, bucket: str, key_id: str) -> None:
    aws.call("s3", "create_bucket", Bucket=bucket)
    aws.call(
        "s3",
        "put_bucket_encryption",
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {
                        "SSEAlgorithm": "aws:kms",
                        "KMSMasterKeyID": key_id,
                    }
                }
            ]
        },
    )


@pytest.mark.slow
def test_an_adopted_bucket_with_a_customer_key_grants_the_key(moto_aws_client: Aws) -> None:
    aws = moto_aws_client
    key = aws.call("kms", "create_key", Description="lab data")["KeyMetadata"]
    create_kms_bucket(aws, "lab-encrypted", key["KeyId"])  # a key id, not an ARN
    report = setup(aws, bucket="lab-encrypted")
    s = report.settings
    assert s.bucket_kms_key == key["Arn"]
    stored = aws.call(
        "iam",
        "get_role_policy",
        RoleName=s.task_role_arn.rsplit("/", 1)[-1],
        PolicyName="starburst",
    )["PolicyDocument"]
    by_sid = {st["Sid"]: st for st in policies.parse_document(stored)["Statement"]}
    assert by_sid["UseBucketKey"]["Action"] == ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"]
    assert by_sid["UseBucketKey"]["Resource"] == [key["Arn"]]
    # the bucket's encryption is the owner's: kept
    rules = aws.call("s3", "get_bucket_encryption", Bucket="lab-encrypted")[
        "ServerSideEncryptionConfiguration"
    ]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    from starburst_executor.aws.resources.base import Place
    from starburst_executor.aws.setup import scope

    user = policies.user_policy(scope(Place(aws, ACCOUNT, "aws"), s))
    granted = {a for st in user["Statement"] if key["Arn"] in st["Resource"] for a in st["Action"]}
    assert {"kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"} <= granted
    assert not setup(aws, bucket="lab-encrypted").changed


@pytest.mark.slow
def test_the_aws_managed_s3_key_needs_no_grant(moto_aws_client: Aws) -> None:
    aws = moto_aws_client
    create_kms_bucket(aws, "lab-managed-key", "alias/aws/s3")
    s = setup(aws, bucket="lab-managed-key").settings
    assert s.bucket_kms_key == ""


@pytest.mark.slow
def test_ecs_service_linked_role_is_created_before_capacity_providers(
    moto_aws_client: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starburst_executor.aws import setup as setup_module

    order: list[str] = []
    sleeps: list[float] = []
    monkeypatch.setattr("starburst_executor.aws.setup.time.sleep", sleeps.append)
    real_call = Aws.call
    refusals = [
        "Unable to assume the service linked role. Please verify that the ECS service "
        "linked role exists."
    ]

    def call(self: Aws, service: str, operation: str, **params: Any) -> dict[str, Any]:
        order.append(operation)
        if operation == "put_cluster_capacity_providers" and refusals:
            raise AwsError(refusals.pop(), "InvalidParameterException")
        return real_call(self, service, operation, **params)

    monkeypatch.setattr(Aws, "call", call)
    report = setup(moto_aws_client)
    assert status_of(report, "service-linked role") == "created"
    assert order.index("create_service_linked_role") < order.index("put_cluster_capacity_providers")
    assert sleeps == [setup_module.IAM_PROPAGATION_DELAY]  # waited for it once
    assert status_of(setup(moto_aws_client), "service-linked role") == "exists"


@pytest.mark.slow
def test_a_taken_service_linked_role_name_means_it_exists(
    moto_aws_client: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_call = Aws.call

    def call(self: Aws, service: str, operation: str, **params: Any) -> dict[str, Any]:
        if operation == "create_service_linked_role":
            raise AwsError(
                "Service role name AWSServiceRoleForECS has been taken in this "
                "account, please try a different suffix.",
                "InvalidInput",
            )
        return real_call(self, service, operation, **params)

    monkeypatch.setattr(Aws, "call", call)
    assert status_of(setup(moto_aws_client), "service-linked role") == "exists"
