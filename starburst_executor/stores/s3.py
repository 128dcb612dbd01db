"""``S3Store``: the store on S3 or any S3-compatible endpoint (SeaweedFS, MinIO, moto ...).

Every S3 call goes through :meth:`S3Store._call`, the one place that retries (our
:class:`~starburst_executor._retry.RetryPolicy`; botocore's own retries are off so that a
retried conditional write is visible to us) and translates botocore errors by error code.

Synchronisation uses S3 conditional writes: ``If-None-Match: *`` for create-if-absent and
``If-Match: <etag>`` for compare-and-swap (GA on AWS since 2024-11). Two emulator facts shape
the code (see DESIGN.md): SeaweedFS answers ``If-Match`` on a missing key with 412 where AWS
says 404 (both become ``PreconditionFailedError``), and a retried conditional write whose first
attempt did land comes back 412, so after a transient failure a 412 is checked against the
object's current body before it is reported as a lost race.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import botocore.exceptions
from botocore.config import Config
from botocore.parsers import ResponseParserError

from starburst_executor._botocore import CONNECTION_ERRORS, error_code
from starburst_executor._retry import RetryPolicy
from starburst_executor.config import aws_region
from starburst_executor.errors import (
    ObjectNotFoundError,
    PreconditionFailedError,
    StoreConfigError,
    StoreError,
    StoreUnavailableError,
)
from starburst_executor.stores.base import ObjectInfo, StoredObject

__all__ = ["S3Store", "make_s3_client"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
        "502",
        "504",
        # AWS: another conditional write to the key is in flight; the docs say to retry.
        "ConditionalRequestConflict",
        "OperationAborted",
    }
)
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "403",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
    }
)


def _http_status(exc: BaseException) -> int:
    if isinstance(exc, botocore.exceptions.ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def _is_transient(exc: BaseException) -> bool:
    """Worth retrying: a connection error, a throttling or server-side code, or any 5xx (a
    server on its way down or up answers 5xx under codes no list can foresee). Never a 4xx
    answer such as 403, 404 or 412."""
    return (
        isinstance(exc, CONNECTION_ERRORS)
        or error_code(exc) in _TRANSIENT_CODES
        or _http_status(exc) >= 500
    )


def _drop_expect_header(request: Any, **_: Any) -> None:
    request.headers.pop("Expect", None)


def _endpoint_from_env() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def make_s3_client(endpoint_url: str | None = None, region: str | None = None) -> Any:
    """A boto3 S3 client with botocore retries off (we retry) and sensible timeouts.

    Standard AWS settings (``AWS_PROFILE``, ``AWS_ENDPOINT_URL[_S3]``) apply as boto3 applies
    them, and ``AWS_REGION`` as well as ``AWS_DEFAULT_REGION`` (boto3 reads only the latter);
    a custom endpoint gets path-style addressing, which every S3-compatible server understands.
    """
    import boto3

    endpoint = endpoint_url or _endpoint_from_env()
    config = Config(
        retries={"total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=32,
        s3={"addressing_style": "path"} if endpoint else {},
    )
    session = boto3.session.Session(region_name=region or aws_region())
    return session.client("s3", endpoint_url=endpoint_url, config=config)


class S3Store:
    """A store under ``s3://bucket/prefix``.

    Args:
        bucket: the bucket name.
        prefix: key prefix inside the bucket ("" for the bucket's root).
        client: a boto3 S3 client; by default one from :func:`make_s3_client`.
        retry_sleep: the sleep used between retries (tests pass a no-op).
        retry_attempts: total attempts per call for transient errors.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        retry_sleep: Callable[[float], None] = time.sleep,
        retry_attempts: int = 6,
    ) -> None:
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._key_prefix = f"{self._prefix}/" if self._prefix else ""
        if client is None:
            try:
                client = make_s3_client()
            except botocore.exceptions.BotoCoreError as exc:
                raise StoreConfigError(f"cannot create an S3 client: {exc}") from exc
        self._client = client
        # botocore sends "Expect: 100-continue" on every PutObject, even with an empty body;
        # SeaweedFS answers at once and the kept-alive connection is left unusable, so the
        # next request stalls until the read timeout (boto/botocore#3755). Expect is not
        # signed, so dropping it is safe everywhere.
        client.meta.events.register("before-send.s3", _drop_expect_header)
        self._retry = RetryPolicy(_is_transient, attempts=retry_attempts, sleep=retry_sleep)
        self._clock: tuple[float, float] | None = None  # (server epoch, monotonic) of a response
        self._last_now = 0.0

    @property
    def url(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}" if self._prefix else f"s3://{self._bucket}"

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint={self._endpoint()!r})"

    def _endpoint(self) -> str:
        return str(getattr(getattr(self._client, "meta", None), "endpoint_url", "?"))

    # -- the choke point ---------------------------------------------------------------------

    def _call(self, action: str, key: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one S3 request with retries; translate its errors by code."""
        try:
            response = self._retry.call(fn)
        except botocore.exceptions.ClientError as exc:
            raise self._translate(exc, action, key) from exc
        except CONNECTION_ERRORS as exc:
            raise StoreUnavailableError(
                f"cannot reach the S3 endpoint {self._endpoint()} to {action} {key!r} in "
                f"{self.url}: {exc}. Check the endpoint URL (AWS_ENDPOINT_URL / "
                "AWS_ENDPOINT_URL_S3), the network, and that the server is running"
            ) from exc
        except botocore.exceptions.NoCredentialsError as exc:
            raise StoreConfigError(
                f"no AWS credentials found to {action} {key!r} in {self.url}. Set AWS_PROFILE, "
                "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run on a machine with a role"
            ) from exc
        except ResponseParserError as exc:  # a 200 that is not S3's XML
            raise self._not_s3(action, "a response that is not S3's XML") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise StoreError(f"S3 {action} of {key!r} in {self.url} failed: {exc}") from exc
        self._observe_clock(response)
        return response

    def _translate(self, exc: botocore.exceptions.ClientError, action: str, key: str) -> StoreError:
        code = error_code(exc)
        meta = exc.response.get("ResponseMetadata", {})
        content_type = str(meta.get("HTTPHeaders", {}).get("content-type", ""))
        if content_type.startswith("text/html"):
            # S3 (and every S3-compatible server) answers errors in XML: an HTML page means a
            # web server, proxy or console, whose 404 must not read as "no such bucket".
            status = meta.get("HTTPStatusCode", "?")
            return self._not_s3(action, f"an HTML page (HTTP {status})")
        if code in _PRECONDITION_CODES:
            return PreconditionFailedError(f"conditional {action} of {key!r} in {self.url} lost")
        if code == "NoSuchBucket" or (action == "check" and code in _NOT_FOUND_CODES):
            return self._no_bucket()
        if code in _NOT_FOUND_CODES:
            return ObjectNotFoundError(f"no object {key!r} in {self.url}")
        if code in _AUTH_CODES and action != "check" and self._bucket_missing():
            return self._no_bucket()  # SeaweedFS answers 403 to a PUT into a missing bucket
        if code in _AUTH_CODES:
            return StoreConfigError(
                f"access denied to {action} {key!r} in {self.url} ({code}). Check the "
                "credentials (AWS_PROFILE / keys, not expired) and that their policy allows "
                f"s3:{_PERMISSION.get(action, 'GetObject')} on this bucket and prefix"
            )
        if code in _TRANSIENT_CODES or _http_status(exc) >= 500:
            return StoreUnavailableError(
                f"S3 kept failing to {action} {key!r} in {self.url} ({code}) after retries"
            )
        return StoreError(f"S3 {action} of {key!r} in {self.url} failed: {exc}")

    def _not_s3(self, action: str, answer: str) -> StoreConfigError:
        return StoreConfigError(
            f"{self._endpoint()} is not an S3 endpoint: it answered an S3 {action} request "
            f"with {answer}. Point AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL) at the S3 API of "
            "your server (e.g. SeaweedFS's -s3.port, MinIO's API port, not its web console), "
            "or unset it to use AWS"
        )

    def _no_bucket(self) -> StoreConfigError:
        return StoreConfigError(
            f"bucket {self._bucket!r} does not exist at {self._endpoint()}. Create it (or "
            "run `starburst setup`) or check the bucket name and the region/endpoint"
        )

    def _probe(self) -> dict[str, Any]:
        # A one-key listing under our prefix, not HeadBucket: the workers' IAM policy allows
        # s3:ListBucket only with an s3:prefix condition, which HeadBucket cannot satisfy.
        return self._client.list_objects_v2(  # type: ignore[no-any-return]
            Bucket=self._bucket, Prefix=self._key_prefix, MaxKeys=1
        )

    def _bucket_missing(self) -> bool:
        try:
            self._probe()
        except botocore.exceptions.ClientError as exc:
            return error_code(exc) in _NOT_FOUND_CODES or error_code(exc) == "NoSuchBucket"
        except botocore.exceptions.BotoCoreError:
            return False
        return False

    def _observe_clock(self, response: dict[str, Any]) -> None:
        date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        if date:
            try:
                # The Date header has one-second resolution and is truncated: add half.
                self._clock = (parsedate_to_datetime(date).timestamp() + 0.5, time.monotonic())
            except (TypeError, ValueError):
                logger.debug("unparseable Date header %r from %s", date, self._endpoint())

    def _full(self, key: str) -> str:
        if not key or key.startswith("/"):
            raise ValueError(f"invalid store key {key!r}")
        return self._key_prefix + key

    def _conditional_put(self, action: str, key: str, data: bytes, **condition: str) -> str:
        retried = False

        def attempt() -> dict[str, Any]:
            nonlocal retried
            try:
                return self._client.put_object(  # type: ignore[no-any-return]
                    Bucket=self._bucket, Key=self._full(key), Body=data, **condition
                )
            except Exception as exc:
                if _is_transient(exc):
                    retried = True
                raise

        try:
            return str(self._call(action, key, attempt)["ETag"])
        except PreconditionFailedError:
            if retried:
                # An earlier attempt may have landed before its response was lost: if the key
                # now holds exactly our bytes, that write was ours.
                try:
                    current = self.get(key)
                except ObjectNotFoundError:
                    raise PreconditionFailedError(f"{action} of {key!r} lost") from None
                if current.data == data:
                    return current.etag
            raise

    # -- Store protocol ----------------------------------------------------------------------

    def get(self, key: str) -> StoredObject:
        def fetch() -> dict[str, Any]:
            response = self._client.get_object(Bucket=self._bucket, Key=self._full(key))
            response["Body"] = response["Body"].read()  # read inside the retry: resets retry
            return response  # type: ignore[no-any-return]

        response = self._call("get", key, fetch)
        return StoredObject(response["Body"], str(response["ETag"]))

    def put(self, key: str, data: bytes) -> str:
        response = self._call(
            "put",
            key,
            lambda: self._client.put_object(Bucket=self._bucket, Key=self._full(key), Body=data),
        )
        return str(response["ETag"])

    def put_if_absent(self, key: str, data: bytes) -> str:
        return self._conditional_put("create", key, data, IfNoneMatch="*")

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        try:
            return self._conditional_put("update", key, data, IfMatch=etag)
        except ObjectNotFoundError:  # AWS: 404 for If-Match on a missing key
            raise PreconditionFailedError(f"object {key!r} no longer exists") from None

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Prefix": self._key_prefix + prefix}
        if start_after is not None:
            kwargs["StartAfter"] = self._key_prefix + start_after
        strip = len(self._key_prefix)
        while True:
            page = self._call("list", prefix, lambda: self._client.list_objects_v2(**kwargs))
            for item in page.get("Contents", ()):
                yield ObjectInfo(
                    item["Key"][strip:],
                    int(item["Size"]),
                    str(item["ETag"]),
                    item["LastModified"].timestamp(),
                )
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
            kwargs.pop("StartAfter", None)

    def delete_many(self, keys: Iterable[str]) -> None:
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == 1000:  # DeleteObjects takes at most 1,000 keys per request
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, keys: Sequence[str]) -> None:
        request = {"Objects": [{"Key": self._full(k)} for k in keys], "Quiet": True}
        response = self._call(
            "delete",
            keys[0],
            lambda: self._client.delete_objects(Bucket=self._bucket, Delete=request),
        )
        errors = [e for e in response.get("Errors", ()) if e.get("Code") != "NoSuchKey"]
        if errors:
            first = errors[0]
            raise StoreError(
                f"could not delete {len(errors)} object(s) from {self.url}; first: "
                f"{first.get('Key')!r}: {first.get('Code')} {first.get('Message')}"
            )

    def now(self) -> float:
        if self._clock is None:
            self._call("check", "", self._probe)
        if self._clock is None:  # a server that sends no Date header
            return time.time()
        server, at = self._clock
        # Each response re-anchors the clock to a Date header of one-second resolution, so
        # the estimate may step back a little: never return less than before, so keys this
        # process stamps stay in order.
        self._last_now = max(self._last_now, server + (time.monotonic() - at))
        return self._last_now

    def close(self) -> None:
        self._client.close()


_PERMISSION = {
    "get": "GetObject",
    "put": "PutObject",
    "create": "PutObject",
    "update": "PutObject",
    "list": "ListBucket",
    "delete": "DeleteObject",
    "check": "ListBucket",
}
