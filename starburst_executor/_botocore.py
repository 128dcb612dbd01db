"""Facts about botocore errors shared by the two AWS choke points (``stores/s3.py`` for the
store, ``aws/client.py`` for the control plane); each keeps its own translation."""

from __future__ import annotations

import botocore.exceptions

__all__ = ["CONNECTION_ERRORS", "error_code"]

# The request may never have reached AWS, or its answer was lost: worth retrying.
CONNECTION_ERRORS = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ResponseStreamingError,
)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` ("" for anything else)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""
