"""The store protocol: key layout, record encoding, versions. One place owns all of it.

Key layout under a store's root (``{b}`` is a 100-second time bucket, ``{ts}`` milliseconds on
the store's clock, both zero-padded so that keys sort by time)::

    sessions/{sid}/manifest                    SessionManifest (JSON)  written once
    sessions/{sid}/control                     ControlRecord (JSON)    compare-and-swap
    sessions/{sid}/blobs/{hash}                a large pickled part, content-addressed
    index/{sid}                                SessionManifest again: one key per session, listed
                                               by ``list_sessions`` without touching sessions/
    sessions/{sid}/batches/{b}/{bid}           a batch of tasks (pickle);
                                               bid = {ts}-{origin}-{seq}[-{shape}]-{tasks}
    sessions/{sid}/batches/{b}/{ts}-requeue-{bid}   "run bid again" (JSON)
    sessions/{sid}/claims/{bid}                Claim with its lease (JSON) compare-and-swap
    sessions/{sid}/results/{bid}               the batch's results (pickle), created once
    sessions/{sid}/done/{b}/{ts}-{bid}.{nfailed}  "bid finished" event; small results inline
    sessions/{sid}/logs/{wid}                  a worker's log, uploaded when it exits
    sessions/{sid}/workers/{wid}               WorkerRecord (JSON)

Why this shape (DESIGN.md, "Requirements on the store protocol"):

- Work and completions are *time-ordered* keys, so workers and pollers follow them with a
  start-after cursor (:mod:`starburst_executor._cursor`): a tick costs O(new keys / 1000)
  requests, not O(session). Time buckets let the directory store skip old subtrees too.
- ``claims/`` holds one object per claimed batch; its LastModified is the last lease renewal,
  so one listing finds expired leases.
- A batch's *shape* (``s1``: submitted calls; ``m{n}``: ``map`` chunks of ``n`` items each)
  tells a reader where every task's items stand in submission order without reading the
  batch (a partial ``collect`` numbers its results so). Batches formed by the plain
  executor's manager mix kinds and carry no shape.
- ``results/{bid}`` is created with create-if-absent: a retried duplicate of a batch can never
  replace a delivered result.

Every record is wrapped in a signed envelope: magic, protocol version, kind, HMAC-SHA256 over
all of it. Records are verified before anything is unpickled: pickles are code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import cloudpickle

from starburst_executor.backends import BackendConfig, backend_from_record
from starburst_executor.errors import CorruptRecordError, ProtocolMismatchError

__all__ = [
    "PROTOCOL_VERSION",
    "Claim",
    "Codec",
    "ControlRecord",
    "SessionKeys",
    "SessionManifest",
    "WorkerRecord",
    "runtime_versions",
]

PROTOCOL_VERSION = 1
_MAGIC = b"SBX"
_JSON, _PICKLE = b"J", b"P"
_MAC_SIZE = 32
_HEADER = len(_MAGIC) + 1 + 1
BUCKET_MS = 100_000  # one time bucket = 100 s of keys


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


def time_bucket(ts_ms: int) -> str:
    return f"{ts_ms // BUCKET_MS:08d}"


def ts_key(ts_ms: int) -> str:
    """``{bucket}/{ts}``: the sortable stem of every time-ordered key."""
    return f"{time_bucket(ts_ms)}/{ts_ms:013d}"


def key_time_ms(name: str) -> int:
    """The milliseconds of a time-ordered key's leaf (``.../{ts}-...``)."""
    leaf = name.rsplit("/", 1)[-1]
    return int(leaf[:13])


