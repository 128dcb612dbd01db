"""The generated IAM documents: named actions on named resources, nothing wider."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from starburst_executor.aws import policies

ACCOUNT, REGION = "123456789012", "eu-west-1"
BUCKET, PREFIX = "starburst-123456789012-eu-west-1", "starburst"

SCOPE = policies.Scope(
    partition="aws",
    region=REGION,
    account=ACCOUNT,
    bucket=BUCKET,
    prefix=PREFIX,
    cluster="starburst",
    task_family="starburst-worker",
    execution_role_arn=f"arn:aws:iam::{ACCOUNT}:role/starburst-execution-{REGION}",
    task_role_arn=f"arn:aws:iam::{ACCOUNT}:role/starburst-task-{REGION}",
    secret_parameter="/starburst/secret-key",
    log_group="/starburst/workers",
    ecr_repository="starburst-worker",
    autoscaling_group="starburst-ec2",
)

KMS_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
SCOPE_EC2 = policies.Scope(**{**SCOPE.__dict__, "instance_role": f"starburst-ec2-{REGION}"})

GRANTS = {
    "task role": policies.task_role_policy(bucket=BUCKET, prefix=PREFIX),
    "execution role": policies.execution_role_policy(
        secret_parameter="/starburst/secret-key",
        log_group="/starburst/workers",
        region=REGION,
        account=ACCOUNT,
    ),
    "user": policies.user_policy(SCOPE),
    "user without EC2": policies.user_policy(
        policies.Scope(**{**SCOPE.__dict__, "autoscaling_group": ""})
    ),
    "user with a KMS bucket": policies.user_policy(
        policies.Scope(**{**SCOPE.__dict__, "kms_key": KMS_KEY})
    ),
    "setup": policies.setup_policy(SCOPE_EC2),
    "setup without EC2": policies.setup_policy(
        policies.Scope(**{**SCOPE.__dict__, "autoscaling_group": "", "instance_role": ""})
    ),
    "task role with a KMS bucket": policies.task_role_policy(
        bucket=BUCKET, prefix=PREFIX, kms_key=KMS_KEY
    ),
}
TRUSTS = {
    "ecs tasks": policies.ecs_tasks_trust_policy(ACCOUNT),
    "ec2 instances": policies.ec2_instance_trust_policy(),
}


def statements(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    assert document["Version"] == "2012-10-17"
    yield from document["Statement"]


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


@pytest.mark.parametrize("name", GRANTS)
def test_grants_name_every_action(name: str) -> None:
    for statement in statements(GRANTS[name]):
        assert statement["Effect"] == "Allow"
        for action in as_list(statement["Action"]):
            assert "*" not in action, f"{name}: wildcard action {action}"
            service, _, verb = action.partition(":")
            assert service and verb[:1].isupper(), action


@pytest.mark.parametrize("name", GRANTS)
def test_only_resourceless_actions_use_a_star_resource(name: str) -> None:
    for statement in statements(GRANTS[name]):
        resources = as_list(statement["Resource"])
        if "*" in resources:
            assert resources == ["*"]
            allowed = (
                policies.SETUP_STAR_ACTIONS
                if name.startswith("setup")
                else policies.STAR_ONLY_ACTIONS
            )
            assert set(as_list(statement["Action"])) <= allowed, statement
        else:
            for resource in resources:
                assert resource.startswith("arn:aws:"), resource
                # an ARN naming a resource: service, then a non-empty resource part
                assert resource.split(":", 5)[5] not in ("", "*"), resource


def test_star_only_actions_are_the_documented_ones() -> None:
    # The list a reviewer checks against the Service Authorization Reference.
    assert {
        "ecr:GetAuthorizationToken",
        "ecs:RegisterTaskDefinition",
        "ecs:DescribeTaskDefinition",
        "ec2:DescribeSubnets",
        "ec2:DescribeSecurityGroups",
        "ec2:DescribeSpotPriceHistory",
        "pricing:GetProducts",
        "servicequotas:GetServiceQuota",
        "autoscaling:DescribeAutoScalingGroups",
        "ec2:DescribeInstanceTypes",
        "ec2:DescribeRouteTables",
        "ec2:DescribeVpcEndpoints",
        "ec2:DescribeLaunchTemplates",
        "ec2:DescribeLaunchTemplateVersions",
        "ecs:DescribeCapacityProviders",
        "ecs:DeregisterTaskDefinition",
        "ecs:ListTaskDefinitions",
        "ecs:ListTaskDefinitionFamilies",
        "sts:GetCallerIdentity",
    } == policies.STAR_ONLY_ACTIONS
    assert {
        "ec2:DescribeVpcs",
        "ec2:DescribeImages",
        "logs:DescribeLogGroups",
        "kms:DescribeKey",
    } == policies.SETUP_STAR_ACTIONS - policies.STAR_ONLY_ACTIONS


def test_task_role_reaches_only_the_prefix() -> None:
    document = GRANTS["task role"]
    by_sid = {s["Sid"]: s for s in statements(document)}
    objects = by_sid["SessionObjects"]
    assert objects["Action"] == ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"]
    assert objects["Resource"] == [f"arn:aws:s3:::{BUCKET}/{PREFIX}/*"]
    listing = by_sid["ListSessionKeys"]
    assert listing["Action"] == ["s3:ListBucket"]
    assert listing["Resource"] == [f"arn:aws:s3:::{BUCKET}"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{PREFIX}/*"]}}
    assert len(by_sid) == 2


def test_execution_role_reads_one_parameter_and_writes_one_log_group() -> None:
    by_sid = {s["Sid"]: s for s in statements(GRANTS["execution role"])}
    assert by_sid["ReadSigningKey"]["Action"] == ["ssm:GetParameters"]
    assert by_sid["ReadSigningKey"]["Resource"] == [
        f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/starburst/secret-key"
    ]
    logs = by_sid["WriteWorkerLogs"]
    assert logs["Action"] == ["logs:CreateLogStream", "logs:PutLogEvents"]
    group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/starburst/workers"
    assert logs["Resource"] == [group, f"{group}:*"]
    assert policies.managed_policy_arn(policies.ECS_EXECUTION_MANAGED_POLICY) == (
        "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
    )


def test_ecs_trust_is_limited_to_this_account() -> None:
    (statement,) = statements(TRUSTS["ecs tasks"])
    assert statement["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}


def test_bucket_policy_denies_plain_http_for_everyone() -> None:
    (statement,) = statements(policies.bucket_tls_policy(BUCKET))
    # The only wildcard action anywhere, and in a Deny: it widens a refusal, grants nothing.
    assert statement["Effect"] == "Deny"
    assert statement["Principal"] == "*"
    assert statement["Action"] == "s3:*"
    assert statement["Resource"] == [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_no_wildcard_action_in_any_allow() -> None:
    documents = [*GRANTS.values(), *TRUSTS.values(), policies.bucket_tls_policy(BUCKET)]
    text = json.dumps(documents)
    assert '"*"' not in json.dumps([s["Action"] for d in documents for s in d["Statement"]])
    assert text.count('"s3:*"') == 1  # the TLS deny above


def test_user_policy_covers_the_client_and_scopes_ecs_to_the_cluster() -> None:
    document = GRANTS["user"]
    actions = {a for s in statements(document) for a in as_list(s["Action"])}
    assert {
        "ecs:RunTask",
        "ecs:StopTask",
        "ecs:DescribeTasks",
        "ecs:ListTasks",
        "iam:PassRole",
        "s3:GetObject",
        "s3:PutObject",
        "s3:ListBucket",
        "ssm:GetParameter",
        "logs:GetLogEvents",
        "servicequotas:GetServiceQuota",
        "pricing:GetProducts",
        "ec2:DescribeSpotPriceHistory",
        "autoscaling:UpdateAutoScalingGroup",
    } <= actions
    cluster = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/starburst"
    by_sid = {s["Sid"]: s for s in statements(document)}
    assert by_sid["RunWorkers"]["Resource"] == [
        f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/starburst-worker-*"
    ]
    for sid in ("RunWorkers", "WatchAndStopWorkers", "ListWorkers"):
        assert by_sid[sid]["Condition"] == {"ArnEquals": {"ecs:cluster": cluster}}, sid
    passing = by_sid["PassWorkerRoles"]
    assert passing["Resource"] == [SCOPE.execution_role_arn, SCOPE.task_role_arn]
    assert passing["Condition"] == {
        "StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}
    }
    assert "autoscaling:UpdateAutoScalingGroup" not in {
        a for s in statements(GRANTS["user without EC2"]) for a in as_list(s["Action"])
    }


def test_same_policy_ignores_order_and_url_encoding() -> None:
    document = GRANTS["task role"]
    shuffled = {**document, "Statement": list(reversed(document["Statement"]))}
    encoded = json.dumps(shuffled).replace(" ", "%20").replace(":", "%3A")
    assert policies.same_policy(document, shuffled)
    assert policies.same_policy(document, encoded)
    assert not policies.same_policy(
        document, policies.task_role_policy(bucket=BUCKET, prefix="other")
    )


def test_iam_accepts_every_document(moto_aws_client: Any) -> None:
    # moto runs IAM's document validation (syntax, required elements, ARN shapes).
    aws = moto_aws_client
    for name, document in GRANTS.items():
        aws.call(
            "iam",
            "create_policy",
            PolicyName=name.replace(" ", "-"),
            PolicyDocument=json.dumps(document),
        )
    for name, document in TRUSTS.items():
        aws.call(
            "iam",
            "create_role",
            RoleName=name.replace(" ", "-"),
            AssumeRolePolicyDocument=json.dumps(document),
        )
    aws.call("s3", "create_bucket", Bucket=BUCKET)
    aws.call(
        "s3",
        "put_bucket_policy",
        Bucket=BUCKET,
        Policy=json.dumps(policies.bucket_tls_policy(BUCKET)),
    )


# -- Aws.action(): IAM names of the calls ------------------------------------------------------


@pytest.mark.parametrize(
    "service, operation, expected",
    [
        ("s3", "list_objects_v2", ("s3:ListBucket",)),
        ("s3", "list_objects", ("s3:ListBucket",)),
        ("s3", "head_bucket", ("s3:ListBucket",)),
        ("s3", "get_bucket_encryption", ("s3:GetEncryptionConfiguration",)),
        ("s3", "put_bucket_encryption", ("s3:PutEncryptionConfiguration",)),
        ("s3", "delete_objects", ("s3:DeleteObject",)),
        ("s3", "head_object", ("s3:GetObject",)),
        ("s3", "get_public_access_block", ("s3:GetBucketPublicAccessBlock",)),
        ("s3", "put_public_access_block", ("s3:PutBucketPublicAccessBlock",)),
        ("s3", "get_bucket_lifecycle_configuration", ("s3:GetLifecycleConfiguration",)),
        ("s3", "put_bucket_lifecycle_configuration", ("s3:PutLifecycleConfiguration",)),
        ("s3", "delete_bucket_lifecycle", ("s3:PutLifecycleConfiguration",)),
        ("s3", "list_object_versions", ("s3:ListBucketVersions",)),
        ("s3", "get_bucket_location", ("s3:GetBucketLocation",)),
        ("s3", "copy_object", ("s3:PutObject", "s3:GetObject")),
        ("s3", "get_object", ("s3:GetObject",)),
        ("logs", "filter_log_events", ("logs:FilterLogEvents",)),
        ("ecs", "run_task", ("ecs:RunTask",)),
        ("ecs", "describe_capacity_providers", ("ecs:DescribeCapacityProviders",)),
        ("service-quotas", "get_service_quota", ("servicequotas:GetServiceQuota",)),
        ("autoscaling", "update_auto_scaling_group", ("autoscaling:UpdateAutoScalingGroup",)),
        ("sts", "get_caller_identity", ("sts:GetCallerIdentity",)),
        ("iam", "create_service_linked_role", ("iam:CreateServiceLinkedRole",)),
    ],
)
def test_aws_action_names_the_iam_action(
    service: str, operation: str, expected: tuple[str, ...]
) -> None:
    from starburst_executor.aws.client import Aws

    assert Aws.actions(service, operation) == expected
    assert Aws.action(service, operation) == expected[0]


# -- the policies cover every call -------------------------------------------------------------


def granted(document: dict[str, Any]) -> set[str]:
    return {a for s in statements(document) for a in as_list(s["Action"])}


def _package_calls() -> set[tuple[str, str]]:
    """Every (service, operation) the package calls outside setup/teardown: ``aws.call`` and
    ``aws.paginate`` with literal names, and the S3 store's boto3 client methods."""
    import ast
    from pathlib import Path

    import starburst_executor

    root = Path(starburst_executor.__file__).parent
    setup_only = {root / "aws" / "setup.py"} | set((root / "aws" / "resources").glob("*.py"))
    found: set[tuple[str, str]] = set()
    for path in root.rglob("*.py"):
        if path in setup_only:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            names = [
                a.value
                for a in node.args[:2]
                if isinstance(a, ast.Constant) and isinstance(a.value, str)
            ]
            if node.func.attr in ("call", "paginate") and len(names) == 2:
                found.add((names[0], names[1]))
            target = node.func.value
            if (
                path.name == "s3.py"
                and isinstance(target, ast.Attribute)
                and target.attr == "_client"
                and node.func.attr != "close"
            ):
                found.add(("s3", node.func.attr))
    return found


