"""The store interface: the few primitives every backend implements.

Everything the executor, the workers and a reattaching client share lives in a store, and
conditional writes are the only synchronisation between them. The interface is deliberately
small (fsspec's handful of primitives, httpx's one-method transport): the protocol module
builds claims, leases and cursors on top of it.

Guarantees every implementation gives (checked by ``tests/stores/test_contract.py``):

- ``put`` replaces the whole object atomically: readers see the old or the new bytes, never
  a mix.
- ``put_if_absent`` succeeds for exactly one of any number of racing writers.
- ``put_if_match`` succeeds only if the object's current ETag is the one given; a missing key
  fails the same way (AWS answers 404 there and SeaweedFS 412: callers see one error).
- ``list`` yields keys in ascending byte order, starting strictly after ``start_after``.
- No key is the "folder" of another (``a`` and ``a/1``): the directory store cannot hold
  both, and the protocol's key layout never needs it.
- ETags change on every write of an implementation's own, except that S3 derives them from
  the content: records that are compare-and-swapped must change their body (a version counter).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["ObjectInfo", "Store", "StoredObject"]


@dataclass(frozen=True)
class ObjectInfo:
    """One entry of a listing.

    Attributes:
        key: the key, relative to the store's root.
        size: size in bytes.
        etag: opaque version tag usable with ``put_if_match``.
        last_modified: POSIX time of the last write, on the store's clock.
    """

    key: str
    size: int
    etag: str
    last_modified: float


@dataclass(frozen=True)
class StoredObject:
    """The bytes of an object with the ETag they were read at."""

    data: bytes
    etag: str


@runtime_checkable
class Store(Protocol):
    """A flat key/value object store with conditional writes.

    Keys are ``/``-separated relative paths of printable ASCII without ``..`` segments.
    Every method raises a ``StoreError`` subclass on failure; transient failures are retried
    inside the implementation before surfacing as ``StoreUnavailableError``.
    """

    @property
    def url(self) -> str:
        """The URL this store was opened from (``file:///...``, ``s3://bucket/prefix``)."""
        ...

    def get(self, key: str) -> StoredObject:
        """Read an object. Raises ``ObjectNotFoundError`` if it does not exist."""
        ...

    def put(self, key: str, data: bytes) -> str:
        """Write an object unconditionally; returns its new ETag."""
        ...

    def put_if_absent(self, key: str, data: bytes) -> str:
        """Create an object only if the key is free; returns its ETag.

        Raises:
            PreconditionFailedError: the key already exists. Exactly one racing writer wins.
        """
        ...

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        """Replace an object only if its current ETag is ``etag``; returns the new ETag.

        Raises:
            PreconditionFailedError: the object changed since ``etag`` was read, or is gone.
        """
        ...

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Yield the objects whose key starts with ``prefix``, ascending, after ``start_after``.

        Pages are fetched lazily, so a caller that stops early pays only for what it read.
        """
        ...

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete objects; keys that do not exist are ignored."""
        ...

    def now(self) -> float:
        """The store's clock as POSIX time (for S3, from the server's ``Date`` header).

        Timestamps written into keys use this clock, so clients and workers on machines with
        skewed clocks still agree on ordering to within about a second.
        """
        ...

    def close(self) -> None:
        """Release connections. The store must not be used afterwards."""
        ...
