"""The store protocol: record encoding and versions. One place owns all of it.

The key layout is in :mod:`starburst_executor.keys` (re-exported here).

Every record is wrapped in a signed envelope (:class:`Codec`, in ``_envelope.py``): magic,
protocol version, kind, HMAC-SHA256 over all of it. Records are verified before anything is
unpickled: pickles are code. Each record below has its ``encode``/``decode`` pair here, and
no other module reads or builds a record's fields from JSON or pickled dicts.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import IntEnum, StrEnum
from typing import Any, ClassVar, TypeVar

import cloudpickle

from starburst_executor._envelope import PROTOCOL_VERSION, Codec
from starburst_executor.backends import BackendConfig, backend_from_record
from starburst_executor.errors import (
    CorruptRecordError,
    SerializationError,
)
from starburst_executor.keys import (
    BUCKET_MS,
    INDEX,
    SessionKeys,
    key_time_ms,
    time_bucket,
    ts_key,
)
from starburst_executor.serialization import ChunkResult, RemoteException, loads
from starburst_executor.stores.counting import RequestCounts

__all__ = [
    "BUCKET_MS",
    "INDEX",
    "PROTOCOL_VERSION",
    "BatchId",
    "BatchRecord",
    "BatchShape",
    "Claim",
    "ClaimState",
    "Codec",
    "ControlRecord",
    "DoneEvent",
    "ExitCode",
    "Outcome",
    "ResultRecord",
    "SessionKeys",
    "SessionManifest",
    "SessionState",
    "TaskKind",
    "TaskOutcome",
    "TaskSpec",
    "UsageRecord",
    "WorkerRecord",
    "WorkerState",
    "key_time_ms",
    "runtime_versions",
    "time_bucket",
    "ts_key",
]


def runtime_versions() -> dict[str, str]:
    """The versions a worker must share with its client to unpickle its tasks."""
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "cloudpickle": cloudpickle.__version__.split(".")[0],
        "protocol": str(PROTOCOL_VERSION),
    }


def version_mismatch(theirs: dict[str, str]) -> str | None:
    """Describe how ``theirs`` differs from this process's versions, or ``None``."""
    ours = runtime_versions()
    diffs = [
        f"{k} {theirs.get(k, '?')} vs {ours[k]} here" for k in ours if theirs.get(k) != ours[k]
    ]
    if not diffs:
        return None
    return (
        "the session was created with different versions than this worker runs ("
        + ", ".join(diffs)
        + "): run the client and the workers on the same Python minor version and "
        "cloudpickle major version (rebuild the worker image from the client's environment)"
    )


class SessionState(StrEnum):
    """A session's state, as its control record stores it and as readers report it.

    A control record holds one of the first four; ``FINISHED`` and ``DELETED`` are what a
    reader reports for an open session whose tasks are all terminal, and for a session whose
    data was deleted (only its index entry is left).
    """

    OPEN = "open"
    CLOSED = "closed"  # cleaned up: workers exit
    CANCELLED = "cancelled"  # pending work dropped: workers exit
    EXPIRED = "expired"  # session_timeout passed: workers exit, queued work fails
    FINISHED = "finished"
    DELETED = "deleted"

    @property
    def terminal(self) -> bool:
        """Whether the session takes no more work (workers exit, nothing new starts)."""
        return self in (SessionState.CLOSED, SessionState.CANCELLED, SessionState.EXPIRED)


class WorkerState(StrEnum):
    """A worker's state in its :class:`WorkerRecord`."""

    RUNNING = "running"
    EXITED = "exited"  # left its loop in order (idle, session ended, SIGTERM ...)
    INIT_FAILED = "init-failed"  # the initializer (or installing code_files) raised


class ClaimState(StrEnum):
    """A claim's state in its :class:`Claim`."""

    RUNNING = "running"
    RELEASED = "released"  # its worker gave it back (SIGTERM) or was seen dead
    DONE = "done"  # the batch's result is written


