"""Tasks the fault tests run (``tests/test_chaos.py``, ``tests/test_disk_full.py``): workers
import this module by name.

Each execution leaves a marker file, so the test counts how often every task ran, including
runs whose worker was killed before it could deliver.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path


def square_and_mark(i: int, markers: str, seconds: float = 0.0) -> int:
    """``i * i``, after leaving a marker file ``{i}-{random}`` in ``markers`` and sleeping
    ``seconds`` (so that a run lasts long enough for workers to be killed during it)."""
    Path(markers, f"{i}-{uuid.uuid4().hex[:8]}").touch()
    time.sleep(seconds)
    return i * i


def fill_disk_and_die(path: str) -> None:
    """Fill the disk holding ``path`` with one file there, then end the worker (exit 1)."""
    with open(path, "wb") as fh:
        try:
            while True:
                fh.write(b"x" * 65536)
                fh.flush()
        except OSError:  # the disk is full, as intended
            pass
    os._exit(1)
