"""What durable submission costs: how long ``submit``/``map`` take to *return*.

A ``DetachedExecutor`` returns from ``submit`` only once the call is in the store (so a client
killed right after loses nothing); a plain ``StarburstExecutor`` queues the call and batches it
a few milliseconds later; ``ProcessPoolExecutor`` puts it on an in-memory queue. This times the
same two loops on each, in one run:

- ``submit-loop``: 1,000 sequential ``submit(noop)`` calls (no waiting for results);
- ``map``: ``map(square, range(100_000))`` (chunksize 1, the default) until it returns.

::

    python bench/submit_cost.py                    # local directory store and SeaweedFS
    python bench/submit_cost.py --backend local --submits 200 --items 10000

One line per case and backend: seconds for the durable (detached) executor, the plain one,
and ProcessPoolExecutor (measured once per run, the ratio base), with the durable executor's
batch writes. The time to run the work is not measured: each executor is stopped right after
(work still queued is cancelled), so the figures are submission cost only. Each executor is
warmed first (one ``submit(...).result()``: workers running), as a user's would be after the
first call.

Measured on the 2-core development machine (2 workers; one run)::

    submit-loop x1000  local    durable  3.07 s (1000 writes)  lazy 0.027 s  ppe 0.014 s
    map x100000        local    durable  4.43 s (100 writes)   lazy 5.69 s   ppe 3.19 s
    submit-loop x1000  seaweed  durable 33.90 s (1000 writes)  lazy 0.028 s  ppe 0.014 s
    map x100000        seaweed  durable  3.93 s (100 writes)   lazy 6.82 s   ppe 3.19 s

A durable ``submit`` costs one store write: about 6 ms on SeaweedFS here when no worker runs,
34 ms while the two workers run each call as it lands (server, workers and client share the two
cores). ``map`` writes its chunks in bulk, so it costs about what building the tasks costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# Workers are fresh interpreters: they import bench.tasks through the environment.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)

from bench.env import s3_env  # noqa: E402
from bench.tasks import noop, square  # noqa: E402

MAX_WORKERS = 2
BUCKET = "starburst-bench"


def time_submits(ex: Executor, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        ex.submit(noop)
    return time.perf_counter() - start


def time_map(ex: Executor, n: int) -> float:
    start = time.perf_counter()
    ex.map(square, range(n))
    return time.perf_counter() - start


def measure(
    make: Callable[[], Executor],
    stop: Callable[[Executor], None],
    case: Callable[[Executor], float],
    repeat: int,
) -> tuple[float, int]:
    """Median seconds over ``repeat`` fresh executors, and the durable batch writes of one."""
    times, writes = [], 0
    for _ in range(repeat):
        ex = make()
        try:
            ex.submit(noop).result(timeout=120)  # warm: the workers run
            before = _writes(ex)
            times.append(case(ex))
            writes = _writes(ex) - before
        finally:
            stop(ex)
    return statistics.median(times), writes


def _writes(ex: Executor) -> int:
    commit = getattr(ex, "_commit", None)
    return int(commit.writes) if commit is not None else 0


def ppe() -> Executor:
    return ProcessPoolExecutor(max_workers=MAX_WORKERS)


def stop_pool(ex: Executor) -> None:
    ex.shutdown(wait=True, cancel_futures=True)


def stop_detached(ex: Any) -> None:
    ex.cleanup(stop_workers=True, delete_data=True)


@contextmanager
def seaweed() -> Iterator[str]:
    from tests.servers import SeaweedServer

    with SeaweedServer() as server, s3_env(server.endpoint_url):
        server.create_bucket(BUCKET)
        yield f"s3://{BUCKET}/submit-cost-{time.strftime('%H%M%S')}"


def run_backend(
    backend: str,
    store: str,
    cases: dict[str, Callable[[Executor], float]],
    base: dict[str, float],
    repeats: dict[str, int],
) -> None:
    from starburst_executor import DetachedExecutor, StarburstExecutor

    for name, case in cases.items():
        durable, writes = measure(
            lambda: DetachedExecutor(max_workers=MAX_WORKERS, store=store),
            stop_detached,
            case,
            repeats[name],
        )
        lazy, _ = measure(
            lambda: StarburstExecutor(max_workers=MAX_WORKERS, store=store),
            stop_pool,
            case,
            repeats[name],
        )
        print(
            f"{name:<18} {backend:<8} durable {durable:8.3f} s ({writes} batch writes)  "
            f"lazy {lazy:8.3f} s  ppe {base[name]:7.3f} s  "
            f"durable/ppe {durable / base[name]:6.1f}x  lazy/ppe {lazy / base[name]:6.1f}x",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="local,seaweed", help="local, seaweed or both")
    parser.add_argument("--submits", type=int, default=1000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of the submit loop")
    args = parser.parse_args(argv)
    cases: dict[str, Callable[[Executor], float]] = {
        f"submit-loop x{args.submits}": lambda ex: time_submits(ex, args.submits),
        f"map x{args.items}": lambda ex: time_map(ex, args.items),
    }
    repeats = dict(zip(cases, [args.repeat, 1]))
    base = {name: measure(ppe, stop_pool, case, repeats[name])[0] for name, case in cases.items()}
    backends = args.backend.split(",")
    with tempfile.TemporaryDirectory(prefix="starburst-submit-cost-") as tmp:
        os.environ["STARBURST_HOME"] = str(Path(tmp) / "home")
        if "local" in backends:
            run_backend("local", (Path(tmp) / "store").as_uri(), cases, base, repeats)
        if "seaweed" in backends:
            with seaweed() as url:
                run_backend("seaweed", url, cases, base, repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
