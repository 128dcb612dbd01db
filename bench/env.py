"""The environment the benchmarks run under: one patcher, and the S3 settings that point the
client and its worker processes (which inherit the environment) at a test S3 server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

__all__ = ["patched_env", "s3_env"]


@contextmanager
def patched_env(**values: str | None) -> Iterator[None]:
    """Set (or, for ``None``, remove) environment variables; restore them on exit."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def s3_env(endpoint_url: str, **more: str | None) -> AbstractContextManager[None]:
    """:func:`patched_env` with the bench's credentials and ``endpoint_url`` for S3, and
    nothing of the user's own AWS settings (profile, region, a general endpoint)."""
    return patched_env(
        AWS_ENDPOINT_URL_S3=endpoint_url,
        AWS_ENDPOINT_URL=None,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_SESSION_TOKEN=None,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION=None,
        AWS_PROFILE=None,
        **more,
    )
