"""``SessionWriter``: the client's side of the store protocol for one session.

It creates the session, turns queued calls into batch objects (content-addressing large
parts), decodes result records into outcomes, and updates the control record. It does no
threading and holds no Futures: the manager thread (``_manager.py``) drives it.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from starburst_executor.errors import ObjectNotFoundError, PreconditionFailedError, StarburstError
from starburst_executor.protocol import (
    Codec,
    ControlRecord,
    SessionKeys,
    SessionManifest,
    digest,
    ts_key,
)
from starburst_executor.serialization import ChunkResult, RemoteException, loads
from starburst_executor.stores.base import Store

__all__ = ["BatchResult", "Call", "Outcome", "SessionWriter", "new_session_id"]

INLINE_PART_MAX = 256 * 1024  # larger parts become content-addressed blobs, uploaded once
BATCH_BYTES_MAX = 16 * 1024 * 1024  # inline bytes per batch object


def new_session_id() -> str:
    """Sortable by creation time, unique without coordination: ``20261121-081500-3fa9c2``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass
class Call:
    """A pickled call waiting to travel: ``kind`` is "call" or "chunk" (a ``map`` chunk)."""

    kind: str
    parts: dict[str, Any]  # {"fn": bytes, "args": [bytes], "kwargs": {name: bytes}}
    items: int = 1  # the items of a map chunk: its results' positions in submission order

    @property
    def size(self) -> int:
        """Bytes this call adds to a batch object (large parts travel as blobs instead)."""
        p = self.parts
        parts = [p["fn"], *p["args"], *p["kwargs"].values()]
        return sum(len(part) for part in parts if len(part) <= INLINE_PART_MAX)


@dataclass(frozen=True)
class Outcome:
    """One task's outcome: ``value`` if ``error`` is ``None``."""

    value: Any = None
    error: BaseException | None = None
    chunk: bool = False  # a map chunk: value is (values, error of the item that stopped it)


@dataclass(frozen=True)
class BatchResult:
    """A batch's outcomes (or its batch-wide error) and how long its worker ran it."""

    outcomes: list[Outcome] | BaseException
    seconds: float


