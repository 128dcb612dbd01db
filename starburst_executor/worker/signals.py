"""Signals to the worker, acted on outside the signal handler.

A Python signal handler runs in the main thread, between two bytecodes of whatever that
thread was doing. If the handler takes a lock the interrupted code already holds, the
thread deadlocks on itself: ``threading.Event.set()`` takes the event's (non-reentrant)
condition lock, which the main thread holds for a moment inside every ``Event.wait()`` and
``Event.set()`` on the same event. A worker idling with a short poll waits on its stop event
many times a second, so a SIGTERM (ECS StopTask, a Spot interruption) would now and then
freeze the worker for good: it then neither hands its claim back nor exits.

So the handler only writes a byte to a pipe (``os.write`` takes no Python lock), and a
small daemon thread, blocked on the other end, runs the reaction.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["on_signal"]


def on_signal(signum: int, react: Callable[[], None]) -> None:
    """Run ``react()`` in a thread of its own each time ``signum`` arrives.

    Must be called from the main thread (``signal.signal``'s rule). ``react`` may take any
    lock: it never runs inside the handler.
    """
    read_end, write_end = os.pipe()

    def handler(signum: int, frame: FrameType | None) -> None:
        os.write(write_end, b"\0")

    def watch() -> None:
        while os.read(read_end, 1):
            react()

    threading.Thread(target=watch, name=f"starburst-signal-{signum}", daemon=True).start()
    signal.signal(signum, handler)
