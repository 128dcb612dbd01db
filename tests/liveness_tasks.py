"""Tasks of tests/test_liveness.py; worker processes import them by module name."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from executor_tasks import record_run


def run_or_die(mark_dir: str, index: int, die_at: int, always: bool, seconds: float) -> int:
    """Task ``die_at`` SIGKILLs its worker (the first time only, unless ``always``) before it
    records its run; every other task sleeps ``seconds`` and records its run."""
    if index == die_at:
        try:
            os.close(os.open(Path(mark_dir, "died"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            first = True
        except FileExistsError:
            first = False
        if first or always:
            os.kill(os.getpid(), signal.SIGKILL)
    else:
        time.sleep(seconds)
    return record_run(str(Path(mark_dir, "runs")), index)
