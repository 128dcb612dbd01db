"""How a worker polls (``WorkerOptions``), and the worker loop's clocks: when it looks for
work, re-reads the control record, looks for lost claims and gives up as idle (``Scan``);
when its lease thread wakes and renews (``LeaseClock``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from starburst_executor._cursor import KeyCursor
from starburst_executor.protocol import SessionManifest, SessionState
from starburst_executor.worker.pending import Pending

__all__ = ["IDLE_DUTY_MAX", "LeaseClock", "Scan", "WorkerOptions"]

IDLE_DUTY_MAX = 30.0  # a long-idle worker re-reads the control record this often, at least


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker polls.

    Attributes:
        poll_min: shortest wait between two looks for work (seconds).
        poll_max: longest wait between two looks for work of a worker idle for a short
            while; a longer idle stretch lengthens it (``idle_ratio``, ``idle_rate``).
        wake_ratio: a worker idle for a short while waits this fraction of the time it has
            been idle between looks (from ``poll_min`` up to ``poll_max``), so work that
            comes after a pause of ``t`` is noticed within about ``wake_ratio * t``.
        cursor_margin: overlap of successive listings (see ``KeyCursor``).
        control_every: how often a busy worker re-reads the session's control record.
        capture_output: keep each task's stdout/stderr for its result. Off for workers that
            share a process (``ThreadLauncher``): ``sys.stdout`` is one per process, so
            redirecting it from several threads would mix their outputs.
        idle_ratio: past ``poll_max``, an idle worker waits this fraction of the time it
            has been idle between looks for work (idle a minute at 0.05: every 3 s), up to
            the ceiling ``idle_rate`` leaves (reached after about two and a half minutes).
        idle_rate: requests per second an idle worker may make once backed off (looks for
            work, control re-reads, claim scans together); sets the longest wait.
        idle_poll_max: the longest wait between looks for work however long idle, instead
            of the one ``idle_rate`` gives (``None``).
        race_age: seconds after which a listed batch is checked against the claims before
            a claim is attempted (younger ones are raced; see ``pending.py``).
        clock: the monotonic clock of the loop's pacing (tests pass a fake one).
    """

    poll_min: float = 0.005
    poll_max: float = 0.5
    cursor_margin: float = 15.0
    control_every: float = 2.0
    capture_output: bool = True
    wake_ratio: float = 0.25
    idle_ratio: float = 0.05
    idle_rate: float = 0.2
    idle_poll_max: float | None = None
    race_age: float = 1.0
    clock: Callable[[], float] = time.monotonic


@dataclass
class Scan:
    """The worker loop's state between turns: where it is in the batch listing, what it
    has listed but not tried yet (``pending``), and when it next looks for work, re-reads the
    control record, looks for lost claims, and gives up as idle.

    Idle costs are bounded (``WorkerOptions.idle_rate`` requests per second once backed off)
    yet a worker wakes quickly after a short pause: the wait between looks is a fraction of
    the time idle (``wake_ratio``, from ``poll_min``: idle 40 ms, it looks again within
    10 ms), ``poll_max`` at most for the first seconds, then a smaller fraction of it
    (``idle_ratio``: idle for a minute, every 3 s) up to the ceiling the budget leaves
    (:meth:`idle_poll_max`). Doubling the wait instead (as before) left a worker that had
    paused for ``t`` up to ``t`` late, which was most of a lone call's round trip. The
    control re-read and the lost-claim scan slow down the same way, to once per
    ``idle_duty`` (the lease, 30 s at most). With many idle workers, one of them looks soon
    after work arrives even so.
    """

    cursor: KeyCursor
    old_before_ms: int
    options: WorkerOptions
    state: SessionState
    lease_seconds: float
    pending: Pending
    last_work: float = 0.0
    next_control: float = 0.0
    next_takeover: float = 0.0

    @property
    def clock(self) -> Callable[[], float]:
        return self.options.clock

    def __post_init__(self) -> None:
        self.last_work = self.clock()
        self.next_control = self.last_work + self.options.control_every

    @property
    def idle_duty(self) -> float:
        """How often a long-idle worker re-reads the control record and scans the claims."""
        return min(self.lease_seconds, IDLE_DUTY_MAX)

    def _every(self, busy: float) -> float:
        # Idle for t seconds: every t (the duty grows with the pause), to ``idle_duty``.
        return max(busy, min(self.idle_for(), self.idle_duty))

    def control_due(self) -> bool:
        now = self.clock()
        if now < self.next_control:
            return False
        self.next_control = now + self._every(self.options.control_every)
        return True

    def takeover_due(self) -> bool:
        now = self.clock()
        if now < self.next_takeover:
            return False
        self.next_takeover = now + self._every(self.lease_seconds / 2)
        return True

    def worked(self) -> None:
        self.last_work = self.clock()
        # Back to the busy pace for the duties too (an idle worker scheduled them far out).
        self.next_control = min(self.next_control, self.last_work + self.options.control_every)
        self.next_takeover = min(self.next_takeover, self.last_work + self.lease_seconds / 2)

    def idle_for(self) -> float:
        return self.clock() - self.last_work

    def idle_poll_max(self) -> float:
        """The longest wait between looks for work: what the idle budget leaves once the
        control re-read and the claim scan (one request each per ``idle_duty``) are paid
        (``poll_max`` when the budget cannot hold them, with a short test lease)."""
        if self.options.idle_poll_max is not None:
            return max(self.options.idle_poll_max, self.options.poll_max)
        spare = self.options.idle_rate - 2 / self.idle_duty
        return max(1 / spare if spare > 0 else 0.0, self.options.poll_max)

    def backoff(self) -> float:
        """The wait before the next look for work: in proportion to the time idle."""
        idle, opts = self.idle_for(), self.options
        short = min(max(opts.poll_min, opts.wake_ratio * idle), opts.poll_max)
        return min(max(short, opts.idle_ratio * idle), self.idle_poll_max())


@dataclass
class LeaseClock:
    """When the lease thread wakes and renews.

    It renews every third of the lease: two renewals may fail (a store hiccup) before the
    lease expires and another worker takes the batch over. It wakes at least every half
    second when a task or session deadline must be watched, so a timeout is acted on within
    that.
    """

    interval: float
    tick: float
    next_renewal: float

    @classmethod
    def for_worker(cls, lease_seconds: float, manifest: SessionManifest) -> LeaseClock:
        interval = lease_seconds / 3
        watch = manifest.task_timeout or manifest.deadline
        tick = min(interval, 0.5) if watch else interval
        return cls(interval, tick, time.monotonic() + interval)

    def renewal_due(self) -> bool:
        now = time.monotonic()
        if now < self.next_renewal:
            return False
        self.next_renewal = now + self.interval
        return True
