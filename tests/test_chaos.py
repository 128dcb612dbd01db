"""Fault tests (issue 10, item 9): 2,000 tasks while workers are SIGKILLed, on the directory
store and on SeaweedFS behind a proxy that answers 5% of requests ``503 SlowDown`` and resets
1% of connections (``bench/s3proxy.py``).

Every result must be correct and delivered once (``map`` yields each position once; its
values are checked), no Future may stay pending, and the figures are printed: wall time with
faults against a fault-free run of the same work in the same test, workers killed, and tasks
run twice (executions, counted by marker files, minus tasks).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import chaos_tasks
import pytest
from detached_support import session_processes

from bench.s3proxy import ProxyProcess
from starburst_executor import StarburstExecutor

TASKS = 2_000
CHUNKSIZE = 10
WORKERS = 3
KILL_EVERY = (0.5, 2.0)  # seconds between SIGKILLs, drawn uniformly
# A worker lives about 3.75 s here (3 workers, a kill every 1.25 s on average), and a lost
# batch reruns whole: with the default 3 attempts one batch now and then is lost 3 times and
# fails with WorkerLostError, as designed. This test is about nothing being lost or delivered
# twice, not about that budget, so it allows more attempts.
MAX_ATTEMPTS = 10

pytestmark = pytest.mark.skipif(
    not Path("/proc").is_dir(), reason="finds the session's worker processes in /proc"
)
TASK_SECONDS = 0.01  # 2,000 x 10 ms on 3 workers: about 7 s of work, enough to kill during


@dataclass
class RunFigures:
    seconds: float
    killed: int
    executions: int

    @property
    def ran_twice(self) -> int:
        return self.executions - TASKS


class _Killer:
    """SIGKILLs a random live worker process of the session every 0.5-2 s until stopped."""

    def __init__(self, session_id: str) -> None:
        self._session_id = session_id
        self._stop = threading.Event()
        self._rng = random.Random(10)
        self.killed = 0
        self._thread = threading.Thread(target=self._run, name="chaos-killer", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._rng.uniform(*KILL_EVERY)):
            pids = session_processes(self._session_id)
            if not pids:
                continue
            try:
                os.kill(self._rng.choice(pids), signal.SIGKILL)
                self.killed += 1
            except ProcessLookupError:
                pass  # it exited on its own meanwhile

    def __enter__(self) -> _Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _run(store: str, markers: Path, *, kill: bool) -> RunFigures:
    markers.mkdir()
    started = time.monotonic()
    killer = None
    with StarburstExecutor(store=store, max_workers=WORKERS, max_attempts=MAX_ATTEMPTS) as ex:
        items = range(TASKS)
        with (killer := _Killer(ex.session_id)) if kill else contextlib.nullcontext():
            results = list(
                ex.map(
                    chaos_tasks.square_and_mark,
                    items,
                    [str(markers)] * TASKS,
                    [TASK_SECONDS] * TASKS,
                    chunksize=CHUNKSIZE,
                )
            )
    seconds = time.monotonic() - started
    assert results == [i * i for i in items]
    runs = Counter(int(p.name.split("-", 1)[0]) for p in markers.iterdir())
    assert set(runs) == set(items)  # every task ran (at least once)
    killed = killer.killed if killer is not None else 0
    return RunFigures(seconds, killed, sum(runs.values()))


def _report(label: str, clean: RunFigures, chaos: RunFigures) -> None:
    print(
        f"\n{label}: {TASKS} tasks, chunksize {CHUNKSIZE}, {WORKERS} workers: fault-free "
        f"{clean.seconds:.1f} s, with faults {chaos.seconds:.1f} s "
        f"({chaos.seconds / clean.seconds:.2f}x); workers killed {chaos.killed}; "
        f"tasks run twice {chaos.ran_twice} (fault-free: {clean.ran_twice})"
    )


@pytest.fixture
def proxied_seaweed(executor_store: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ProxyProcess]:
    """The SeaweedFS store behind the fault-injecting proxy (faults off until turned on)."""
    with ProxyProcess(os.environ["AWS_ENDPOINT_URL_S3"]) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint_url)
        yield proxy


@pytest.mark.slow
@pytest.mark.parametrize("executor_store", ["local"], indirect=True)
def test_killed_workers_lose_nothing_on_the_directory_store(
    executor_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = _run(executor_store.replace("/store", "/store-clean"), tmp_path / "m0", kill=False)
    chaos = _run(executor_store, tmp_path / "m1", kill=True)
    assert chaos.killed > 0
    with capsys.disabled():
        _report("directory store", clean, chaos)


@pytest.mark.slow
@pytest.mark.parametrize("executor_store", ["seaweed"], indirect=True)
def test_killed_workers_and_a_faulty_network_lose_nothing_on_seaweedfs(
    executor_store: str,
    proxied_seaweed: ProxyProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clean = _run(executor_store + "-clean", tmp_path / "m0", kill=False)
    proxied_seaweed.reset()
    proxied_seaweed.set_faults(slowdown=0.05, reset=0.01)
    chaos = _run(executor_store, tmp_path / "m1", kill=True)
    detail = proxied_seaweed.snapshot()["detail"]
    injected = {k: v for k, v in detail.items() if k.startswith("injected:")}
    assert chaos.killed > 0
    assert injected.get("injected:503", 0) > 0
    with capsys.disabled():
        _report("SeaweedFS behind 5% 503 SlowDown, 1% resets", clean, chaos)
        print(
            f"  requests with faults: {sum(detail.get(k, 0) for k in detail if k.startswith('status:'))} answered, injected {injected}"
        )
