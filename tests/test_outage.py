"""Outages pause, not kill (issue 10, item 1): a store that stops answering for a while
pauses the run; past ``store_outage_timeout`` the Futures fail with StoreUnavailableError.

The unit tests run on the memory store with a fake clock: the store is down for a window of
fake time, and every retry's sleep moves that clock, so a 60 s outage passes in milliseconds.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

import pytest
from unit.fakes import use_launcher, wait_until
from unit.test_manager import FAST

from starburst_executor import StarburstExecutor, StoreUnavailableError
from starburst_executor.launchers.thread import ThreadLauncher
from starburst_executor.protocol import Codec
from starburst_executor.stores.base import ObjectInfo, StoredObject
from starburst_executor.stores.memory import FakeClock, MemoryStore
from starburst_executor.stores.outage import OutageTolerantStore
from starburst_executor.worker.loop import WorkerOptions


class FlakyStore(MemoryStore):
    """A memory store that is unreachable while its fake clock is inside ``[down_from,
    down_until)``: every call raises, alternately ``StoreUnavailableError`` and a
    connection reset, as an S3 store past its own retries and a bare socket would."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.fake = clock
        self.down_from = float("inf")
        self.down_until = float("inf")
        self.failures = 0
        self._lock = threading.Lock()

    def go_down(self, seconds: float) -> None:
        self.down_from, self.down_until = self.fake(), self.fake() + seconds

    def _maybe_fail(self) -> None:
        if self.down_from <= self.fake() < self.down_until:
            with self._lock:
                self.failures += 1
                odd = self.failures % 2
            if odd:
                raise StoreUnavailableError("S3 kept failing (503 SlowDown) after retries")
            raise ConnectionResetError(104, "Connection reset by peer")

    def get(self, key: str) -> StoredObject:
        self._maybe_fail()
        return super().get(key)

    def put(self, key: str, data: bytes) -> str:
        self._maybe_fail()
        return super().put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> str:
        self._maybe_fail()
        return super().put_if_absent(key, data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        self._maybe_fail()
        return super().put_if_match(key, data, etag)

    def list(self, prefix: str, start_after: str | None = None) -> Any:
        self._maybe_fail()
        for info in super().list(prefix, start_after):
            self._maybe_fail()
            yield info

    def now(self) -> float:
        self._maybe_fail()
        return super().now()


def _sleeper(clock: FakeClock) -> Any:
    def sleep(seconds: float) -> None:
        clock.advance(seconds)

    return sleep


def _square(x: int) -> int:
    return x * x


_GATE = threading.Event()  # the workers are threads of this process: a task can wait on it


def _gated(x: int) -> int:
    _GATE.wait(30)
    return x * x


def _flaky_executor(
    monkeypatch: pytest.MonkeyPatch, outage_timeout: float
) -> tuple[StarburstExecutor, FlakyStore]:
    clock = FakeClock()
    flaky = FlakyStore(clock)

    def tolerant() -> OutageTolerantStore:
        # Sleeping moves the fake clock: an outage of minutes passes in milliseconds.
        return OutageTolerantStore(flaky, sleep=_sleeper(clock), clock=clock)

    def launcher(_store: Any, manifest: Any, codec: Codec) -> ThreadLauncher:
        options = WorkerOptions(poll_min=0.001, poll_max=0.01)
        return ThreadLauncher(tolerant(), manifest.session_id, codec, options=options)

    use_launcher(monkeypatch, launcher)
    ex = StarburstExecutor(
        store=tolerant(), max_workers=2, pacing=FAST, store_outage_timeout=outage_timeout
    )
    return ex, flaky


def test_a_store_outage_shorter_than_the_timeout_pauses_the_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ex, flaky = _flaky_executor(monkeypatch, outage_timeout=300.0)
    caplog.set_level(logging.INFO, logger="starburst_executor._retry")
    with ex:
        first = [ex.submit(_square, i) for i in range(20)]
        assert [f.result(timeout=30) for f in first] == [i * i for i in range(20)]
        flaky.go_down(120.0)  # two minutes of fake time
        rest = [ex.submit(_square, i) for i in range(20, 60)]
        assert [f.result(timeout=30) for f in rest] == [i * i for i in range(20, 60)]
    assert flaky.failures > 0  # the outage was met, and ridden out
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    back = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert warnings and all(r.levelno == logging.WARNING for r in warnings)
    assert back and all(r.levelno == logging.INFO for r in back)
    # Once per outage per process-side store: the client's and the two workers' at most.
    assert len(warnings) <= 3 * len(back) + 3


def test_past_store_outage_timeout_the_futures_fail_with_store_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ex, flaky = _flaky_executor(monkeypatch, outage_timeout=60.0)
    first = ex.submit(_square, 3)
    assert first.result(timeout=30) == 9
    flaky.go_down(float("inf"))
    futures = [ex.submit(_square, i) for i in range(10)]
    for fut in futures:
        with pytest.raises(StoreUnavailableError) as info:
            fut.result(timeout=30)
        message = str(info.value)
        assert flaky.url in message and "unreachable for" in message
        assert "store_outage_timeout=60 s" in message
    ex.shutdown(wait=True)


def test_an_outage_policy_answers_are_not_retried_and_listings_resume() -> None:
    clock = FakeClock()
    flaky = FlakyStore(clock)
    for i in range(5):
        flaky.put(f"k/{i}", b"x")
    tolerant = OutageTolerantStore(flaky, sleep=_sleeper(clock), clock=clock, outage_timeout=30)
    seen: list[ObjectInfo] = []
    for info in tolerant.list("k/"):
        seen.append(info)
        if len(seen) == 2:
            flaky.go_down(10.0)  # mid-listing: resumes after k/1, no key twice or missed
    assert [i.key for i in seen] == [f"k/{i}" for i in range(5)]
    assert tolerant.unreachable_for() is None
    from starburst_executor.errors import ObjectNotFoundError

    calls = flaky.failures
    with pytest.raises(ObjectNotFoundError):
        tolerant.get("missing")  # an answer, not an outage: no retry
    assert flaky.failures == calls


def test_status_says_the_store_is_unreachable_while_the_run_pauses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from starburst_executor import DetachedExecutor

    clock = FakeClock()
    flaky = FlakyStore(clock)
    pause = threading.Event()

    def tolerant() -> OutageTolerantStore:
        # Real (tiny) pauses and a clock that stands still: the outage lasts until the test
        # ends it, however many retries it takes.
        return OutageTolerantStore(
            flaky, sleep=lambda _s: None if pause.wait(0.001) else None, clock=clock
        )

    def launcher(_store: Any, manifest: Any, codec: Codec) -> ThreadLauncher:
        options = WorkerOptions(poll_min=0.001, poll_max=0.01)
        return ThreadLauncher(tolerant(), manifest.session_id, codec, options=options)

    use_launcher(monkeypatch, launcher)
    ex = DetachedExecutor(store=tolerant(), max_workers=1, pacing=FAST)
    assert ex.submit(_square, 2).result(timeout=30) == 4
    assert not ex.status().store_unreachable
    late = ex.submit(_gated, 5)  # a detached submit writes to the store: before the outage
    flaky.go_down(float("inf"))
    _GATE.set()  # the task ends; delivering its result meets the outage
    status = wait_until(lambda: ex.status().store_unreachable and ex.status(), what="status")
    assert "store unreachable" in str(status)
    assert not late.done()
    flaky.down_until = clock()  # the store is back
    assert late.result(timeout=30) == 25
    assert not ex.status().store_unreachable
    ex.shutdown(wait=True)
    ex.cleanup(delete_data=True)


# -- the real one: SeaweedFS stopped for 30 s in the middle of a run ---------------------------

_OUTAGE_SECONDS = 30.0


def _count(deliveries: list[int], _future: Any) -> None:
    deliveries.append(1)


_TASKS = 300


def _run_on_seaweed(url: str, server: Any, *, outage: bool) -> tuple[float, float, list[Any]]:
    """300 tasks of 0.05 s on 2 workers; with ``outage``, the server is stopped for 30 s once
    a third of the results are in. Returns (wall time, outage length, per-task deliveries)."""
    import time

    import executor_tasks as tasks

    deliveries: list[list[int]] = [[] for _ in range(_TASKS)]
    lasted = 0.0
    start = time.monotonic()
    with StarburstExecutor(store=url, max_workers=2) as ex:
        futures = [ex.submit(tasks.sleep_and_return, 0.05, i) for i in range(_TASKS)]
        for i, fut in enumerate(futures):
            fut.add_done_callback(functools.partial(_count, deliveries[i]))
        if outage:
            wait_until(
                lambda: sum(f.done() for f in futures) >= _TASKS // 3, timeout=60, what="a third"
            )
            down = time.monotonic()
            server.halt()
            threading.Event().wait(_OUTAGE_SECONDS)  # the outage itself: nothing to wait for
            server.resume()
            lasted = time.monotonic() - down
            assert sum(f.done() for f in futures) < _TASKS, "the run ended during the outage"
        results = [f.result(timeout=300) for f in futures]
    assert results == list(range(_TASKS))
    return time.monotonic() - start, lasted, deliveries


_BUCKET = "starburst-outage"


@pytest.mark.slow
def test_a_run_survives_seaweedfs_stopped_for_30_seconds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import uuid

    # Not from conftest: in a whole-suite run "conftest" is tests/aws/conftest.py.
    from detached_support import REPO_DIR, TESTS_DIR
    from servers import SeaweedServer

    paths = [str(REPO_DIR), str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    with SeaweedServer(keep_dir=False) as server:
        server.create_bucket(_BUCKET)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.endpoint_url)
        base, _, _ = _run_on_seaweed(
            f"s3://{_BUCKET}/outage/{uuid.uuid4().hex}", server, outage=False
        )
        wall, lasted, deliveries = _run_on_seaweed(
            f"s3://{_BUCKET}/outage/{uuid.uuid4().hex}", server, outage=True
        )
    assert lasted >= _OUTAGE_SECONDS
    assert all(len(d) == 1 for d in deliveries)  # every Future resolved once, none failed
    with capsys.disabled():
        print(
            f"\n[outage] {_TASKS} tasks on SeaweedFS: {wall:.1f} s with a {lasted:.1f} s "
            f"outage, {base:.1f} s without"
        )


def test_s3_retries_any_5xx_but_no_4xx() -> None:
    import boto3
    from botocore.stub import Stubber

    from starburst_executor.errors import StoreConfigError
    from starburst_executor.stores.s3 import S3Store

    client = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    store = S3Store("bkt", client=client, retry_sleep=lambda _s: None)
    with Stubber(client) as stub:
        # A code no list names, on a 507: still the server's trouble, so retried.
        stub.add_client_error("list_objects_v2", "XInsufficientStorage", http_status_code=507)
        stub.add_response("list_objects_v2", {"IsTruncated": False, "KeyCount": 0})
        assert list(store.list("p/")) == []
        stub.add_client_error("list_objects_v2", "AccessDenied", http_status_code=403)
        with pytest.raises(StoreConfigError):
            list(store.list("p/"))  # an answer: one call, no retry (the stub would run dry)
        stub.assert_no_pending_responses()


def test_a_network_filesystem_that_stops_answering_is_an_outage(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from starburst_executor.stores import local
    from starburst_executor.stores.local import LocalStore

    store = LocalStore(tmp_path / "store")
    store.put("k", b"v")

    def stale(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError(errno.ESTALE, "Stale file handle")

    monkeypatch.setattr(local, "open", stale, raising=False)
    with pytest.raises(StoreUnavailableError, match="network filesystem"):
        store.get("k")
