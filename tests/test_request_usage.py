"""A session's store requests: counted by the client and the workers, kept in the store,
priced beside compute in ``status()``, ``cost()`` and ``starburst status``, and equal to
what a counting proxy in front of SeaweedFS sees."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from unit.fakes import thread_launcher, use_launcher, wait_until
from unit.test_manager import FAST

from bench.s3proxy import ProxyProcess
from starburst_executor import DetachedExecutor, StarburstExecutor
from starburst_executor.cli import main as cli_main
from starburst_executor.config import secret_key
from starburst_executor.protocol import Codec
from starburst_executor.sessions import SessionReader
from starburst_executor.stores import open_store
from starburst_executor.stores.counting import RequestCounts, count_requests, counter_of
from starburst_executor.stores.memory import MemoryStore
from starburst_executor.stores.outage import tolerate_outages
from starburst_executor.usage import UsageReporter, session_usage


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers in threads of the test process (the real worker loop)."""
    use_launcher(monkeypatch, thread_launcher)


@pytest.mark.usefixtures("threads")
def test_cost_counts_the_client_and_the_workers_and_survives_shutdown() -> None:
    ex = StarburstExecutor(store=MemoryStore(), max_workers=2, pacing=FAST)
    assert sum(ex.map(abs, range(-50, 50), chunksize=10)) == 2500
    ex.shutdown(wait=True)
    cost = ex.cost()  # measured at shutdown: the session's data is gone now
    assert cost is not None
    requests = cost["requests"]
    assert requests["writers"] == 3  # the client and both workers recorded their counts
    # Ten chunks, in as many batches as the client's pacing makes of them (it coalesces
    # short work): each batch is uploaded by the client, read and claimed by a worker, which
    # writes its result and done event.
    workers, client = requests["workers"], requests["client"]
    assert workers["gets"] >= 1 and workers["puts"] >= 3 * 1
    assert client["puts"] >= 1 and client["gets"] + client["lists"] >= 1
    a, b = requests["class_a"], requests["class_b"]
    assert requests["s3_price"] == pytest.approx(a * 0.005 / 1000 + b * 0.0004 / 1000)
    assert cost["cost"] == 0.0  # a memory store bills nothing; the S3 price is shown
    assert "if it were S3" in cost["text"] and f"{a:,} PUT/LIST" in cost["text"]


@pytest.mark.usefixtures("threads")
def test_a_detached_sessions_reader_sees_the_workers_counts(tmp_path: Path) -> None:
    url = (tmp_path / "store").as_uri()
    ex = DetachedExecutor(store=url, max_workers=2, pacing=FAST, idle_timeout=0.2)
    sid = ex.session_id
    futures = [ex.submit(abs, -i) for i in range(8)]
    assert [f.result(timeout=20) for f in futures] == list(range(8))
    ex.detach()
    # The client is gone; its workers go idle and leave, each writing its final count.
    reader = SessionReader(open_store(url), sid, Codec(secret_key()))

    def all_recorded() -> bool:
        # every worker left, and wrote its count after its exit record and log
        workers = reader.workers()
        left = bool(workers) and not reader.status().workers
        return left and session_usage(reader).writers == 1 + len(workers)

    wait_until(all_recorded, timeout=15, what="the workers' final usage records")
    usage = session_usage(reader)
    assert usage.workers.puts > 0 and usage.workers.gets > 0 and usage.client.puts > 0
    status = reader.status()
    assert status.cost is not None and status.cost["requests"]["class_a"] == usage.total.class_a
    assert "Store requests:" in str(status) and "class A (PUT/LIST)" in str(status)
    # The detached client's own cost() sees the same workers (and its live count).
    cost = ex.cost()
    assert cost is not None and cost["requests"]["workers"] == usage.workers.to_dict()


