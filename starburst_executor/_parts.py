"""Large call arguments held once: ``SharedParts`` pickles a shared argument once and keeps
one copy of its bytes, however many queued calls carry it.

Twenty ``submit(f, blob)`` calls sharing one 20 MB ``blob`` used to hold twenty pickled
copies (400 MB) until their batches were uploaded. Here a part larger than the inline limit
becomes a :class:`LargePart`: its bytes and their digest, interned by content (equal bytes,
one object), so the queue holds one copy and the upload hashes it once. An immutable
argument (``bytes``, ``str``) seen again by identity is not even pickled again.

The table holds its entries weakly: a part lives as long as a queued or uploading call
refers to it, and not a moment longer.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from starburst_executor.protocol import digest
from starburst_executor.serialization import callable_name, dumps_part

__all__ = ["LargePart", "SharedParts", "part_bytes", "part_digest"]


class LargePart:
    """A pickled part too large to travel inline: its bytes, their digest and, for an
    immutable argument, the argument itself (kept alive so that its ``id`` stays its own
    while the part is in use)."""

    __slots__ = ("__weakref__", "data", "digest", "source")

    def __init__(self, data: bytes, source: object = None) -> None:
        self.data = data
        self.digest = digest(data)
        self.source = source

    def __len__(self) -> int:
        return len(self.data)


def part_bytes(part: bytes | LargePart) -> bytes:
    """The pickled bytes of a part, whichever form it has."""
    return part.data if isinstance(part, LargePart) else part


def part_digest(part: bytes | LargePart) -> str:
    """The content address of a part (computed once for a :class:`LargePart`)."""
    return part.digest if isinstance(part, LargePart) else digest(part)


class SharedParts:
    """Pickles call parts, holding each large one once (see the module docstring).

    Args:
        threshold: parts up to this many bytes are returned as plain ``bytes`` (they ride
            inside a batch object); larger ones become shared :class:`LargePart` objects.
    """

    def __init__(self, threshold: int) -> None:
        self._threshold = threshold
        self._lock = threading.Lock()
        self._by_digest: weakref.WeakValueDictionary[str, LargePart] = weakref.WeakValueDictionary()
        self._by_id: weakref.WeakValueDictionary[int, LargePart] = weakref.WeakValueDictionary()

    def __len__(self) -> int:
        """How many large parts are held (by queued or uploading calls)."""
        return len(self._by_digest)

    def part(self, obj: Any, what: str) -> bytes | LargePart:
        """Pickle one part (the error, if any, names ``what``; see ``dumps_part``)."""
        immutable = type(obj) in (bytes, str) and len(obj) > self._threshold
        if immutable:
            with self._lock:
                known = self._by_id.get(id(obj))
            if known is not None and known.source is obj:
                return known
        data = dumps_part(obj, what)
        if len(data) <= self._threshold:
            return data
        fresh = LargePart(data, obj if immutable else None)
        with self._lock:
            held = self._by_digest.get(fresh.digest)
            if held is None:
                self._by_digest[fresh.digest] = held = fresh
            if immutable and held.source is None:
                held.source = obj  # hold the argument itself: its id stays valid
            if held.source is obj:
                self._by_id[id(obj)] = held
        return held

    def call_parts(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """A call's parts: ``{"fn": part, "args": [part], "kwargs": {name: part}}``.

        Raises:
            Exception: a part cannot be pickled (see ``serialization.dumps_part``).
        """
        name = callable_name(fn)
        return {
            "fn": self.part(fn, f"the callable {name}"),
            "args": [self.part(a, f"argument {i + 1} of {name}") for i, a in enumerate(args)],
            "kwargs": {
                k: self.part(v, f"keyword argument {k!r} of {name}") for k, v in kwargs.items()
            },
        }
