"""The client's pace (``_manager.py``): how it sizes batches and when it polls for results.

``Pacing`` holds the knobs. ``batch_size`` decides how many queued calls go into the next
batch, from the measured duration of the function's tasks (``Durations``). ``PollClock``
decides when the next poll is due: in proportion to how long the client has waited since
something moved, once when the next result is expected, and for a lone batch after most of
the pick-up time measured for lone batches.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from starburst_executor._session import Call

__all__ = ["Durations", "Pacing", "PollClock", "batch_size", "fn_key"]

# Batches expected to run longer than this (s) shrink toward the end of the work (see
# batch_size); shorter ones do not (they would only cost requests).
_GUIDED_ABOVE = 0.1
# Queued work that takes less than this (s) per worker goes out as one batch per worker.
_ONE_ROUND_BELOW = 0.05
_ONE_BATCH_BELOW = 0.02  # ... and less than this (s) in all goes out as one batch
_FUNCTIONS_KEPT = 64  # task durations remembered for this many functions


@dataclass(frozen=True)
class Pacing:
    """Polling pace of the manager thread.

    Attributes:
        linger: how long the first queued call waits for others to share its batch.
        poll_min: shortest wait between polls while results arrive.
        poll_max: the workers' longest wait between looks for work (passed to them).
        poll_ratio: while results are awaited, the wait between polls is this fraction of
            the time since something last moved (a result, an upload): a client polls in
            proportion to the rate results arrive, and notices a result within about this
            fraction of the time it waited for it.
        wait_max: the client's longest wait between polls for results (default:
            ``poll_max``); with the heartbeat and the lease scan it bounds what a waiting
            client costs when nothing arrives.
        maintain_every: how often the worker pool is checked.
        batch_seconds: how much work (at the measured task duration) one batch may hold.
        watermark_every: how often the low watermark (where late workers start) may be
            rewritten (one compare-and-swap of the control record).
        rewind_after: after this long without a result, re-list completions from the start
            (catches an event stamped by a badly skewed clock); doubles each time.
        lease_scan_every: how often the claims are listed for expired leases, whose workers
            then count as lost (default: the session's lease).
        heartbeat_every: how often the client of a plain session says it is alive
            (default: a third of the lease).
    """

    linger: float = 0.002
    poll_min: float = 0.002
    poll_max: float = 0.5
    poll_ratio: float = 0.25
    wait_max: float | None = None
    maintain_every: float = 0.5
    watermark_every: float = 10.0
    batch_seconds: float = 1.0
    rewind_after: float = 60.0
    lease_scan_every: float | None = None
    heartbeat_every: float | None = None


def fn_key(call: Call) -> tuple[str, bytes]:
    """What a task duration is remembered by: the call's kind and pickled function."""
    fn = call.parts["fn"]
    return call.kind, fn if isinstance(fn, bytes) else fn.digest.encode()


class Durations:
    """Measured run time per task: overall, and per function (a workload of no-ops after
    one of naps is sized by the no-ops' durations, not the naps')."""

    def __init__(self) -> None:
        self.overall: float | None = None
        self._by_fn: OrderedDict[tuple[str, bytes], float] = OrderedDict()

    def of(self, key: tuple[str, bytes]) -> float | None:
        return self._by_fn.get(key)

    def learn(self, key: tuple[str, bytes] | None, per_task: float) -> None:
        # Half and half: a workload whose tasks got much shorter (or longer) than the last
        # one's is sized right after a couple of results, not a dozen.
        est = self.overall
        self.overall = per_task if est is None else 0.5 * est + 0.5 * per_task
        if key is None:
            return
        known = self._by_fn.pop(key, None)
        self._by_fn[key] = per_task if known is None else 0.5 * known + 0.5 * per_task
        if len(self._by_fn) > _FUNCTIONS_KEPT:
            self._by_fn.popitem(last=False)


def batch_size(
    pending: int,
    est: float | None,
    *,
    window: int | None,
    outstanding: int,
    max_workers: int,
    batch_limit: int,
    pacing: Pacing,
) -> int:
    """How many queued calls the next batch takes (``est``: the measured duration of a task
    of the function at the head of the queue, ``None`` until known).

    A detached session uploads everything now, spread over twice the workers. Otherwise
    the queue is spread over the free places of the upload window, but a batch holds at
    most about ``Pacing.batch_seconds`` of work at the measured task duration (one task
    until the first results tell): long tasks travel alone and stay cancellable in the
    queue, as with the stdlib; short ones travel in hundreds, one request for all.
    """
    if window is None:
        return max(1, min(batch_limit, math.ceil(pending / (2 * max_workers))))
    free = max(1, window - outstanding)
    size = math.ceil(pending / free)
    per_worker = math.ceil(pending / max_workers)
    if est is not None and est * pending <= _ONE_BATCH_BELOW:
        # All of it is a moment's work: one batch, one round of requests (a second worker
        # would first have to notice it).
        size = pending
    elif est is not None and est * per_worker <= _ONE_ROUND_BELOW:
        # Short work: one batch per worker, one round of requests (spreading it over the
        # whole window made each worker take two).
        size = max(size, per_worker)
    by_time = 1 if est is None else int(pacing.batch_seconds / max(est, 1e-6))
    size = min(size, max(1, by_time))
    if est is None or est * size > _GUIDED_ABOVE:
        # Guided self-scheduling: a batch takes at most a share of the work left, so
        # batches shrink toward the end and the workers finish together (equal batches of
        # a second each left one worker idle for up to a second).
        size = min(size, math.ceil(pending / (2 * max_workers)))
    return max(1, min(batch_limit, size))


class PollClock:
    """When the client polls for results next (see the module docstring).

    Args:
        pacing: the knobs (``poll_min``, ``poll_ratio``, ``wait_max``).
        now: the current time (monotonic seconds).
    """

    def __init__(self, pacing: Pacing, now: float) -> None:
        self._pacing = pacing
        self.moved_at = now  # when a result or an upload last finished
        self.next_poll = 0.0
        # A batch uploaded while no other was awaited (bid, when), and how long such a lone
        # batch took from its upload to its result, less its run time: the first poll for
        # the next lone batch waits for most of that instead of polling from the start (a
        # lone submit -> result costs a few requests, not ten).
        self._lone: tuple[str, float] | None = None
        self._lone_missed = 0.0  # when the last direct read of the lone batch found nothing
        self.lone_latency = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_poll

    def polled(self, now: float, expected_in: float | None) -> None:
        """A poll was made: schedule the next one. ``expected_in``: how long after the last
        move the next result should come (``None``: unknown)."""
        pacing = self._pacing
        longest = pacing.wait_max or pacing.poll_max
        interval = max(pacing.poll_min, min(longest, pacing.poll_ratio * (now - self.moved_at)))
        if expected_in is not None:
            # One poll when the next result should be there, and one a little after it (a
            # tenth of the wait): the end of a run is noticed at once, not a quarter of a
            # batch's duration late.
            expected = self.moved_at + expected_in + self.lone_latency
            for due in (expected, expected + 0.1 * (expected - self.moved_at)):
                if now < due < now + interval:
                    interval = max(pacing.poll_min, due - now)
                    break
        self.next_poll = now + interval

    def moved(self, now: float) -> None:
        """An upload or a result finished: poll fast again (after a lone upload, once most
        of the usual pick-up time has passed)."""
        self.moved_at = now
        self.next_poll = now + self._pacing.poll_min
        if self._lone is not None and self._lone[1] >= now - self._pacing.poll_min:
            self.next_poll = now + max(self._pacing.poll_min, 0.7 * self.lone_latency)

    def lone_uploaded(self, bid: str, now: float) -> None:
        self._lone = (bid, now)
        self._lone_missed = now

    def missed(self, bid: str, now: float) -> None:
        """A direct read of ``bid`` found nothing yet."""
        if self._lone is not None and self._lone[0] == bid:
            self._lone_missed = now

    def found(self, bid: str, now: float, run_seconds: float) -> None:
        """A direct read of ``bid`` found its result (which took ``run_seconds`` to run)."""
        if self._lone is None or self._lone[0] != bid:
            return
        # The result appeared between the last read that missed it and the one that found
        # it: the middle of that span, so that a first poll that comes too late (a stale,
        # high estimate: the first batch waited for cold workers) lowers the estimate.
        ready = (self._lone_missed + now) / 2
        sample = max(0.0, ready - self._lone[1] - run_seconds)
        self._lone = None
        est = self.lone_latency
        # Down at once, up slowly: polling a little early costs a request, late costs time.
        self.lone_latency = sample if not est or sample < est else 0.7 * est + 0.3 * sample
