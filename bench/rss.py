"""The client's peak memory for the fat-arg workload, measured in a fresh process.

    python bench/rss.py ppe|STORE_URL

Starts an executor (``ProcessPoolExecutor(max_workers=2)`` for ``ppe``, else a
``StarburstExecutor`` on the store), warms it up, allocates the 20 MB argument, then resets
the kernel's peak-RSS mark (``/proc/self/clear_refs``; without it the peak is measured from
the process start) and runs one repetition of fat-arg (20 ``submit(len, blob)``). Prints one
JSON line: resident set before, peak during, and the growth in MiB. A fresh process per
measurement, so that the peak is this workload's and nothing else's (``bench/run.py`` runs
it once per backend).
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import tasks
from bench import workloads as wl


def _status(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def main(target: str) -> dict[str, object]:
    ex: Executor
    if target == "ppe":
        ex = ProcessPoolExecutor(max_workers=2)
    else:
        from starburst_executor import StarburstExecutor

        ex = StarburstExecutor(max_workers=2, store=target)
    with ex:
        ex.submit(tasks.noop).result()
        wl.warm_up(ex, 2)
        blob = os.urandom(wl.FAT_BYTES)
        reset = _reset_peak()
        before = _status("VmRSS")
        t0 = time.perf_counter()
        futures = [ex.submit(tasks.size, blob) for _ in range(20)]
        results = [f.result() for f in futures]
        seconds = time.perf_counter() - t0
        peak = _status("VmHWM")
    if results != [wl.FAT_BYTES] * 20:
        raise AssertionError(f"fat-arg returned {results[:3]}...")
    return {
        "rss_before_kib": before,
        "peak_kib": peak,
        "growth_mib": round((peak - before) / 1024, 1),
        "peak_reset": reset,
        "seconds": round(seconds, 4),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])), flush=True)