class SessionKeys:
    """Builds every key of one session."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.root = f"sessions/{session_id}/"
        self.manifest = self.root + "manifest"
        self.control = self.root + "control"
        self.batches = self.root + "batches/"
        self.claims = self.root + "claims/"
        self.results = self.root + "results/"
        self.done = self.root + "done/"
        self.workers = self.root + "workers/"
        self.blobs = self.root + "blobs/"
        self.logs = self.root + "logs/"
        self.index = f"index/{session_id}"

    def batch(self, bid: str) -> str:
        return f"{self.batches}{time_bucket(key_time_ms(bid))}/{bid}"

    def requeue(self, ts_ms: int, bid: str, attempt: int) -> str:
        return f"{self.batches}{ts_key(ts_ms)}-requeue-{attempt}-{bid}"

    def claim(self, bid: str) -> str:
        return self.claims + bid

    def result(self, bid: str) -> str:
        return self.results + bid

    def done_event(self, ts_ms: int, bid: str, failed: int) -> str:
        return f"{self.done}{ts_key(ts_ms)}-{bid}.{failed}"

    def log(self, wid: str) -> str:
        return self.logs + wid

    def worker(self, wid: str) -> str:
        return self.workers + wid

    def blob(self, digest: str) -> str:
        return self.blobs + digest

    @staticmethod
    def bid_of(key: str) -> str:
        """The batch id a batch, requeue, claim, result or done key refers to."""
        leaf = key.rsplit("/", 1)[-1]
        if "-requeue-" in leaf:
            return leaf.split("-requeue-", 1)[1].split("-", 1)[1]
        if key.split("/")[2] == "done":
            return leaf.split("-", 1)[1].rsplit(".", 1)[0]
        return leaf

    @staticmethod
    def done_failures(key: str) -> int:
        """How many tasks of the batch failed, from its done event's key."""
        return int(key.rsplit(".", 1)[1])

    @staticmethod
    def batch_size(bid: str) -> int:
        """How many tasks a batch holds, from its id."""
        return int(bid.rsplit("-", 1)[1])

    @staticmethod
    def batch_shape(bid: str) -> tuple[str, int] | None:
        """``("s", 1)`` for a batch of submitted calls, ``("m", n)`` for ``map`` chunks of
        ``n`` items each, ``None`` for a batch without a shape (mixed kinds)."""
        parts = bid.split("-")
        if len(parts) < 5:
            return None
        shape = parts[3]
        return shape[0], int(shape[1:])

    @staticmethod
    def batch_origin(bid: str) -> tuple[str, int]:
        """The client tag and its sequence number, from a batch id."""
        parts = bid.split("-")
        return parts[1], int(parts[2])

    @staticmethod
    def is_requeue(key: str) -> bool:
        return "-requeue-" in key.rsplit("/", 1)[-1]


def digest(data: bytes) -> str:
    """Content address of a pickled part."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class Codec:
    """Encodes and verifies records: ``magic | version | kind | HMAC | payload``.

    Args:
        key: the HMAC key (see :func:`starburst_executor.config.secret_key`).
    """

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _seal(self, kind: bytes, payload: bytes) -> bytes:
        header = _MAGIC + bytes([PROTOCOL_VERSION]) + kind
        mac = hmac.new(self._key, header + payload, hashlib.sha256).digest()
        return header + mac + payload

    def _open(self, blob: bytes, kind: bytes, where: str) -> bytes:
        if len(blob) < _HEADER + _MAC_SIZE or blob[:3] != _MAGIC:
            raise CorruptRecordError(f"{where} is not a starburst record (bad header)")
        if blob[3] != PROTOCOL_VERSION:
            raise ProtocolMismatchError(
                f"{where} was written with store protocol version {blob[3]}, this is version "
                f"{PROTOCOL_VERSION}: use the same starburst-executor version on both sides"
            )
        if blob[4:5] != kind:
            raise CorruptRecordError(f"{where} holds the wrong kind of record")
        mac = blob[_HEADER : _HEADER + _MAC_SIZE]
        payload = blob[_HEADER + _MAC_SIZE :]
        expected = hmac.new(self._key, blob[:_HEADER] + payload, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise CorruptRecordError(
                f"{where} failed its signature check: it was tampered with, or written with "
                "another STARBURST_SECRET_KEY (client and workers must share the key)"
            )
        return payload

    def encode_json(self, record: dict[str, Any]) -> bytes:
        return self._seal(_JSON, json.dumps(record, separators=(",", ":")).encode())

    def decode_json(self, blob: bytes, where: str) -> dict[str, Any]:
        payload = self._open(blob, _JSON, where)
        try:
            value = json.loads(payload)
        except ValueError as exc:
            raise CorruptRecordError(f"{where} holds invalid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise CorruptRecordError(f"{where} does not hold a JSON object")
        return value

    def encode_pickle(self, record: Any) -> bytes:
        """Records of plain containers and bytes: the user's objects are already pickled."""
        return self._seal(_PICKLE, pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))

    def decode_pickle(self, blob: bytes, where: str) -> Any:
        payload = self._open(blob, _PICKLE, where)
        try:
            return pickle.loads(payload)
        except Exception as exc:  # a signed payload that will not load: a bug, say where
            raise CorruptRecordError(f"{where} could not be decoded: {exc!r}") from exc

    def encode_blob(self, data: bytes) -> bytes:
        return self._seal(_PICKLE, data)

    def decode_blob(self, blob: bytes, where: str) -> bytes:
        return self._open(blob, _PICKLE, where)


