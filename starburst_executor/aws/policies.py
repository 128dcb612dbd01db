"""Least-privilege IAM documents for the AWS backend, generated from resource names.

Every ``Allow`` names its actions (never ``s3:*`` or ``*``) and its resources (ARNs of the
bucket prefix, the cluster, the roles, the parameter, the log group, the repository).
Exceptions, each listed here and checked by the tests:

- :data:`STAR_ONLY_ACTIONS`: actions that AWS authorises only against ``"Resource": "*"``
  because they act on no resource (the Service Authorization Reference lists no resource
  type for them), e.g. ``ecr:GetAuthorizationToken`` or ``ec2:DescribeSubnets``.
- The bucket policy's TLS rule is a ``Deny`` of ``s3:*``: a deny must cover every action,
  since a deny that names actions would let the unnamed ones through over plain HTTP (AWS
  Config's ``s3-bucket-ssl-requests-only`` rule and Security Hub's S3.5 look for exactly
  this statement). A wildcard widens a deny; it never grants anything.

``sts:GetCallerIdentity`` is granted although AWS answers it for any valid credentials (even
with an explicit deny): the policies list every action the code calls, so that a recorded
call can be checked against them one by one.

:func:`setup_policy` is what an administrator grants to whoever runs ``starburst setup`` and
``starburst teardown`` (``starburst setup --print-policy``); :func:`user_policy` is what a
person running sessions needs (``starburst setup --print-policy user``).

The functions return plain dicts ready for ``json.dumps``; setup creates roles from them,
``starburst doctor`` compares the live policies against them, and ``user_policy`` prints what
the person running the client needs.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EC2_INSTANCE_MANAGED_POLICY",
    "ECS_EXECUTION_MANAGED_POLICY",
    "SETUP_STAR_ACTIONS",
    "STAR_ONLY_ACTIONS",
    "TLS_SID",
    "Scope",
    "bucket_tls_policy",
    "ec2_instance_trust_policy",
    "ecs_tasks_trust_policy",
    "execution_role_policy",
    "log_group_arns",
    "managed_policy_arn",
    "parameter_arn",
    "parse_document",
    "same_policy",
    "setup_policy",
    "task_role_policy",
    "tls_statement",
    "user_policy",
]

Policy = dict[str, Any]

VERSION = "2012-10-17"

# ECR pull (GetAuthorizationToken needs "*") and CloudWatch Logs writes, maintained by AWS.
ECS_EXECUTION_MANAGED_POLICY = "service-role/AmazonECSTaskExecutionRolePolicy"
# What the ECS agent on an EC2 container instance needs to register with the cluster.
EC2_INSTANCE_MANAGED_POLICY = "service-role/AmazonEC2ContainerServiceforEC2Role"

# Actions with no resource-level permissions: "Resource": "*" is the only form AWS accepts.
STAR_ONLY_ACTIONS: frozenset[str] = frozenset(
    {
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
    }
)
# More actions setup needs on "*": EC2's other Describe calls (no resource-level
# permissions), the log group listing, and kms:DescribeKey for an adopted bucket's key, which
# is not known before setup reads the bucket (read-only metadata).
SETUP_STAR_ACTIONS: frozenset[str] = STAR_ONLY_ACTIONS | frozenset(
    {
        "ec2:DescribeVpcs",
        "ec2:DescribeImages",
        "logs:DescribeLogGroups",
        "kms:DescribeKey",
    }
)

TLS_SID = "StarburstDenyInsecureTransport"


def managed_policy_arn(name: str, partition: str = "aws") -> str:
    """The ARN of an AWS-managed policy: ``service-role/X`` -> ``arn:aws:iam::aws:policy/...``."""
    return f"arn:{partition}:iam::aws:policy/{name}"


def parse_document(value: Any) -> dict[str, Any]:
    """A policy as AWS returns it (a dict, or URL-encoded JSON text) as a dict."""
    if isinstance(value, str):
        value = json.loads(urllib.parse.unquote(value))
    return dict(value)


def same_policy(a: Any, b: Any) -> bool:
    """Equal policy documents, ignoring the order of statements and of list elements."""

    def canon(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: canon(v) for k, v in value.items()}
        if isinstance(value, list):
            return sorted((canon(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
        return value

    return bool(canon(parse_document(a)) == canon(parse_document(b)))


def _doc(*statements: Policy) -> Policy:
    return {"Version": VERSION, "Statement": list(statements)}


def _allow(
    sid: str, actions: list[str], resources: list[str], condition: dict[str, Any] | None = None
) -> Policy:
    statement: Policy = {
        "Sid": sid,
        "Effect": "Allow",
        "Action": sorted(actions),
        "Resource": resources,
    }
    if condition:
        statement["Condition"] = condition
    return statement


def _bucket_arn(bucket: str, partition: str) -> str:
    return f"arn:{partition}:s3:::{bucket}"


def _objects_arn(bucket: str, prefix: str, partition: str) -> str:
    prefix = prefix.strip("/")
    return (
        f"{_bucket_arn(bucket, partition)}/{prefix}/*"
        if prefix
        else f"{_bucket_arn(bucket, partition)}/*"
    )


def _s3_session_statements(bucket: str, prefix: str, partition: str) -> list[Policy]:
    prefix = prefix.strip("/")
    # ListBucket is a bucket-level action: the s3:prefix condition keeps listings inside the
    # prefix. It also means HeadBucket (authorised as s3:ListBucket, with no prefix) is
    # denied: callers must probe the bucket with a prefixed listing instead.
    listing = {"StringLike": {"s3:prefix": [f"{prefix}/*"]}} if prefix else None
    return [
        _allow(
            "SessionObjects",
            ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            [_objects_arn(bucket, prefix, partition)],
        ),
        _allow("ListSessionKeys", ["s3:ListBucket"], [_bucket_arn(bucket, partition)], listing),
    ]


def _kms_statement(key_arn: str) -> Policy:
    # SSE-KMS with a customer-managed key: reading an object decrypts its data key, writing
    # one generates (and encrypts) a data key, both on the caller's behalf through S3.
    return _allow("UseBucketKey", ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"], [key_arn])


def task_role_policy(
    *, bucket: str, prefix: str, partition: str = "aws", kms_key: str = ""
) -> Policy:
    """The workers' role: read, write and delete objects under ``bucket/prefix/`` only (and
    use the bucket's customer-managed KMS key, when it has one).

    Args:
        bucket: the session bucket.
        prefix: the key prefix inside it ("" for the whole bucket).
        partition: ``aws``, ``aws-cn`` or ``aws-us-gov``.
        kms_key: ARN of the customer-managed KMS key encrypting the bucket ("" for none).
    """
    statements = _s3_session_statements(bucket, prefix, partition)
    if kms_key:
        statements.append(_kms_statement(kms_key))
    return _doc(*statements)


def parameter_arn(name: str, *, partition: str, region: str, account: str) -> str:
    """The ARN of an SSM parameter; a name's leading ``/`` is not doubled."""
    return f"arn:{partition}:ssm:{region}:{account}:parameter/{name.lstrip('/')}"


