"""``Aws``: the one choke point for every AWS control-plane call (ECS, IAM, ECR, EC2, Logs,
STS, SSM, Service Quotas, Pricing, Auto Scaling, S3 bucket administration).

It builds boto3 clients with botocore's retries off, retries transient errors with the
project's :class:`~starburst_executor._retry.RetryPolicy`, and translates botocore errors by
error code, once, into the :mod:`starburst_executor.errors` tree (s3fs's ``_call_s3``):

- no / invalid / expired credentials -> ``AwsCredentialsError`` (what to set)
- access denied -> ``AwsPermissionError`` naming the IAM action (``ecs:RunTask``)
- anything else -> ``AwsError`` naming the service and operation

Standard AWS settings are honoured as boto3 honours them: ``AWS_PROFILE``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` and ``AWS_ENDPOINT_URL_<SERVICE>``; tests point
them at moto and SeaweedFS on 127.0.0.1 with no code path of their own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import botocore.exceptions
from botocore.config import Config

from starburst_executor._botocore import CONNECTION_ERRORS, error_code
from starburst_executor._retry import RetryPolicy
from starburst_executor.config import aws_region
from starburst_executor.errors import AwsCredentialsError, AwsError, AwsPermissionError

__all__ = ["Aws", "error_code"]

logger = logging.getLogger(__name__)

_TRANSIENT = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalError",
        "InternalFailure",
        "ServerException",
        "RequestTimeout",
        "RequestTimeoutException",
        "SlowDown",
        "ProvisionedThroughputExceededException",
        "EC2ThrottledException",
        "PriorRequestNotComplete",
    }
)
_CREDENTIALS = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AuthFailure",
        "RequestExpired",
        "InvalidToken",
        "TokenRefreshRequired",
    }
)
_DENIED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "AuthorizationError",
        "AccessDeniedFault",
        "Forbidden",
    }
)
# boto3 service names whose IAM prefix differs from the service name.
_IAM_PREFIX = {
    "service-quotas": "servicequotas",
    "resourcegroupstaggingapi": "tag",
    "elbv2": "elasticloadbalancing",
}
# Operations whose IAM action is not the operation's own name (Service Authorization
# Reference, "Actions defined by Amazon S3": several S3 operations are authorised as another
# action). The first action is the primary one (named in messages); the rest are also needed.
_ACTIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("s3", "head_bucket"): ("s3:ListBucket",),
    ("s3", "list_objects"): ("s3:ListBucket",),
    ("s3", "list_objects_v2"): ("s3:ListBucket",),
    ("s3", "list_object_versions"): ("s3:ListBucketVersions",),
    ("s3", "list_buckets"): ("s3:ListAllMyBuckets",),
    ("s3", "head_object"): ("s3:GetObject",),
    ("s3", "delete_objects"): ("s3:DeleteObject",),
    ("s3", "copy_object"): ("s3:PutObject", "s3:GetObject"),
    ("s3", "create_multipart_upload"): ("s3:PutObject",),
    ("s3", "upload_part"): ("s3:PutObject",),
    ("s3", "complete_multipart_upload"): ("s3:PutObject",),
    ("s3", "get_bucket_encryption"): ("s3:GetEncryptionConfiguration",),
    ("s3", "put_bucket_encryption"): ("s3:PutEncryptionConfiguration",),
    ("s3", "delete_bucket_encryption"): ("s3:PutEncryptionConfiguration",),
    ("s3", "get_public_access_block"): ("s3:GetBucketPublicAccessBlock",),
    ("s3", "put_public_access_block"): ("s3:PutBucketPublicAccessBlock",),
    ("s3", "delete_public_access_block"): ("s3:PutBucketPublicAccessBlock",),
    ("s3", "get_bucket_lifecycle_configuration"): ("s3:GetLifecycleConfiguration",),
    ("s3", "put_bucket_lifecycle_configuration"): ("s3:PutLifecycleConfiguration",),
    ("s3", "delete_bucket_lifecycle"): ("s3:PutLifecycleConfiguration",),
}


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in _TRANSIENT or status in (500, 502, 503, 504)
    return False


class Aws:
    """boto3 clients for one region, and the ``call`` choke point.

    Args:
        region: the AWS region (default: boto3's resolution: ``AWS_REGION``, profile ...).
        session: a ``boto3.session.Session`` to use (default: a new one).
        retry_sleep: sleep between retries (tests pass a no-op).
    """

    def __init__(
        self,
        region: str | None = None,
        *,
        session: Any = None,
        retry_sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import boto3

        # AWS_REGION too: boto3 reads only AWS_DEFAULT_REGION (config.aws_region).
        self._session: Any = session or boto3.session.Session(region_name=region or aws_region())
        self.region: str = region or self._session.region_name or ""
        if not self.region:
            raise AwsError(
                "no AWS region is configured: pass region=..., set AWS_REGION, or set a region "
                "in your AWS profile (aws configure)"
            )
        self._clients: dict[str, Any] = {}
        self._retry = RetryPolicy(_transient, attempts=6, sleep=retry_sleep)
        self._config = Config(
            retries={"total_max_attempts": 1}, connect_timeout=10, read_timeout=60
        )

    def client(self, service: str) -> Any:
        """A boto3 client for ``service`` in this region (cached)."""
        if service not in self._clients:
            # The Pricing API only lives in a few regions; us-east-1 serves every region.
            region = "us-east-1" if service == "pricing" else self.region
            self._clients[service] = self._session.client(
                service, region_name=region, config=self._config
            )
        return self._clients[service]

    def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        """Call ``service.operation(**params)`` with retries; errors translated (see module).

        ``operation`` is the boto3 method name (``run_task``); the IAM action in messages is
        derived from it (``ecs:RunTask``).
        """
        method = getattr(self.client(service), operation)
        try:
            return self._retry.call(lambda: method(**params))
        except botocore.exceptions.ClientError as exc:
            raise self.translate(exc, service, operation) from exc
        except (
            botocore.exceptions.NoCredentialsError,
            botocore.exceptions.PartialCredentialsError,
        ) as exc:
            raise AwsCredentialsError(
                f"no AWS credentials found for {self.action(service, operation)}. Set "
                "AWS_PROFILE (after `aws configure` or `aws sso login`), or AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY, or run where an IAM role is attached"
            ) from exc
        except CONNECTION_ERRORS as exc:
            raise AwsError(
                f"cannot reach AWS for {self.action(service, operation)} in {self.region}: "
                f"{exc}. Check the network, the region, and AWS_ENDPOINT_URL* if you set them"
            ) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise AwsError(f"{self.action(service, operation)} failed: {exc}") from exc

    def paginate(self, service: str, operation: str, key: str, **params: Any) -> Iterator[Any]:
        """Yield the items under ``key`` of every page of a paginated operation."""
        token_in, token_out = _TOKENS.get((service, operation), ("nextToken", "nextToken"))
        while True:
            page = self.call(service, operation, **params)
            yield from page.get(key, ())
            token = page.get(token_out)
            if not token:
                return
            params[token_in] = token

    @staticmethod
    def action(service: str, operation: str) -> str:
        """The IAM action of a boto3 call: ``("ecs", "run_task")`` -> ``"ecs:RunTask"``,
        ``("s3", "list_objects_v2")`` -> ``"s3:ListBucket"`` (the primary one when a call
        needs several: see :meth:`actions`)."""
        return Aws.actions(service, operation)[0]

    @staticmethod
    def actions(service: str, operation: str) -> tuple[str, ...]:
        """Every IAM action a boto3 call needs (``copy_object``: put and get)."""
        known = _ACTIONS.get((service, operation))
        if known is not None:
            return known
        prefix = _IAM_PREFIX.get(service, service)
        return (f"{prefix}:{''.join(w.capitalize() for w in operation.split('_'))}",)

    def translate(
        self, exc: botocore.exceptions.ClientError, service: str, operation: str
    ) -> AwsError:
        code = error_code(exc)
        action = self.action(service, operation)
        message = exc.response.get("Error", {}).get("Message", "")
        if code in _CREDENTIALS:
            return AwsCredentialsError(
                f"AWS rejected the credentials for {action} ({code}: {message}). They may be "
                "expired: renew them (`aws sso login`, new session token) and check AWS_PROFILE"
            )
        if code in _DENIED:
            return AwsPermissionError(
                f"access denied: your credentials lack the IAM permission {action} (in "
                f"{self.region}). Ask an administrator to allow it, or run `starburst doctor` "
                f"to see every missing permission. AWS said: {message}",
                permission=action,
            )
        if _transient(exc):
            return AwsError(f"{action} kept failing after retries ({code}): {message}", code)
        return AwsError(f"{action} failed ({code}): {message}", code)


_TOKENS = {
    ("logs", "describe_log_streams"): ("nextToken", "nextToken"),
    ("ec2", "describe_subnets"): ("NextToken", "NextToken"),
    ("ec2", "describe_spot_price_history"): ("NextToken", "NextToken"),
    ("pricing", "get_products"): ("NextToken", "NextToken"),
    ("service-quotas", "list_service_quotas"): ("NextToken", "NextToken"),
    ("iam", "list_attached_role_policies"): ("Marker", "Marker"),
    ("iam", "list_role_policies"): ("Marker", "Marker"),
    ("ecr", "describe_images"): ("nextToken", "nextToken"),
}
