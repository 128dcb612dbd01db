"""Reading sessions from the store: status, results, listing, cleanup.

Everything here works from the store alone, so it serves a reattached ``DetachedExecutor``,
the ``starburst`` command line, and any process that knows the session id and the store.
Counting is done from key listings (batch ids carry their task counts, completion keys their
failure counts), so ``status()`` reads no task payloads or results.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import signal
import socket
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from starburst_executor._text import cell
from starburst_executor.config import (  # the index's old home: names kept importable
    forget_session,
    remember_session,
    remembered_store,
    secret_key,
)
from starburst_executor.errors import (
    CorruptRecordError,
    ObjectNotFoundError,
    ProtocolMismatchError,
    SessionError,
    StarburstError,
)
from starburst_executor.protocol import (
    Claim,
    Codec,
    ControlRecord,
    SessionKeys,
    SessionManifest,
    WorkerRecord,
    key_time_ms,
)
from starburst_executor.stores.base import Store

logger = logging.getLogger(__name__)

__all__ = [
    "SessionReader",
    "SessionStatus",
    "TaskResult",
    "codec_for",
    "forget_session",
    "remember_session",
    "remembered_store",
]


@dataclass(frozen=True)
class TaskResult:
    """One task's entry in a collection.

    Attributes:
        index: the task's position in submission order (0-based; each item of a ``map``
            counts as one), the same in a partial collection as in a complete one: tasks
            that did not finish leave gaps.
        task_id: ``{batch id}/{position in batch}`` (``.{item}`` for a ``map`` chunk's
            items): stable across processes.
        value: the return value (``None`` if it failed).
        error: the exception (with the remote traceback as ``__cause__``), or ``None``.
        output: what the task printed (stdout and stderr), possibly truncated.
    """

    index: int
    task_id: str
    value: Any = None
    error: BaseException | None = None
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    def result(self) -> Any:
        """The value, or raise the task's exception."""
        if self.error is not None:
            raise self.error
        return self.value


@dataclass(frozen=True)
class SessionStatus:
    """Counts and state of a session at one moment.

    ``pending`` tasks wait for a worker, ``running`` ones run on a worker now (at most one per
    live worker), ``completed`` ones
    succeeded, ``failed`` ones raised (or lost their worker too often), ``cancelled`` ones
    will not run because the session was cancelled or expired first.
    """

    session_id: str
    name: str
    state: str
    total: int
    pending: int
    running: int
    completed: int
    failed: int
    cancelled: int
    workers: int
    created: float
    last_activity: float
    store_url: str
    worker_states: dict[str, int] = field(default_factory=dict)
    cost: dict[str, Any] | None = None  # AWS sessions: measured worker runtime and its cost

    @property
    def finished(self) -> int:
        return self.completed + self.failed + self.cancelled

    @property
    def progress(self) -> float:
        """Percentage of tasks in a terminal state."""
        return 100.0 * self.finished / self.total if self.total else 100.0

    @property
    def done(self) -> bool:
        """Every task is terminal: nothing more will change."""
        return self.finished >= self.total

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["progress"] = round(self.progress, 2)
        d["done"] = self.done
        return d

    def __str__(self) -> str:
        rows = [
            ("Session", f"{self.session_id}" + (f" ({cell(self.name)})" if self.name else "")),
            ("State", self.state),
            ("Store", self.store_url),
            ("Created", _fmt_time(self.created)),
            ("Last activity", _fmt_time(self.last_activity)),
            ("Total tasks", str(self.total)),
            ("Pending", str(self.pending)),
            ("Running", str(self.running)),
            ("Completed", str(self.completed)),
            ("Failed", str(self.failed)),
            ("Cancelled", str(self.cancelled)),
            ("Workers running", str(self.workers)),
            ("Progress", f"{self.progress:.1f}%"),
        ]
        if self.cost is not None:
            rows.append(("Cost", str(self.cost.get("text", ""))))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in rows)


