"""``OutageTolerantStore``: any store, with calls that wait out an outage of the store.

The client and every worker talk to the session's store through this wrapper, so that a store
that goes away (a 5xx storm, a restarted server, a network cut) pauses the run instead of
failing it: each call is retried under one :class:`~starburst_executor._retry.OutagePolicy`
until the store answers again or ``store_outage_timeout`` has passed since the outage began,
after which calls raise :class:`~starburst_executor.errors.StoreUnavailableError`. Answers
(404, 412, 403) are never retried here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from starburst_executor._retry import OutagePolicy
from starburst_executor.errors import (
    ObjectNotFoundError,
    PreconditionFailedError,
    StoreUnavailableError,
)
from starburst_executor.stores.base import ObjectInfo, Store, StoredObject

__all__ = [
    "DEFAULT_OUTAGE_TIMEOUT",
    "OutageTolerantStore",
    "is_outage",
    "tolerate_outages",
    "unwrapped",
]

DEFAULT_OUTAGE_TIMEOUT = 300.0


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the store could not be reached (rather than that it answered).

    ``StoreUnavailableError`` is what every store raises once its own short retries are spent
    on 5xx, throttling, resets or timeouts; bare ``ConnectionError``/``TimeoutError`` come from
    stores that do not translate them.
    """
    return isinstance(exc, (StoreUnavailableError, ConnectionError, TimeoutError))


class OutageTolerantStore:
    """A :class:`~starburst_executor.stores.base.Store` whose calls wait out store outages.

    Args:
        inner: the store to wrap.
        outage_timeout: seconds an outage may last before calls fail with
            ``StoreUnavailableError``.
        sleep: the sleep between attempts (tests advance a fake clock instead).
        clock: monotonic seconds (tests pass a fake clock).
    """

    def __init__(
        self,
        inner: Store,
        *,
        outage_timeout: float = DEFAULT_OUTAGE_TIMEOUT,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.policy = OutagePolicy(
            is_outage, name=inner.url, timeout=outage_timeout, sleep=sleep, clock=clock
        )

    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def outage_timeout(self) -> float:
        """Seconds an outage may last before calls fail."""
        return self.policy.timeout

    @outage_timeout.setter
    def outage_timeout(self, seconds: float) -> None:
        self.policy.timeout = seconds

    def unreachable_for(self) -> float | None:
        """Seconds since the store stopped answering, or ``None`` while it answers."""
        return self.policy.unreachable_for()

    def __repr__(self) -> str:
        return f"OutageTolerantStore({self.inner!r}, outage_timeout={self.outage_timeout:g})"

    def get(self, key: str) -> StoredObject:
        return self.policy.call(lambda: self.inner.get(key))

    def put(self, key: str, data: bytes) -> str:
        return self.policy.call(lambda: self.inner.put(key, data))

    def put_if_absent(self, key: str, data: bytes) -> str:
        return self._conditional(key, data, lambda: self.inner.put_if_absent(key, data))

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        return self._conditional(key, data, lambda: self.inner.put_if_match(key, data, etag))

    def _conditional(self, key: str, data: bytes, write: Callable[[], str]) -> str:
        failed = False

        def attempt() -> str:
            nonlocal failed
            try:
                return write()
            except Exception as exc:
                failed = failed or is_outage(exc)
                raise

        try:
            return self.policy.call(attempt)
        except PreconditionFailedError:
            if not failed:
                raise
            # An attempt that failed for want of an answer may have landed all the same: if the
            # key now holds exactly our bytes, the write was ours.
            try:
                current = self.get(key)
            except ObjectNotFoundError:
                raise PreconditionFailedError(f"conditional write of {key!r} lost") from None
            if current.data == data:
                return current.etag
            raise

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        # Pages are fetched lazily: an outage in the middle of a listing resumes after the
        # last key handed out, so callers never see a key twice or miss one.
        last = start_after
        while True:

            def resume(after: str | None = last) -> tuple[Iterator[ObjectInfo], ObjectInfo | None]:
                pages = iter(self.inner.list(prefix, after))
                return pages, next(pages, None)

            pages, info = self.policy.call(resume)
            while info is not None:
                last = info.key
                yield info
                try:
                    info = next(pages, None)
                except Exception as exc:
                    if not is_outage(exc):
                        raise
                    break  # a generator that raised is spent: list again after ``last``
            else:
                return

    def delete_many(self, keys: Iterable[str]) -> None:
        listed = list(keys)
        self.policy.call(lambda: self.inner.delete_many(listed))

    def now(self) -> float:
        return self.policy.call(self.inner.now)

    def close(self) -> None:
        self.inner.close()


def tolerate_outages(store: Store, outage_timeout: float | None = None) -> OutageTolerantStore:
    """``store`` wrapped once (an ``OutageTolerantStore`` is reused), with its timeout set
    when ``outage_timeout`` is given."""
    wrapped = store if isinstance(store, OutageTolerantStore) else OutageTolerantStore(store)
    if outage_timeout is not None:
        wrapped.outage_timeout = outage_timeout
    return wrapped


def unwrapped(store: Store) -> Store:
    """The store under an ``OutageTolerantStore`` and a request counter (``store`` itself
    otherwise): for code that asks which kind of store it has."""
    from starburst_executor.stores.counting import CountingStore

    store = store.inner if isinstance(store, OutageTolerantStore) else store
    return store.inner if isinstance(store, CountingStore) else store
