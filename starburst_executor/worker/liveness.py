"""Whether the client of a plain session is still alive, as its workers judge it.

The client stamps the control record with the store's time every third of a lease
(``ControlRecord.client_seen``). A worker that reads a stamp older than ``limit`` does not
leave at once: it waits until the same stale stamp is read again ``confirm`` seconds later
(its own clock). After a store outage, the first reads return the stamp from before it,
while the client is busy retrying its own writes: the confirmation gives the client time to
beat again, so an outage does not empty the pool.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClientWatch"]


@dataclass
class ClientWatch:
    """Decides from successive reads of ``client_seen`` that the client is gone.

    Attributes:
        limit: age (store clock) past which a stamp is stale.
        confirm: how long (worker clock) a stale stamp must stay unchanged.
    """

    limit: float
    confirm: float
    _stale_stamp: float | None = None
    _stale_since: float = 0.0

    @classmethod
    def for_lease(cls, lease_seconds: float) -> ClientWatch:
        """The watch of a session with this lease: the client beats every third of it, so
        a stamp over 1.25 leases old means three beats in a row missing; the workers read
        every third of a lease, so they leave within about two leases of the client."""
        return cls(limit=1.25 * lease_seconds, confirm=lease_seconds / 3)

    def gone(self, stamp: float | None, store_now: float, now: float) -> bool:
        """Whether the client is gone, given the stamp read at ``store_now`` (store clock)
        and ``now`` (this worker's monotonic clock). ``None``: nobody beats (a detached
        session, or a client from before heartbeats), so nobody is judged."""
        if stamp is None or store_now - stamp <= self.limit:
            self._stale_stamp = None
            return False
        if stamp != self._stale_stamp:
            self._stale_stamp, self._stale_since = stamp, now
            return False
        return now - self._stale_since >= self.confirm
