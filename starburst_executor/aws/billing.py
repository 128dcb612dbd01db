"""The bill of an AWS session, so far or after its end: measured time times the rates.

- Compute: each worker is billed from the start of its ECS task's image pull (Fargate bills
  "from the time you start to download your container image until the task terminates":
  ``pullStartedAt``, else ``createdAt``) to the task's stop (``stoppedAt``), each at least a
  minute. A worker whose record says it still runs but whose task ECS reports stopped (it
  vanished: killed, out of memory, Spot reclaimed before it could write its end) is billed to
  ``stoppedAt``, not until now. When ECS cannot tell (no credentials here, or the task was
  forgotten, about an hour after it stopped), the worker's own record is used: its first
  record to its end, or until now while it is "running" (erring high).
- The per-worker-hour rate recorded at launch (:class:`~starburst_executor.aws.cost.
  CostEstimate.per_worker_hour`) includes a Fargate task's public IPv4 address.
- S3 requests: counted by the session's client and workers (:mod:`starburst_executor.usage`:
  each writes its count to the store) and priced at S3 Standard prices of the session's
  region. A session none of whose processes counted (written by an older version) has them
  *estimated* from its batches and its worker and client time (``S3_*`` figures in
  :mod:`~starburst_executor.aws.cost`), and the report says so.

ECS answers are cached per process for stopped tasks (their times no longer change), so a
status polled every few seconds describes only the tasks still running.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from starburst_executor.aws.client import Aws
from starburst_executor.aws.cost import (
    S3_GET_PER_WORKER_HOUR,
    S3_GETS_PER_BATCH,
    S3_LIST_PER_CLIENT_HOUR,
    S3_LIST_PER_WORKER_HOUR,
    S3_PUTS_PER_BATCH,
    _hours,
    _rate,
    _usd,
    s3_request_cost,
)
from starburst_executor.aws.options import EcsOptions
from starburst_executor.errors import AwsError
from starburst_executor.protocol import WorkerState

if TYPE_CHECKING:
    from starburst_executor.usage import RequestUsage

__all__ = ["CostReport", "TaskTimes", "ecs_task_times", "report", "session_report", "worker_spans"]

logger = logging.getLogger(__name__)

_MINIMUM_BILLED_SECONDS = 60.0  # Fargate and Linux EC2 bill per second, a minute at least
_DESCRIBE_TASKS_MAX = 100
_ECS_WORKER = "ecs-"


class _WorkerLike(Protocol):
    @property
    def worker(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def started(self) -> float: ...


@dataclass(frozen=True)
class TaskTimes:
    """What ECS says about a worker's task: when billing started and when it stopped
    (``None`` while it has not), in seconds since the epoch."""

    start: float
    stop: float | None


_cache_lock = threading.Lock()
_stopped_cache: dict[tuple[str, str], TaskTimes] = {}  # (cluster, task id) -> times


def _seconds(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    return None


def ecs_task_times(aws: Aws, cluster: str, task_ids: Iterable[str]) -> dict[str, TaskTimes]:
    """:class:`TaskTimes` by task id, for the tasks ECS still knows (``DescribeTasks`` takes
    task ids as well as ARNs); stopped tasks come from the cache after the first answer.

    Raises:
        AwsError: ECS refused.
    """
    found: dict[str, TaskTimes] = {}
    ask: list[str] = []
    with _cache_lock:
        for tid in task_ids:
            cached = _stopped_cache.get((cluster, tid))
            if cached is not None:
                found[tid] = cached
            else:
                ask.append(tid)
    for i in range(0, len(ask), _DESCRIBE_TASKS_MAX):
        answer = aws.call(
            "ecs", "describe_tasks", cluster=cluster, tasks=ask[i : i + _DESCRIBE_TASKS_MAX]
        )
        for task in answer.get("tasks", ()):
            tid = str(task.get("taskArn", "")).rsplit("/", 1)[-1]
            start = _seconds(task.get("pullStartedAt")) or _seconds(task.get("createdAt"))
            if start is None:
                continue
            stop = _seconds(task.get("stoppedAt"))
            if stop is None and task.get("lastStatus") == "STOPPED":
                stop = _seconds(task.get("executionStoppedAt")) or start
            times = TaskTimes(start, stop)
            found[tid] = times
            if stop is not None:
                with _cache_lock:
                    _stopped_cache[(cluster, tid)] = times
    return found


def worker_spans(
    workers: Iterable[_WorkerLike],
    last_modified: Mapping[str, float] | None = None,
    tasks: Mapping[str, TaskTimes] | None = None,
) -> list[tuple[float, float | None]]:
    """``(started, ended or None)`` per worker record, for :func:`report`.

    With ``tasks`` (:func:`ecs_task_times` by task id), an ECS worker's span is its task's:
    from the image pull to the task's stop (see the module docstring). Otherwise, or for a
    worker ECS does not know: ``ended`` is the record's ``ended`` time when set
    (``WorkerRecord.ended``, 0 while running); for a worker that is no longer "running"
    without it (a record written before the field existed), ``last_modified[worker]``: the
    record's store time, written when it exited. A worker with neither counts as still
    running: the report errs high.
    """
    stamps = last_modified or {}
    known = tasks or {}
    spans: list[tuple[float, float | None]] = []
    for record in workers:
        ended = getattr(record, "ended", None) or None
        if ended is None and record.state != WorkerState.RUNNING:
            ended = stamps.get(record.worker)
        times = (
            known.get(record.worker[len(_ECS_WORKER) :])
            if record.worker.startswith(_ECS_WORKER)
            else None
        )
        if times is not None:
            spans.append((min(times.start, float(record.started)), times.stop))
            continue
        spans.append((float(record.started), None if ended is None else float(ended)))
    return spans


@dataclass(frozen=True)
class CostReport:
    """The cost of measured worker runtime, and of the session's S3 requests.

    Attributes:
        cost: USD so far, everything included.
        worker_seconds: summed runtime, each worker billed at least a minute.
        per_worker_hour: the rate applied (from the :class:`CostEstimate`).
        workers: how many workers ran; ``running``: how many still run (their time counts
            until the report's ``now``).
        s3_cost: of ``cost``, S3 requests; ``s3_put_requests``/``s3_get_requests`` the
            PUT/LIST-class (class A) and GET-class (class B) counts it prices;
            ``s3_estimated``: counts are an estimate (no process of the session counted).
        compute: of ``cost``, the workers' runtime.
    """

    cost: float
    worker_seconds: float
    per_worker_hour: float
    workers: int
    running: int
    s3_cost: float = 0.0
    s3_put_requests: int = 0
    s3_get_requests: int = 0
    s3_estimated: bool = True

    @property
    def worker_hours(self) -> float:
        return self.worker_seconds / 3600

    @property
    def compute(self) -> float:
        return self.cost - self.s3_cost

    def __str__(self) -> str:
        head = "Actual cost so far" if self.running else "Actual cost"
        text = (
            f"{head}: {_usd(self.cost)} ({_hours(self.worker_hours)} worker-hours at "
            f"{_rate(self.per_worker_hour)}/hour"
        )
        if self.s3_put_requests or self.s3_get_requests:
            how = "~" if self.s3_estimated else ""
            text += f" = {_usd(self.compute)} compute"
            text += (
                f"; S3 requests {how}{_usd(self.s3_cost)} for {how}{self.s3_put_requests:,} "
                f"PUT/LIST and {how}{self.s3_get_requests:,} GET"
                + (" (estimated)" if self.s3_estimated else "")
            )
        return text + ")"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["worker_hours"] = self.worker_hours
        data["compute"] = self.compute
        return data


def report(
    per_worker_hour: float,
    spans: Iterable[tuple[float, float | None]],
    now: float,
    *,
    s3_requests: tuple[int, int] = (0, 0),
    s3_estimated: bool = True,
    region: str | None = None,
) -> CostReport:
    """What the workers cost: summed runtime times ``per_worker_hour``, plus S3 requests.

    Args:
        per_worker_hour: USD per worker-hour (``CostEstimate.per_worker_hour``).
        spans: ``(started, ended or None)`` per worker, on the same clock as ``now`` (the
            store's); ``None``: still running, counted until ``now``.
        now: the time of the report.
        s3_requests: ``(put_like, get_like)`` request counts.
        s3_estimated: whether those counts are an estimate.
        region: the region whose S3 prices apply (default us-east-1).
    """
    seconds = 0.0
    count = running = 0
    for started, ended in spans:
        count += 1
        if ended is None:
            running += 1
            ended = now
        # Clock skew between hosts can put an end before its start: bill the minimum.
        seconds += max(_MINIMUM_BILLED_SECONDS, ended - started)
    s3 = s3_request_cost(*s3_requests, region=region)
    return CostReport(
        cost=seconds / 3600 * per_worker_hour + s3,
        worker_seconds=seconds,
        per_worker_hour=per_worker_hour,
        workers=count,
        running=running,
        s3_cost=s3,
        s3_put_requests=s3_requests[0],
        s3_get_requests=s3_requests[1],
        s3_estimated=s3_estimated,
    )


def estimated_s3_requests(
    batches: int, worker_seconds: float, client_seconds: float
) -> tuple[int, int]:
    """``(put_like, get_like)`` S3 requests of a session, estimated from its batches, its
    workers' time and the time its client(s) followed it (see ``S3_*`` in ``cost``)."""
    worker_hours = worker_seconds / 3600
    put_like = (
        batches * S3_PUTS_PER_BATCH
        + worker_hours * S3_LIST_PER_WORKER_HOUR
        + client_seconds / 3600 * S3_LIST_PER_CLIENT_HOUR
    )
    get_like = batches * S3_GETS_PER_BATCH + worker_hours * S3_GET_PER_WORKER_HOUR
    return round(put_like), round(get_like)


def session_report(
    options: EcsOptions,
    per_worker_hour: float,
    workers: list[Any],
    *,
    created: float,
    batches: int,
    now: float,
    aws: Aws | None = None,
    usage: RequestUsage | None = None,
) -> CostReport:
    """The cost of an AWS session so far (see the module docstring).

    Args:
        options: the session's ECS options (region, cluster).
        per_worker_hour: the rate recorded at launch.
        workers: the session's worker records.
        created: when the session was created (store clock).
        batches: how many batches it holds.
        now: the store's time.
        aws: the AWS access (default: one for ``options.region``).
        usage: the session's counted store requests; estimated when ``None`` or when no
            process counted (``usage.writers == 0``).
    """
    ids = [w.worker[len(_ECS_WORKER) :] for w in workers if w.worker.startswith(_ECS_WORKER)]
    tasks: dict[str, TaskTimes] = {}
    if ids:
        try:
            tasks = ecs_task_times(aws or Aws(options.region), options.cluster, ids)
        except AwsError as exc:  # the records still give a bill, erring high
            logger.info("cannot read the ECS tasks of the session's workers: %s", exc)
    spans = worker_spans(workers, tasks=tasks)
    if usage is not None and usage.writers:
        counted = (usage.total.class_a, usage.total.class_b)
        return report(
            per_worker_hour,
            spans,
            now,
            s3_requests=counted,
            s3_estimated=False,
            region=usage.region,
        )
    measured = report(per_worker_hour, spans, now)
    last = max((end if end is not None else now for _, end in spans), default=now)
    requests = estimated_s3_requests(
        batches, measured.worker_seconds, max(0.0, min(last, now) - created)
    )
    return report(per_worker_hour, spans, now, s3_requests=requests, s3_estimated=True)
