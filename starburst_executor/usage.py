"""A session's store requests: each process writes its own count, a reader sums them.

Every client and worker counts its store calls as the S3 requests they make
(:class:`~starburst_executor.stores.counting.CountingStore`) and writes the running total to
its :class:`~starburst_executor.protocol.UsageRecord` (``sessions/{sid}/usage/{writer}``):

- a worker when it leaves, and at most every :data:`WRITE_EVERY` seconds from its lease
  thread (one PUT a minute, never one per task);
- a client when it closes or detaches, and every :data:`WRITE_EVERY` seconds while it runs.

:func:`session_usage` sums the records into a :class:`RequestUsage`, so a later process (a
reattached client, ``starburst status``) sees what the workers and the clients before it
made; the reader's own live count replaces its record, so the figure is current for it.

Dollars: requests are priced at S3 Standard prices (:mod:`~starburst_executor.stores.
counting`) and *billed* only when the store is S3 (``s3://``). On the directory and memory
stores the counts are what the same session would make on S3, shown with that price as "on
S3" and billed $0.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starburst_executor._session import Session
from starburst_executor.config import aws_region
from starburst_executor.errors import CorruptRecordError, StarburstError
from starburst_executor.protocol import SessionKeys, UsageRecord
from starburst_executor.stores.counting import (
    RequestCounts,
    counter_of,
    request_prices,
)

__all__ = ["WRITE_EVERY", "RequestUsage", "UsageReporter", "client_writer_id", "session_usage"]

logger = logging.getLogger(__name__)

WRITE_EVERY = 60.0  # seconds between a running process's usage writes: one PUT a minute
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def client_writer_id() -> str:
    """``client-{host}-{pid}-{random}``: a usage record of its own for each client process."""
    host = _UNSAFE.sub("-", socket.gethostname())[:40] or "host"
    return f"client-{host}-{os.getpid()}-{secrets.token_hex(3)}"


class UsageReporter:
    """Writes one process's :class:`UsageRecord` for a session.

    Does nothing when the session's store counts nothing (a store not wrapped by
    :func:`~starburst_executor.stores.counting.count_requests`). Writes are best effort: a
    failure is logged and the next write carries the total.

    Args:
        session: the session (its ``store`` is read at each write: it may be rewrapped).
        writer: the worker id, or a :func:`client_writer_id`.
        role: "client" or "worker".
        every: seconds between :meth:`write_when_due` writes.
    """

    def __init__(
        self, session: Session, writer: str, role: str, every: float = WRITE_EVERY
    ) -> None:
        self._session = session
        self.writer = writer
        self.role = role
        self._every = every
        self._next = time.monotonic() + every
        self._lock = threading.Lock()  # a final write and a periodic one never interleave
        self._claim_counter()

    def _claim_counter(self) -> None:
        counter = counter_of(self._session.store)
        if counter is not None:
            counter.writer, counter.role = self.writer, self.role

    def write_when_due(self) -> None:
        """Write if :data:`WRITE_EVERY` seconds passed since the last write (a clock check
        otherwise: called from loops)."""
        if time.monotonic() >= self._next:
            self.write()

    def write(self) -> None:
        """Write the running total now (it includes this write's own PUT)."""
        self._claim_counter()
        counter = counter_of(self._session.store)
        if counter is None:
            return
        with self._lock:
            self._next = time.monotonic() + self._every
            key = self._session.keys.usage(self.writer)
            # Counted before it is made: the record includes its own PUT (the clock read is
            # free once the store has answered anything).
            counts = counter.counts() + RequestCounts(puts=1)
            try:
                record = UsageRecord(self.writer, self.role, counts, self._session.store.now())
                self._session.store.put(key, record.encode(self._session.codec, key))
            except StarburstError as exc:
                logger.warning(
                    "session %s: %s %s could not record its store requests: %s",
                    self._session.session_id,
                    self.role,
                    self.writer,
                    exc,
                )


@dataclass(frozen=True)
class RequestUsage:
    """A session's store requests, summed over its usage records.

    Attributes:
        client: the requests of its client process(es).
        workers: the requests of its workers.
        writers: how many processes the sums cover.
        store_url: the session's store; requests are billed only on S3.
        region: the region whose S3 prices apply.
    """

    client: RequestCounts = field(default_factory=RequestCounts)
    workers: RequestCounts = field(default_factory=RequestCounts)
    writers: int = 0
    store_url: str = ""
    region: str = "us-east-1"

    @property
    def total(self) -> RequestCounts:
        return self.client + self.workers

    @property
    def on_s3(self) -> bool:
        """Whether the requests are billed (the store is S3)."""
        return self.store_url.startswith("s3://")

    @property
    def s3_price(self) -> float:
        """USD these requests cost at S3 Standard prices (what S3 bills, or would)."""
        return self.total.cost(self.region)

    @property
    def cost(self) -> float:
        """USD billed for them: :attr:`s3_price` on S3, 0 on other stores."""
        return self.s3_price if self.on_s3 else 0.0

    def __str__(self) -> str:
        total = self.total
        a, b = request_prices(self.region)
        text = (
            f"{total.class_a:,} class A (PUT/LIST) + {total.class_b:,} class B (GET): "
            f"{_usd(self.s3_price)}"
        )
        text += f" at S3 {self.region} prices" if self.on_s3 else " on S3 (this store: no charge)"
        return text + (
            f" [client {self.client.class_a:,}+{self.client.class_b:,}, workers "
            f"{self.workers.class_a:,}+{self.workers.class_b:,}; ${a:g}/${b:g} per 1,000]"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "client": self.client.to_dict(),
            "workers": self.workers.to_dict(),
            "class_a": self.total.class_a,
            "class_b": self.total.class_b,
            "writers": self.writers,
            "region": self.region,
            "s3_price": self.s3_price,
            "cost": self.cost,
            "text": str(self),
        }


def _usd(amount: float) -> str:
    if amount == 0 or amount >= 0.01:
        return f"${amount:,.2f}"
    return f"${amount:.4f}" if amount >= 0.0001 else "under $0.0001"


def session_usage(session: Session, region: str | None = None) -> RequestUsage:
    """Sum the session's usage records (one LIST, one GET per record).

    The calling process's own record, if its store counts, is replaced by its live count.
    A damaged record is skipped with a warning.

    Args:
        session: the session.
        region: the region whose prices apply (default: ``AWS_REGION``, else us-east-1).

    Raises:
        StoreError: the store could not be read.
    """
    live = counter_of(session.store)
    mine = live.writer if live is not None else ""
    client = workers = RequestCounts()
    writers = 0
    for info in session.store.list(session.keys.usages):
        writer = SessionKeys.leaf(info.key)
        if writer == mine:
            continue
        try:
            record = UsageRecord.decode(session.codec, session.store.get(info.key).data, info.key)
        except CorruptRecordError as exc:
            logger.warning("session %s: %s", session.session_id, exc)
            continue
        except StarburstError as exc:  # deleted meanwhile (ObjectNotFoundError) and the like
            logger.info("session %s: usage of %s unreadable: %s", session.session_id, writer, exc)
            continue
        writers += 1
        if record.role == "worker":
            workers += record.requests
        else:
            client += record.requests
    if live is not None and mine:
        writers += 1
        if live.role == "worker":
            workers += live.counts()
        else:
            client += live.counts()
    return RequestUsage(
        client, workers, writers, session.store.url, region or aws_region() or "us-east-1"
    )
