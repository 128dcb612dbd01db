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
    partition="aws", region=REGION, account=ACCOUNT, bucket=BUCKET, prefix=PREFIX,
    cluster="starburst", task_family="starburst-worker",
    execution_role_arn=f"arn:aws:iam::{ACCOUNT}:role/starburst-execution-{REGION}",
    task_role_arn=f"arn:aws:iam::{ACCOUNT}:role/starburst-task-{REGION}",
    secret_parameter="/starburst/secret-key", log_group="/starburst/workers",
    ecr_repository="starburst-worker", autoscaling_group="starburst-ec2",
)

GRANTS = {
    "task role": policies.task_role_policy(bucket=BUCKET, prefix=PREFIX),
    "execution role": policies.execution_role_policy(
        secret_parameter="/starburst/secret-key", log_group="/starburst/workers",
        region=REGION, account=ACCOUNT),
    "user": policies.user_policy(SCOPE),
    "user without EC2": policies.user_policy(
        policies.Scope(**{**SCOPE.__dict__, "autoscaling_group": ""})),
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
            assert set(as_list(statement["Action"])) <= policies.STAR_ONLY_ACTIONS, statement
        else:
            for resource in resources:
                assert resource.startswith("arn:aws:"), resource
                # an ARN naming a resource: service, then a non-empty resource part
                assert resource.split(":", 5)[5] not in ("", "*"), resource


def test_star_only_actions_are_the_documented_ones() -> None:
    # The list a reviewer checks against the Service Authorization Reference.
    assert {
        "ecr:GetAuthorizationToken", "ecs:RegisterTaskDefinition",
        "ecs:DescribeTaskDefinition", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups",
        "ec2:DescribeSpotPriceHistory", "pricing:GetProducts", "servicequotas:GetServiceQuota",
        "autoscaling:DescribeAutoScalingGroups",
    } == policies.STAR_ONLY_ACTIONS


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
        f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/starburst/secret-key"]
    logs = by_sid["WriteWorkerLogs"]
    assert logs["Action"] == ["logs:CreateLogStream", "logs:PutLogEvents"]
    group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/starburst/workers"
    assert logs["Resource"] == [group, f"{group}:*"]
    assert policies.managed_policy_arn(policies.ECS_EXECUTION_MANAGED_POLICY) == (
        "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy")


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
    assert {"ecs:RunTask", "ecs:StopTask", "ecs:DescribeTasks", "ecs:ListTasks",
            "iam:PassRole", "s3:GetObject", "s3:PutObject", "s3:ListBucket",
            "ssm:GetParameter", "logs:GetLogEvents", "servicequotas:GetServiceQuota",
            "pricing:GetProducts", "ec2:DescribeSpotPriceHistory",
            "autoscaling:UpdateAutoScalingGroup"} <= actions
    cluster = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/starburst"
    by_sid = {s["Sid"]: s for s in statements(document)}
    assert by_sid["RunWorkers"]["Resource"] == [
        f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/starburst-worker*"]
    for sid in ("RunWorkers", "WatchAndStopWorkers", "ListWorkers"):
        assert by_sid[sid]["Condition"] == {"ArnEquals": {"ecs:cluster": cluster}}, sid
    passing = by_sid["PassWorkerRoles"]
    assert passing["Resource"] == [SCOPE.execution_role_arn, SCOPE.task_role_arn]
    assert passing["Condition"] == {
        "StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}
    assert "autoscaling:UpdateAutoScalingGroup" not in {
        a for s in statements(GRANTS["user without EC2"]) for a in as_list(s["Action"])}


def test_same_policy_ignores_order_and_url_encoding() -> None:
    document = GRANTS["task role"]
    shuffled = {**document, "Statement": list(reversed(document["Statement"]))}
    encoded = json.dumps(shuffled).replace(" ", "%20").replace(":", "%3A")
    assert policies.same_policy(document, shuffled)
    assert policies.same_policy(document, encoded)
    assert not policies.same_policy(document, policies.task_role_policy(bucket=BUCKET,
                                                                        prefix="other"))


def test_iam_accepts_every_document(moto_aws_client: Any) -> None:
    # moto runs IAM's document validation (syntax, required elements, ARN shapes).
    aws = moto_aws_client
    for name, document in GRANTS.items():
        aws.call("iam", "create_policy", PolicyName=name.replace(" ", "-"),
                 PolicyDocument=json.dumps(document))
    for name, document in TRUSTS.items():
        aws.call("iam", "create_role", RoleName=name.replace(" ", "-"),
                 AssumeRolePolicyDocument=json.dumps(document))
    aws.call("s3", "create_bucket", Bucket=BUCKET)
    aws.call("s3", "put_bucket_policy", Bucket=BUCKET,
             Policy=json.dumps(policies.bucket_tls_policy(BUCKET)))