class ExitCode(IntEnum):
    """A worker process's exit codes. The manager never trusts them alone (a task may call
    ``os._exit(3)``): it checks the worker's record too."""

    OK = 0
    CANNOT_START = 2  # bad arguments, no such session: it never registered
    INIT_FAILED = 3  # its record says ``init-failed``
    SIGTERM = 143  # 128 + 15, the shell's convention, which ECS reports too


class TaskKind(StrEnum):
    """What a task of a batch holds."""

    CALL = "call"  # one submitted call
    CHUNK = "chunk"  # a ``map`` chunk: its result is a ``ChunkResult``


@dataclass(frozen=True)
class BatchShape:
    """What every task of a batch is: ``s1`` submitted calls, ``m{n}`` ``map`` chunks of
    ``n`` items each."""

    kind: str  # "s" or "m"
    items: int

    def __str__(self) -> str:
        return f"{self.kind}{self.items}"

    @property
    def is_map(self) -> bool:
        return self.kind == "m"


@dataclass(frozen=True)
class BatchId:
    """A batch's id: ``{ts}-{origin}-{seq}[-{shape}]-{ntasks}``.

    Attributes:
        ts_ms: store-clock milliseconds when it was named (13 digits: ids sort by time).
        origin: the tag of the client that made it.
        seq: that client's sequence number (6 digits): its submission order.
        ntasks: how many tasks it holds (readers count tasks from listings alone).
        shape: every task's shape, or ``None`` for a batch of mixed kinds (the plain
            executor's manager forms those).
    """

    ts_ms: int
    origin: str
    seq: int
    ntasks: int
    shape: BatchShape | None = None

    def __str__(self) -> str:
        middle = f"-{self.shape}" if self.shape is not None else ""
        return f"{self.ts_ms:013d}-{self.origin}-{self.seq:06d}{middle}-{self.ntasks}"

    @classmethod
    def parse(cls, text: str) -> BatchId:
        """Raises:
        CorruptRecordError: ``text`` is not a batch id."""
        parts = text.split("-")
        try:
            if len(parts) == 4:
                return cls(int(parts[0]), parts[1], int(parts[2]), int(parts[3]))
            if len(parts) == 5 and parts[3][:1] in ("s", "m"):
                shape = BatchShape(parts[3][0], int(parts[3][1:]))
                return cls(int(parts[0]), parts[1], int(parts[2]), int(parts[4]), shape)
        except ValueError:
            pass
        raise CorruptRecordError(f"{text!r} is not a batch id ({{ts}}-{{origin}}-{{seq}}-{{n}})")

    @property
    def items_per_task(self) -> int | None:
        """Items of each task in submission order (``None``: mixed kinds, unknown)."""
        return None if self.shape is None else self.shape.items


@dataclass(frozen=True)
class DoneEvent:
    """A batch finished: ``done/{b}/{ts}-{bid}.{failed}``; small results ride inline.

    Attributes:
        bid: the batch.
        failed: how many of its tasks failed (readers count failures from listings alone).
        key: the event's key.
        size: its size: non-zero when the result record rides inside the event.
    """

    bid: str
    failed: int
    key: str
    size: int

    @classmethod
    def parse(cls, key: str, size: int) -> DoneEvent:
        return cls(SessionKeys.bid_of(key), int(key.rsplit(".", 1)[1]), key, size)

    @property
    def time_ms(self) -> int:
        return key_time_ms(self.key)


