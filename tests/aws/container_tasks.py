"""Tasks for the container end-to-end tests, shipped to the workers with ``code_files``
(the worker image holds only the package, as a user's image holds only their dependencies).

A task names the ECS task it ran in from ``ECS_CONTAINER_METADATA_URI_V4`` (``.../{task
id}``), which ECS sets in every container: process ids and host names say nothing here
(every container shares the host's network and starts its worker as PID 1).
"""

from __future__ import annotations

import os
import time

__all__ = ["ecs_task", "square_where", "shout", "slow_where"]


def ecs_task() -> str:
    """The id of the ECS task running this code ("" outside ECS)."""
    return os.environ.get("ECS_CONTAINER_METADATA_URI_V4", "").rstrip("/").rsplit("/", 1)[-1]


def square_where(x: int, pause: float = 0.0) -> tuple[int, str]:
    """``x * x`` (after ``pause`` seconds) and the ECS task that computed it."""
    time.sleep(pause)
    return x * x, ecs_task()


def shout(marker: str) -> str:
    """Print ``marker`` (to the worker's output, hence CloudWatch) and return it."""
    print(marker, flush=True)
    return marker


def slow_where(x: int, seconds: float) -> tuple[int, str]:
    """Announce the start on stdout, sleep, and return ``x`` and the ECS task that finished
    it."""
    print(f"slow-start {x} in {ecs_task()}", flush=True)
    time.sleep(seconds)
    return x, ecs_task()