def _from_dict(cls: Any, data: dict[str, Any]) -> Any:
    names = cls.__dataclass_fields__
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class SessionManifest:
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
    """

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
    # The backend's options as the session runs them (``LocalBackend``, or for AWS the
    # options resolved against the profile); encoded by the backend's own to_record().
    backend_config: BackendConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def deadline(self) -> float | None:
        """Store-clock time after which the session is expired, or ``None``."""
        return None if self.session_timeout is None else self.created + self.session_timeout

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
class ControlRecord:
    """Session-wide state changed by compare-and-swap.

    Attributes:
        n: version counter; every write increments it (S3 ETags are content hashes, so a CAS
            must change the body).
        state: "open"; or "closed" (cleaned up), "cancelled" (pending work dropped) or
            "expired" (``session_timeout`` passed): in those three, workers exit.
        low_watermark: batches before this key are all finished; workers start listing there.
    """

    n: int = 0
    state: str = "open"
    low_watermark: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ControlRecord:
        return _from_dict(cls, data)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Claim:
    """A worker's claim on a batch, with its lease.

    Attributes:
        worker: the worker id holding (or last holding) the claim.
        attempt: 1 for the first run; each takeover adds one.
        state: "running", "released" (its worker gave it back), or "done".
        expires: lease expiry, store clock.
        n: version counter (every write changes the body, see ``ControlRecord.n``).
        history: the workers of earlier attempts and how each ended ("local-1 (killed by
            SIGKILL)"), for the "worker lost" message.
        ended: why the holder gave the claim back (state "released"): its exit code or
            signal as its launcher saw it, or "SIGTERM".
    """

    worker: str
    attempt: int
    state: str
    expires: float
    n: int = 0
    history: tuple[str, ...] = ()
    ended: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["history"] = list(self.history)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Claim:
        data = dict(data)
        data["history"] = tuple(data.get("history", ()))
        return _from_dict(cls, data)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class WorkerRecord:
    """A worker's registration, rewritten as its state changes.

    Attributes:
        worker: its id.
        state: "running", "exited", or "init-failed".
        host: host name; pid: process id; started: store-clock time.
        tasks: tasks run so far; reason: why it exited; error: initializer failure text.
        ended: store-clock time it exited (0 while running): with ``started``, the measured
            runtime the cost report bills.
    """

    worker: str
    state: str
    host: str
    pid: int
    started: float
    tasks: int = 0
    reason: str = ""
    error: str = ""
    ended: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerRecord:
        return _from_dict(cls, data)  # type: ignore[no-any-return]
