"""Claims and leases: who runs which batch, and taking work back from lost workers.

- A first claim is a create-if-absent of ``claims/{bid}``: exactly one worker wins.
- The holder renews the lease by compare-and-swap; a failed renewal means the claim was taken
  over (its lease had expired) and the holder's result may lose the race to the new holder's.
- A lease that expired, or a claim its worker released (SIGTERM, Spot) or that the launcher
  saw die, is taken over by compare-and-swap with ``attempt + 1``. Past ``max_attempts`` the
  taker fails the batch's tasks with ``WorkerLostError`` instead of running them again.
- Finished claims stay (state "done") so that a worker that lists the batch late cannot claim
  it again; claims done for longer than ``gc_seconds`` are deleted by the expiry scan.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from starburst_executor.errors import ObjectNotFoundError, PreconditionFailedError
from starburst_executor.protocol import Claim, ClaimState, Codec, SessionKeys, key_time_ms
from starburst_executor.stores.base import Store

__all__ = ["ClaimHandle", "Claims"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimHandle:
    """A claim this process holds: the record and the ETag to compare-and-swap against."""

    bid: str
    claim: Claim
    etag: str
    exhausted: bool = False  # taken over past max_attempts: fail the tasks, do not run them


def _how_it_ended(claim: Claim) -> str:
    if claim.state is ClaimState.RELEASED:
        return claim.ended or "released"
    return "no lease renewal: lost without a trace"


class Claims:
    """Claim operations on one session.

    Args:
        store: the session's store.
        keys: the session's key builder.
        codec: the record codec.
        lease_seconds: lease length; holders renew every third of it.
        max_attempts: attempts before a batch's tasks fail with ``WorkerLostError``.
    """

    def __init__(
        self,
        store: Store,
        keys: SessionKeys,
        codec: Codec,
        *,
        lease_seconds: float,
        max_attempts: int,
    ) -> None:
        self._store = store
        self._keys = keys
        self._codec = codec
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        # A done claim stays so that a worker listing its batch late (within its cursor's
        # margin, 15 s by default) finds it and does not run the batch again; four leases,
        # two minutes at least, is well past that. After that, _claim's result check holds.
        self.gc_seconds = max(120.0, 4 * lease_seconds)
        self._done_seen: dict[str, str] = {}  # done claims' keys -> their listed ETag

    def read(self, bid: str) -> Claim | None:
        """A batch's claim, or ``None`` if it has none (not claimed yet, or collected)."""
        current = self._read(bid)
        return None if current is None else current[0]

    def _read(self, bid: str) -> tuple[Claim, str] | None:
        key = self._keys.claim(bid)
        try:
            obj = self._store.get(key)
        except ObjectNotFoundError:
            return None
        return Claim.decode(self._codec, obj.data, key), obj.etag

    def _write(self, bid: str, claim: Claim, etag: str | None) -> str:
        key = self._keys.claim(bid)
        data = claim.encode(self._codec, key)
        if etag is None:
            return self._store.put_if_absent(key, data)
        return self._store.put_if_match(key, data, etag)

    def try_claim(self, bid: str, worker: str) -> ClaimHandle | None:
        """Claim a batch nobody has claimed yet; ``None`` if somebody has."""
        claim = Claim(worker, 1, ClaimState.RUNNING, self._store.now() + self.lease_seconds)
        try:
            etag = self._write(bid, claim, None)
        except PreconditionFailedError:
            return None
        return ClaimHandle(bid, claim, etag)

    def claimed_from(self, bid: str) -> set[str]:
        """The batches that have a claim (in any state), of those stamped at or after ``bid``.

        One listing of ``claims/`` started at ``bid``'s moment (batch ids begin with their
        time stamp, so claims sort by time): a worker checks all the batches it listed with
        this one request, instead of racing a conditional write on each.
        """
        start = f"{self._keys.claims}{key_time_ms(bid):013d}"
        return {
            SessionKeys.leaf(info.key)
            for info in self._store.list(self._keys.claims, start_after=start)
        }

    def renew(self, handle: ClaimHandle) -> ClaimHandle | None:
        """Extend the lease; ``None`` if the claim was taken over meanwhile."""
        claim = replace(
            handle.claim, expires=self._store.now() + self.lease_seconds, n=handle.claim.n + 1
        )
        try:
            return replace(handle, claim=claim, etag=self._write(handle.bid, claim, handle.etag))
        except PreconditionFailedError:
            return None

    def finish(self, handle: ClaimHandle) -> None:
        """Mark the batch done (its result is written)."""
        claim = replace(handle.claim, state=ClaimState.DONE, n=handle.claim.n + 1)
        try:
            self._write(handle.bid, claim, handle.etag)
        except PreconditionFailedError:
            logger.info(
                "batch %s: claim changed before it was marked done (taken over)", handle.bid
            )

    def release(self, handle: ClaimHandle, reason: str = "") -> bool:
        """Give a claim back so another worker runs the batch now (not after the lease);
        ``reason`` (how the holder ended) is named if the batch's tasks fail as lost."""
        claim = replace(
            handle.claim, state=ClaimState.RELEASED, expires=0.0, n=handle.claim.n + 1, ended=reason
        )
        try:
            self._write(handle.bid, claim, handle.etag)
        except PreconditionFailedError:
            return False
        self._requeue(handle.bid, claim.attempt)
        return True

    def _requeue(self, bid: str, attempt: int) -> None:
        ts_ms = int(self._store.now() * 1000)
        self._store.put(self._keys.requeue(ts_ms, bid, attempt), b"")

    def take_over(self, bid: str, worker: str) -> ClaimHandle | None:
        """Take a released or expired claim; ``None`` if it is live, done, or lost the race.

        The handle is ``exhausted`` when the new attempt would exceed ``max_attempts``: the
        caller then fails the tasks with ``WorkerLostError`` rather than running them.
        """
        current = self._read(bid)
        if current is None:
            return self.try_claim(bid, worker)
        claim, etag = current
        if claim.state is ClaimState.DONE:
            return None
        if claim.live(self._store.now()):
            return None
        if claim.attempt > self.max_attempts:
            # Its holder took it over only to report the batch lost, and was lost itself
            # before it could: that was no attempt at the tasks, so it neither counts nor
            # joins the history (the error says exactly max_attempts).
            attempt, history = claim.attempt, claim.history
        else:
            attempt = claim.attempt + 1
            history = (*claim.history, f"{claim.worker} ({_how_it_ended(claim)})")
        new = Claim(
            worker,
            attempt,
            ClaimState.RUNNING,
            self._store.now() + self.lease_seconds,
            claim.n + 1,
            history,
        )
        try:
            # Compare-and-swap against the ETag just read: of several workers that saw the
            # same expired lease, exactly one wins; the others see 412 and move on.
            etag = self._write(bid, new, etag)
        except PreconditionFailedError:
            return None
        logger.info(
            "batch %s: %s took over from %s (attempt %d)", bid, worker, claim.worker, attempt
        )
        return ClaimHandle(bid, new, etag, exhausted=attempt > self.max_attempts)

    def scan(self) -> list[str]:
        """Find batches whose lease expired (their worker is gone); collect old done claims.

        Costs one listing of the in-flight claims, plus a read of each stale one.
        """
        return list(self._stale(collect=True))

    def expired_holders(self) -> dict[str, str]:
        """The batches whose lease expired, each with the worker that let it expire.

        The client counts those workers as lost: a frozen worker (SIGSTOP, a partitioned
        machine) is still "running" for its launcher, yet does no work. Same cost as
        :meth:`scan`; released claims are not included (their worker said it was leaving).
        """
        return {
            bid: claim.worker
            for bid, claim in self._stale(collect=False).items()
            if claim.state is ClaimState.RUNNING
        }

    def _stale(self, *, collect: bool) -> dict[str, Claim]:
        """Claims not live any more (expired or released), by batch; with ``collect``, old
        done claims are deleted on the way."""
        now = self._store.now()
        expired: dict[str, Claim] = {}
        garbage = []
        done_seen: dict[str, str] = {}
        for info in self._store.list(self._keys.claims):
            # LastModified is the last renewal: a claim renewed within a lease cannot have
            # expired, so only older ones cost a GET (one listing finds the candidates).
            age = now - info.last_modified
            if age < self.lease_seconds:
                continue
            bid = SessionKeys.leaf(info.key)
            # A done claim never changes again: read once (same ETag in the listing), not at
            # every scan; after a big map, idle workers would otherwise GET every claim.
            if self._done_seen.get(info.key) != info.etag:
                current = self._read(bid)
                if current is None:
                    continue
                claim = current[0]
                if claim.state is not ClaimState.DONE:
                    if claim.expires < now:
                        expired[bid] = claim
                    continue
            done_seen[info.key] = info.etag
            if age > self.gc_seconds:
                garbage.append(info.key)
        self._done_seen = done_seen  # only what is still listed: the cache stays small
        if garbage and collect:
            self._store.delete_many(garbage)
        return expired

    def release_worker(self, worker: str, reason: str = "") -> list[str]:
        """Release every running claim of a worker known to be dead; returns their batches.

        ``reason``: how it ended ("exit code 1", "killed by SIGKILL"), for the "worker lost"
        message."""
        released = []
        for info in self._store.list(self._keys.claims):
            bid = SessionKeys.leaf(info.key)
            current = self._read(bid)
            if current is None:
                continue
            claim, etag = current
            running = claim.worker == worker and claim.state is ClaimState.RUNNING
            if running and self.release(ClaimHandle(bid, claim, etag), reason):
                released.append(bid)
        return released
