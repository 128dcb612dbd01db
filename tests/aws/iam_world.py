"""moto with IAM enforced, for the end-to-end tests: who may call what, checked on every call.

:class:`EnforcedIam` turns on moto's authorisation in this process (``/moto-api/reset-auth``:
every request after the first N must be signed by a known access key whose policies allow
it) and corrects what moto gets wrong, so that a generated least-privilege policy is proven
sufficient:

- moto names a resource only for S3, IAM roles and STS AssumeRole; for every other service it
  authorises against ``"*"``, which no resource-scoped ``Allow`` matches, so every least-
  privilege policy would fail. Where moto passes ``"*"`` the action alone is checked here
  (the call recorder, ``call_log.py``, checks the resources of those calls).
- moto 5.2 authorises each request as ``{service}:{operation}`` (``s3:ListObjectsV2``,
  ``s3:HeadObject``), not as IAM does (``s3:ListBucket``, ``s3:GetObject``): the S3 operations
  named otherwise are mapped to their IAM actions (:data:`IAM_ACTIONS`).
- moto evaluates a bucket-policy statement whose condition it cannot check as a denial, and it
  serves plain HTTP: the bucket's TLS-only statement (``aws:SecureTransport``) is skipped, as
  AWS skips it for a TLS request (the same patch as ``moto_serves_tls`` in conftest.py).

moto evaluates no condition whose key the request does not carry (``ecs:cluster``,
``s3:prefix``): the call recorder checks those.

Identities: :func:`create_user` makes an IAM user with a customer-managed policy and an
access key (the way an administrator hands the generated user policy to a person).
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import boto3
import pytest

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["ADMIN_POLICY", "EnforcedIam", "Identity", "create_user", "moto_api"]

ADMIN_POLICY: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}

# moto 5.2 authorises every request as "{service}:{operation}"; these operations are authorised
# as other actions (Service Authorization Reference, "Actions defined by Amazon S3"). Kept
# apart from the package's Aws.actions on purpose: the call recorder checks that one.
IAM_ACTIONS: dict[str, tuple[str, ...]] = {
    "s3:HeadBucket": ("s3:ListBucket",),
    "s3:ListObjects": ("s3:ListBucket",),
    "s3:ListObjectsV2": ("s3:ListBucket",),
    "s3:ListObjectVersions": ("s3:ListBucketVersions",),
    "s3:ListBuckets": ("s3:ListAllMyBuckets",),
    "s3:HeadObject": ("s3:GetObject",),
    "s3:DeleteObjects": ("s3:DeleteObject",),
    "s3:CopyObject": ("s3:PutObject", "s3:GetObject"),
    "s3:CreateMultipartUpload": ("s3:PutObject",),
    "s3:UploadPart": ("s3:PutObject",),
    "s3:CompleteMultipartUpload": ("s3:PutObject",),
    "s3:AbortMultipartUpload": ("s3:AbortMultipartUpload",),
    "s3:GetBucketEncryption": ("s3:GetEncryptionConfiguration",),
    "s3:PutBucketEncryption": ("s3:PutEncryptionConfiguration",),
    "s3:DeleteBucketEncryption": ("s3:PutEncryptionConfiguration",),
    "s3:GetPublicAccessBlock": ("s3:GetBucketPublicAccessBlock",),
    "s3:PutPublicAccessBlock": ("s3:PutBucketPublicAccessBlock",),
    "s3:DeletePublicAccessBlock": ("s3:PutBucketPublicAccessBlock",),
    "s3:GetBucketLifecycleConfiguration": ("s3:GetLifecycleConfiguration",),
    "s3:PutBucketLifecycleConfiguration": ("s3:PutLifecycleConfiguration",),
    "s3:DeleteBucketLifecycle": ("s3:PutLifecycleConfiguration",),
}


@dataclass(frozen=True)
class Identity:
    """An IAM user's access key."""

    name: str
    arn: str
    access_key_id: str
    secret_access_key: str

    def env(self) -> dict[str, str]:
        """The environment variables that make boto3 use this key."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }

    def session(self, region: str = "us-east-1") -> Any:
        """A boto3 session signing with this key."""
        return boto3.session.Session(
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=region,
        )


def create_user(iam: Any, name: str, policy: dict[str, Any] | None) -> Identity:
    """An IAM user holding ``policy`` (as a customer-managed policy, which allows 6,144
    characters where an inline user policy allows 2,048) and an access key."""
    user = iam.create_user(UserName=name)["User"]
    if policy is not None:
        arn = iam.create_policy(PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))[
            "Policy"
        ]["Arn"]
        iam.attach_user_policy(UserName=name, PolicyArn=arn)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return Identity(name, user["Arn"], key["AccessKeyId"], key["SecretAccessKey"])


def moto_api(endpoint: str, path: str, body: dict[str, Any] | str | None = None) -> None:
    """POST to moto's ``/moto-api/{path}`` (a JSON body, or text as is)."""
    data = body if isinstance(body, str) else json.dumps(body or {})
    # A type, or Flask reads the body as a form and moto sees none.
    kind = "text/plain" if isinstance(body, str) else "application/json"
    request = urllib.request.Request(
        f"{endpoint}/moto-api/{path}",
        data=data.encode(),
        method="POST",
        headers={"Content-Type": kind},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def _reset_auth(endpoint: str, value: str) -> None:
    # Authorise every request after the first `value` (counted from now) against IAM.
    moto_api(endpoint, "reset-auth", value)


class EnforcedIam:
    """IAM enforced on an in-process moto server while the context lasts (see the module).

    Args:
        endpoint: the moto server's URL.
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._patch = pytest.MonkeyPatch()

    def start(self) -> Self:
        from moto.iam.access_control import (
            IAMPolicyStatement,
            IAMRequestBase,
        )
        from moto.s3.models import FakeBucket

        original = IAMPolicyStatement._check_element_matches

        def check_element_matches(self: Any, element: str, value: str) -> bool:
            if element == "Resource" and value == "*":
                return True  # moto could not name the resource: check the action alone
            return bool(original(self, element, value))

        self._patch.setattr(IAMPolicyStatement, "_check_element_matches", check_element_matches)
        check_action_permitted = IAMRequestBase.check_action_permitted

        def check_as_iam(self: Any, resource: str) -> None:
            for action in IAM_ACTIONS.get(self._action, (self._action,)):
                self._action = action
                check_action_permitted(self, resource)

        self._patch.setattr(IAMRequestBase, "check_action_permitted", check_as_iam)

        self._patch.setattr(FakeBucket, "get_permission", bucket_permission_over_tls)
        # From now on every request is authenticated and authorised.
        _reset_auth(self.endpoint, "0")
        return self

    def stop(self) -> None:
        _reset_auth(self.endpoint, "inf")
        self._patch.undo()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def bucket_permission_over_tls(bucket: Any, action: str, resource: str) -> Any:
    """moto's ``FakeBucket.get_permission``, as AWS evaluates it for a TLS request.

    moto serves plain HTTP, and it evaluates a statement whose condition it cannot check as
    a denial (``moto/iam/access_control.py`` returns DENIED when a condition fails, whatever
    the Effect). So after ``starburst setup`` writes its TLS-only bucket policy, moto would
    refuse every object request. Real clients use HTTPS, where that statement does not
    apply: this evaluates the bucket policy without it; every other statement still counts.
    """
    from moto.iam.access_control import IAMPolicy, PermissionResult

    def is_tls_rule(statement: dict[str, Any]) -> bool:
        return statement.get("Effect") == "Deny" and statement.get("Condition") == {
            "Bool": {"aws:SecureTransport": "false"}
        }

    if bucket.policy is None:
        return PermissionResult.NEUTRAL
    document = json.loads(bucket.policy)
    statements = document.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else statements
    document["Statement"] = [s for s in statements if not is_tls_rule(s)]
    if not document["Statement"]:
        return PermissionResult.NEUTRAL
    return IAMPolicy(json.dumps(document)).is_action_permitted(action, resource)
