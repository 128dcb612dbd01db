"""The benchmark workloads (DESIGN.md, "Benchmarks"), each run against a warm executor.

Each ``run_*`` function performs one repetition on an executor whose workers are already
running and returns a :class:`Sample`: the wall seconds of the repetition, plus details.
Nothing here knows which executor it drives: starburst and ``ProcessPoolExecutor`` run the
very same code.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Executor, wait
from dataclasses import dataclass, field
from typing import Any

from bench import tasks

__all__ = ["WORKLOADS", "Sample", "Workload", "start_executor", "warm_up"]

FAT_BYTES = 20 * 1024 * 1024


@dataclass
class Sample:
    """One repetition: ``seconds`` is the figure reported (for latency, the median trip)."""

    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    """A workload: what one repetition does and how many tasks it hands the executor.

    Attributes:
        name: short name used in the output.
        describe: one line for the README / --list.
        tasks: tasks per repetition, as the executor sees them (a ``map`` chunk is one task).
        items: user-visible calls per repetition (``map`` items; equal to ``tasks`` otherwise).
        run: ``run(executor, trips) -> Sample`` (``trips`` only matters for latency).
        cheap: repeat it (median of N) in a full run.
    """

    name: str
    describe: str
    tasks: int
    items: int
    run: Callable[[Executor, int], Sample]
    cheap: bool = True


def start_executor(factory: Callable[[], Executor]) -> tuple[Executor, float]:
    """Construct an executor and wait for its first (no-op) result: the start-up cost."""
    t0 = time.perf_counter()
    ex = factory()
    ex.submit(tasks.noop).result()
    return ex, time.perf_counter() - t0


def warm_up(ex: Executor, workers: int = 2) -> None:
    """Make sure every worker is up: a few short naps, so that idle workers claim some."""
    wait([ex.submit(tasks.nap, 0.25) for _ in range(2 * workers)])
    ex.submit(tasks.noop).result()


def run_tiny(ex: Executor, _trips: int) -> Sample:
    t0 = time.perf_counter()
    futures = [ex.submit(tasks.noop) for _ in range(2000)]
    submitted = time.perf_counter() - t0
    for f in futures:
        f.result()
    return Sample(time.perf_counter() - t0, {"submit_s": round(submitted, 4)})


MAP_CHUNK = 1000


def run_map(ex: Executor, _trips: int) -> Sample:
    t0 = time.perf_counter()
    total = sum(ex.map(tasks.square, range(20_000), chunksize=MAP_CHUNK))
    seconds = time.perf_counter() - t0
    if total != sum(x * x for x in range(20_000)):
        raise AssertionError(f"map returned a wrong total {total}")
    return Sample(seconds)


def run_sleepy(ex: Executor, _trips: int) -> Sample:
    t0 = time.perf_counter()
    futures = [ex.submit(tasks.nap, 0.25) for _ in range(40)]
    for f in futures:
        f.result()
    return Sample(time.perf_counter() - t0, {"ideal_s": 5.0})


def run_fat(ex: Executor, _trips: int) -> Sample:
    blob = os.urandom(FAT_BYTES)  # fresh bytes each repetition: no cache from the last one
    t0 = time.perf_counter()
    futures = [ex.submit(tasks.size, blob) for _ in range(20)]
    submitted = time.perf_counter() - t0
    results = [f.result() for f in futures]
    seconds = time.perf_counter() - t0
    if results != [FAT_BYTES] * 20:
        raise AssertionError(f"fat-arg returned {results[:3]}...")
    return Sample(seconds, {"submit_s": round(submitted, 4)})


def run_latency(ex: Executor, trips: int) -> Sample:
    """Sequential submit-to-result round trips, back to back."""
    times = []
    for _ in range(trips):
        t0 = time.perf_counter()
        ex.submit(tasks.noop).result()
        times.append(time.perf_counter() - t0)
    return Sample(statistics.median(times), _spread(times))


IDLE_GAP = 2.5
WAKE_NAP = 2.0


def run_wakeup(ex: Executor, trips: int) -> Sample:
    """``submit(nap, WAKE_NAP).result()``: how long after the task's end the client has its
    result, when it has waited (backing off) for the whole nap: the figure is the median of
    (round trip - nap)."""
    late = []
    for _ in range(trips):
        t0 = time.perf_counter()
        ex.submit(tasks.nap, WAKE_NAP).result()
        late.append(time.perf_counter() - t0 - WAKE_NAP)
    return Sample(statistics.median(late), {**_spread(late), "nap_s": WAKE_NAP})


def run_latency_idle(ex: Executor, trips: int) -> Sample:
    """Round trips after ``IDLE_GAP`` s without work (pollers have backed off by then)."""
    times = []
    for _ in range(trips):
        time.sleep(IDLE_GAP)
        t0 = time.perf_counter()
        ex.submit(tasks.noop).result()
        times.append(time.perf_counter() - t0)
    return Sample(statistics.median(times), {**_spread(times), "idle_gap_s": IDLE_GAP})


def _spread(times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, max(0, round(0.9 * len(ordered)) - 1))]
    return {
        "trips": len(times),
        "median_s": round(statistics.median(times), 5),
        "p90_s": round(p90, 5),
        "min_s": round(ordered[0], 5),
        "max_s": round(ordered[-1], 5),
    }


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("tiny", "2,000 no-op submits, then wait for all", 2000, 2000, run_tiny),
        Workload(
            "map",
            f"map(square, range(20,000), chunksize={MAP_CHUNK}): {20_000 // MAP_CHUNK} chunks",
            20_000 // MAP_CHUNK,
            20_000,
            run_map,
        ),
        Workload(
            "sleepy", "40 x sleep(0.25) on 2 workers (ideal 5.0 s)", 40, 40, run_sleepy, cheap=False
        ),
        Workload(
            "fat-arg", "20 tasks len(blob) sharing one fresh 20 MB bytes argument", 20, 20, run_fat
        ),
        Workload(
            "latency",
            "sequential submit-to-result round trips, back to back "
            "(figure: median trip; p90 alongside)",
            1,
            1,
            run_latency,
            cheap=False,
        ),
        Workload(
            "latency-idle",
            f"round trips each after {IDLE_GAP} s idle (pollers backed off; figure: median trip)",
            1,
            1,
            run_latency_idle,
            cheap=False,
        ),
        Workload(
            "wakeup",
            f"submit(nap, {WAKE_NAP}).result(): the client waits (backing off) for the whole "
            "nap; figure: median of (round trip - nap), how late the client wakes",
            1,
            1,
            run_wakeup,
            cheap=False,
        ),
    ]
}
