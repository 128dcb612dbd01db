"""Worker logs in CloudWatch (moto): stream names, reading per worker, following."""

from __future__ import annotations

import time

import pytest

from starburst_executor.aws.client import Aws
from starburst_executor.aws.logs import (
    LogLine,
    follow_logs,
    read_logs,
    stream_name,
    tail,
    worker_id,
)
from starburst_executor.errors import AwsError

GROUP = "/starburst/workers"
T0 = int(time.time() * 1000) - 60_000  # CloudWatch refuses events from too far back


@pytest.fixture
def aws(aws_env: str) -> Aws:
    aws = Aws("us-east-1", retry_sleep=lambda _: None)
    aws.call("logs", "create_log_group", logGroupName=GROUP)
    return aws


def put(aws: Aws, stream: str, *events: tuple[int, str]) -> None:
    try:
        aws.call("logs", "create_log_stream", logGroupName=GROUP, logStreamName=stream)
    except AwsError as exc:
        if exc.code != "ResourceAlreadyExistsException":
            raise
    aws.call(
        "logs",
        "put_log_events",
        logGroupName=GROUP,
        logStreamName=stream,
        logEvents=[{"timestamp": T0 + offset, "message": text} for offset, text in events],
    )


def test_stream_names() -> None:
    assert stream_name("ecs-0123abcd") == "starburst/worker/0123abcd"
    assert worker_id("starburst/worker/0123abcd") == "ecs-0123abcd"
    with pytest.raises(ValueError, match="did not run on ECS"):
        stream_name("laptop-1234-ab12")


@pytest.mark.slow
def test_read_logs_per_worker(aws: Aws) -> None:
    put(aws, "starburst/worker/aaa", (0, "a1\n"), (10, "a2"))
    put(aws, "starburst/worker/bbb", (5, "b1"))
    lines = list(
        read_logs(aws, GROUP, ["ecs-aaa", "ecs-bbb", "ecs-not-started", "ip-10-0-0-1-7-ab12"])
    )
    assert lines == [
        LogLine("ecs-aaa", (T0 + 0) / 1000, "a1"),
        LogLine("ecs-aaa", (T0 + 10) / 1000, "a2"),
        LogLine("ecs-bbb", (T0 + 5) / 1000, "b1"),
    ]
    assert str(lines[0]).startswith("[ecs-aaa ") and str(lines[0]).endswith("] a1")
    later = list(read_logs(aws, GROUP, ["ecs-aaa"], start_time=(T0 + 5) / 1000))
    assert [line.message for line in later] == ["a2"]


def test_read_logs_of_a_missing_group_is_empty(aws_env: str) -> None:
    aws = Aws("us-east-1", retry_sleep=lambda _: None)
    assert list(read_logs(aws, "/no/such/group", ["ecs-aaa"])) == []


@pytest.mark.slow
def test_follow_logs_yields_new_events_once_and_stops_when_told(aws: Aws) -> None:
    put(aws, "starburst/worker/aaa", (0, "a1"))
    put(aws, "starburst/worker/ccc", (1, "not followed"))
    put(aws, "other/stream", (2, "not a worker"))
    rounds = {"n": 0}
    workers = ["ecs-aaa"]

    def stop() -> bool:
        rounds["n"] += 1
        return rounds["n"] >= 3

    def between_rounds(seconds: float) -> None:
        assert seconds == 0.5
        if rounds["n"] == 1:
            # A new worker appears; an older event of it arrives after newer ones were seen.
            workers.append("ecs-bbb")
            put(aws, "starburst/worker/bbb", (-5, "b0 (late)"), (20, "b1"))
            put(aws, "starburst/worker/aaa", (30, "a2"))
        elif rounds["n"] == 2:
            put(aws, "starburst/worker/aaa", (40, "a3: logged as the session ends"))

    lines = list(follow_logs(aws, GROUP, lambda: workers, stop, poll=0.5, sleep=between_rounds))
    assert [(line.worker, line.message) for line in lines] == [
        ("ecs-aaa", "a1"),
        ("ecs-bbb", "b0 (late)"),
        ("ecs-bbb", "b1"),
        ("ecs-aaa", "a2"),
        ("ecs-aaa", "a3: logged as the session ends"),  # read in the round that stops
    ]
    assert rounds["n"] == 3


def test_follow_logs_of_every_worker_from_a_start_time(aws: Aws) -> None:
    put(aws, "starburst/worker/aaa", (0, "old"), (10, "new"))
    put(aws, "starburst/worker/ccc", (20, "c"))
    lines = list(follow_logs(aws, GROUP, None, lambda: True, start_time=(T0 + 10) / 1000))
    assert [(line.worker, line.message) for line in lines] == [("ecs-aaa", "new"), ("ecs-ccc", "c")]


def test_follow_logs_of_a_missing_group_waits_quietly(aws_env: str) -> None:
    aws = Aws("us-east-1", retry_sleep=lambda _: None)
    answers = iter([False, True])
    assert (
        list(follow_logs(aws, "/no/such/group", None, lambda: next(answers), sleep=lambda _: None))
        == []
    )


@pytest.mark.slow
def test_follow_logs_reads_only_the_named_streams(aws: Aws) -> None:
    """Following a session asks CloudWatch for its workers' streams only (logStreamNames), not
    for every stream of the group (which holds every session's workers)."""
    put(aws, "starburst/worker/aaa", (0, "a1"))
    put(aws, "starburst/worker/zzz", (1, "another session's worker"))
    asked: list[dict[str, object]] = []
    aws.client("logs").meta.events.register(
        "before-parameter-build.logs.FilterLogEvents", lambda params, **_: asked.append(params)
    )
    lines = list(follow_logs(aws, GROUP, lambda: ["ecs-aaa", "ecs-not-started"], lambda: True))
    assert [(line.worker, line.message) for line in lines] == [("ecs-aaa", "a1")]
    assert asked and all("logStreamNamePrefix" not in a for a in asked)
    assert {n for a in asked for n in a["logStreamNames"]} == {  # type: ignore[attr-defined]
        "starburst/worker/aaa",
        "starburst/worker/not-started",
    }


def test_follow_logs_of_no_worker_yet_asks_nothing(aws: Aws) -> None:
    asked: list[object] = []
    aws.client("logs").meta.events.register(
        "before-parameter-build.logs.FilterLogEvents", lambda params, **_: asked.append(params)
    )
    assert list(follow_logs(aws, GROUP, lambda: [], lambda: True)) == []
    assert asked == []


@pytest.mark.slow
def test_tail_gives_the_last_lines_of_a_worker(aws: Aws) -> None:
    put(aws, "starburst/worker/aaa", *[(i, f"line {i}") for i in range(30)])
    assert tail(aws, GROUP, "ecs-aaa", lines=3) == "line 27\nline 28\nline 29"
    assert tail(aws, GROUP, "ecs-missing") == ""
    assert tail(aws, GROUP, "laptop-1-ab12") == ""
