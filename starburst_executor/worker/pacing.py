"""The worker loop's clocks: when it looks for work, re-reads the control record, looks for
lost claims and gives up as idle (``Scan``); when its lease thread wakes and renews
(``LeaseClock``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starburst_executor._cursor import KeyCursor
from starburst_executor.protocol import SessionManifest, SessionState

if TYPE_CHECKING:  # the loop module imports this one
    from starburst_executor.worker.loop import WorkerOptions

__all__ = ["LeaseClock", "Scan"]


@dataclass
class Scan:
    """The worker loop's state between turns: where it is in the batch listing, what it
    has listed but not tried yet, and when it next re-reads the control record, looks for
    lost claims, and gives up as idle."""

    cursor: KeyCursor
    old_before_ms: int
    options: WorkerOptions
    state: SessionState
    pending: list[str] = field(default_factory=list)
    interval: float = 0.0
    last_work: float = field(default_factory=time.monotonic)
    next_control: float = 0.0
    next_takeover: float = 0.0

    def __post_init__(self) -> None:
        self.interval = self.options.poll_min
        self.next_control = time.monotonic() + self.options.control_every

    def control_due(self) -> bool:
        now = time.monotonic()
        if now < self.next_control:
            return False
        self.next_control = now + self.options.control_every
        return True

    def takeover_due(self, every: float) -> bool:
        now = time.monotonic()
        if now < self.next_takeover:
            return False
        self.next_takeover = now + every
        return True

    def worked(self) -> None:
        self.interval = self.options.poll_min
        self.last_work = time.monotonic()

    def idle_for(self) -> float:
        return time.monotonic() - self.last_work

    def backoff(self, longest: float) -> float:
        """The wait before the next look for work: doubling while none comes."""
        wait, self.interval = self.interval, min(self.interval * 2, longest)
        return wait


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
