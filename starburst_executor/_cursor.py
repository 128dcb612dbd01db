"""``KeyCursor``: follow a prefix of time-ordered keys, seeing each new key once.

Writers stamp keys with the store's clock (``Store.now()``), and a key becomes visible a
little after its stamp (the write takes time, clocks differ by up to about a second after
correction). So each poll lists from ``(start of the previous poll) - margin``, and drops keys
already seen. A poll therefore costs O((new keys + keys in the margin window) / 1000) list
requests, whatever the size of the session.
"""

from __future__ import annotations

from starburst_executor.protocol import key_time_ms, ts_key
from starburst_executor.stores.base import ObjectInfo, Store

__all__ = ["KeyCursor"]


class KeyCursor:
    """Yields new keys under ``prefix`` (keys of the form ``prefix{bucket}/{ts}-...``).

    Args:
        store: the store to list.
        prefix: the folder of time-ordered keys, ending in "/".
        margin: seconds of overlap between polls (write latency plus clock error).
        start_after: a key to start after on the first poll (``None``: the beginning).
    """

    def __init__(
        self, store: Store, prefix: str, *, margin: float = 15.0, start_after: str | None = None
    ) -> None:
        self._store = store
        self._prefix = prefix
        self._margin_ms = int(margin * 1000)
        self._start_after = start_after
        self._horizon_ms: int | None = None
        self._seen: dict[str, int] = {}

    def poll(self) -> list[ObjectInfo]:
        """List the keys that appeared since the last poll, in key order."""
        # Taken before listing: a key stamped during the listing may not show in it, so the
        # next poll must start at or before this moment (less the margin), not after.
        now_ms = int(self._store.now() * 1000)
        if self._horizon_ms is None:
            start = self._start_after
        else:
            # A key stamped up to ``margin`` before the last poll may only have become
            # visible since (slow write, writer's clock behind ours): list from there again.
            start = self._prefix + ts_key(max(0, self._horizon_ms - self._margin_ms))
        fresh = []
        for info in self._store.list(self._prefix, start_after=start):
            if info.key in self._seen:
                continue
            self._seen[info.key] = key_time_ms(info.key)
            fresh.append(info)
        self._horizon_ms = now_ms
        # Forget keys older than twice the margin: the next listing starts after them, so
        # they cannot come back; the set stays the size of the margin window, not the session.
        floor = now_ms - 2 * self._margin_ms
        if len(self._seen) > 256:
            self._seen = {k: t for k, t in self._seen.items() if t >= floor}
        return fresh

    def rewind(self) -> None:
        """List from the first key again on the next poll (keys seen stay seen).

        For the rare key stamped by a badly skewed clock, which would otherwise stay behind
        the cursor; callers do it with backoff, only when they wait and nothing arrives.
        """
        self._horizon_ms = None
        self._start_after = None