def log_group_arns(name: str, *, partition: str, region: str, account: str) -> list[str]:
    """The log group's ARN, and the pattern of its streams (``...:log-group:NAME:*``)."""
    group = f"arn:{partition}:logs:{region}:{account}:log-group:{name}"
    return [group, f"{group}:*"]


def execution_role_policy(
    *, secret_parameter: str, log_group: str, region: str, account: str, partition: str = "aws"
) -> Policy:
    """The inline policy of the ECS execution role, next to the managed
    :data:`ECS_EXECUTION_MANAGED_POLICY` (image pull; log writes on any group).

    It lets ECS read the signing key (injected into the container as a secret) and write to
    this log group.

    No ``kms:Decrypt``: the parameter is encrypted with the AWS-managed ``aws/ssm`` key, whose
    key policy already allows every principal of the account to decrypt through SSM
    (``kms:ViaService`` / ``kms:CallerAccount``). A customer-managed key would need
    ``kms:Decrypt`` on that key here.
    """
    scope = {"partition": partition, "region": region, "account": account}
    return _doc(
        _allow("ReadSigningKey", ["ssm:GetParameters"], [parameter_arn(secret_parameter, **scope)]),
        _allow(
            "WriteWorkerLogs",
            ["logs:CreateLogStream", "logs:PutLogEvents"],
            log_group_arns(log_group, **scope),
        ),
    )


def ecs_tasks_trust_policy(account: str) -> Policy:
    """Who may assume the execution and task roles: ECS tasks of this account only.

    ``aws:SourceAccount`` guards against the confused deputy: ECS acting for another account
    cannot assume these roles.
    """
    return _doc(
        {
            "Effect": "Allow",
            "Principal": {"Service": "ecs-tasks.amazonaws.com"},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"aws:SourceAccount": account}},
        }
    )


def ec2_instance_trust_policy() -> Policy:
    """Who may assume the EC2 container instances' role: EC2 (for the instance profile).

    No source condition: an instance profile is attached by the account itself, and EC2 does
    not set ``aws:SourceAccount`` when it assumes it.
    """
    return _doc(
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    )


