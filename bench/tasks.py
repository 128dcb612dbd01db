"""The functions the benchmark workloads run (a module, so workers import them by name).

Workers find this module through ``PYTHONPATH`` (``bench/run.py`` puts the repository root
there), exactly as a user's own module would be found.
"""

from __future__ import annotations

import time


def noop() -> None:
    """Does nothing: measures pure per-task overhead."""
    return


def square(x: int) -> int:
    """A cheap per-item function for ``map``."""
    return x * x


def nap(seconds: float) -> float:
    """Sleeps: models work that takes real time but no CPU."""
    time.sleep(seconds)
    return seconds


def size(data: bytes) -> int:
    """Returns ``len(data)``: the fat-argument workload's task."""
    return len(data)
