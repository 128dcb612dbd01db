"""``Session``: one session's records in the store, for the client, the readers and the worker.

Every read and write of a session's manifest, control record, batches, results, worker
records and blobs goes through here, so each record has one reader and one writer (the
records themselves are defined in :mod:`starburst_executor.protocol`). It does no threading
and holds no Futures: the manager thread (``_manager.py``), the worker loop and the readers
(``sessions.py``) drive it.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from starburst_executor._claims import Claims
from starburst_executor._parts import LargePart, part_bytes, part_digest
from starburst_executor.errors import (
    CorruptRecordError,
    ObjectNotFoundError,
    PreconditionFailedError,
    ProtocolMismatchError,
    SessionError,
    StarburstError,
)
from starburst_executor.protocol import (
    BatchId,
    BatchRecord,
    BatchShape,
    Codec,
    ControlRecord,
    DoneEvent,
    ResultRecord,
    SessionKeys,
    SessionManifest,
    SessionState,
    TaskKind,
    TaskSpec,
    WorkerRecord,
    digest,
    key_time_ms,
)
from starburst_executor.stores.base import Store

__all__ = ["BATCH_BYTES_MAX", "Call", "Session", "new_session_id"]

INLINE_PART_MAX = 256 * 1024  # larger parts become content-addressed blobs, uploaded once
BATCH_BYTES_MAX = 16 * 1024 * 1024  # inline bytes per batch object
INLINE_RESULT_MAX = 256 * 1024  # results up to this size ride inside the done event
_CONTROL_RETRIES = 20
_READERS = 8  # records read at once by one reader


def new_session_id() -> str:
    """Sortable by creation time, unique without coordination: ``20261121-081500-3fa9c2``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass
class Call:
    """A pickled call waiting to travel: ``kind`` is a ``TaskKind`` ("call" or "chunk")."""

    kind: str
    # {"fn": part, "args": [part], "kwargs": {name: part}}; a part is bytes, or a LargePart
    # (shared by every call that carries the same large argument, see _parts.py)
    parts: dict[str, Any]
    items: int = 1  # the items of a map chunk: its results' positions in submission order

    @property
    def size(self) -> int:
        """Bytes this call adds to a batch object (large parts travel as blobs instead)."""
        p = self.parts
        parts = [p["fn"], *p["args"], *p["kwargs"].values()]
        return sum(len(part) for part in parts if len(part) <= INLINE_PART_MAX)