def test_the_user_policy_covers_every_call_the_package_makes() -> None:
    from starburst_executor.aws.client import Aws

    calls = _package_calls()
    assert ("ecs", "describe_capacity_providers") in calls and ("s3", "get_object") in calls
    user = granted(policies.user_policy(SCOPE))
    missing = {f"{s}.{o}: {a}" for s, o in calls for a in Aws.actions(s, o) if a not in user}
    assert missing == set()


class Recorder:
    """Every (service, operation) that goes through ``Aws.call`` meanwhile."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from starburst_executor.aws.client import Aws

        self.calls: set[tuple[str, str]] = set()
        real = Aws.call

        def call(aws: Aws, service: str, operation: str, **params: Any) -> dict[str, Any]:
            self.calls.add((service, operation))
            return real(aws, service, operation, **params)

        monkeypatch.setattr(Aws, "call", call)

    def missing_from(self, document: dict[str, Any]) -> set[str]:
        from starburst_executor.aws.client import Aws

        allowed = granted(document)
        return {a for s, o in self.calls for a in Aws.actions(s, o) if a not in allowed}


@pytest.mark.slow
def test_setup_and_teardown_call_only_what_the_setup_policy_grants(
    moto_aws_client: Any, moto_serves_tls: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starburst_executor.aws.resources.base import Place
    from starburst_executor.aws.setup import scope, setup, teardown

    aws = moto_aws_client
    key = aws.call("kms", "create_key")["KeyMetadata"]
    aws.call("kms", "create_alias", AliasName="alias/lab", TargetKeyId=key["KeyId"])
    aws.call("s3", "create_bucket", Bucket="lab-data")
    aws.call(
        "s3",
        "put_bucket_encryption",
        Bucket="lab-data",
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {
                        "SSEAlgorithm": "aws:kms",
                        "KMSMasterKeyID": "alias/lab",
                    }
                }
            ]
        },
    )
    recorder = Recorder(monkeypatch)
    settings = setup(aws, bucket="lab-data", ec2=True).settings
    setup(aws, bucket="lab-data", ec2=True)
    teardown(aws, settings, delete_bucket=True)
    assert ("iam", "create_service_linked_role") in recorder.calls
    assert ("kms", "describe_key") in recorder.calls
    document = policies.setup_policy(scope(Place(aws, ACCOUNT, "aws"), settings))
    assert recorder.missing_from(document) == set()


@pytest.mark.slow
def test_doctor_calls_only_what_the_user_policy_grants(
    moto_aws_client: Any, moto_serves_tls: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starburst_executor.aws.doctor import doctor
    from starburst_executor.aws.resources.base import Place
    from starburst_executor.aws.setup import scope, setup

    aws = moto_aws_client
    settings = setup(aws, ec2=True).settings
    recorder = Recorder(monkeypatch)
    checks = doctor(aws, settings, docker="/nonexistent/docker")
    assert {"EC2 capacity", "S3 endpoint"} <= {c.name for c in checks}
    document = policies.user_policy(scope(Place(aws, ACCOUNT, "aws"), settings))
    assert recorder.missing_from(document) == set()
