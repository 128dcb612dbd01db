"""``Pending``: the batches a worker has listed and not tried yet, in the worker's own order.

Every free worker lists the same new batches. If each tried them in listing order, or kept
trying a list that went stale while it ran a batch, every claim would be a race that all but
one worker lose (a conditional PUT answered 412: a billed write, and on S3 a conflict that
slows the winner too). So:

- **Each worker has its own order** (rendezvous hashing: a key's score is a hash of the
  worker id and the batch id): workers that list the same keys at the same moment try
  different ones first, and collide only by chance.
- **Each batch has its first worker** (rendezvous again): a worker's turn for a new batch
  comes ``score * span`` after the batch was written (``span``: 5 ms per worker of the
  session, 0.25 s at most; none in a pool of up to :data:`SMALL_POOL` workers, where a herd
  is a handful of writes and a turn would only add its wait to every lone call's latency:
  measured, 5 ms steps took a 2-worker round trip from 5 to 12 ms on the directory store,
  and from 90 to 130 ms on SeaweedFS). The worker whose turn comes first races at once;
  the others, when their turn comes, check the claims first, and find it claimed. So when
  one batch appears among many idle workers, one of them claims it, instead of all racing.
- **A key is raced only while it is believed free**: it is young (written less than
  ``race_age`` ago) and this worker is first in line, or a listing of the claims made since
  showed it unclaimed. After a lost race or a batch run, the whole list is checked with *one*
  listing of the claims (from its oldest batch on) instead of a write per stale key.
- Requeue keys ("run this batch again") come first: their batch waits already. They are
  taken over by compare-and-swap after a read, never blindly.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from starburst_executor.protocol import SessionKeys, key_time_ms

__all__ = ["SMALL_POOL", "SPAN_MAX_MS", "STEP_MS", "Pending"]

STEP_MS = 5.0  # one rank's turn: about a claims listing plus a claim write
SMALL_POOL = 8  # up to this many workers, every worker goes first (no turns)
SPAN_MAX_MS = 250.0  # the last worker's turn comes at most this long after a batch appears


class Pending:
    """Listed batch keys not tried yet, with whether they must be checked before a claim.

    Args:
        worker_id: this worker's id, the salt of its order.
        workers: how many workers may contend (the session's ``max_workers``).
        race_age: keys listed older than this (seconds, store clock) are checked against
            the claims first: others have had the time to claim them.
        step_ms: the turn of one rank; a key's turns span ``workers * step_ms``, at most
            :data:`SPAN_MAX_MS`.
        clock: monotonic seconds (the worker's pacing clock), to age keys between listings.
    """

    def __init__(
        self,
        worker_id: str,
        workers: int = 1,
        race_age: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        step_ms: float = STEP_MS,
    ) -> None:
        self._salt = worker_id.encode()[:64]
        self._race_age_ms = race_age * 1000
        self._workers = max(1, workers)
        small = workers <= SMALL_POOL
        self._span_ms = 0.0 if small else min(workers * step_ms, SPAN_MAX_MS)
        self._clock = clock
        self._keys: list[str] = []
        self._unchecked: set[str] = set()
        self._due: dict[str, float] = {}  # key -> when it is this worker's turn (clock)
        self._respread = False  # the next check gives the free keys new turns

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def _score(self, key: str) -> float:
        """This worker's rendezvous score for a key's batch, uniform in [0, 1)."""
        digest = hashlib.blake2b(
            SessionKeys.bid_of(key).encode(), digest_size=8, key=self._salt
        ).digest()
        return int.from_bytes(digest, "big") / 2**64

    def add(self, keys: list[str], now_ms: int) -> None:
        """Take newly listed keys (``now_ms``: the store's clock, which stamped them).

        Each key's turn for this worker comes ``score * span`` after it was written: for
        each new batch a different worker goes first, and the others, a rank later each,
        check the claims before they race (by then the first has usually claimed it).
        Requeue keys are due at once.
        """
        now = self._clock()
        for key in keys:
            age_ms = now_ms - key_time_ms(key)
            delay_ms = 0.0 if SessionKeys.is_requeue(key) else self._score(key) * self._span_ms
            first_in_line = delay_ms <= self._span_ms / self._workers
            if age_ms > self._race_age_ms or not first_in_line:
                self._unchecked.add(key)
            self._due[key] = now + max(0.0, delay_ms - age_ms) / 1000
        self._keys = sorted({*self._keys, *keys}, key=self._order)

    def _order(self, key: str) -> tuple[bool, float, float]:
        return (not SessionKeys.is_requeue(key), self._due[key], self._score(key))

    def wait(self) -> float:
        """Seconds until the next key is this worker's turn (0: now)."""
        if not self._keys:
            return 0.0
        return max(0.0, self._due[self._keys[0]] - self._clock())

    def stale(self) -> None:
        """Others have claimed meanwhile (a race was lost, a batch was run): check all."""
        self._unchecked = set(self._keys)
        self._respread = True

    def needs_check(self) -> bool:
        """Whether the next key must be checked against the claims before a claim."""
        return bool(self._keys) and self._keys[0] in self._unchecked

    def oldest_bid(self) -> str:
        """The oldest batch listed (a claims listing from its moment on covers them all)."""
        return min((SessionKeys.bid_of(k) for k in self._keys), key=key_time_ms)

    def checked(self, claimed: set[str]) -> None:
        """Drop the batches found claimed; the rest are free as of now. Requeue keys stay:
        their batch has a claim by definition, and ``take_over`` reads it first."""
        self._keys = [
            k
            for k in self._keys
            if SessionKeys.is_requeue(k) or SessionKeys.bid_of(k) not in claimed
        ]
        # Free as of now. Workers that checked at the same moment (they finished their
        # batches together) would pick the same keys by chance: each key has a new turn per
        # worker, spread over the span shared by the free keys, and a worker whose turn is
        # not first in line looks again when it comes (the earlier ones have claimed).
        # Only the first check after a lost race or a run spreads the turns (at a turn, the
        # check is the look that turn asked for: the key is then raced).
        now = self._clock()
        if not self._respread:
            self._due = {k: self._due[k] for k in self._keys}
            self._unchecked = {k for k in self._keys if self._due[k] > now}
            return
        self._respread = False
        free = sum(1 for k in self._keys if not SessionKeys.is_requeue(k))
        span_s = self._span_ms / 1000 / max(1, free)
        self._due = {
            k: now + (0.0 if SessionKeys.is_requeue(k) else self._score(k) * span_s)
            for k in self._keys
        }
        self._unchecked = {k for k in self._keys if self._due[k] - now > span_s / self._workers}
        self._keys.sort(key=self._order)

    def pop(self) -> str:
        """The next key to claim, in this worker's order."""
        key = self._keys.pop(0)
        self._unchecked.discard(key)
        self._due.pop(key, None)
        return key
