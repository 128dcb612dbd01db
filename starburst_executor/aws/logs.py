"""Worker logs in CloudWatch: one stream per worker, read once or followed.

ECS's ``awslogs`` driver names a task's stream ``PREFIX/CONTAINER/TASK_ID``. The task
definition uses the stream prefix ``starburst`` and the container name ``worker``, so worker
``ecs-{task id}`` writes to ``starburst/worker/{task id}`` (:func:`stream_name`).

- :func:`read_logs`: every event of some workers, stream by stream (``GetLogEvents``).
- :func:`tail`: the last lines of one worker's stream (a start failure's explanation).
- :func:`follow_logs`: new events of the log group as they arrive (``FilterLogEvents``), until
  told to stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from starburst_executor.aws.client import Aws
from starburst_executor.errors import AwsError

__all__ = [
    "STREAM_PREFIX",
    "LogLine",
    "follow_logs",
    "read_logs",
    "stream_name",
    "tail",
    "worker_id",
]

logger = logging.getLogger(__name__)

STREAM_PREFIX = "starburst/worker/"
"""``awslogs-stream-prefix`` "starburst" + "/" + the container name "worker" + "/"."""

_ECS_WORKER = "ecs-"
# FilterLogEvents is asked again for this much time before the newest event seen: events from
# different streams are ingested out of order (each ECS task ships its own batches), so an
# event older than one already yielded can still arrive. Event ids remove the repeats.
_LOOKBACK_MS = 30_000


@dataclass(frozen=True)
class LogLine:
    """One log event of one worker.

    Attributes:
        worker: the worker id (``ecs-{task id}``).
        timestamp: when the worker logged it, seconds since the epoch.
        message: the line, without its trailing newline.
    """

    worker: str
    timestamp: float
    message: str

    def __str__(self) -> str:
        when = datetime.fromtimestamp(self.timestamp, timezone.utc).strftime("%H:%M:%S")
        return f"[{self.worker} {when}] {self.message}"


def stream_name(worker: str) -> str:
    """The CloudWatch stream of a worker: ``ecs-{task id}`` -> ``starburst/worker/{task id}``.

    Raises:
        ValueError: not the id of a worker that ran on ECS (local workers have no stream).
    """
    if not worker.startswith(_ECS_WORKER) or len(worker) == len(_ECS_WORKER):
        raise ValueError(
            f"worker {worker!r} did not run on ECS (ECS worker ids are "
            "'ecs-{task id}'): it has no CloudWatch log stream"
        )
    return STREAM_PREFIX + worker[len(_ECS_WORKER) :]


def worker_id(stream: str) -> str:
    """The inverse of :func:`stream_name`: ``starburst/worker/{task id}`` -> ``ecs-{task id}``."""
    return _ECS_WORKER + stream.removeprefix(STREAM_PREFIX)


def _ecs_workers(worker_ids: Iterable[str]) -> Iterator[str]:
    for worker in worker_ids:
        if worker.startswith(_ECS_WORKER) and len(worker) > len(_ECS_WORKER):
            yield worker
        else:
            logger.info(
                "worker %s did not run as an ECS task with metadata: it has no log stream to read",
                worker,
            )


def _line(worker: str, event: dict[str, Any]) -> LogLine:
    return LogLine(worker, int(event["timestamp"]) / 1000, str(event["message"]).rstrip("\n"))


def read_logs(
    aws: Aws, log_group: str, worker_ids: Iterable[str], start_time: float | None = None
) -> Iterator[LogLine]:
    """Every event of each worker's stream, worker by worker, oldest first.

    A worker whose stream does not exist (yet) yields nothing, and so does a worker id that
    is not an ECS worker's (a worker that could not read its task metadata names itself after
    its host: its stream cannot be found from its id).

    Args:
        aws: the AWS client.
        log_group: the workers' log group (``EcsOptions.log_group``).
        worker_ids: ``ecs-{task id}`` ids.
        start_time: only events at or after this time (seconds since the epoch).

    Raises:
        AwsError: CloudWatch Logs refused (e.g. ``AwsPermissionError`` for logs:GetLogEvents).
    """
    for worker in _ecs_workers(worker_ids):
        params: dict[str, Any] = {
            "logGroupName": log_group,
            "logStreamName": stream_name(worker),
            "startFromHead": True,
        }
        if start_time is not None:
            params["startTime"] = int(start_time * 1000)
        token: str | None = None
        while True:
            try:
                page = aws.call("logs", "get_log_events", **params)
            except AwsError as exc:
                if exc.code != "ResourceNotFoundException":
                    raise
                logger.debug("no log stream for worker %s in %s yet", worker, log_group)
                break
            for event in page.get("events", ()):
                yield _line(worker, event)
            # GetLogEvents pages forward until it hands back the token it was given.
            new = page.get("nextForwardToken")
            if not new or new == token:
                break
            token = params["nextToken"] = new


def tail(aws: Aws, log_group: str, worker: str, lines: int = 20) -> str:
    """The last ``lines`` lines of a worker's stream, oldest first, as one text; ``""`` when
    the stream does not exist (yet) or the worker did not run on ECS.

    Raises:
        AwsError: CloudWatch Logs refused (other than a missing stream or group).
    """
    if not worker.startswith(_ECS_WORKER) or len(worker) == len(_ECS_WORKER):
        return ""
    try:
        page = aws.call(
            "logs",
            "get_log_events",
            logGroupName=log_group,
            logStreamName=stream_name(worker),
            startFromHead=False,  # the newest page: the end of the stream
            limit=lines,
        )
    except AwsError as exc:
        if exc.code != "ResourceNotFoundException":
            raise
        return ""
    events = sorted(page.get("events", ()), key=lambda e: int(e["timestamp"]))
    return "\n".join(_line(worker, e).message for e in events[-lines:])


def follow_logs(
    aws: Aws,
    log_group: str,
    worker_ids_fn: Callable[[], Iterable[str]] | None,
    stop_fn: Callable[[], bool],
    poll: float = 2.0,
    *,
    start_time: float | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> Iterator[LogLine]:
    """Yield workers' new log events as they arrive, until ``stop_fn()`` is true.

    Each round asks ``stop_fn()``, reads what is new in the workers' streams, yields it in
    time order, and returns if it was told to stop (so the last events are not lost);
    otherwise it waits ``poll`` seconds.

    Args:
        aws: the AWS client.
        log_group: the workers' log group.
        worker_ids_fn: the workers to show, asked each round (workers come and go): only
            their streams are read (``FilterLogEvents`` with ``logStreamNames``, 100 at a
            time), not the whole group. ``None``: every starburst worker stream in the group.
            Ids that are not ECS workers' are skipped, as in :func:`read_logs`.
        stop_fn: true once following should end (the session finished, Ctrl-C ...).
        poll: seconds between rounds.
        start_time: only events at or after this time (seconds since the epoch); default: all.
        sleep: the wait between rounds (tests pass a function that adds events).

    Raises:
        AwsError: CloudWatch Logs refused (a missing log group just yields nothing).
    """
    newest = int(start_time * 1000) if start_time is not None else 0
    floor = newest
    seen: dict[str, int] = {}  # event id -> timestamp, for events not older than the lookback
    while True:
        stopping = stop_fn()
        wanted = (
            None
            if worker_ids_fn is None
            else sorted({stream_name(w) for w in _ecs_workers(worker_ids_fn())})
        )
        query_from = max(floor, newest - _LOOKBACK_MS)
        batch: list[tuple[int, str, dict[str, Any]]] = []
        for event in _events(aws, log_group, wanted, query_from):
            stream = str(event.get("logStreamName", ""))
            if not stream.startswith(STREAM_PREFIX):
                continue
            event_id, ts = str(event["eventId"]), int(event["timestamp"])
            if event_id in seen or ts < query_from:
                continue
            seen[event_id] = ts
            batch.append((ts, stream, event))
        batch.sort(key=lambda item: item[0])
        for _, stream, event in batch:
            yield _line(worker_id(stream), event)
        if batch:
            newest = max(newest, batch[-1][0])
            horizon = newest - _LOOKBACK_MS
            seen = {k: v for k, v in seen.items() if v >= horizon}
        if stopping:
            return
        sleep(poll)


_STREAM_NAMES_MAX = 100  # FilterLogEvents takes at most 100 logStreamNames


def _events(
    aws: Aws, log_group: str, streams: list[str] | None, start_ms: int
) -> Iterator[dict[str, Any]]:
    """FilterLogEvents from ``start_ms``: on ``streams`` only (none: no call), or on every
    starburst worker stream when ``streams`` is None."""
    if streams is None:
        selections: list[dict[str, Any]] = [{"logStreamNamePrefix": STREAM_PREFIX}]
    else:
        selections = [
            {"logStreamNames": streams[i : i + _STREAM_NAMES_MAX]}
            for i in range(0, len(streams), _STREAM_NAMES_MAX)
        ]
    for selection in selections:
        try:
            yield from aws.paginate(
                "logs",
                "filter_log_events",
                "events",
                logGroupName=log_group,
                startTime=start_ms,
                **selection,
            )
        except AwsError as exc:
            # A missing group, or (with logStreamNames) a stream not created yet.
            if exc.code != "ResourceNotFoundException":
                raise
