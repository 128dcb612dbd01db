"""What the dashboard shows of one session, read from the store alone.

``SessionWatch`` follows one session: each :meth:`SessionWatch.snapshot` takes the session's
status (the numbers ``starburst status`` prints, cost included), and reads the result records
of the batches finished since the previous snapshot (only those: a record is read once), from
which it keeps every task's run (worker, start, duration, outcome) and every failure's remote
traceback. It needs no client process: it works for detached sessions and for sessions
started on other machines, as long as the store and the signing key are reachable.

Task values are never unpickled, except the result of a ``map`` chunk whose done event counts
a failure that no outcome shows (the chunk's values carry the exception that stopped it).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from starburst_executor.dashboard.stats import histogram, throughput
from starburst_executor.errors import StarburstError
from starburst_executor.protocol import BatchId, DoneEvent, ResultRecord, SessionState
from starburst_executor.serialization import ChunkResult, RemoteException, loads
from starburst_executor.sessions import SessionReader, SessionStatus

logger = logging.getLogger(__name__)

__all__ = ["Failure", "SessionWatch", "TaskRun", "finished"]

TIMELINE_MAX = 2000  # task bars sent to the page: the most recent ones
FAILURES_MAX = 50  # failures sent to the page: the most recent ones


@dataclass(frozen=True)
class TaskRun:
    """One task as a worker ran it.

    Attributes:
        task_id: ``{batch id}/{position in batch}``, as in ``TaskResult.task_id``.
        worker: the worker that ran it.
        started: when it started (store clock, POSIX seconds).
        seconds: how long it ran.
        ok: whether it succeeded.
        measured: ``False`` when the worker did not record the task's own timing (an older
            worker, or a batch that failed as a whole): the batch's time is shared evenly.
    """

    task_id: str
    worker: str
    started: float
    seconds: float
    ok: bool
    measured: bool = True

    @property
    def ended(self) -> float:
        return self.started + self.seconds


@dataclass(frozen=True)
class Failure:
    """One failed task (or batch) with what the worker reported."""

    task_id: str
    worker: str
    attempt: int
    time: float
    type_name: str
    message: str
    traceback: str


def finished(status: SessionStatus) -> bool:
    """Whether nothing about the session will change any more: all its tasks finished (an
    open session reports "finished"), or it ended and no worker is left running."""
    ended = status.state in (SessionState.FINISHED, SessionState.DELETED)
    return ended or (status.state.terminal and status.done)


class SessionWatch:
    """Follows one session in a store; thread-safe (snapshots are taken one at a time).

    Raises:
        SessionError: (from the constructor) no such session, or its data was deleted.
    """

    def __init__(self, reader: SessionReader) -> None:
        self.reader = reader
        self._lock = threading.Lock()
        self._seen: set[str] = set()  # batches whose result was read
        self._runs: list[TaskRun] = []
        self._failures: deque[Failure] = deque(maxlen=FAILURES_MAX)
        self._failure_count = 0

    def snapshot(self) -> dict[str, Any]:
        """The page's whole view of the session, as JSON-ready data (times in POSIX seconds
        on the store's clock).

        Raises:
            SessionError: the session's data was deleted.
            StoreUnavailableError: the store could not be reached.
        """
        with self._lock:
            status = self.reader.status()
            session = self.reader
            new = [e for bid, e in session.done().items() if bid not in self._seen]
            for event, record in self._read(new):
                self._absorb(event, record)
            workers = session.workers()
            now = session.store.now()
            return self._view(status, workers, now)

    # -- reading ----------------------------------------------------------------------------

    def _read(self, events: list[DoneEvent]) -> list[tuple[DoneEvent, ResultRecord | Exception]]:
        records = self.reader.read_results(events) if events else {}
        return [(e, records[e.bid]) for e in sorted(events, key=lambda e: e.time_ms)]

    def _absorb(self, event: DoneEvent, record: ResultRecord | Exception) -> None:
        self._seen.add(event.bid)
        ended = event.time_ms / 1000
        ntasks = BatchId.parse(event.bid).ntasks
        if isinstance(record, Exception):  # damaged, or signed with another key
            self._fail(f"{event.bid}/*", "", 0, ended, type(record), str(record), "")
            return
        if record.batch_error is not None:
            share = record.seconds / max(ntasks, 1)
            for i in range(ntasks):
                start = ended - record.seconds + i * share
                self._runs.append(
                    TaskRun(f"{event.bid}/{i}", record.worker, start, share, False, False)
                )
            self._report(f"{event.bid}/*", record, ended, record.batch_error)
            return
        outcomes = sorted(record.outcomes, key=lambda o: o.index)
        unmeasured = [o for o in outcomes if o.seconds is None]
        share = record.seconds / max(len(unmeasured), 1)
        cursor = ended - record.seconds  # unmeasured tasks: one after the other in the batch
        chunk_failures = event.failed - sum(1 for o in outcomes if not o.ok)
        for o in outcomes:
            task_id = f"{event.bid}/{o.index}"
            failed = not o.ok
            if o.ok and chunk_failures > 0:
                failed = self._chunk_failure(task_id, record, ended, o.payload)
                chunk_failures -= failed
            if o.seconds is not None:
                start = o.started if o.started is not None else ended - o.seconds
                run = TaskRun(task_id, record.worker, start, o.seconds, not failed)
            else:
                run = TaskRun(task_id, record.worker, cursor, share, not failed, False)
                cursor += share
            self._runs.append(run)
            if not o.ok:
                self._report(task_id, record, run.ended, o.payload)

    def _chunk_failure(self, task_id: str, record: ResultRecord, at: float, data: bytes) -> bool:
        """Report the item that stopped a ``map`` chunk; whether the chunk had one."""
        try:
            value = loads(data)
        except Exception as exc:  # a value whose class is not importable here
            logger.debug("dashboard: cannot read the result of %s: %r", task_id, exc)
            return False
        if not isinstance(value, ChunkResult) or value.error is None:
            return False
        item = f"{task_id}.{len(value.values)}"
        self._fail_remote(item, record, at, value.error)
        return True

    def _report(self, task_id: str, record: ResultRecord, at: float, payload: bytes) -> None:
        try:
            remote = loads(payload)
        except Exception as exc:  # a damaged report must not stop the dashboard
            self._fail(task_id, record.worker, record.attempt, at, type(exc), str(exc), "")
            return
        if isinstance(remote, RemoteException):
            self._fail_remote(task_id, record, at, remote)
        else:
            message = f"an unexpected error report: {type(remote).__name__}"
            self._fail(task_id, record.worker, record.attempt, at, StarburstError, message, "")

    def _fail_remote(
        self, task_id: str, record: ResultRecord, at: float, remote: RemoteException
    ) -> None:
        self._failure_count += 1
        self._failures.append(
            Failure(
                task_id,
                record.worker,
                record.attempt,
                at,
                remote.type_name,
                remote.message,
                remote.tb,
            )
        )

    def _fail(
        self,
        task_id: str,
        worker: str,
        attempt: int,
        at: float,
        kind: type,
        message: str,
        tb: str,
    ) -> None:
        self._failure_count += 1
        name = f"{kind.__module__}.{kind.__qualname__}"
        self._failures.append(Failure(task_id, worker, attempt, at, name, message, tb))

    # -- the view ---------------------------------------------------------------------------

    def _view(self, status: SessionStatus, workers: list[Any], now: float) -> dict[str, Any]:
        manifest = self.reader.manifest
        start = manifest.created
        durations = [r.seconds for r in self._runs]
        series = throughput([r.ended for r in self._runs], start, max(now, start))
        recent = sorted(self._runs, key=lambda r: r.ended)[-TIMELINE_MAX:]
        ordered = sorted(durations)
        ran: dict[str, int] = {}  # a worker's record counts its tasks only when it exits
        for r in self._runs:
            ran[r.worker] = ran.get(r.worker, 0) + 1
        return {
            "session": {
                "id": status.session_id,
                "name": status.name,
                "state": str(status.state),
                "backend": manifest.backend,
                "store": status.store_url,
                "created": start,
                "now": now,
                "finished": finished(status),
                "store_unreachable_for": status.store_unreachable_for,
            },
            "progress": {
                "total": status.total,
                "pending": status.pending,
                "running": status.running,
                "completed": status.completed,
                "failed": status.failed,
                "cancelled": status.cancelled,
                "workers": status.workers,
                "percent": round(status.progress, 2),
            },
            "cost": status.cost,
            "throughput": {
                "start": series.start,
                "step": series.step,
                "rates": list(series.rates),
            },
            "durations": {
                "count": len(ordered),
                "mean": sum(ordered) / len(ordered) if ordered else None,
                "median": ordered[len(ordered) // 2] if ordered else None,
                "max": ordered[-1] if ordered else None,
                "bins": [[b.lo, b.hi, b.count] for b in histogram(durations)],
            },
            "workers": [
                {
                    "id": w.worker,
                    "host": w.host,
                    "pid": w.pid,
                    "state": str(w.state),
                    "started": w.started,
                    "ended": w.ended or None,
                    "tasks": max(w.tasks, ran.get(w.worker, 0)),
                    "reason": w.reason,
                }
                for w in sorted(workers, key=lambda w: (w.started, w.worker))
            ],
            "timeline": [
                [r.worker, r.started, r.seconds, r.ok, r.task_id, r.measured] for r in recent
            ],
            "failures": {
                "count": self._failure_count,
                "items": [
                    {
                        "task_id": f.task_id,
                        "worker": f.worker,
                        "attempt": f.attempt,
                        "time": f.time,
                        "type": f.type_name,
                        "message": f.message,
                        "traceback": f.traceback,
                    }
                    for f in reversed(self._failures)  # the most recent first
                ],
            },
        }
