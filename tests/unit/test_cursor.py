"""``KeyCursor``: each new time-stamped key seen once, late keys caught by the margin, badly
skewed ones by ``rewind``, and a poll's cost bounded by the margin window, not the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from starburst_executor._cursor import KeyCursor
from starburst_executor.stores.base import ObjectInfo
from starburst_executor.stores.memory import MemoryStore

from .fakes import Session, new_session

MARGIN = 15.0


class CountingStore(MemoryStore):
    """Counts the entries its listings yield: what a poll costs on S3 (1 request per 1,000)."""

    listed = 0

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        for info in super().list(prefix, start_after):
            self.listed += 1
            yield info


@pytest.fixture
def session() -> Session:
    return new_session()


def write_event(session: Session, stamp: float, bid: str) -> str:
    """A done event stamped ``stamp`` (store-clock seconds), as a worker writes it."""
    key = session.keys.done_event(int(stamp * 1000), bid, 0)
    session.store.put(key, b"")
    return key


def keys(infos: list[ObjectInfo]) -> list[str]:
    return [info.key for info in infos]


def test_each_new_key_is_seen_once(session: Session) -> None:
    cursor = KeyCursor(session.store, session.keys.done, margin=MARGIN)
    assert cursor.poll() == []
    first = write_event(session, session.clock(), "b1")
    assert keys(cursor.poll()) == [first]
    assert cursor.poll() == []
    session.clock.advance(1)
    second = write_event(session, session.clock(), "b2")
    third = write_event(session, session.clock(), "b3")
    assert keys(cursor.poll()) == [second, third]
    assert cursor.poll() == []


def test_a_key_stamped_before_the_last_poll_but_within_the_margin_is_seen(
    session: Session,
) -> None:
    cursor = KeyCursor(session.store, session.keys.done, margin=MARGIN)
    cursor.poll()
    session.clock.advance(5)
    cursor.poll()
    # A slow writer (or one whose clock is behind) stamps its key before the last poll.
    late = write_event(session, session.clock() - (MARGIN - 1), "late")
    assert keys(cursor.poll()) == [late]


def test_a_key_stamped_beyond_the_margin_waits_for_rewind(session: Session) -> None:
    cursor = KeyCursor(session.store, session.keys.done, margin=MARGIN)
    early = write_event(session, session.clock(), "early")
    assert keys(cursor.poll()) == [early]
    session.clock.advance(100)
    cursor.poll()
    skewed = write_event(session, session.clock() - 3 * MARGIN, "skewed")
    assert cursor.poll() == []  # behind the cursor: the cost bound's price
    cursor.rewind()
    assert keys(cursor.poll()) == [skewed]  # found; and "early", seen before, is not repeated
    assert cursor.poll() == []


def test_start_after_skips_the_keys_up_to_it(session: Session) -> None:
    old = [write_event(session, session.clock() + i, f"old{i}") for i in range(3)]
    new = write_event(session, session.clock() + 10, "new")
    cursor = KeyCursor(session.store, session.keys.done, margin=MARGIN, start_after=old[-1])
    assert keys(cursor.poll()) == [new]


def test_a_poll_lists_only_the_margin_window_not_the_whole_session(session: Session) -> None:
    store = CountingStore(clock=session.clock)
    session.store = store
    cursor = KeyCursor(store, session.keys.done, margin=MARGIN)
    for i in range(2000):
        write_event(session, session.clock(), f"old{i:04d}")
        session.clock.advance(0.01)
    assert len(cursor.poll()) == 2000
    session.clock.advance(3 * MARGIN)
    cursor.poll()
    store.listed = 0
    fresh = [write_event(session, session.clock(), f"new{i}") for i in range(5)]
    session.clock.advance(1)
    assert keys(cursor.poll()) == fresh
    assert store.listed == 5  # not 2,005: the old keys are behind the margin
