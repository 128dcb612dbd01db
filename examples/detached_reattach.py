"""Start work, detach, and collect it from another process: the ``DetachedExecutor`` cycle.

What it shows
-------------
A ``DetachedExecutor`` keeps its whole state in the store, so the process that submits the
work can go away (close the laptop, log out) and any later process collects the results by
session id. This script plays both parts:

1. **Submit and detach.** It starts a session with a name, submits ``--tasks`` analyses that
   take ``--duration`` seconds each plus one whose input is corrupt (it raises), prints the
   session id and detaches: the workers keep going without it.
2. **Reattach elsewhere.** It runs *itself again in a separate process* with ``--attach SID``.
   That process attaches by id (the store is found in the per-user session index), prints the
   session's status, collects what is finished so far, then waits for the rest behind a
   progress bar, prints every result and the failed task's error, and finally deletes the
   session's data with ``cleanup(delete_data=True)``.

The second part is what you would run tomorrow, from another terminal::

    python examples/detached_reattach.py --attach 20261121-081500-3fa9c2

or, without Python, with the command line: ``starburst status SID``, ``starburst collect SID
--wait -o results.pkl``, ``starburst cleanup SID --delete-data``.

Run it
------
From the repository root, after ``python -m pip install .`` (or with ``PYTHONPATH=.``)::

    python examples/detached_reattach.py                          # 20 tasks of 0.2 s
    python examples/detached_reattach.py --tasks 40 --workers 4
    python examples/detached_reattach.py --store s3://my-bucket/starburst
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from collections.abc import Sequence

from starburst_executor import DetachedExecutor, SessionError

CORRUPT_SAMPLE = 7  # this sample's analysis raises: its entry comes back with .error set


def analyse(sample: int, duration: float) -> dict[str, float]:
    """A stand-in for real work: a few statistics of a deterministic series."""
    time.sleep(duration)
    if sample == CORRUPT_SAMPLE:
        raise ValueError(f"sample {sample} is corrupt")
    rng = random.Random(sample)  # each sample's data depends only on its number
    series = [rng.gauss(sample, 1 + sample / 10) for _ in range(1000)]
    mean = sum(series) / len(series)
    spread = max(series) - min(series)
    return {"sample": sample, "mean": round(mean, 4), "spread": round(spread, 4)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Submit work to a DetachedExecutor, detach, and reattach from another process.",
    )
    parser.add_argument(
        "--tasks",
        type=int,
        default=20,
        metavar="N",
        help="analyses that succeed (one more fails); default 20",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=0.2,
        metavar="S",
        help="seconds each analysis takes (default 0.2)",
    )
    parser.add_argument(
        "--workers", type=int, default=4, metavar="N", help="most workers at once (default 4)"
    )
    parser.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="store URL, e.g. s3://bucket/prefix (default: local directory)",
    )
    parser.add_argument(
        "--attach",
        default=None,
        metavar="SID",
        help="reattach to this session, collect it and delete its data",
    )
    args = parser.parse_args(argv)
    if args.tasks < CORRUPT_SAMPLE:
        parser.error(f"--tasks must be at least {CORRUPT_SAMPLE}")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def submit_and_detach(args: argparse.Namespace) -> str:
    """Part 1: start a named session, submit the work, detach. Returns the session id."""
    ex = DetachedExecutor(
        max_workers=args.workers, store=args.store, name="reattach-example", idle_timeout=60
    )
    # Samples 0..tasks: CORRUPT_SAMPLE raises, so `tasks` succeed and one fails.
    for sample in range(args.tasks + 1):
        ex.submit(analyse, sample, args.duration)
    print(f"Submitted {args.tasks + 1} tasks to {ex.store.url}")
    print(f"Session id: {ex.session_id}")
    ex.detach()
    print("Client detached: the workers carry on without it")
    return ex.session_id


def attach_and_collect(session_id: str, store: str | None) -> int:
    """Part 2 (another process): attach by id, inspect, collect, clean up."""
    try:
        ex = DetachedExecutor.attach(session_id, store=store)
    except SessionError as exc:
        print(f"cannot attach: {exc}", file=sys.stderr)
        return 3
    print(f"Attached to {session_id}")
    print(ex.status())

    partial = ex.collect()  # what is finished right now, in submission order
    print(f"Collected so far: {len(partial)} of {ex.status().total} tasks")

    results = ex.collect(wait=True, timeout=600, progress=True, poll_interval=0.1)
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    print(f"All done: {len(ok)} succeeded, {len(failed)} failed")
    for r in ok:
        print(
            f"  #{r.index:<3} sample {r.value['sample']:>3}: mean {r.value['mean']:8.3f}, "
            f"spread {r.value['spread']:7.3f}"
        )
    for r in failed:
        print(f"  #{r.index:<3} {r.task_id} failed: {type(r.error).__name__}: {r.error}")

    ex.cleanup(delete_data=True)
    print("Deleted the session's data; its workers are stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.attach:
        return attach_and_collect(args.attach, args.store)
    session_id = submit_and_detach(args)
    # "Another day, another process": the same script, with --attach.
    command = [sys.executable, __file__, "--attach", session_id]
    if args.store:
        command += ["--store", args.store]
    print(f"Reattaching from a new process: {' '.join(command[1:])}", flush=True)
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
