"""SIGTERM reaches the worker even when it lands inside a lock the worker's code holds.

The worker's SIGTERM handler used to call ``Event.set()`` directly. A Python signal handler
runs in the main thread between two bytecodes, and ``Event.set()`` takes the event's
non-reentrant condition lock, which the main thread holds for a moment in each
``Event.wait()`` of its idle loop: a SIGTERM landing there deadlocked the worker for good
(seen in CI as a worker that ignored SIGTERM for 11 minutes). Each case runs in a
subprocess, so a deadlock fails the test instead of hanging it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from detached_support import subprocess_env

# The main thread takes the event's condition lock (as Event.wait does) and is signalled
# while it holds it; the handler runs at the next bytecode, still inside the lock.
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading
    stop = threading.Event()
    {install}
    with stop._cond:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):
            pass
    print("main thread went on", flush=True)
    sys.exit(0 if stop.wait(10) else 1)
    """
)
BRIDGED = (
    "from starburst_executor.worker.signals import on_signal; on_signal(signal.SIGTERM, stop.set)"
)
DIRECT = "signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())"


def run(install: str, timeout: float) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            [sys.executable, "-c", SCRIPT.format(install=install)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=subprocess_env(),
        )
    except subprocess.TimeoutExpired:
        return None


def test_a_handler_that_sets_the_event_itself_deadlocks() -> None:
    """The control: the old handler's way does deadlock (the test above has teeth)."""
    assert run(DIRECT, timeout=3) is None


def test_sigterm_inside_the_events_lock_still_stops_the_worker() -> None:
    done = run(BRIDGED, timeout=30)
    assert done is not None, "the worker deadlocked in its SIGTERM handler"
    assert done.returncode == 0, done.stderr
    assert "main thread went on" in done.stdout
