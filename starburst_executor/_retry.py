"""The one retry policy for store and AWS calls: random exponential backoff, bounded by
attempts and by time, for transient errors only (throttling, 5xx, timeouts, resets).

The sleep is injectable so tests never really wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

__all__ = ["RetryPolicy"]

T = TypeVar("T")


class RetryPolicy:
    """Retries a call while ``is_transient(exc)`` holds.

    Args:
        is_transient: which exceptions are worth retrying.
        attempts: total attempts, the first included.
        max_seconds: give up once this much time has passed since the first attempt.
        sleep: the sleep function (tests pass a no-op).
    """

    def __init__(
        self,
        is_transient: Callable[[BaseException], bool],
        *,
        attempts: int = 6,
        max_seconds: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._is_transient = is_transient
        self._attempts = attempts
        self._max_seconds = max_seconds
        self._sleep = sleep

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` with retries; the last exception propagates unchanged."""
        retrying = Retrying(
            retry=retry_if_exception(self._is_transient),
            wait=wait_random_exponential(multiplier=0.1, max=5.0),
            stop=stop_after_attempt(self._attempts) | stop_after_delay(self._max_seconds),
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(fn)