def digest(data: bytes) -> str:
    """Content address of a pickled part."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _from_dict(cls: Any, data: Mapping[str, Any]) -> Any:
    names = cls.__dataclass_fields__
    return cls(**{k: v for k, v in data.items() if k in names})


def _enum(kind: type[Any], value: object, where: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise CorruptRecordError(f"{where}: {value!r} is not a {kind.__name__}") from None


_R = TypeVar("_R", bound="_JsonRecord")


class _JsonRecord:
    """A record stored as signed JSON: each record's ``to_dict``/``from_dict`` say what it
    holds, this says how it is stored and refused (one place for every JSON record)."""

    _WHAT: ClassVar[str]  # how errors name it: "a claim", "a worker record" ...

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls: type[_R], data: dict[str, Any]) -> _R:
        raise NotImplementedError

    def encode(self, codec: Codec, key: str) -> bytes:
        """Signed, bound to ``key``: the key it is written to."""
        return codec.encode_json(self.to_dict(), key)

    @classmethod
    def decode(cls: type[_R], codec: Codec, blob: bytes, key: str) -> _R:
        """Raises:
        CorruptRecordError: damaged (bad signature, not JSON), bound to another key or
            session, or not this record (a required field missing).
        ProtocolMismatchError: written by another protocol version."""
        try:
            return cls.from_dict(codec.decode_json(blob, key))
        except TypeError as exc:  # a required field is missing
            raise CorruptRecordError(f"{key} is not {cls._WHAT}: {exc}") from exc


@dataclass(frozen=True)
class SessionManifest(_JsonRecord):
    """What a worker or a reattaching client needs to know about a session.

    Attributes:
        session_id: the session's id (sortable by creation time).
        created: POSIX time of creation (store clock).
        versions: :func:`runtime_versions` of the creating client.
        max_attempts: how many times a batch may be started before its tasks fail.
        lease_seconds: how long a claim stays valid without renewal.
        idle_timeout: workers exit after this long without work.
        initializer: blob digest of the pickled ``(initializer, initargs)``, or ``None``.
        max_tasks_per_child: a worker exits after running this many tasks (``None``: never).
        name: a human label.
        store_url: where the session lives.
        backend: the launcher kind ("local", "aws").
        backend_config: that backend's options (see :mod:`starburst_executor.backends`).
        detached: whether the session outlives its client.
        session_timeout: seconds after ``created`` when workers stop and the session expires.
        task_timeout: a task running longer fails with ``TimeoutError`` and its worker is
            replaced (batches then hold one task each).
        max_workers: the most workers the session runs at once.
        code: blob digest of the zip of local modules shipped with the session (see
            :mod:`starburst_executor.code_files`), installed by each worker before anything.
        store_outage_timeout: how long the client and the workers wait out an unreachable
            store before failing.
    """

    _WHAT = "a session manifest"

    session_id: str
    created: float
    versions: dict[str, str]
    max_attempts: int = 3
    lease_seconds: float = 30.0
    idle_timeout: float = 300.0
    initializer: str | None = None
    max_tasks_per_child: int | None = None
    name: str = ""
    store_url: str = ""
    backend: str = "local"
    detached: bool = False
    session_timeout: float | None = None
    task_timeout: float | None = None
    max_workers: int = 1
    code: str | None = None
    store_outage_timeout: float = 300.0
    # The backend's options as the session runs them (``LocalBackend``, or for AWS the
    # options resolved against the profile); encoded by the backend's own to_record().
    backend_config: BackendConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def deadline(self) -> float | None:
        """Store-clock time after which the session is expired, or ``None``."""
        return None if self.session_timeout is None else self.created + self.session_timeout

    def expired(self, now: float) -> bool:
        """Whether the session's ``session_timeout`` has passed at store-clock time ``now``:
        the one rule every client, reader and worker applies."""
        deadline = self.deadline
        return deadline is not None and now >= deadline

    def to_dict(self) -> dict[str, Any]:
        data = asdict(replace(self, backend_config=None))
        if self.backend_config is not None:
            data["backend_config"] = self.backend_config.to_record()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionManifest:
        record = data.get("backend_config")
        manifest: SessionManifest = _from_dict(
            cls, {k: v for k, v in data.items() if k != "backend_config"}
        )
        if record is None:
            return manifest
        return replace(manifest, backend_config=backend_from_record(record))


@dataclass(frozen=True)
class ControlRecord(_JsonRecord):
    """Session-wide state changed by compare-and-swap (see ``Session.update_control``).

    Each transition returns the next record, or ``None`` when there is nothing to change;
    every write increments ``n``, because S3 ETags are content hashes: a compare-and-swap
    must change the body, or two writers holding the same ETag would both win.

    Attributes:
        n: version counter.
        state: ``OPEN``, or one of the terminal states, in which workers exit.
        low_watermark: batches before this key are all finished; workers start listing there.
        client_seen: store-clock time of the client's last heartbeat (``None`` in detached
            sessions); a plain session's workers leave when it is too old.
    """

    _WHAT = "a control record"

    n: int = 0
    state: SessionState = SessionState.OPEN
    low_watermark: str | None = None
    client_seen: float | None = None

    def _next(self, **changes: Any) -> ControlRecord:
        return replace(self, n=self.n + 1, **changes)

    def close(self) -> ControlRecord:
        """Cleaned up: from any state (a cancelled or expired session is closed too)."""
        return self._next(state=SessionState.CLOSED)

    def cancel(self) -> ControlRecord:
        """Pending work dropped: from any state (the CLI refuses a closed session first)."""
        return self._next(state=SessionState.CANCELLED)

    def expire(self) -> ControlRecord | None:
        """``session_timeout`` passed: only an open session expires (a closed or cancelled
        one keeps saying why it ended)."""
        return self._next(state=SessionState.EXPIRED) if self.state is SessionState.OPEN else None

    def raise_watermark(self, mark: str) -> ControlRecord | None:
        """Move the low watermark forward; never back (another client may be further)."""
        if self.low_watermark is not None and mark <= self.low_watermark:
            return None
        return self._next(low_watermark=mark)

    def heartbeat(self, now: float) -> ControlRecord | None:
        """The client is alive at ``now`` (store clock); nothing to write once it ended."""
        return self._next(client_seen=now) if self.state is SessionState.OPEN else None

    def state_at(self, manifest: SessionManifest, now: float) -> SessionState:
        """The session's state at ``now``: "expired" once ``session_timeout`` has passed,
        though only a worker that notices writes that into the record."""
        if self.state is SessionState.OPEN and manifest.expired(now):
            return SessionState.EXPIRED
        return self.state

    def to_dict(self) -> dict[str, Any]:
        d = {"n": self.n, "state": self.state.value, "low_watermark": self.low_watermark}
        return {**d, "client_seen": self.client_seen}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ControlRecord:
        state = _enum(SessionState, data.get("state", "open"), "control record")
        seen = data.get("client_seen")
        seen = None if seen is None else float(seen)
        return cls(int(data.get("n", 0)), state, data.get("low_watermark"), seen)


@dataclass(frozen=True)
class Claim(_JsonRecord):
    """A worker's claim on a batch, with its lease.

    Attributes:
        worker: the worker id holding (or last holding) the claim.
        attempt: 1 for the first run; each takeover adds one.
        state: running, released (its worker gave it back), or done.
        expires: lease expiry, store clock.
        n: version counter (every write changes the body, see ``ControlRecord``).
        history: the workers of earlier attempts and how each ended ("local-1 (killed by
            SIGKILL)"), for the "worker lost" message.
        ended: why the holder gave the claim back (state released): its exit code or
            signal as its launcher saw it, or "SIGTERM".
    """

    _WHAT = "a claim"

    worker: str
    attempt: int
    state: ClaimState
    expires: float
    n: int = 0
    history: tuple[str, ...] = ()
    ended: str = ""

    def live(self, now: float) -> bool:
        """Held by a running worker whose lease has not expired."""
        return self.state is ClaimState.RUNNING and self.expires > now

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        d["history"] = list(self.history)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Claim:
        data = dict(data)
        data["history"] = tuple(data.get("history", ()))
        data["state"] = _enum(ClaimState, data.get("state"), "claim")
        return _from_dict(cls, data)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class WorkerRecord(_JsonRecord):
    """A worker's registration, rewritten as its state changes.

    Attributes:
        worker: its id.
        state: running, exited, or init-failed.
        host: host name; pid: process id; started: store-clock time.
        tasks: tasks run so far; reason: why it exited; error: initializer failure text.
        ended: store-clock time it exited (0 while running): with ``started``, the measured
            runtime the cost report bills.
    """

    _WHAT = "a worker record"

    worker: str
    state: WorkerState
    host: str
    pid: int
    started: float
    tasks: int = 0
    reason: str = ""
    error: str = ""
    ended: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerRecord:
        data = dict(data)
        data["state"] = _enum(WorkerState, data.get("state"), "worker record")
        return _from_dict(cls, data)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class UsageRecord(_JsonRecord):
    """The store requests one process of a session has made so far, as S3 bills them.

    Each client and each worker rewrites its own record (``SessionKeys.usage``) now and then
    and when it leaves; a reader sums them (:mod:`starburst_executor.usage`). The counts are
    cumulative and include the write of this record.

    Attributes:
        writer: the worker id, or ``client-...`` for a client process.
        role: "client" or "worker".
        requests: the counts by kind (:class:`~starburst_executor.stores.counting.
            RequestCounts`).
        written: store-clock time of this write.
    """

    _WHAT = "a usage record"

    writer: str
    role: str
    requests: RequestCounts
    written: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "writer": self.writer,
            "role": self.role,
            "requests": self.requests.to_dict(),
            "written": self.written,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UsageRecord:
        try:
            requests = RequestCounts.from_dict(dict(data.get("requests") or {}))
            written = float(data.get("written", 0))
            return cls(str(data["writer"]), str(data["role"]), requests, written)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptRecordError(f"not a usage record: {exc!r}") from None


@dataclass(frozen=True)
class TaskSpec:
    """One task of a batch: the digests of its pickled parts (inline or blobs).

    Attributes:
        index: its position in the batch.
        kind: a call or a ``map`` chunk (then ``args`` is one part: the chunk's items).
        fn, args, kwargs: digests of the pickled callable and arguments.
    """

    index: int
    kind: TaskKind
    fn: str
    args: tuple[str, ...]
    kwargs: dict[str, str]


@dataclass(frozen=True)
class BatchRecord:
    """``batches/{b}/{bid}``: tasks that travel in one object (pickle of plain containers:
    the user's objects inside are pickled already, and verified before they are loaded).

    Attributes:
        bid: the batch id.
        versions: :func:`runtime_versions` of the client that wrote it.
        tasks: the tasks, in submission order.
        inline: small parts by digest (larger ones are blobs, fetched by digest).
    """

    bid: str
    versions: dict[str, str]
    tasks: tuple[TaskSpec, ...]
    inline: dict[str, bytes]

    def encode(self, codec: Codec, key: str) -> bytes:
        """Signed, bound to ``key``: the batch's key."""
        tasks = [
            {
                "i": t.index,
                "kind": t.kind.value,
                "fn": t.fn,
                "args": list(t.args),
                "kwargs": t.kwargs,
            }
            for t in self.tasks
        ]
        record = {"bid": self.bid, "versions": self.versions, "tasks": tasks, "inline": self.inline}
        return codec.encode_pickle(record, key)

    @classmethod
    def decode(cls, codec: Codec, blob: bytes, key: str) -> BatchRecord:
        """Raises:
        CorruptRecordError: damaged, bound to another key or session, or not a batch
            record."""
        record = codec.decode_pickle(blob, key)
        try:
            tasks = tuple(
                TaskSpec(
                    int(t["i"]),
                    _enum(TaskKind, t["kind"], key),
                    t["fn"],
                    tuple(t["args"]),
                    dict(t["kwargs"]),
                )
                for t in record["tasks"]
            )
            return cls(record["bid"], dict(record["versions"]), tasks, dict(record["inline"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptRecordError(f"{key} does not hold a batch record: {exc!r}") from exc


@dataclass(frozen=True)
class TaskOutcome:
    """One task's pickled outcome: its value (``ok``), or a pickled ``RemoteException``.

    ``started`` (store clock, POSIX seconds) and ``seconds`` (how long it ran) say when the
    worker ran it, for the dashboard; ``None`` in records of workers older than them.
    """

    index: int
    ok: bool
    payload: bytes
    started: float | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class Outcome:
    """One task's decoded outcome: ``value`` if ``error`` is ``None``."""

    value: Any = None
    error: BaseException | None = None
    chunk: bool = False  # a map chunk: value is (values, error of the item that stopped it)


@dataclass(frozen=True)
class ResultRecord:
    """``results/{bid}`` (or inline in its done event): what a worker made of a batch.

    Attributes:
        bid: the batch.
        worker: the worker that ran it; attempt: which attempt of the batch this was.
        outcomes: one per task run (``batch_error`` is ``None``).
        batch_error: a pickled ``RemoteException`` that failed every task (batch missing,
            versions differ, worker lost too often), or ``None``.
        outputs: what each task printed, by task index (the tail, when long).
        seconds: how long the batch ran: lets the client size later batches.
    """

    bid: str
    worker: str
    attempt: int
    outcomes: tuple[TaskOutcome, ...] = ()
    batch_error: bytes | None = None
    outputs: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0

    def encode(self, codec: Codec, key: str) -> bytes:
        """Signed, bound to ``key``: the batch's result key, also when it rides inline in
        the done event."""
        record = {
            "bid": self.bid,
            "worker": self.worker,
            "attempt": self.attempt,
            "outcomes": [(o.index, "ok" if o.ok else "err", o.payload) for o in self.outcomes],
            "batch_error": self.batch_error,
            "outputs": self.outputs,
            "seconds": self.seconds,
            # Its own entry, not a longer outcome tuple: readers that predate it ignore it.
            "timings": {
                o.index: (o.started, o.seconds) for o in self.outcomes if o.seconds is not None
            },
        }
        return codec.encode_pickle(record, key)

    @classmethod
    def decode(cls, codec: Codec, blob: bytes, key: str, where: str | None = None) -> ResultRecord:
        """Args: ``key``, the batch's result key it must be bound to; ``where``, the object
        read, when it is not that key (a done event carrying the result inline).

        Raises:
        CorruptRecordError: damaged, bound to another key or session, or not a result record.
        ProtocolMismatchError: written by another protocol version."""
        where = where or key
        record = codec.decode_pickle(blob, key, where)
        if not isinstance(record, dict) or "outcomes" not in record:
            raise CorruptRecordError(f"{where} does not hold a result record")
        try:
            timings = record.get("timings") or {}
            outcomes = tuple(
                TaskOutcome(int(i), s == "ok", p, *_timing(timings.get(i)))
                for i, s, p in record["outcomes"]
            )
            return cls(
                str(record.get("bid", "")),
                str(record.get("worker", "")),
                int(record.get("attempt", 0)),
                outcomes,
                record.get("batch_error"),
                dict(record.get("outputs") or {}),
                float(record.get("seconds", 0.0)),
            )
        except (TypeError, ValueError) as exc:
            raise CorruptRecordError(f"{where} does not hold a result record: {exc!r}") from exc

    def decode_outcomes(self) -> list[Outcome] | BaseException:
        """Unpickle the outcomes: one per task in batch order, or the batch-wide error.

        An outcome that cannot be unpickled here becomes that task's error (a
        ``SerializationError`` naming the likely cause); the others are unaffected.
        """
        if self.batch_error is not None:
            return _rebuild(self.batch_error)
        return [_outcome(o) for o in sorted(self.outcomes, key=lambda o: o.index)]


def _timing(entry: Any) -> tuple[float | None, float | None]:
    """``(started, seconds)`` of one task, from a record's ``timings`` (absent: unknown)."""
    if entry is None:
        return None, None
    started, seconds = entry
    return (None if started is None else float(started)), float(seconds)


def _rebuild(payload: bytes) -> BaseException:
    try:
        remote = loads(payload)
    except Exception as exc:  # a damaged report must not hide the other results
        return SerializationError(f"a worker's error report could not be unpickled: {exc!r}")
    if isinstance(remote, RemoteException):
        return remote.rebuild()
    return CorruptRecordError(f"a worker sent an unexpected error report: {type(remote).__name__}")


def _outcome(outcome: TaskOutcome) -> Outcome:
    if not outcome.ok:
        return Outcome(error=_rebuild(outcome.payload))
    try:
        value = loads(outcome.payload)
    except Exception as exc:  # the value's class may not be importable here
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
