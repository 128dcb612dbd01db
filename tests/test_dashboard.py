"""The dashboard without a browser: its figures, the task timings it reads, its JSON API.

The session tests run the real worker loop in threads on a memory store (``ThreadLauncher``),
so a session is live (a task still running) while the API is read: nothing sleeps, the tests
wait on the state they need.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from unit.fakes import use_launcher, wait_until

from starburst_executor import Pacing, StarburstExecutor
from starburst_executor._session import Session
from starburst_executor.config import secret_key
from starburst_executor.dashboard.data import SessionWatch
from starburst_executor.dashboard.server import DashboardServer
from starburst_executor.dashboard.stats import Bin, histogram, nice_step, throughput, time_step
from starburst_executor.launchers.thread import ThreadLauncher
from starburst_executor.protocol import Codec, ResultRecord, SessionManifest, TaskOutcome
from starburst_executor.serialization import ChunkResult, capture_exception, dumps
from starburst_executor.sessions import SessionReader
from starburst_executor.stores.memory import FakeClock, MemoryStore

FAST = Pacing(linger=0.001, poll_min=0.001, poll_max=0.01, maintain_every=0.005)
RELEASE = threading.Event()  # the held task waits for it (the workers are threads of this test)


def held(x: int) -> int:
    if not RELEASE.wait(15):
        raise TimeoutError("the test never released the task")
    return x


def boom(x: int) -> int:
    raise ValueError(f"dashboard-boom {x} <b>not markup</b>")


def quick(x: int) -> int:
    return x * 10


# -- figures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "step"), [(0.3, 0.5), (1.0, 1.0), (3.0, 5.0), (7.0, 10.0), (0.1, 0.1), (120, 200)]
)
def test_nice_step_is_one_two_or_five_times_a_power_of_ten(raw: float, step: float) -> None:
    assert nice_step(raw) == pytest.approx(step)


def test_nice_step_refuses_what_is_not_a_positive_number() -> None:
    with pytest.raises(ValueError, match="positive"):
        nice_step(0)


def test_histogram_bins_cover_every_value_with_a_nice_width() -> None:
    bins = histogram([0.05, 0.15, 0.15, 0.95])
    # sqrt(4) = 2 bins wanted: width nice_step(0.95 / 2) = 0.5
    assert bins == [Bin(0.0, 0.5, 3), Bin(0.5, 1.0, 1)]
    assert histogram([1.0, 2.0]) == [Bin(0.0, 1.0, 0), Bin(1.0, 2.0, 2)]  # the top is in


def test_histogram_edge_cases() -> None:
    assert histogram([]) == []
    assert histogram([0.0, 0.0]) == [Bin(0.0, 1.0, 2)]  # instant tasks: one bar
    many = histogram([i / 100 for i in range(10_000)], max_bins=20)
    assert len(many) <= 20 and sum(b.count for b in many) == 10_000
    assert all(b.hi - b.lo == pytest.approx(many[0].hi) for b in many)
    with pytest.raises(ValueError, match="max_bins"):
        histogram([1.0], max_bins=0)


def test_throughput_counts_tasks_per_second_in_clock_round_steps() -> None:
    series = throughput([100.5, 101.5, 101.7, 109.9], start=100.0, now=110.0)
    assert series.step == 1.0 and series.start == 100.0
    assert series.rates == (1.0, 2.0, 0, 0, 0, 0, 0, 0, 0, 1.0)
    hour = throughput([10.0, 20.0, 70.0], start=0.0, now=3600.0)
    assert hour.step == 60.0 and len(hour.rates) == 60
    assert hour.rates[:2] == (2 / 60, 1 / 60)
    assert throughput([], start=5.0, now=5.0).rates == (0.0,)  # a session just created


def test_time_step_keeps_a_day_long_series_short() -> None:
    assert time_step(59) == 1.0
    assert time_step(86400 * 3) == 7200.0
    assert time_step(86400 * 365) == 7 * 86400.0  # 6.08 days, rounded up


# -- task timings in result records ----------------------------------------------------------


def test_result_records_carry_task_timings_and_old_records_still_decode() -> None:
    codec, key = Codec(b"k" * 32), "sessions/20300101-000000-abcdef/results/b"
    record = ResultRecord("b", "w1", 1, (TaskOutcome(0, True, b"x", 1000.0, 0.25),), seconds=0.3)
    (outcome,) = ResultRecord.decode(codec, record.encode(codec, key), key).outcomes
    assert (outcome.started, outcome.seconds) == (1000.0, 0.25)
    # What a worker of the previous release wrote: no "timings" entry.
    old = codec.encode_pickle(
        {"bid": "b", "worker": "w1", "attempt": 1, "outcomes": [(0, "ok", b"x")], "seconds": 1.0},
        key,
    )
    (outcome,) = ResultRecord.decode(codec, old, key).outcomes
    assert outcome == TaskOutcome(0, True, b"x") and outcome.seconds is None


def test_watch_estimates_untimed_tasks_and_finds_the_item_that_stopped_a_chunk() -> None:
    """Records of older workers (no per-task timings) share the batch's time evenly; a map
    chunk that stopped on an error reports that item, which no outcome marks as failed."""
    clock = FakeClock(1000.0)
    store, codec = MemoryStore(clock=clock), Codec(secret_key())
    manifest = SessionManifest("20300101-000000-abcdef", created=1000.0, versions={})
    session = Session(store, manifest, codec)
    session.create()
    bid = session.next_bid(3)
    session.write_batch(bid, [])
    clock.advance(10)
    stopped = ChunkResult([1, 2], capture_exception(KeyError("item-three")))
    outcomes = (
        TaskOutcome(0, True, dumps(5)),
        TaskOutcome(1, False, dumps(capture_exception(ValueError("old-worker")))),
        TaskOutcome(2, True, dumps(stopped)),
    )
    session.write_result(ResultRecord(bid, "w-old", 1, outcomes, seconds=3.0), failed=2)

    reader = SessionReader(store, manifest.session_id, codec)
    view = SessionWatch(reader).snapshot()

    assert view["progress"]["completed"] == 1 and view["progress"]["failed"] == 2
    runs = view["timeline"]
    assert [r[1:4] + r[5:] for r in runs] == [
        [1007.0, 1.0, True, False],
        [1008.0, 1.0, False, False],
        [1009.0, 1.0, False, False],
    ]
    failures = {f["task_id"]: f for f in view["failures"]["items"]}
    assert set(failures) == {f"{bid}/1", f"{bid}/2.2"}
    assert failures[f"{bid}/2.2"]["type"] == "builtins.KeyError"
    assert "item-three" in failures[f"{bid}/2.2"]["traceback"]
    assert view["durations"]["count"] == 3
    assert view["cost"] == reader.status().cost  # what `starburst status` says it cost


# -- the JSON API on a live session ----------------------------------------------------------


@pytest.fixture
def live(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[StarburstExecutor, list[Future[int]], MemoryStore]]:
    """A session on two thread workers: 3 tasks done, 1 failed, 1 still running."""
    use_launcher(monkeypatch, lambda s, m, c: ThreadLauncher(s, m.session_id, c))
    RELEASE.clear()
    store = MemoryStore()
    ex = StarburstExecutor(store=store, max_workers=2, pacing=FAST, name="dash <i>")
    try:
        futures = [ex.submit(quick, i) for i in range(3)]
        futures.append(ex.submit(boom, 7))
        # Submitted once the others are done: calls submitted together travel in one batch,
        # whose results come back together.
        wait_until(lambda: all(f.done() for f in futures), 10, "the first four tasks")
        futures.append(ex.submit(held, 9))
        yield ex, futures, store
    finally:
        RELEASE.set()
        ex.shutdown(wait=True, cancel_futures=True)


def _get(url: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


Live = tuple[StarburstExecutor, list[Future[int]], MemoryStore]


def test_the_api_shows_a_running_session(live: Live) -> None:
    ex, futures, store = live
    with DashboardServer(store) as server:
        assert server.url.startswith("http://127.0.0.1:") and server.port > 0
        view = wait_until(
            lambda: (
                (v := json.loads(_get(server.url + f"api/sessions/{ex.session_id}")[2]))
                and v["progress"]["running"] == 1
                and v
            ),
            10,
            "the held task to show as running",
        )
        progress = view["progress"]
        assert (progress["total"], progress["completed"], progress["failed"]) == (5, 3, 1)
        assert progress["pending"] == 0 and view["session"]["finished"] is False
        assert view["session"]["name"] == "dash <i>"  # raw: the page escapes what it shows
        (failure,) = view["failures"]["items"]
        assert failure["type"] == "builtins.ValueError"
        assert "dashboard-boom 7 <b>not markup</b>" in failure["traceback"]
        assert 'in boom\n    raise ValueError(f"dashboard-boom' in failure["traceback"]
        workers = {w["id"] for w in view["workers"]}
        assert workers and {r[0] for r in view["timeline"]} <= workers
        assert len(view["timeline"]) == 4 and all(r[5] for r in view["timeline"])  # measured
        session = view["session"]
        assert all(session["created"] <= r[1] <= session["now"] for r in view["timeline"])
        assert sum(w["tasks"] for w in view["workers"]) == 4  # before they exit and say so
        assert view["durations"]["count"] == 4
        assert sum(b[2] for b in view["durations"]["bins"]) == 4
        assert sum(view["throughput"]["rates"]) > 0

        status, _, body = _get(server.url + "api/sessions")
        assert status == 200
        assert [s["session_id"] for s in json.loads(body)] == [ex.session_id]

        RELEASE.set()
        assert futures[-1].result(timeout=10) == 9
        done = json.loads(_get(server.url + f"api/sessions/{ex.session_id}")[2])
        assert done["progress"]["completed"] == 4 and done["session"]["finished"] is True
        assert len(done["timeline"]) == 5  # only the new batch's result was read


def test_the_page_and_the_refusals(live: Live) -> None:
    ex, _, store = live
    with DashboardServer(store) as server:
        status, headers, body = _get(server.url)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b'<svg id="timeline"' in body and b"innerHTML" not in body
        csp = headers["Content-Security-Policy"]
        assert "script-src 'sha256-" in csp and "connect-src 'self'" in csp
        assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        # A DNS name rebound to 127.0.0.1 carries its own Host: refused.
        assert _get(server.url + "api/sessions", host="evil.example:80")[0] == 403
        assert _get(server.url + "api/sessions", host=f"localhost:{server.port}")[0] == 200
        status, _, body = _get(server.url + "api/sessions/20300101-000000-abcdef")
        assert status == 404 and "no session" in json.loads(body)["error"]
        status, _, body = _get(server.url + "api/sessions/..%2Fetc")
        assert status == 404 and "not a session id" in json.loads(body)["error"]
        assert _get(server.url + "nothing-here")[0] == 404


# -- serving ---------------------------------------------------------------------------------


def test_serve_prints_the_address_opens_the_browser_and_stops(
    monkeypatch: pytest.MonkeyPatch, free_port: int
) -> None:
    from starburst_executor.dashboard import serve

    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    announced: list[tuple[str, int]] = []
    stop = threading.Event()
    store = MemoryStore()
    sid = "20300101-000000-abcdef"
    kwargs: dict[str, Any] = {
        "port": free_port,
        "session_id": sid,
        "on_ready": lambda url, port: announced.append((url, port)),
        "stop": stop,
    }
    thread = threading.Thread(target=serve, args=(store,), kwargs=kwargs)
    thread.start()
    try:
        wait_until(lambda: opened, 10, "the browser to be opened")
        url = f"http://127.0.0.1:{free_port}/"
        assert opened == [f"{url}#{sid}"]
        assert announced == [(f"{url}#{sid}", free_port)]
        assert json.loads(_get(url + "api/sessions")[2]) == []
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    with pytest.raises(urllib.error.URLError):  # the port is released
        urllib.request.urlopen(f"http://127.0.0.1:{free_port}/", timeout=5)


def test_the_dashboard_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from starburst_executor import cli, dashboard

    calls: list[tuple[Any, dict[str, Any]]] = []

    def serve(store: Any, **kwargs: Any) -> None:
        calls.append((store, kwargs))
        raise KeyboardInterrupt  # how a user stops it

    monkeypatch.setattr(dashboard, "serve", serve)
    url = (tmp_path / "store").as_uri()
    sid = "20300101-000000-abcdef"
    argv = ["dashboard", sid, "--store", url, "--port", "8123", "--no-browser", "--json"]
    assert cli.main(argv) == cli.EXIT_OK
    ((store, kwargs),) = calls
    assert store.url == url
    announce = kwargs.pop("on_ready")
    assert kwargs == {"port": 8123, "session_id": sid, "open_browser": False}
    announce("http://127.0.0.1:8123/#" + sid, 8123)  # --json: the address as a JSON line
    assert json.loads(capsys.readouterr().out) == {
        "url": f"http://127.0.0.1:8123/#{sid}",
        "port": 8123,
    }
