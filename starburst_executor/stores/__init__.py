"""Stores: where sessions, tasks and results live. ``open_store`` turns a URL into one.

- ``None`` or ``file:///path``: :class:`LocalStore`, a directory (the embedded default lives
  under the per-user cache directory, see :func:`starburst_executor.config.default_store_url`).
- ``s3://bucket/prefix``: :class:`S3Store`, any S3-compatible endpoint (``AWS_ENDPOINT_URL``,
  ``AWS_ENDPOINT_URL_S3``, ``AWS_PROFILE`` ... are honoured as boto3 does).
- ``memory://NAME``: :class:`~starburst_executor.stores.memory.MemoryStore`, in this process
  only (tests; workers in threads of this process share it by name).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from starburst_executor.stores.base import ObjectInfo, Store, StoredObject

__all__ = ["ObjectInfo", "Store", "StoredObject", "open_store"]


def open_store(url: str | Path | Store | None = None) -> Store:
    """Open a store from a URL, a directory path, or return a ``Store`` given as is.

    Args:
        url: ``None`` (the per-user default directory store), ``"file:///abs/path"``, a plain
            filesystem path, ``"s3://bucket/prefix"``, ``"memory://NAME"`` (the live
            in-process store of that name, or a new one), or an object implementing ``Store``.

    Raises:
        ValueError: the URL's scheme is not one of ``file``, ``s3`` or ``memory``, or it names
            no bucket.
        StoreConfigError: the directory cannot be created or written.
    """
    from starburst_executor.config import default_store_url

    if url is None:
        from starburst_executor.errors import StoreConfigError

        try:
            return open_store(default_store_url())
        except StoreConfigError as exc:  # the user never named this directory: say how to
            raise StoreConfigError(
                f"{exc}. The default store lives under STARBURST_HOME: set STARBURST_HOME "
                "(or STARBURST_STORE) to a place you can write"
            ) from exc
    if isinstance(url, Path):
        url = str(url)
    if not isinstance(url, str):
        if isinstance(url, Store):
            return url
        raise TypeError(f"store must be a URL string, a path or a Store, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        from starburst_executor.stores.local import LocalStore

        path = unquote(parts.path) if parts.scheme == "file" else url
        if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
            raise ValueError(
                f"store URL {url!r}: file URLs take an absolute path: 'file:///abs/path'"
            )
        return LocalStore(path)
    if parts.scheme == "s3":
        from starburst_executor.stores.s3 import S3Store

        if not parts.netloc:
            raise ValueError(
                f"store URL {url!r} names no bucket: use 's3://BUCKET/optional/prefix'"
            )
        return S3Store(parts.netloc, parts.path.strip("/"))
    if parts.scheme == "memory":
        from starburst_executor.stores.memory import MemoryStore

        return MemoryStore.open(parts.netloc)
    raise ValueError(
        f"store URL {url!r} has unsupported scheme {parts.scheme!r}: "
        "use 'file:///path' for a directory or 's3://bucket/prefix' for S3"
    )
