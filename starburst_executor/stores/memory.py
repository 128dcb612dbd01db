"""``MemoryStore``: the store as a dictionary in this process, with a clock tests can drive.

It exists so that the protocol built on the store (claims, leases, cursors, the manager and
the worker loop) can be tested in milliseconds: no files, no server, and time that moves only
when a test says so (``MemoryStore(clock=FakeClock())``, then ``clock.advance(30)`` to expire
a lease). It is as strict as the strictest real store, so that what passes here is not an
artefact of the fake:

- ETags are derived from the content (an MD5, as S3's for single-part uploads): writing the
  same bytes again keeps the ETag, so a record that is compare-and-swapped must change its
  body, exactly as on S3.
- ``put_if_absent`` and ``put_if_match`` check and write under one lock: exactly one of any
  number of racing writers wins (S3's guarantee, which moto does not give).
- ``list`` reads pages of :data:`PAGE_SIZE` keys, each under the lock: keys written during a
  listing may or may not appear, as with S3's paginated ``ListObjectsV2``.

Stores opened by URL (``memory://NAME``) are shared by name within the process while anybody
holds them, so worker threads that open the session's ``store_url`` see the client's data.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from starburst_executor.errors import ObjectNotFoundError, PreconditionFailedError
from starburst_executor.stores.base import ObjectInfo, StoredObject

__all__ = ["FakeClock", "MemoryStore", "PAGE_SIZE"]

PAGE_SIZE = 1000  # keys per listing page, as S3's ListObjectsV2

# Named stores of this process: ``open_store("memory://NAME")`` returns the live one. Weak,
# so a store nobody uses any more is freed with its data (tests open thousands).
_named: weakref.WeakValueDictionary[str, MemoryStore] = weakref.WeakValueDictionary()
_named_lock = threading.Lock()
_anonymous = itertools.count(1)


class FakeClock:
    """A clock that moves only when told to: pass it as ``MemoryStore(clock=...)``.

    Args:
        start: the initial POSIX time (default: a fixed moment, so runs are reproducible).
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """The current fake time (POSIX seconds)."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds``; returns the new time.

        Raises:
            ValueError: ``seconds`` is negative (time never goes back on one store's clock).
        """
        if seconds < 0:
            raise ValueError(f"a clock only moves forward: advance({seconds!r})")
        with self._lock:
            self._now += seconds
            return self._now


@dataclass(frozen=True)
class _Entry:
    data: bytes
    etag: str
    written: float


def _etag(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class MemoryStore:
    """A store held in this process's memory; thread-safe.

    Args:
        name: the name in its URL (``memory://NAME``); ``""`` picks a fresh unique one.
        clock: what ``now()`` and ``last_modified`` read (default ``time.time``); a
            :class:`FakeClock` makes time a test's to control.

    Raises:
        ValueError: a live store already has this name (open it with ``open_store``).
    """

    def __init__(self, name: str = "", *, clock: Callable[[], float] | None = None) -> None:
        if not name:
            name = f"anonymous-{next(_anonymous)}"
        if "/" in name or not name.isprintable():
            raise ValueError(f"memory store name {name!r}: use printable text without '/'")
        self._name = name
        self._clock: Callable[[], float] = clock or time.time
        self._lock = threading.Lock()
        self._objects: dict[str, _Entry] = {}
        self._keys: list[str] = []  # sorted: listing is a bisect, not a scan of everything
        with _named_lock:
            if name in _named:
                raise ValueError(
                    f"a memory store named {name!r} exists already: open it with "
                    f"open_store('memory://{name}') or choose another name"
                )
            _named[name] = self

    @classmethod
    def open(cls, name: str) -> MemoryStore:
        """The live store called ``name``, or a new one (real clock) if there is none."""
        with _named_lock:
            existing = _named.get(name) if name else None
        if existing is not None:
            return existing
        try:
            return cls(name)
        except ValueError:  # created by another thread in between: use that one
            with _named_lock:
                found = _named.get(name)
            if found is None:
                raise
            return found

    @property
    def url(self) -> str:
        return f"memory://{self._name}"

    @property
    def clock(self) -> Callable[[], float]:
        """The clock this store reads (a :class:`FakeClock` when a test drives time)."""
        return self._clock

    def __repr__(self) -> str:
        return f"MemoryStore({self._name!r})"

    @staticmethod
    def _check(key: str) -> None:
        # The same rule as LocalStore's, so a key that works here works on every store.
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
            raise ValueError(f"invalid store key {key!r}")

    def _set(self, key: str, data: bytes) -> str:
        """Write under the lock (held by the caller)."""
        entry = _Entry(bytes(data), _etag(data), self._clock())
        if key not in self._objects:
            bisect.insort(self._keys, key)
        self._objects[key] = entry
        return entry.etag

    # -- Store protocol ----------------------------------------------------------------------

    def get(self, key: str) -> StoredObject:
        self._check(key)
        with self._lock:
            entry = self._objects.get(key)
        if entry is None:
            raise ObjectNotFoundError(f"no object {key!r} in store {self.url}")
        return StoredObject(entry.data, entry.etag)

    def put(self, key: str, data: bytes) -> str:
        self._check(key)
        with self._lock:
            return self._set(key, data)

    def put_if_absent(self, key: str, data: bytes) -> str:
        self._check(key)
        with self._lock:
            if key in self._objects:
                raise PreconditionFailedError(f"object {key!r} already exists")
            return self._set(key, data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        self._check(key)
        with self._lock:
            entry = self._objects.get(key)
            if entry is None:
                raise PreconditionFailedError(f"object {key!r} no longer exists")
            if entry.etag != etag:
                raise PreconditionFailedError(f"object {key!r} changed since it was read")
            return self._set(key, data)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        after = start_after if start_after is not None and start_after >= prefix else None
        while True:
            with self._lock:
                # First key strictly after the cursor, or the first key >= prefix.
                i = (
                    bisect.bisect_right(self._keys, after)
                    if after is not None
                    else bisect.bisect_left(self._keys, prefix)
                )
                page: list[ObjectInfo] = []
                for key in self._keys[i : i + PAGE_SIZE]:
                    if not key.startswith(prefix):
                        break
                    entry = self._objects[key]
                    page.append(ObjectInfo(key, len(entry.data), entry.etag, entry.written))
            yield from page
            if len(page) < PAGE_SIZE:
                return
            after = page[-1].key

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            with self._lock:
                if self._objects.pop(key, None) is not None:
                    del self._keys[bisect.bisect_left(self._keys, key)]

    def now(self) -> float:
        return self._clock()

    def close(self) -> None:
        pass  # nothing to release; the data lives as long as a reference to the store
