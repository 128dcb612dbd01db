"""What the session readers need from the AWS backend: the signing key of the profile's
bucket, and the cost of a session's workers. :mod:`starburst_executor.sessions` reaches the
AWS modules only through here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from starburst_executor.errors import AwsError
from starburst_executor.protocol import Codec, SessionManifest, WorkerRecord

if TYPE_CHECKING:
    from starburst_executor.usage import RequestUsage

__all__ = ["codec_for", "session_cost"]


def codec_for(store_url: str) -> Codec | None:
    """The codec of sessions in the saved AWS profile's bucket, or ``None`` for any other
    store (or when the key cannot be read: the local key may still be the one).

    Those sessions are signed with the key ``starburst setup`` stored in SSM: the same as the
    local key on the machine that ran setup; on any other machine, the only way to read those
    sessions without copying keys around.
    """
    from starburst_executor.aws.settings import AwsSettings

    try:
        settings = AwsSettings.load()
    except AwsError:
        return None
    bucket = store_url[len("s3://") :].split("/", 1)[0]
    if settings.bucket != bucket:
        return None
    from starburst_executor.aws.backend import secret_key_from_ssm
    from starburst_executor.aws.client import Aws

    try:
        return Codec(secret_key_from_ssm(Aws(settings.region), settings))
    except AwsError:
        return None


def session_cost(
    manifest: SessionManifest,
    workers: Sequence[WorkerRecord],
    batches: int,
    now: float,
    usage: RequestUsage | None = None,
) -> dict[str, Any] | None:
    """The cost so far of an AWS session from its workers' measured runtime and its store
    requests (``usage``, counted; estimated when no process of the session counted):
    ``{"cost": USD, "worker_seconds": ..., "requests": ..., "text": one line}``, or ``None``
    without a rate.

    Raises:
        SessionError: the session was not started on ECS.
    """
    from starburst_executor.aws.billing import session_report
    from starburst_executor.aws.options import session_backend

    backend = session_backend(manifest)
    if not backend.rate:
        return None
    if usage is not None:
        usage = replace(usage, region=backend.options.region)  # S3 prices of its region
    cost = session_report(
        backend.options,
        backend.rate,
        list(workers),
        created=manifest.created,
        batches=batches,
        now=now,
        usage=usage,
    )
    extra = {"requests": usage.to_dict()} if usage is not None and usage.writers else {}
    return {**cost.to_dict(), **extra, "text": str(cost)}