def _fmt_time(ts: float) -> str:
    if not ts:
        return "-"
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


class SessionReader:
    """Reads one session's state from its store.

    Args:
        store: the store holding the session.
        session_id: the session's id.
        codec: verifies records.

    Raises:
        SessionError: no such session in this store (the message says which store was
            searched and how to list sessions), or its data was deleted.
        CorruptRecordError: the manifest is damaged (the message names its key).
        ProtocolMismatchError: the session was written by an incompatible version.
    """

    def __init__(self, store: Store, session_id: str, codec: Codec) -> None:
        self.store = store
        self.codec = codec
        self.keys = SessionKeys(session_id)
        self.manifest = self._load_manifest()

    def _load_manifest(self) -> SessionManifest:
        sid = self.keys.session_id
        try:
            obj = self.store.get(self.keys.manifest)
        except ObjectNotFoundError:
            try:
                self.store.get(self.keys.index)
            except ObjectNotFoundError:
                raise SessionError(
                    f"no session {sid!r} in store {self.store.url}. List the sessions there "
                    f"with `starburst sessions --store {self.store.url}` (or list_sessions()), "
                    "or pass the store the session was created in"
                ) from None
            raise SessionError(
                f"session {sid!r} was cleaned up with its data deleted from {self.store.url}; "
                "its results are gone"
            ) from None
        try:
            data = self.codec.decode_json(obj.data, self.keys.manifest)
            return SessionManifest.from_dict(data)
        except ProtocolMismatchError:
            raise
        except (CorruptRecordError, TypeError) as exc:
            raise CorruptRecordError(
                f"the manifest of session {sid!r} ({self.store.url}/{self.keys.manifest}) is "
                f"damaged: {exc}"
            ) from exc

    def control(self) -> ControlRecord:
        try:
            obj = self.store.get(self.keys.control)
        except ObjectNotFoundError:
            raise SessionError(
                f"session {self.keys.session_id!r} has no control record: it was cleaned up "
                f"with its data deleted from {self.store.url}; its results are gone"
            ) from None
        return ControlRecord.from_dict(self.codec.decode_json(obj.data, self.keys.control))

    def state(self) -> str:
        """The session's state: its control record's, except "expired" once
        ``session_timeout`` has passed (workers write that only when one of them notices)."""
        state = self.control().state
        return "expired" if state == "open" and self.expired() else state

    def expired(self) -> bool:
        """Whether the session's ``session_timeout`` has passed (store clock)."""
        deadline = self.manifest.deadline
        return deadline is not None and self.store.now() > deadline

    def batch_ids(self) -> list[str]:
        """Every batch of the session, in submission order.

        A batch id is ``{store-clock ms}-{client tag}-{sequence}[-{shape}]-{tasks}``. An S3
        store's clock is re-anchored on every response's ``Date`` header (one-second
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
            client, seq = SessionKeys.batch_origin(bid)
            by_client.setdefault(client, []).append((seq, bid))
        ordered: list[tuple[tuple[int, str, int], str]] = []
        for client, items in by_client.items():
            floor = 0
            for seq, bid in sorted(items):
                floor = max(floor, key_time_ms(bid))
                ordered.append(((floor, client, seq), bid))
        return [bid for _, bid in sorted(ordered)]

    def done(self) -> dict[str, tuple[int, str, int]]:
        """Finished batches: ``{bid: (failed count, event key, event size)}``."""
        out: dict[str, tuple[int, str, int]] = {}
        for info in self.store.list(self.keys.done):
            bid = SessionKeys.bid_of(info.key)
            if bid not in out:
                out[bid] = (SessionKeys.done_failures(info.key), info.key, info.size)
        return out

    def workers(self) -> list[WorkerRecord]:
        infos = list(self.store.list(self.keys.workers))

        def read(key: str) -> WorkerRecord | None:
            try:
                return WorkerRecord.from_dict(self.codec.decode_json(self.store.get(key).data, key))
            except ObjectNotFoundError:
                return None

        with ThreadPoolExecutor(8) as pool:
            return [w for w in pool.map(read, [i.key for i in infos]) if w is not None]

    def status(self) -> SessionStatus:
        """Count the session's tasks by state (listings, plus a read of each unfinished claim).

        A task is *running* only while a worker runs it: its batch is claimed under a lease
        that is live (state "running", not expired) by a worker whose record says it runs.
        A worker runs one task at a time, so such a batch counts one running task and the
        rest of it as pending (a batch's results travel together when it ends). A batch handed
        back (SIGTERM, Spot: state "released") or whose lease expired is pending again.
        """
        manifest = self.manifest
        control = self.control()
        bids = self.batch_ids()
        done = self.done()
        claimed = {
            i.key.rsplit("/", 1)[-1]: i.last_modified for i in self.store.list(self.keys.claims)
        }
        workers = self.workers()
        live_workers = {w.worker for w in workers if w.state == "running"}
        running_batches = self._running_batches(
            [b for b in bids if b in claimed and b not in done], live_workers
        )
        total = completed = failed = running = pending = 0
        for bid in bids:
            n = SessionKeys.batch_size(bid)
            total += n
            if bid in done:
                failed += done[bid][0]
                completed += n - done[bid][0]
            elif bid in running_batches and n:
                running += 1
                pending += n - 1
            else:
                pending += n
        cancelled = 0
        state = control.state
        if state == "open" and self.expired():
            state = "expired"
        live = [w for w in workers if w.state == "running"]
        if state in ("cancelled", "expired", "closed") and not live:
            cancelled, pending, running = pending + running, 0, 0
        activity = max([manifest.created, *claimed.values()] + [w.started for w in workers])
        last_done = max((key_time_ms(k) for _, k, _ in done.values()), default=0)
        states: dict[str, int] = {}
        for w in workers:
            states[w.state] = states.get(w.state, 0) + 1
        if state == "open" and total and completed + failed == total:
            state = "finished"
        return SessionStatus(
            session_id=self.keys.session_id,
            name=manifest.name,
            state=state,
            total=total,
            pending=pending,
            running=running,
            completed=completed,
            failed=failed,
            cancelled=cancelled,
            workers=len(live),
            created=manifest.created,
            last_activity=max(activity, last_done / 1000),
            store_url=self.store.url,
            worker_states=states,
            cost=self.cost(workers),
        )

    def _running_batches(self, bids: list[str], live_workers: set[str]) -> set[str]:
        """Those of ``bids`` whose claim is live: "running", lease not expired, held by a
        worker that has not recorded its exit (one GET per unfinished claimed batch)."""
        now = self.store.now()

        def live(bid: str) -> bool:
            key = self.keys.claim(bid)
            try:
                claim = Claim.from_dict(self.codec.decode_json(self.store.get(key).data, key))
            except ObjectNotFoundError:
                return False  # finished and collected meanwhile
            except CorruptRecordError:
                logger.warning("session %s: claim %s is damaged", self.keys.session_id, key)
                return False
            return claim.state == "running" and claim.expires > now and claim.worker in live_workers

        if not bids:
            return set()
        with ThreadPoolExecutor(min(8, len(bids))) as pool:
            return {bid for bid, ok in zip(bids, pool.map(live, bids)) if ok}

    def cost(self, workers: list[WorkerRecord] | None = None) -> dict[str, Any] | None:
        """The cost so far of an AWS session from its workers' measured runtime (``None``
        for other backends): ``{"cost": USD, "worker_seconds": ..., "text": one line}``."""
        workers = self.workers() if workers is None else workers
        if self.manifest.backend != "aws":
            return None
        from starburst_executor.aws.billing import session_report
        from starburst_executor.aws.options import session_backend

        backend = session_backend(self.manifest)
        if not backend.rate:
            return None
        cost = session_report(
            backend.options,
            backend.rate,
            workers,
            created=self.manifest.created,
            batches=len(self.batch_ids()),
            now=self.store.now(),
        )
        return {**cost.to_dict(), "text": str(cost)}

    def results(
        self, bids: Iterable[str], done: dict[str, tuple[int, str, int]]
    ) -> dict[str, dict[str, Any]]:
        """Read the result records of finished batches (in parallel).

        Raises:
            CorruptRecordError: a record is damaged (the message names its key).
        """
        records = {}
        for bid, record in self.read_results(bids, done).items():
            if isinstance(record, StarburstError):
                raise record
            records[bid] = record
        return records

    def read_results(
        self, bids: Iterable[str], done: dict[str, tuple[int, str, int]]
    ) -> dict[str, dict[str, Any] | StarburstError]:
        """Read the result records of finished batches (in parallel); a record that cannot
        be read (damaged, signed with another key, of another protocol version, missing) is
        returned as the error, naming the key, in its place, so one bad object spoils only
        its own batch.

        Raises:
            StoreUnavailableError: the store could not be reached.
        """

        def read(bid: str) -> tuple[str, dict[str, Any] | StarburstError]:
            _, event_key, size = done[bid]
            # Small results ride inside the done event (see the worker's delivery).
            key = event_key if size else self.keys.result(bid)
            try:
                record = self.codec.decode_pickle(self.store.get(key).data, key)
            except (CorruptRecordError, ProtocolMismatchError) as exc:
                return bid, exc
            except ObjectNotFoundError:
                return bid, CorruptRecordError(
                    f"{key} is missing from the store although batch {bid} finished"
                )
            if not isinstance(record, dict) or "outcomes" not in record:
                return bid, CorruptRecordError(f"{key} does not hold a result record")
            return bid, record

        with ThreadPoolExecutor(8) as pool:
            return dict(pool.map(read, list(bids)))

    def stop_local_workers(self, timeout: float) -> int:
        """SIGTERM workers of this session that run on this host and have not exited yet
        (they exit by themselves once the session is closed; this only hurries them)."""
        host = socket.gethostname()
        sid = self.keys.session_id
        signalled: list[int] = []
        for w in self.workers():
            if w.state == "running" and w.host == host and _is_worker(w.pid, sid):
                try:
                    os.kill(w.pid, signal.SIGTERM)
                    signalled.append(w.pid)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # A worker writes its "exited" record before it ends: wait for the processes
            # themselves, so that none is left when this returns.
            if not any(_is_worker(pid, sid) for pid in signalled) and not any(
                w.state == "running" and w.host == host and _is_worker(w.pid, sid)
                for w in self.workers()
            ):
                break
            time.sleep(0.05)
        return len(signalled)

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_worker(pid: int, session_id: str) -> bool:
    """Whether ``pid`` is a starburst worker of this session (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return _alive(pid)  # no /proc (macOS): trust the worker record
    return b"starburst_executor.worker" in cmdline and session_id.encode() in cmdline


def codec_for(store: Store) -> Codec:
    """The codec that verifies sessions in ``store``.

    The local key (``STARBURST_SECRET_KEY`` or the per-user key file), except for the bucket
    of the saved AWS profile, whose sessions are signed with the key ``starburst setup``
    stored in SSM (the same as the local key on the machine that ran setup; on any other
    machine, the only way to read those sessions without copying keys around).
    """
    if store.url.startswith("s3://"):
        from starburst_executor.aws.settings import AwsSettings
        from starburst_executor.errors import AwsError

        try:
            settings = AwsSettings.load()
        except AwsError:
            settings = None
        bucket = store.url[len("s3://") :].split("/", 1)[0]
        if settings is not None and settings.bucket == bucket:
            from starburst_executor.aws.backend import secret_key_from_ssm
            from starburst_executor.aws.client import Aws

            try:
                return Codec(secret_key_from_ssm(Aws(settings.region), settings))
            except AwsError:
                pass  # no access to the parameter: the local key may still be the one
    return Codec(secret_key())