@pytest.mark.usefixtures("threads")
def test_starburst_status_shows_the_requests_in_dollars(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = (tmp_path / "store").as_uri()
    ex = DetachedExecutor(store=url, max_workers=1, pacing=FAST)
    assert ex.submit(abs, -3).result(timeout=20) == 3
    ex.detach()
    assert cli_main(["status", ex.session_id, "--store", url]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("Store requests:"))
    assert "class A (PUT/LIST)" in line and "$" in line and "on S3" in line
    assert next(x for x in out.splitlines() if x.startswith("Cost:")).count("$") >= 2


# -- against SeaweedFS through the counting proxy -------------------------------------------


@pytest.fixture
def proxied(seaweed: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[ProxyProcess]:
    """SeaweedFS behind the counting proxy, for this process and the worker processes."""
    endpoint = str(getattr(seaweed, "endpoint_url"))  # noqa: B009 (typed as object here)
    with ProxyProcess(endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint_url)
        yield proxy


def _proxy_counts(snapshot: dict[str, object]) -> RequestCounts:
    ops: dict[str, int] = {}
    for (_, op), n in snapshot["ops"].items():  # type: ignore[attr-defined]
        ops[op] = ops.get(op, 0) + int(n)
    assert set(ops) <= {"GET", "PUT", "LIST", "DELETE"}, ops  # no HEAD, no OTHER
    return RequestCounts(
        ops.get("GET", 0), ops.get("PUT", 0), ops.get("LIST", 0), ops.get("DELETE", 0)
    )


@pytest.mark.slow
def test_the_counts_match_a_counting_proxy_on_seaweedfs(
    proxied: ProxyProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(repo), str(repo / "tests")]))
    url = f"s3://starburst-test/usage/{tmp_path.name}"
    proxied.reset()
    ex = DetachedExecutor(store=url, max_workers=2, idle_timeout=1.0)
    assert sum(ex.map(abs, range(-200, 200), chunksize=10)) == 40_000
    ex.shutdown(wait=True)  # workers leave (final counts written), then the client
    seen = _proxy_counts(proxied.snapshot())
    client = counter_of(ex.store)
    assert client is not None
    mine = client.counts()  # everything the client made, its final reads included
    reader = SessionReader(open_store(url), ex.session_id, Codec(secret_key()))
    usage = session_usage(reader)  # read after the snapshot: not in the proxy's counts
    counted = usage.workers + mine
    batches = len(reader.batch_ids())
    with capsys.disabled():
        print(
            f"\nSeaweedFS, map of 400 items (chunksize 10) on 2 workers, {batches} batches: "
            f"proxy {seen}, counted {counted} (client {mine}, workers {usage.workers}); "
            f"{counted.total / batches:.1f} requests per batch; "
            f"${counted.cost():.5f} at S3 us-east-1 prices"
        )
    assert counted == seen


def test_a_reporter_writes_when_due_and_counts_its_own_write() -> None:
    from starburst_executor._session import Session
    from starburst_executor.protocol import SessionManifest

    store = tolerate_outages(count_requests(MemoryStore()))
    manifest = SessionManifest(session_id="20300101-000000-abcdef", created=0.0, versions={})
    session = Session(store, manifest, Codec(b"k" * 32))
    quiet = UsageReporter(session, "w1", "worker", every=3600)
    quiet.write_when_due()  # not due: no request
    assert counter_of(store) is not None and counter_of(store).counts() == RequestCounts()  # type: ignore[union-attr]
    due = UsageReporter(session, "w1", "worker", every=0)
    due.write_when_due()  # due: one PUT, counted in the record it writes
    counter = counter_of(store)
    assert counter is not None
    # Read past the counter: the reader's own live count would stand in for w1's record.
    usage = session_usage(Session(counter.inner, manifest, session.codec))
    assert usage.workers == RequestCounts(puts=1) and usage.writers == 1
    assert str(usage).startswith("1 class A (PUT/LIST) + 0 class B (GET): under $0.0001 on S3")