class Session:
    """One session in one store.

    Args:
        store: the store.
        manifest: the session's manifest (written by :meth:`create`, or read by :meth:`open`).
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
        # The control record as last written or read here, with its ETag: a compare-and-swap
        # starts from it and re-reads only when another writer got in first.
        self._control: tuple[ControlRecord, str] | None = None

    @classmethod
    def open(cls, store: Store, session_id: str, codec: Codec) -> Session:
        """An existing session, by id.

        Raises:
            SessionError: no such session in this store (the message says which store was
                searched and how to list sessions), or its data was deleted.
            CorruptRecordError: the manifest is damaged (the message names its key).
            ProtocolMismatchError: the session was written by an incompatible version.
        """
        keys = SessionKeys(session_id)
        try:
            obj = store.get(keys.manifest)
        except ObjectNotFoundError:
            try:
                store.get(keys.index)
            except ObjectNotFoundError:
                raise SessionError(
                    f"no session {session_id!r} in store {store.url}. List the sessions there "
                    f"with `starburst sessions --store {store.url}` (or list_sessions()), "
                    "or pass the store the session was created in"
                ) from None
            raise SessionError(
                f"session {session_id!r} was cleaned up with its data deleted from "
                f"{store.url}; its results are gone"
            ) from None
        try:
            manifest = SessionManifest.decode(codec, obj.data, keys.manifest)
        except ProtocolMismatchError:
            raise
        except CorruptRecordError as exc:
            raise CorruptRecordError(
                f"the manifest of session {session_id!r} ({store.url}/{keys.manifest}) is "
                f"damaged: {exc}"
            ) from exc
        return cls(store, manifest, codec)

    @property
    def session_id(self) -> str:
        return self.keys.session_id

    # -- manifest and control ----------------------------------------------------------------

    def create(self) -> None:
        """Write the manifest, its index entry and the control record."""
        self.store.put_if_absent(
            self.keys.manifest, self.manifest.encode(self.codec, self.keys.manifest)
        )
        self.store.put(self.keys.index, self.manifest.encode(self.codec, self.keys.index))
        record = ControlRecord()
        etag = self.store.put_if_absent(
            self.keys.control, record.encode(self.codec, self.keys.control)
        )
        self._control = (record, etag)

    def _read_control(self) -> tuple[ControlRecord, str]:
        try:
            obj = self.store.get(self.keys.control)
        except ObjectNotFoundError:
            raise SessionError(
                f"session {self.session_id!r} has no control record: it was cleaned up "
                f"with its data deleted from {self.store.url}; its results are gone"
            ) from None
        return ControlRecord.decode(self.codec, obj.data, self.keys.control), obj.etag

    def control(self) -> ControlRecord:
        """The control record as it is now in the store.

        Raises:
            SessionError: the session's data was deleted.
        """
        self._control = self._read_control()
        return self._control[0]

    def update_control(
        self, change: Callable[[ControlRecord], ControlRecord | None]
    ) -> ControlRecord | None:
        """Apply a transition (e.g. ``ControlRecord.close``) by compare-and-swap, re-reading
        and re-applying it when another writer got in first; returns the record written, or
        ``None`` when the transition had nothing to change.

        Raises:
            SessionError: the session's data was deleted.
            StarburstError: the record kept changing under every attempt.
        """
        for _ in range(_CONTROL_RETRIES):
            record, etag = self._control or self._read_control()
            new = change(record)
            if new is None:
                self._control = (record, etag)
                return None
            try:
                etag = self.store.put_if_match(
                    self.keys.control, new.encode(self.codec, self.keys.control), etag
                )
            except PreconditionFailedError:
                self._control = None  # another client or a worker changed it: re-read
                continue
            self._control = (new, etag)
            return new
        raise SessionError(
            f"session {self.session_id}: its control record kept changing under other "
            "writers; try again"
        )

    def expired(self) -> bool:
        """Whether ``session_timeout`` has passed (store clock)."""
        return self.manifest.expired(self.store.now())

    def state(self) -> SessionState:
        """The control record's state, "expired" once ``session_timeout`` has passed.

        Raises:
            SessionError: the session's data was deleted.
        """
        return self.control().state_at(self.manifest, self.store.now())

    # -- batches -----------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """This client's tag inside the batch ids it creates."""
        return self._origin

    def next_bid(self, ntasks: int, shape: str | None = None) -> str:
        """A new batch id: time-ordered, unique per client, carrying the task count.

        Args:
            ntasks: how many tasks the batch holds.
            shape: ``"s1"`` (submitted calls) or ``"m{n}"`` (``map`` chunks of ``n`` items),
                when every task of the batch is of that shape (see ``BatchId``).
        """
        seq = next(self._seq)
        kind = BatchShape(shape[0], int(shape[1:])) if shape else None
        return str(BatchId(int(self.store.now() * 1000), self._origin, seq, ntasks, kind))

    def upload_blob(self, data: bytes, ref: str | None = None) -> str:
        """Store a large part once per session; returns its digest (``ref``, when the
        caller knows it already: hashing a large part once is enough)."""
        ref = ref or digest(data)
        if ref in self._blobs_uploaded:
            return ref
        # Batches are uploaded by several I/O threads: one uploads a shared blob while the
        # others wait for it, instead of all sending the same bytes.
        with self._blob_guard:
            lock = self._blob_locks.setdefault(ref, threading.Lock())
        with lock:
            if ref not in self._blobs_uploaded:
                try:
                    key = self.keys.blob(ref)
                    self.store.put_if_absent(key, self.codec.encode_blob(data, key))
                except PreconditionFailedError:
                    pass  # same content, uploaded by another client of this session
                self._blobs_uploaded.add(ref)
        return ref

    def read_blob(self, ref: str) -> bytes:
        key = self.keys.blob(ref)
        return self.codec.decode_blob(self.store.get(key).data, key)

    def write_batch(self, bid: str, calls: list[Call]) -> None:
        """Upload one batch object (large parts first, as blobs)."""
        inline: dict[str, bytes] = {}

        def ref(part: bytes | LargePart) -> str:
            if isinstance(part, LargePart) or len(part) > INLINE_PART_MAX:
                return self.upload_blob(part_bytes(part), part_digest(part))
            h = digest(part)
            inline[h] = part
            return h

        tasks = tuple(
            TaskSpec(
                i,
                TaskKind(call.kind),
                ref(call.parts["fn"]),
                tuple(ref(a) for a in call.parts["args"]),
                {k: ref(v) for k, v in call.parts["kwargs"].items()},
            )
            for i, call in enumerate(calls)
        )
        record = BatchRecord(bid, self.manifest.versions, tasks, inline)
        key = self.keys.batch(bid)
        self.store.put(key, record.encode(self.codec, key))

    def read_batch(self, bid: str) -> BatchRecord:
        """Raises:
        ObjectNotFoundError: the batch is not in the store.
        CorruptRecordError: it is damaged."""
        key = self.keys.batch(bid)
        return BatchRecord.decode(self.codec, self.store.get(key).data, key)

    def batch_ids(self) -> list[str]:
        """Every batch of the session, in submission order.

        An S3 store's clock is re-anchored on every response's ``Date`` header (one-second
        resolution), so one client's stamps can step back by up to a second: sorting ids as
        strings would put a later submission first. Within one client the sequence number is
        the order; between clients, the time stamp (made non-decreasing along each client's
        sequence).
        """
        by_client: dict[str, list[tuple[int, str]]] = {}
        for info in self.store.list(self.keys.batches):
            if SessionKeys.is_requeue(info.key):
                continue
            bid = SessionKeys.bid_of(info.key)
            parsed = BatchId.parse(bid)
            by_client.setdefault(parsed.origin, []).append((parsed.seq, bid))
        ordered: list[tuple[tuple[int, str, int], str]] = []
        for client, items in by_client.items():
            floor = 0
            for seq, bid in sorted(items):
                floor = max(floor, key_time_ms(bid))
                ordered.append(((floor, client, seq), bid))
        return [bid for _, bid in sorted(ordered)]

    # -- results -----------------------------------------------------------------------------

    def write_result(self, record: ResultRecord, failed: int) -> None:
        """Deliver a batch's result: ``results/{bid}`` created once, then its done event.

        A retried duplicate of the batch loses the create: the first result stands, and the
        duplicate's event carries nothing inline, so every reader reads the one that stands.
        """
        # Bound to the result key, also when it rides inline in the done event.
        key = self.keys.result(record.bid)
        data = record.encode(self.codec, key)
        try:
            self.store.put_if_absent(key, data)
            inline = data if len(data) <= INLINE_RESULT_MAX else b""
        except PreconditionFailedError:
            inline = b""
        ts_ms = int(self.store.now() * 1000)
        self.store.put(self.keys.done_event(ts_ms, record.bid, failed), inline)

    def has_result(self, bid: str) -> bool:
        return any(True for _ in self.store.list(self.keys.result(bid)))

    def done(self) -> dict[str, DoneEvent]:
        """Finished batches, by batch id (the first event of each)."""
        out: dict[str, DoneEvent] = {}
        for info in self.store.list(self.keys.done):
            event = DoneEvent.parse(info.key, info.size)
            out.setdefault(event.bid, event)
        return out

    def read_result(self, event: DoneEvent) -> ResultRecord:
        """A finished batch's result record (from its done event when it rides inline).

        Raises:
            CorruptRecordError: the record is damaged, or missing although the batch finished.
            ProtocolMismatchError: it was written by another protocol version.
        """
        bound = self.keys.result(event.bid)
        key = event.key if event.size else bound
        try:
            data = self.store.get(key).data
        except ObjectNotFoundError:
            raise CorruptRecordError(
                f"{key} is missing from the store although batch {event.bid} finished"
            ) from None
        return ResultRecord.decode(self.codec, data, bound, where=key)

    def result_if_done(self, bid: str) -> ResultRecord | None:
        """A batch's result record if it was delivered, else ``None`` (one GET; a client
        waiting for a few batches asks this instead of listing the completion events).

        Raises:
            CorruptRecordError: the record is damaged.
            ProtocolMismatchError: it was written by another protocol version.
        """
        key = self.keys.result(bid)
        try:
            data = self.store.get(key).data
        except ObjectNotFoundError:
            return None
        return ResultRecord.decode(self.codec, data, key)

    def read_results(self, events: Iterable[DoneEvent]) -> dict[str, ResultRecord | StarburstError]:
        """Read result records in parallel; one that cannot be read (damaged, signed with
        another key, of another protocol version, missing) is returned as the error, naming
        its key, in its place, so one bad object spoils only its own batch.

        Raises:
            StoreUnavailableError: the store could not be reached.
        """

        def read(event: DoneEvent) -> tuple[str, ResultRecord | StarburstError]:
            try:
                return event.bid, self.read_result(event)
            except (CorruptRecordError, ProtocolMismatchError) as exc:
                return event.bid, exc

        with ThreadPoolExecutor(_READERS) as pool:
            return dict(pool.map(read, list(events)))

    # -- workers -----------------------------------------------------------------------------

    def claims(self) -> Claims:
        """Claim operations on this session, with its lease and attempt limits."""
        return Claims(
            self.store,
            self.keys,
            self.codec,
            lease_seconds=self.manifest.lease_seconds,
            max_attempts=self.manifest.max_attempts,
        )

    def write_worker(self, record: WorkerRecord) -> None:
        key = self.keys.worker(record.worker)
        self.store.put(key, record.encode(self.codec, key))

    def worker(self, worker: str) -> WorkerRecord | None:
        """A worker's registration record, or ``None`` if it never registered."""
        key = self.keys.worker(worker)
        try:
            return WorkerRecord.decode(self.codec, self.store.get(key).data, key)
        except ObjectNotFoundError:
            return None

    def workers(self) -> list[WorkerRecord]:
        """Every worker that registered (read in parallel)."""
        ids = [SessionKeys.leaf(i.key) for i in self.store.list(self.keys.workers)]
        with ThreadPoolExecutor(_READERS) as pool:
            return [w for w in pool.map(self.worker, ids) if w is not None]

    def write_log(self, worker: str, text: str) -> None:
        self.store.put(self.keys.log(worker), text.encode())

    # -- removal -----------------------------------------------------------------------------

    def delete_all(self) -> int:
        """Delete every object of the session (the index entry stays, marking it deleted)."""
        keys = [i.key for i in self.store.list(self.keys.root)]
        self.store.delete_many(keys)
        _remove_empty_dirs(self.store, self.keys.root)
        return len(keys)

    def remove(self, keep_logs: bool = False) -> int:
        """Remove the session from its store, as if it had never been there; returns how many
        objects were deleted.

        Args:
            keep_logs: keep what ``status`` and ``starburst logs`` read (manifest, control,
                index entry, worker records and logs): only tasks, results and blobs go.
        """
        keep = ("manifest", "control", "workers/", "logs/") if keep_logs else ()
        keys = [
            i.key
            for i in self.store.list(self.keys.root)
            if not i.key[len(self.keys.root) :].startswith(keep)
        ]
        if not keep_logs:
            keys.append(self.keys.index)  # last: a partial removal stays listed as "deleted"
        self.store.delete_many(keys)
        _remove_empty_dirs(self.store, self.keys.root)
        return len(keys)


def _remove_empty_dirs(store: Store, prefix: str) -> None:
    """A directory store keeps the (now empty) directories of deleted keys: remove those under
    ``prefix``, so a removed session leaves nothing behind. Only done for a whole session that
    no process writes any more; any other store has no directories."""
    from starburst_executor.stores.local import LocalStore
    from starburst_executor.stores.outage import unwrapped

    store = unwrapped(store)
    if not isinstance(store, LocalStore):
        return
    top = store.root / prefix.rstrip("/")
    if not top.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass  # not empty: a key was kept (keep_logs) or written meanwhile
