"""The one retry policy for store and AWS calls: random exponential backoff, bounded by
attempts and by time, for transient errors only (throttling, 5xx, timeouts, resets).

:class:`RetryPolicy` rides out a blip inside one store call (a few seconds);
:class:`OutagePolicy`, above it, rides out an outage of the whole store for up to
``store_outage_timeout`` (minutes), so that a run pauses instead of failing.

The sleep is injectable so tests never really wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from starburst_executor.errors import StoreUnavailableError

__all__ = ["OutagePolicy", "RetryPolicy"]

logger = logging.getLogger(__name__)

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


class OutagePolicy:
    """Rides out a store outage: retries a call while the store is unreachable, for up to
    ``timeout`` seconds counted from the start of the outage (shared by every call through
    this policy, so ten calls in a row do not each get the whole budget).

    The first failure of an outage logs one warning and a success after it one info line;
    :meth:`unreachable_for` tells ``status()`` how long the store has been away.

    Args:
        is_outage: which exceptions mean "the store is unreachable" (5xx past the store's own
            retries, connection errors, timeouts), never an answer such as 403, 404 or 412.
        name: what the log lines and the final error call the store (its URL).
        timeout: seconds of outage after which calls fail (``store_outage_timeout``).
        sleep: the sleep between attempts (tests advance a fake clock instead).
        clock: monotonic seconds (tests pass a fake clock).
        cap: the longest wait between two attempts.
    """

    def __init__(
        self,
        is_outage: Callable[[BaseException], bool],
        *,
        name: str,
        timeout: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        cap: float = 5.0,
    ) -> None:
        self._is_outage = is_outage
        self._name = name
        self.timeout = timeout
        self._sleep = sleep
        self._clock = clock
        self._cap = cap
        self._lock = threading.Lock()
        self._since: float | None = None  # clock time of the outage's first failure

    def unreachable_for(self) -> float | None:
        """Seconds since the current outage began, or ``None`` while the store answers."""
        with self._lock:
            since = self._since
        return None if since is None else max(0.0, self._clock() - since)

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            first = self._since is None
            if first:
                self._since = self._clock()
        if first:
            logger.warning(
                "store %s unreachable (%s): pausing, retrying for up to %g s",
                self._name,
                exc,
                self.timeout,
            )

    def _succeeded(self) -> None:
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            logger.info("store %s reachable again after %.1f s", self._name, self._clock() - since)

    def _given_up(self, _: RetryCallState) -> bool:
        lasted = self.unreachable_for()
        return lasted is not None and lasted >= self.timeout

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is not None:
            self._failed(exc)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying outages with capped random exponential backoff.

        Raises:
            StoreUnavailableError: the store stayed unreachable for ``timeout`` seconds; the
                message names the store and how long it was away.
            Exception: anything ``fn`` raises that is not an outage, unchanged.
        """
        retrying = Retrying(
            retry=retry_if_exception(self._is_outage),
            wait=wait_random_exponential(multiplier=0.2, max=self._cap),
            stop=self._given_up,
            before_sleep=self._before_sleep,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            result = retrying(fn)
        except Exception as exc:
            if not self._is_outage(exc):
                self._succeeded()  # an answer (404, 412 ...): the store is reachable
                raise
            self._failed(exc)
            lasted = self.unreachable_for() or 0.0
            raise StoreUnavailableError(
                f"the store {self._name} has been unreachable for {lasted:.0f} s, longer than "
                f"store_outage_timeout={self.timeout:g} s (last error: {exc}). Check that the "
                "store's server is running and reachable, then resubmit the work (a longer "
                "store_outage_timeout rides out longer outages)"
            ) from exc
        self._succeeded()
        return result