def bucket_tls_policy(bucket: str, partition: str = "aws") -> Policy:
    """The bucket policy: refuse every request that does not use TLS (see the module note)."""
    return _doc(tls_statement(bucket, partition))


def tls_statement(bucket: str, partition: str = "aws") -> Policy:
    """The one statement of :func:`bucket_tls_policy`, to merge into an adopted bucket's policy."""
    arn = _bucket_arn(bucket, partition)
    return {
        "Sid": TLS_SID,
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [arn, f"{arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


@dataclass(frozen=True)
class Scope:
    """The names a client policy refers to (what ``starburst setup`` created).

    Attributes:
        partition, region, account: where the resources live.
        bucket, prefix: the session store.
        cluster: ECS cluster name; ``task_family`` the task definition family prefix.
        execution_role_arn, task_role_arn: the roles RunTask passes to ECS.
        secret_parameter: SSM parameter holding the signing key.
        log_group: CloudWatch log group of the workers.
        ecr_repository: repository of the worker image.
        autoscaling_group: the EC2 capacity provider's Auto Scaling group ("" for none).
        kms_key: the customer-managed KMS key encrypting the bucket ("" for none).
        instance_role: the EC2 instances' role name ("" without EC2; setup policy only).
    """

    partition: str
    region: str
    account: str
    bucket: str
    prefix: str
    cluster: str
    task_family: str
    execution_role_arn: str
    task_role_arn: str
    secret_parameter: str
    log_group: str
    ecr_repository: str
    autoscaling_group: str = ""
    kms_key: str = ""
    instance_role: str = ""


def _arns(scope: Scope) -> dict[str, str]:
    p, r, a = scope.partition, scope.region, scope.account
    return {
        "cluster": f"arn:{p}:ecs:{r}:{a}:cluster/{scope.cluster}",
        "tasks": f"arn:{p}:ecs:{r}:{a}:task/{scope.cluster}/*",
        "container_instances": f"arn:{p}:ecs:{r}:{a}:container-instance/{scope.cluster}/*",
        # The launcher registers one family per worker spec: "{task_family}-{digest}".
        "definitions": f"arn:{p}:ecs:{r}:{a}:task-definition/{scope.task_family}-*",
        "repository": f"arn:{p}:ecr:{r}:{a}:repository/{scope.ecr_repository}",
        "parameter": parameter_arn(scope.secret_parameter, partition=p, region=r, account=a),
        "group": (
            f"arn:{p}:autoscaling:{r}:{a}:autoScalingGroup:*:"
            f"autoScalingGroupName/{scope.autoscaling_group}"
        ),
    }


def user_policy(scope: Scope) -> Policy:
    """What the person (or CI role) running the client needs: start, watch and stop workers
    in one cluster, read and write the session prefix, read the signing key and the logs,
    build and push the worker image, estimate costs, and run ``starburst doctor``.

    It does not cover ``starburst setup`` itself, which creates roles and needs an
    administrator (:func:`setup_policy`).
    """
    p, r, a = scope.partition, scope.region, scope.account
    arns = _arns(scope)
    in_cluster = {"ArnEquals": {"ecs:cluster": arns["cluster"]}}
    star = STAR_ONLY_ACTIONS
    if not scope.autoscaling_group:
        star = star - {"autoscaling:DescribeAutoScalingGroups"}
    statements = [
        _allow("RunWorkers", ["ecs:RunTask"], [arns["definitions"]], in_cluster),
        # Tags given to RegisterTaskDefinition or RunTask are authorised as ecs:TagResource
        # on the new resource, only at creation.
        _allow(
            "TagAtCreation",
            ["ecs:TagResource"],
            [arns["tasks"], arns["definitions"]],
            {"StringEquals": {"ecs:CreateAction": ["RunTask", "RegisterTaskDefinition"]}},
        ),
        _allow(
            "WatchAndStopWorkers",
            ["ecs:DescribeTasks", "ecs:StopTask"],
            [arns["tasks"]],
            in_cluster,
        ),
        # ListTasks is authorised against the cluster's container-instance ARNs (Service
        # Authorization Reference); the ecs:cluster condition pins it to this cluster.
        _allow("ListWorkers", ["ecs:ListTasks"], [arns["container_instances"]], in_cluster),
        _allow("DescribeCluster", ["ecs:DescribeClusters"], [arns["cluster"]]),
        _allow(
            "PassWorkerRoles",
            ["iam:PassRole"],
            [scope.execution_role_arn, scope.task_role_arn],
            {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}},
        ),
        _allow(
            "InspectWorkerRoles",
            ["iam:GetRole", "iam:GetRolePolicy", "iam:ListAttachedRolePolicies"],
            [scope.execution_role_arn, scope.task_role_arn],
        ),
        *_s3_session_statements(scope.bucket, scope.prefix, p),
        _allow(
            "InspectBucket",
            [
                "s3:GetBucketPolicy",
                "s3:GetBucketPublicAccessBlock",
                "s3:GetEncryptionConfiguration",
                "s3:GetLifecycleConfiguration",
            ],
            [_bucket_arn(scope.bucket, p)],
        ),
        _allow("ReadSigningKey", ["ssm:GetParameter"], [arns["parameter"]]),
        _allow(
            "ReadWorkerLogs",
            ["logs:DescribeLogStreams", "logs:FilterLogEvents", "logs:GetLogEvents"],
            log_group_arns(scope.log_group, partition=p, region=r, account=a),
        ),
        _allow(
            "PushAndCheckWorkerImage",
            [
                "ecr:BatchCheckLayerAvailability",
                "ecr:BatchGetImage",
                "ecr:CompleteLayerUpload",
                "ecr:DescribeImages",
                "ecr:DescribeRepositories",
                "ecr:GetDownloadUrlForLayer",
                "ecr:GetLifecyclePolicy",
                "ecr:InitiateLayerUpload",
                "ecr:PutImage",
                "ecr:UploadLayerPart",
            ],
            [arns["repository"]],
        ),
        _allow("ResourceLessActions", sorted(star), ["*"]),
    ]
    if scope.kms_key:
        statements.append(_kms_statement(scope.kms_key))
        statements.append(_allow("InspectBucketKey", ["kms:DescribeKey"], [scope.kms_key]))
    if scope.autoscaling_group:
        # The EC2 group is parked at MaxSize 0; a session raises the ceiling it may scale to.
        statements.append(
            _allow("SizeEc2Capacity", ["autoscaling:UpdateAutoScalingGroup"], [arns["group"]])
        )
    return _doc(*statements)


def setup_policy(scope: Scope) -> Policy:
    """What whoever runs ``starburst setup`` and ``starburst teardown`` needs (an
    administrator grants exactly this): create, repair and remove the resources named in
    ``scope``, and read what setup adopts.

    IAM, S3, SSM, logs, ECR, ECS and Auto Scaling actions name their resources. EC2's
    creating actions (security group, VPC endpoint, launch template, and RunInstances, which
    CreateAutoScalingGroup checks on the caller) are scoped to this account and region: EC2
    ids are random, so no name can be given before the resources exist. Set
    ``scope.autoscaling_group`` and ``scope.instance_role`` for ``--ec2``.
    """
    p, r, a = scope.partition, scope.region, scope.account
    arns = _arns(scope)
    role = f"arn:{p}:iam::{a}:role"
    roles = [scope.execution_role_arn, scope.task_role_arn]
    if scope.instance_role:
        roles.append(f"{role}/{scope.instance_role}")
    bucket = _bucket_arn(scope.bucket, p)
    provider = f"arn:{p}:ecs:{r}:{a}:capacity-provider/{scope.autoscaling_group or scope.cluster}"
    statements = [
        _allow(
            "Roles",
            [
                "iam:AttachRolePolicy",
                "iam:CreateRole",
                "iam:DeleteRole",
                "iam:DeleteRolePolicy",
                "iam:DetachRolePolicy",
                "iam:GetRole",
                "iam:GetRolePolicy",
                "iam:ListAttachedRolePolicies",
                "iam:ListInstanceProfilesForRole",
                "iam:ListRolePolicies",
                "iam:PutRolePolicy",
                "iam:TagRole",
                "iam:UpdateAssumeRolePolicy",
            ],
            roles,
        ),
        _allow(
            "EcsServiceLinkedRole",
            ["iam:CreateServiceLinkedRole", "iam:GetRole"],
            [
                f"{role}/aws-service-role/ecs.amazonaws.com/AWSServiceRoleForECS",
                (f"{role}/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"),
            ],
            {
                "StringLike": {
                    "iam:AWSServiceName": ["ecs.amazonaws.com", "autoscaling.amazonaws.com"]
                }
            },
        ),
        _allow(
            "Bucket",
            [
                "s3:CreateBucket",
                "s3:DeleteBucket",
                "s3:GetBucketLocation",
                "s3:GetBucketPolicy",
                "s3:GetBucketPublicAccessBlock",
                "s3:GetBucketTagging",
                "s3:GetEncryptionConfiguration",
                "s3:GetLifecycleConfiguration",
                "s3:ListBucket",
                "s3:ListBucketVersions",
                "s3:PutBucketPolicy",
                "s3:PutBucketPublicAccessBlock",
                "s3:PutBucketTagging",
                "s3:PutEncryptionConfiguration",
                "s3:PutLifecycleConfiguration",
            ],
            [bucket],
        ),
        _allow("EmptyBucket", ["s3:DeleteObject", "s3:DeleteObjectVersion"], [f"{bucket}/*"]),
        _allow(
            "SigningKey",
            [
                "ssm:AddTagsToResource",
                "ssm:DeleteParameter",
                "ssm:GetParameter",
                "ssm:PutParameter",
            ],
            [arns["parameter"]],
        ),
        _allow(
            "LogGroup",
            [
                "logs:CreateLogGroup",
                "logs:DeleteLogGroup",
                "logs:PutRetentionPolicy",
                "logs:TagResource",
            ],
            log_group_arns(scope.log_group, partition=p, region=r, account=a),
        ),
        _allow(
            "Repository",
            [
                "ecr:CreateRepository",
                "ecr:DeleteRepository",
                "ecr:DescribeRepositories",
                "ecr:GetLifecyclePolicy",
                "ecr:PutImageScanningConfiguration",
                "ecr:PutLifecyclePolicy",
                "ecr:TagResource",
            ],
            [arns["repository"]],
        ),
        _allow(
            "Cluster",
            [
                "ecs:CreateCluster",
                "ecs:DeleteCluster",
                "ecs:DescribeClusters",
                "ecs:PutClusterCapacityProviders",
                "ecs:TagResource",
            ],
            [arns["cluster"]],
        ),
        _allow(
            "WorkerTaskDefinitions",
            ["ecs:DeleteTaskDefinitions"],
            [arns["definitions"]],
        ),
        _allow("ResourceLessActions", sorted(SETUP_STAR_ACTIONS), ["*"]),
        _allow(
            "Network",
            [
                "ec2:CreateSecurityGroup",
                "ec2:CreateTags",
                "ec2:CreateVpcEndpoint",
                "ec2:DeleteSecurityGroup",
                "ec2:DeleteVpcEndpoints",
                "ec2:ModifyVpcEndpoint",
                "ec2:RevokeSecurityGroupIngress",
            ],
            [
                f"arn:{p}:ec2:{r}:{a}:{kind}/*"
                for kind in ("vpc", "subnet", "security-group", "route-table", "vpc-endpoint")
            ],
        ),
    ]
    if scope.autoscaling_group:
        statements += [
            _allow(
                "Ec2Capacity",
                [
                    "ecs:CreateCapacityProvider",
                    "ecs:DeleteCapacityProvider",
                    "ecs:TagResource",
                ],
                [provider],
            ),
            _allow(
                "AutoScalingGroup",
                [
                    "autoscaling:CreateAutoScalingGroup",
                    "autoscaling:CreateOrUpdateTags",
                    "autoscaling:DeleteAutoScalingGroup",
                    "autoscaling:UpdateAutoScalingGroup",
                ],
                [arns["group"]],
            ),
            _allow(
                "LaunchTemplate",
                [
                    "ec2:CreateLaunchTemplate",
                    "ec2:CreateLaunchTemplateVersion",
                    "ec2:CreateTags",
                    "ec2:DeleteLaunchTemplate",
                    "ec2:ModifyLaunchTemplate",
                    "ec2:RunInstances",
                ],
                [
                    f"arn:{p}:ec2:{r}:{a}:{kind}/*"
                    for kind in (
                        "launch-template",
                        "instance",
                        "network-interface",
                        "security-group",
                        "subnet",
                        "volume",
                    )
                ]
                + [f"arn:{p}:ec2:{r}::image/*"],
            ),
            _allow(
                "InstanceProfile",
                [
                    "iam:AddRoleToInstanceProfile",
                    "iam:CreateInstanceProfile",
                    "iam:DeleteInstanceProfile",
                    "iam:GetInstanceProfile",
                    "iam:RemoveRoleFromInstanceProfile",
                    "iam:TagInstanceProfile",
                ],
                [f"arn:{p}:iam::{a}:instance-profile/{scope.instance_role}"],
            ),
            _allow(
                "PassInstanceRole",
                ["iam:PassRole"],
                [f"{role}/{scope.instance_role}"],
                {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
            ),
            _allow(
                "EcsOptimisedAmi",
                ["ssm:GetParameter"],
                [f"arn:{p}:ssm:{r}::parameter/aws/service/ecs/*"],
            ),
        ]
    return _doc(*statements)
