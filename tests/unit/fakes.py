"""Helpers of the unit tests: a session on a ``MemoryStore`` with a ``FakeClock``, and
executors whose workers are threads of the test process (``ThreadLauncher``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from starburst_executor._claims import Claims
from starburst_executor.protocol import Codec, SessionKeys
from starburst_executor.stores.base import ObjectInfo, StoredObject
from starburst_executor.stores.memory import FakeClock, MemoryStore

SECRET = b"k" * 32
SESSION = "20300101-000000-abcdef"


@dataclass
class Session:
    """The pieces of one session's protocol on a fresh memory store."""

    clock: FakeClock
    store: MemoryStore
    keys: SessionKeys
    codec: Codec

    def claims(self, *, lease_seconds: float = 30.0, max_attempts: int = 3) -> Claims:
        return Claims(
            self.store,
            self.keys,
            self.codec,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
        )


def new_session() -> Session:
    clock = FakeClock()
    return Session(clock, MemoryStore(clock=clock), SessionKeys(SESSION), Codec(SECRET))


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something true, or fail after ``timeout`` seconds.

    For waiting on other threads (no fixed sleeps): it returns as soon as the state is there.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout}s waiting for {what or predicate}")
        pause.wait(0.001)


# -- executors on threads ------------------------------------------------------------------


class RecordingStore(MemoryStore):
    """A memory store that remembers the ids of the batches written to it, in order."""

    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        super().__init__(clock=clock)
        self.batches: list[str] = []

    def put(self, key: str, data: bytes) -> str:
        parts = key.split("/")
        if len(parts) > 2 and parts[2] == "batches" and "-requeue-" not in key:
            self.batches.append(parts[-1])
        return super().put(key, data)


class RequestLogStore(MemoryStore):
    """A memory store that reports each request it answers to :meth:`_count` (the tests
    that bound how often a client or a worker asks the store count them their own way)."""

    def _count(self, op: str, key: str) -> None:
        """One request: ``op`` (GET, PUT, LIST, DELETE) on ``key`` (a prefix for LIST)."""

    def get(self, key: str) -> StoredObject:
        self._count("GET", key)
        return super().get(key)

    def put(self, key: str, data: bytes) -> str:
        self._count("PUT", key)
        return super().put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> str:
        self._count("PUT", key)
        return super().put_if_absent(key, data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        self._count("PUT", key)
        return super().put_if_match(key, data, etag)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        self._count("LIST", prefix)
        return super().list(prefix, start_after)

    def delete_many(self, keys: Iterable[str]) -> None:
        self._count("DELETE", "")
        super().delete_many(keys)


def tasks_in(bid: str) -> int:
    """How many tasks a batch holds: its id ends in the count (``...-{ntasks}``)."""
    return int(bid.rsplit("-", 1)[1])


LauncherFactory = Callable[..., Any]


def use_launcher(monkeypatch: pytest.MonkeyPatch, factory: LauncherFactory) -> list[Any]:
    """Make executors built from now on get their launcher from ``factory(store, manifest,
    codec)``; returns the list of launchers made.

    The executor picks its launcher from the session's manifest (``make_launcher``); this is
    the one place the unit tests replace it.
    """
    from starburst_executor import executor as executor_module
    from starburst_executor.config import secret_key
    from starburst_executor.stores import open_store

    made: list[Any] = []

    def make_launcher(manifest: Any, *, poll_max: float) -> Any:
        launcher = factory(open_store(manifest.store_url), manifest, Codec(secret_key()))
        made.append(launcher)
        return launcher

    monkeypatch.setattr(executor_module, "make_launcher", make_launcher)
    return made


def thread_launcher(store: Any, manifest: Any, codec: Codec) -> Any:
    from starburst_executor.launchers.thread import ThreadLauncher
    from starburst_executor.worker.loop import WorkerOptions

    return ThreadLauncher(
        store, manifest.session_id, codec, options=WorkerOptions(poll_min=0.001, poll_max=0.01)
    )
