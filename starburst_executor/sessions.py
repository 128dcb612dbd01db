"""Reading sessions from the store: status, collected results, listing.

Everything here works from the store alone, so it serves a reattached ``DetachedExecutor``,
the ``starburst`` command line, and any process that knows the session id and the store.
Counting is done from key listings (batch ids carry their task counts, completion keys their
failure counts), so ``status()`` reads no task payloads or results.

AWS sessions need two things only the AWS backend knows (the signing key kept in SSM, and
the price of a worker hour): :mod:`starburst_executor.aws.sessions` provides them, imported
only for those sessions (a local-only run never loads the AWS modules).
"""

from __future__ import annotations

import datetime as _dt
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from starburst_executor._session import Session
from starburst_executor._text import cell
from starburst_executor.config import (  # the index's old home: names kept importable
    forget_session,
    remember_session,
    remembered_store,
    secret_key,
)
from starburst_executor.errors import (
    CorruptRecordError,
    SessionError,
    SessionExpiredError,
    StarburstError,
)
from starburst_executor.protocol import (
    INDEX,
    BatchId,
    Codec,
    DoneEvent,
    ResultRecord,
    SessionKeys,
    SessionState,
    WorkerRecord,
    WorkerState,
)
from starburst_executor.stores.base import Store
from starburst_executor.usage import session_usage

logger = logging.getLogger(__name__)