class SessionWriter:
    """Client-side protocol operations of one session.

    Args:
        store: the store.
        manifest: the session's manifest (written by :meth:`create`).
        codec: signs and verifies records.
    """

    def __init__(self, store: Store, manifest: SessionManifest, codec: Codec) -> None:
        self.store = store
        self.manifest = manifest
        self.codec = codec
        self.keys = SessionKeys(manifest.session_id)
        self._origin = secrets.token_hex(4)
        self._seq = itertools.count(1)  # next() is atomic: batch ids from several threads
        self._blobs_uploaded: set[str] = set()
        self._blob_locks: dict[str, threading.Lock] = {}
        self._blob_guard = threading.Lock()
        self._control: tuple[ControlRecord, str] | None = None

    def create(self) -> None:
        """Write the manifest, its index entry and the control record."""
        manifest = self.codec.encode_json(self.manifest.to_dict())
        self.store.put_if_absent(self.keys.manifest, manifest)
        self.store.put(self.keys.index, manifest)
        record = ControlRecord()
        etag = self.store.put_if_absent(self.keys.control, self.codec.encode_json(record.to_dict()))
        self._control = (record, etag)

    def upload_blob(self, data: bytes) -> str:
        """Store a large part once per session; returns its digest."""
        ref = digest(data)
        if ref in self._blobs_uploaded:
            return ref
        # Batches are uploaded by several I/O threads: one uploads a shared blob while the
        # others wait for it, instead of all sending the same bytes.
        with self._blob_guard:
            lock = self._blob_locks.setdefault(ref, threading.Lock())
        with lock:
            if ref not in self._blobs_uploaded:
                try:
                    self.store.put_if_absent(self.keys.blob(ref), self.codec.encode_blob(data))
                except PreconditionFailedError:
                    pass  # same content, uploaded by another client of this session
                self._blobs_uploaded.add(ref)
        return ref

    @property
    def origin(self) -> str:
        """This client's tag inside the batch ids it creates."""
        return self._origin

    def next_bid(self, ntasks: int, shape: str | None = None) -> str:
        """A new batch id: time-ordered, unique per client, carrying the task count.

        Args:
            ntasks: how many tasks the batch holds.
            shape: ``"s1"`` (submitted calls) or ``"m{n}"`` (``map`` chunks of ``n`` items),
                when every task of the batch is of that shape (see ``SessionKeys``).
        """
        seq = next(self._seq)
        stamp = ts_key(int(self.store.now() * 1000)).split("/")[1]
        middle = f"-{shape}" if shape else ""
        return f"{stamp}-{self._origin}-{seq:06d}{middle}-{ntasks}"

    def write_batch(self, bid: str, calls: list[Call]) -> None:
        """Upload one batch object (large parts first, as blobs)."""
        inline: dict[str, bytes] = {}

        def ref(part: bytes) -> str:
            if len(part) > INLINE_PART_MAX:
                return self.upload_blob(part)
            h = digest(part)
            inline[h] = part
            return h

        tasks = [
            {
                "i": i,
                "kind": call.kind,
                "fn": ref(call.parts["fn"]),
                "args": [ref(a) for a in call.parts["args"]],
                "kwargs": {k: ref(v) for k, v in call.parts["kwargs"].items()},
            }
            for i, call in enumerate(calls)
        ]
        record = {"bid": bid, "versions": self.manifest.versions, "tasks": tasks, "inline": inline}
        self.store.put(self.keys.batch(bid), self.codec.encode_pickle(record))

    def read_result(self, bid: str, inline: bytes | None) -> BatchResult:
        """Read and decode a batch's results (from its done event's bytes when given)."""
        key = self.keys.result(bid)
        data = inline or self.store.get(key).data
        record = self.codec.decode_pickle(data, key)
        return BatchResult(self.outcomes_of(record), float(record.get("seconds", 0.0)))

    @staticmethod
    def outcomes_of(record: dict[str, Any]) -> list[Outcome] | BaseException:
        """Decode a result record: one ``Outcome`` per task, or the batch-wide error."""
        if record["batch_error"] is not None:
            return _rebuild(record["batch_error"])
        outcomes: list[Outcome] = []
        for _, status, payload in sorted(record["outcomes"], key=lambda o: o[0]):
            outcomes.append(_outcome(status, payload))
        return outcomes

    def set_control(self, **changes: Any) -> None:
        """Change the control record by compare-and-swap, retrying on conflict."""
        for _ in range(20):
            if self._control is None:
                obj = self.store.get(self.keys.control)
                self._control = (
                    ControlRecord.from_dict(self.codec.decode_json(obj.data, self.keys.control)),
                    obj.etag,
                )
            record, etag = self._control
            new = replace(record, n=record.n + 1, **changes)
            try:
                etag = self.store.put_if_match(
                    self.keys.control, self.codec.encode_json(new.to_dict()), etag
                )
            except PreconditionFailedError:
                self._control = None  # another client changed it: re-read and retry
                continue
            self._control = (new, etag)
            return
        raise StarburstError(f"session {self.keys.session_id}: control record kept changing")

    def worker_record(self, worker: str) -> dict[str, Any] | None:
        """A worker's registration record, or ``None`` if it never registered."""
        key = self.keys.worker(worker)
        try:
            return self.codec.decode_json(self.store.get(key).data, key)
        except ObjectNotFoundError:
            return None

    def delete(self, keys: Iterable[str]) -> None:
        self.store.delete_many(keys)


def _rebuild(payload: bytes) -> BaseException:
    try:
        remote = loads(payload)
    except Exception as exc:
        return StarburstError(f"a worker's error report could not be decoded: {exc!r}")
    if isinstance(remote, RemoteException):
        return remote.rebuild()
    return StarburstError(f"a worker sent an unexpected error report: {type(remote).__name__}")


def _outcome(status: str, payload: bytes) -> Outcome:
    if status == "err":
        return Outcome(error=_rebuild(payload))
    try:
        value = loads(payload)
    except Exception as exc:
        from starburst_executor.errors import SerializationError

        error = SerializationError(
            f"the task's result could not be unpickled on the client: {type(exc).__name__}: "
            f"{exc}. Is every module it uses importable here?"
        )
        error.__cause__ = exc
        return Outcome(error=error)
    if isinstance(value, ChunkResult):
        stopped = value.error.rebuild() if value.error is not None else None
        return Outcome(value=(value.values, stopped), chunk=True)
    return Outcome(value=value)


def client_host() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"
