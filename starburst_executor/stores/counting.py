"""Counting a process's store requests as S3 bills them, and what they cost.

:class:`CountingStore` wraps any :class:`~starburst_executor.stores.base.Store` and counts,
per call, the S3 requests the same call makes on :class:`~starburst_executor.stores.s3.
S3Store` (the model below is that module's behaviour), whatever the store really is: on the
directory or memory store the counts say what the session *would* make on S3.

========================  =============================================================
Store call                S3 requests (class)
========================  =============================================================
``get``                   one GetObject (B), found or not
``put``                   one PutObject (A); no multipart: every body is one request
``put_if_absent``         one conditional PutObject (A), won or lost (a 412 is billed)
``put_if_match``          the same
``list``                  one ListObjectsV2 (A) per page of 1,000 keys the caller reads
                          (the first page even when empty; pages are fetched lazily, so a
                          caller that stops early pays only for what it read)
``delete_many``           one DeleteObjects per 1,000 keys; free (DELETE requests are)
``now``                   one ListObjectsV2 (A) the first time, before any request has
                          answered (S3Store reads the server's clock from a response)
========================  =============================================================

What the model cannot see: attempts an implementation retries internally (S3Store retries
5xx, throttling and connection errors; under an outage wrapper each attempt passes through
this one and is counted) and the read-back GET after a retried conditional write. The counts
are therefore a floor when the store was flaky, and exact otherwise (compared with a counting
proxy in ``tests/test_request_usage.py``).

Counting sits on every call: each call takes a lock for one integer addition, never across
the request itself.

Prices (:data:`S3_REQUEST_PRICES`) are S3 Standard's, by region, in one place:
:func:`request_cost` prices counts, :mod:`starburst_executor.aws.cost` re-uses the table.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from starburst_executor.stores.base import ObjectInfo, Store, StoredObject

__all__ = [
    "LIST_PAGE_KEYS",
    "PRICES_DATE",
    "S3_REQUEST_PRICES",
    "CountingStore",
    "RequestCounts",
    "count_requests",
    "counter_of",
    "request_cost",
    "request_prices",
]

LIST_PAGE_KEYS = 1000  # ListObjectsV2 returns at most 1,000 keys per request
DELETE_BATCH_KEYS = 1000  # DeleteObjects takes at most 1,000 keys per request

# S3 Standard request prices, USD per 1,000 requests: (class A: PUT, COPY, POST, LIST;
# class B: GET, HEAD and the rest), recorded 2026-11 from https://aws.amazon.com/s3/pricing/
# for the regions of the compute table in aws/cost.py. DELETE is free. A region missing here
# is priced as us-east-1 (most regions charge the same or up to ~30 % more).
PRICES_DATE = "2026-11"
S3_REQUEST_PRICES: dict[str, tuple[float, float]] = {
    "us-east-1": (0.005, 0.0004),
    "us-east-2": (0.005, 0.0004),
    "us-west-2": (0.005, 0.0004),
    "eu-west-1": (0.005, 0.0004),
    "eu-central-1": (0.0054, 0.00043),
    "ap-southeast-2": (0.0055, 0.00044),
}
DEFAULT_PRICE_REGION = "us-east-1"


def request_prices(region: str | None = None) -> tuple[float, float]:
    """``(class A, class B)`` USD per 1,000 requests in ``region`` (us-east-1's if unknown)."""
    return S3_REQUEST_PRICES.get(region or DEFAULT_PRICE_REGION, S3_REQUEST_PRICES["us-east-1"])


@dataclass(frozen=True)
class RequestCounts:
    """S3 requests by kind; ``class_a``/``class_b`` are what S3 bills them as.

    Attributes:
        gets: GetObject (class B).
        puts: PutObject, conditional or not (class A).
        lists: ListObjectsV2 pages (class A).
        deletes: DeleteObjects batches (free).
    """

    gets: int = 0
    puts: int = 0
    lists: int = 0
    deletes: int = 0

    @property
    def class_a(self) -> int:
        return self.puts + self.lists

    @property
    def class_b(self) -> int:
        return self.gets

    @property
    def total(self) -> int:
        return self.gets + self.puts + self.lists + self.deletes

    def __add__(self, other: RequestCounts) -> RequestCounts:
        return RequestCounts(
            self.gets + other.gets,
            self.puts + other.puts,
            self.lists + other.lists,
            self.deletes + other.deletes,
        )

    def cost(self, region: str | None = None) -> float:
        """USD at S3 Standard prices in ``region``."""
        return request_cost(self.class_a, self.class_b, region)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestCounts:
        """Raises: ``ValueError``/``TypeError`` for counts that are not integers."""
        return cls(*(int(data.get(k, 0)) for k in ("gets", "puts", "lists", "deletes")))


def request_cost(class_a: float, class_b: float, region: str | None = None) -> float:
    """USD for ``class_a`` PUT/COPY/POST/LIST and ``class_b`` GET-class S3 requests."""
    a, b = request_prices(region)
    return class_a / 1000 * a + class_b / 1000 * b


_GET, _PUT, _LIST, _DELETE = range(4)


class CountingStore:
    """A store that counts the S3 requests its calls make (see the module docstring).

    Args:
        inner: the store that does the work.

    Attributes:
        inner: that store.
        writer: who these counts belong to in the session's usage records ("" until a
            :class:`~starburst_executor.usage.UsageReporter` names it), and ``role``
            ("client" or "worker").
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.writer = ""
        self.role = ""
        self._lock = threading.Lock()
        self._counts = [0, 0, 0, 0]
        self._answered = False  # a request has answered: S3Store knows the server's clock

    def counts(self) -> RequestCounts:
        """The requests counted so far."""
        with self._lock:
            return RequestCounts(*self._counts)

    def _count(self, kind: int, n: int = 1) -> None:
        with self._lock:
            self._counts[kind] += n

    @property
    def url(self) -> str:
        return self.inner.url

    def __repr__(self) -> str:
        return f"CountingStore({self.inner!r})"

    def get(self, key: str) -> StoredObject:
        self._count(_GET)
        found = self.inner.get(key)
        self._answered = True
        return found

    def put(self, key: str, data: bytes) -> str:
        self._count(_PUT)
        etag = self.inner.put(key, data)
        self._answered = True
        return etag

    def put_if_absent(self, key: str, data: bytes) -> str:
        self._count(_PUT)
        etag = self.inner.put_if_absent(key, data)
        self._answered = True
        return etag

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        self._count(_PUT)
        new = self.inner.put_if_match(key, data, etag)
        self._answered = True
        return new

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        # A generator: nothing is requested (or counted) until the caller reads.
        self._count(_LIST)
        for read, info in enumerate(self.inner.list(prefix, start_after)):
            if read and read % LIST_PAGE_KEYS == 0:
                self._count(_LIST)  # this key came with the next page
            self._answered = True
            yield info
        self._answered = True

    def delete_many(self, keys: Iterable[str]) -> None:
        listed = list(keys)
        batches = -(-len(listed) // DELETE_BATCH_KEYS)
        self._count(_DELETE, batches)
        self.inner.delete_many(listed)
        if batches:
            self._answered = True

    def now(self) -> float:
        if not self._answered:
            self._count(_LIST)  # S3Store's probe for the server's Date header
        now = self.inner.now()
        self._answered = True
        return now

    def close(self) -> None:
        self.inner.close()


def _bare(store: Store) -> Store:
    """``store`` under any outage-tolerant and counting wrappers."""
    from starburst_executor.stores.outage import OutageTolerantStore

    while isinstance(store, (OutageTolerantStore, CountingStore)):
        store = store.inner
    return store


def count_requests(store: Store) -> Store:
    """``store`` with a new counter right above the real store.

    An outage-tolerant ``store`` stays one, over the counter, and keeps its policy (its
    timeout, clock and outage state are shared with ``store``'s); any counter already there
    is replaced, so a worker in a thread of the client's process, handed the client's store,
    counts its own requests, not the client's. Find the counter with :func:`counter_of`.
    """
    from starburst_executor.stores.outage import OutageTolerantStore

    counter = CountingStore(_bare(store))
    if isinstance(store, OutageTolerantStore):
        tolerant = copy.copy(store)
        tolerant.inner = counter
        return tolerant
    return counter


def counter_of(store: Store) -> CountingStore | None:
    """The counter of ``store`` (under its outage wrapper), or ``None`` if it counts nothing."""
    from starburst_executor.stores.outage import OutageTolerantStore

    while isinstance(store, OutageTolerantStore):
        store = store.inner
    return store if isinstance(store, CountingStore) else None