__all__ = [
    "SessionReader",
    "SessionStatus",
    "TaskResult",
    "codec_for",
    "collected",
    "forget_session",
    "list_sessions",
    "remember_session",
    "remembered_store",
    "session_cost",
    "session_status",
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
    state: SessionState
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
    # What the session cost so far: {"cost": USD, "text": one line, "requests": ...}; AWS
    # sessions add their workers' measured runtime (see session_cost).
    cost: dict[str, Any] | None = None
    # Seconds the store has been unreachable (the run is paused, the counts are the last
    # known ones), or None while it answers.
    store_unreachable_for: float | None = None

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

    @property
    def store_unreachable(self) -> bool:
        """Whether the store did not answer when this status was taken (the run pauses)."""
        return self.store_unreachable_for is not None

    def _unreachable_note(self) -> str:
        if self.store_unreachable_for is None:
            return ""
        return f" (store unreachable for {self.store_unreachable_for:.0f} s: paused)"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["progress"] = round(self.progress, 2)
        d["done"] = self.done
        return d

    def __str__(self) -> str:
        rows = [
            ("Session", f"{self.session_id}" + (f" ({cell(self.name)})" if self.name else "")),
            ("State", self.state),
            ("Store", self.store_url + self._unreachable_note()),
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
            requests = self.cost.get("requests")
            if requests:
                rows.append(("Store requests", str(requests.get("text", ""))))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in rows)


def _fmt_time(ts: float) -> str:
    if not ts:
        return "-"
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


class SessionReader(Session):
    """A session opened by id, for reading: :meth:`Session.open` with ``status`` and ``cost``.

    Raises:
        SessionError: no such session in this store (the message says which store was
            searched and how to list sessions), or its data was deleted.
        CorruptRecordError: the manifest is damaged (the message names its key).
        ProtocolMismatchError: the session was written by an incompatible version.
    """

    def __init__(self, store: Store, session_id: str, codec: Codec) -> None:
        super().__init__(store, Session.open(store, session_id, codec).manifest, codec)

    def status(self) -> SessionStatus:
        return session_status(self)

    def cost(self, workers: list[WorkerRecord] | None = None) -> dict[str, Any] | None:
        return session_cost(self, workers)


def session_status(session: Session) -> SessionStatus:
    """Count the session's tasks by state (listings, plus a read of each unfinished claim).

    A task is *running* only while a worker runs it: its batch is claimed under a lease that
    is live (running, not expired) by a worker whose record says it runs. A worker runs one
    task at a time, so such a batch counts one running task and the rest of it as pending (a
    batch's results travel together when it ends). A batch handed back (SIGTERM, Spot) or
    whose lease expired is pending again.

    Raises:
        SessionError: the session's data was deleted.
    """
    manifest = session.manifest
    state = session.state()
    bids = session.batch_ids()
    done = session.done()
    claimed = {
        SessionKeys.leaf(i.key): i.last_modified for i in session.store.list(session.keys.claims)
    }
    workers = session.workers()
    live = [w for w in workers if w.state is WorkerState.RUNNING]
    running_batches = _running_batches(
        session, [b for b in bids if b in claimed and b not in done], {w.worker for w in live}
    )
    total = completed = failed = running = pending = 0
    for bid in bids:
        n = BatchId.parse(bid).ntasks
        total += n
        if bid in done:
            failed += done[bid].failed
            completed += n - done[bid].failed
        elif bid in running_batches and n:
            running += 1
            pending += n - 1
        else:
            pending += n
    cancelled = 0
    if state.terminal and not live:  # nobody will run what is left
        cancelled, pending, running = pending + running, 0, 0
    activity = max([manifest.created, *claimed.values()] + [w.started for w in workers])
    last_done = max((e.time_ms for e in done.values()), default=0)
    states: dict[str, int] = {}
    for w in workers:
        states[w.state.value] = states.get(w.state.value, 0) + 1
    if state is SessionState.OPEN and total and completed + failed == total:
        state = SessionState.FINISHED
    return SessionStatus(
        session_id=session.session_id,
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
        store_url=session.store.url,
        worker_states=states,
        cost=session_cost(session, workers),
    )


def _running_batches(session: Session, bids: list[str], live_workers: set[str]) -> set[str]:
    """Those of ``bids`` whose claim is live and held by a worker that has not recorded its
    exit (one GET per unfinished claimed batch)."""
    now = session.store.now()
    claims = session.claims()

    def live(bid: str) -> bool:
        try:
            claim = claims.read(bid)
        except CorruptRecordError:
            logger.warning("session %s: the claim of %s is damaged", session.session_id, bid)
            return False
        # None: finished and collected meanwhile.
        return claim is not None and claim.live(now) and claim.worker in live_workers

    if not bids:
        return set()
    with ThreadPoolExecutor(min(8, len(bids))) as pool:
        return {bid for bid, ok in zip(bids, pool.map(live, bids)) if ok}


def session_cost(
    session: Session, workers: list[WorkerRecord] | None = None
) -> dict[str, Any] | None:
    """The cost so far of a session: its store requests (counted by its client and workers,
    :mod:`starburst_executor.usage`) and, for AWS sessions, its workers' measured runtime.

    Returns:
        ``{"cost": USD, "compute": USD, "s3_cost": USD, "requests": RequestUsage.to_dict(),
        "text": one line}`` (AWS sessions add the bill's fields, see
        :class:`~starburst_executor.aws.billing.CostReport`). Store requests are billed only
        on an S3 store; elsewhere ``requests`` says what S3 would charge. ``None`` only for
        an AWS session without a recorded rate.
    """
    if session.manifest.backend != "aws":
        usage = session_usage(session)
        total = usage.total
        text = (
            f"{_usd(usage.cost)} (local workers: no compute charge; store requests "
            f"{_usd(usage.cost)} for {total.class_a:,} PUT/LIST and {total.class_b:,} GET"
            + ("" if usage.on_s3 else f", {_usd(usage.s3_price)} if it were S3")
            + ")"
        )
        return {
            "cost": usage.cost,
            "compute": 0.0,
            "s3_cost": usage.cost,
            "requests": usage.to_dict(),
            "text": text,
        }
    from starburst_executor.aws.sessions import session_cost as aws_session_cost

    workers = session.workers() if workers is None else workers
    usage = session_usage(session)
    return aws_session_cost(
        session.manifest, workers, len(session.batch_ids()), session.store.now(), usage
    )


def _usd(amount: float) -> str:
    if amount == 0 or amount >= 0.01:
        return f"${amount:,.2f}"
    return f"${amount:.4f}" if amount >= 0.0001 else "under $0.0001"


def codec_for(store: Store) -> Codec:
    """The codec that verifies sessions in ``store``: the local key (``STARBURST_SECRET_KEY``
    or the per-user key file), except for sessions in the AWS profile's bucket (see
    ``starburst_executor.aws.sessions.codec_for``)."""
    if store.url.startswith("s3://"):
        from starburst_executor.aws.sessions import codec_for as aws_codec_for

        codec = aws_codec_for(store.url)
        if codec is not None:
            return codec
    return Codec(secret_key())


def list_sessions(store: str | Store | None = None) -> list[SessionStatus]:
    """Every session in a store, oldest first, with its counts and state.

    Sessions whose data was deleted are listed with state "deleted" and zero counts.
    """
    from starburst_executor.stores import open_store

    store_obj = open_store(store)
    codec = codec_for(store_obj)
    out = []
    for info in store_obj.list(INDEX):
        sid = SessionKeys.leaf(info.key)
        try:
            out.append(SessionReader(store_obj, sid, codec).status())
        except SessionError:
            out.append(
                SessionStatus(
                    session_id=sid,
                    name="",
                    state=SessionState.DELETED,
                    total=0,
                    pending=0,
                    running=0,
                    completed=0,
                    failed=0,
                    cancelled=0,
                    workers=0,
                    created=0.0,
                    last_activity=info.last_modified,
                    store_url=store_obj.url,
                )
            )
    return out


# -- collected results ---------------------------------------------------------------------


def collected(
    session: Session,
    bids: list[str],
    done: dict[str, DoneEvent],
    terminal: SessionState | None,
) -> list[TaskResult]:
    """One entry per finished task (per item for ``map`` chunks), numbered by submission
    position: the items of every batch before it count, finished or not.

    Args:
        session: where to read the results.
        bids: every batch, in submission order.
        done: the finished ones.
        terminal: the session's state if it ended (then unfinished tasks get an error entry
            saying they did not run), else ``None``.
    """
    records = session.read_results(done[b] for b in bids if b in done)
    entries: list[TaskResult] = []
    position = 0
    for bid in bids:
        batch = BatchId.parse(bid)
        record = records.get(bid)
        if record is None:  # not finished
            if terminal is not None:
                error: SessionError = (
                    SessionExpiredError if terminal is SessionState.EXPIRED else SessionError
                )(f"the task did not run: session {session.session_id} was {terminal}")
                entries.extend(TaskResult(i, t, error=error) for i, t in _slots(batch, position))
        elif isinstance(record, StarburstError):
            entries.extend(_damaged(batch, position, record))
        else:
            made = _batch_entries(batch, position, record)
            entries.extend(made)
            if batch.shape is None:  # mixed kinds: number the entries as they come
                position += max(batch.ntasks, len(made))
                continue
        per = batch.items_per_task
        position += batch.ntasks * (per if per is not None else 1)
    return entries


def _batch_entries(batch: BatchId, start: int, record: ResultRecord) -> list[TaskResult]:
    bid = str(batch)
    per = batch.items_per_task
    outcomes = record.decode_outcomes()
    if isinstance(outcomes, BaseException):  # the whole batch failed (e.g. worker lost)
        return [TaskResult(i, t, error=outcomes) for i, t in _slots(batch, start)]
    entries: list[TaskResult] = []
    for i in range(batch.ntasks):
        task_id = f"{bid}/{i}"
        # Where this task's first item stands: fixed by the shape, else right after the
        # entries before it (a batch of mixed kinds, from a plain executor).
        first = start + i * per if per is not None else start + len(entries)
        if i >= len(outcomes):
            error = CorruptRecordError(f"batch {bid}: its result record has no entry for task {i}")
            entries.append(TaskResult(first, task_id, error=error))
            continue
        outcome, out = outcomes[i], record.outputs.get(i, "")
        if outcome.error is not None:
            entries.append(TaskResult(first, task_id, error=outcome.error, output=out))
        elif outcome.chunk:
            values, error = outcome.value
            for j, v in enumerate(values):
                entries.append(TaskResult(first + j, f"{task_id}.{j}", v, output=out))
            if error is not None:  # the items after it did not run (as map stops there)
                j = len(values)
                entries.append(TaskResult(first + j, f"{task_id}.{j}", error=error, output=out))
        else:
            entries.append(TaskResult(first, task_id, outcome.value, output=out))
    return entries


def _slots(batch: BatchId, start: int) -> list[tuple[int, str]]:
    """``(index, task id)`` of every item of a batch whose first item stands at ``start``."""
    bid = str(batch)
    if batch.shape is None or not batch.shape.is_map:
        return [(start + i, f"{bid}/{i}") for i in range(batch.ntasks)]
    per = batch.shape.items
    return [
        (start + i * per + j, f"{bid}/{i}.{j}") for i in range(batch.ntasks) for j in range(per)
    ]


def _damaged(batch: BatchId, start: int, exc: StarburstError) -> list[TaskResult]:
    """Error entries for the tasks of a batch whose result record cannot be read: the rest of
    the session is still collected."""
    entries = []
    for index, task_id in _slots(batch, start):
        error = CorruptRecordError(
            f"task {index} ({task_id}): its result cannot be read: {exc}. The other results "
            "are unaffected; run the task again to get this one"
        )
        error.__cause__ = exc
        entries.append(TaskResult(index, task_id, error=error))
    return entries
