"""The records of :mod:`starburst_executor.protocol`: each encodes and decodes in one place,
round-trips, and refuses what is not one of it."""

from __future__ import annotations

import pytest

from starburst_executor.errors import CorruptRecordError
from starburst_executor.protocol import (
    BatchId,
    BatchRecord,
    BatchShape,
    Claim,
    ClaimState,
    Codec,
    ControlRecord,
    DoneEvent,
    ResultRecord,
    SessionKeys,
    SessionManifest,
    SessionState,
    TaskKind,
    TaskOutcome,
    TaskSpec,
    WorkerRecord,
    WorkerState,
    runtime_versions,
)
from starburst_executor.serialization import ChunkResult, capture_exception, dumps

CODEC = Codec(b"k" * 32)


@pytest.mark.parametrize(
    "bid",
    [
        BatchId(1763712345678, "ab12cd34", 7, 3),
        BatchId(1763712345678, "ab12cd34", 7, 3, BatchShape("m", 5)),
        BatchId(12, "x", 1, 1, BatchShape("s", 1)),
    ],
)
def test_a_batch_id_round_trips_through_its_text(bid: BatchId) -> None:
    text = str(bid)
    assert BatchId.parse(text) == bid
    assert len(text.split("-")[0]) == 13  # ids sort by time as strings


def test_a_batch_id_that_is_not_one_is_refused() -> None:
    with pytest.raises(CorruptRecordError, match="not a batch id"):
        BatchId.parse("0001-ab-notanumber-3")


def test_keys_name_the_batch_they_refer_to() -> None:
    keys = SessionKeys("20261121-081500-3fa9c2")
    bid = str(BatchId(1763712345678, "ab12cd34", 7, 3, BatchShape("s", 1)))
    assert SessionKeys.bid_of(keys.batch(bid)) == bid
    assert SessionKeys.bid_of(keys.requeue(1763712399999, bid, 2)) == bid
    assert SessionKeys.is_requeue(keys.requeue(1763712399999, bid, 2))
    event = DoneEvent.parse(keys.done_event(1763712399999, bid, 2), 10)
    assert (event.bid, event.failed, event.time_ms) == (bid, 2, 1763712399999)


def test_control_record_transitions() -> None:
    record = ControlRecord()
    assert record.state is SessionState.OPEN
    expired = record.expire()
    assert expired is not None and expired.state is SessionState.EXPIRED
    assert expired.n == record.n + 1  # every write changes the body (S3 ETags are MD5s)
    assert expired.expire() is None  # only an open session expires
    assert expired.close().state is SessionState.CLOSED
    assert record.cancel().state is SessionState.CANCELLED
    marked = record.raise_watermark("b")
    assert marked is not None and marked.raise_watermark("a") is None  # never back
    assert ControlRecord.decode(CODEC, marked.encode(CODEC, "c"), "c") == marked


def test_expiry_is_decided_by_the_manifest() -> None:
    manifest = SessionManifest("s", created=100.0, versions={}, session_timeout=10.0)
    assert not manifest.expired(109.9) and manifest.expired(110.0)
    assert ControlRecord().state_at(manifest, 111.0) is SessionState.EXPIRED
    assert ControlRecord().cancel().state_at(manifest, 111.0) is SessionState.CANCELLED
    assert not SessionManifest("s", 100.0, {}).expired(1e12)


def test_a_control_record_with_an_unknown_state_is_refused() -> None:
    with pytest.raises(CorruptRecordError, match="SessionState"):
        ControlRecord.from_dict({"n": 1, "state": "deleted-ish"})


def test_claim_and_worker_records_round_trip() -> None:
    claim = Claim("w1", 2, ClaimState.RUNNING, 50.0, 3, ("w0 (killed by SIGKILL)",))
    assert Claim.decode(CODEC, claim.encode(CODEC, "claim"), "claim") == claim
    assert claim.live(49.0) and not claim.live(50.0)
    worker = WorkerRecord("w1", WorkerState.INIT_FAILED, "host", 12, 1.0, error="boom")
    assert WorkerRecord.decode(CODEC, worker.encode(CODEC, "worker"), "worker") == worker


def test_batch_records_round_trip() -> None:
    record = BatchRecord(
        "bid",
        runtime_versions(),
        (TaskSpec(0, TaskKind.CALL, "f", ("a",), {"k": "b"}),),
        {"f": b"fn", "a": b"arg"},
    )
    assert BatchRecord.decode(CODEC, record.encode(CODEC, "batch"), "batch") == record


def test_result_records_decode_to_outcomes() -> None:
    record = ResultRecord(
        "bid",
        "w1",
        1,
        (
            TaskOutcome(1, False, dumps(capture_exception(ValueError("bad")))),
            TaskOutcome(0, True, dumps(42)),
            TaskOutcome(2, True, dumps(ChunkResult([1, 2]))),
        ),
        outputs={0: "printed"},
        seconds=0.5,
    )
    decoded = ResultRecord.decode(CODEC, record.encode(CODEC, "result"), "result")
    assert decoded == record
    outcomes = decoded.decode_outcomes()
    assert not isinstance(outcomes, BaseException)
    assert outcomes[0].value == 42  # in task order, whatever the order of delivery
    assert isinstance(outcomes[1].error, ValueError)
    assert outcomes[2].chunk and outcomes[2].value == ([1, 2], None)
    failed = ResultRecord("bid", "w1", 1, batch_error=dumps(capture_exception(KeyError("x"))))
    assert isinstance(failed.decode_outcomes(), KeyError)


def test_a_result_record_that_is_not_one_is_refused() -> None:
    with pytest.raises(CorruptRecordError, match="does not hold a result record"):
        ResultRecord.decode(CODEC, CODEC.encode_pickle({"bid": "x"}, "results/x"), "results/x")
