"""``starburst status SID --watch``: a session's status redrawn in the terminal until it ends.

On a terminal the block is redrawn in place (the cursor goes back up over the previous one);
into a pipe or a file the blocks follow each other, separated by a blank line, so a log keeps
every reading. The loop ends by itself once the session has finished (see
:func:`starburst_executor.dashboard.data.finished`), and on Ctrl-C.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TextIO

from starburst_executor.dashboard.data import finished
from starburst_executor.sessions import SessionStatus

__all__ = ["watch"]

_UP_AND_CLEAR = "\x1b[{n}F\x1b[J"  # cursor to the start of the line n lines up; erase below


def _pause(seconds: float) -> None:
    """Wait between two readings (an event's wait: Ctrl-C interrupts it at once)."""
    threading.Event().wait(seconds)


def watch(
    read: Callable[[], SessionStatus],
    render: Callable[[SessionStatus], str],
    out: TextIO,
    *,
    interval: float = 2.0,
    tty: bool | None = None,
    wait: Callable[[float], object] | None = None,
    max_updates: int | None = None,
) -> SessionStatus:
    """Print ``render(read())`` every ``interval`` seconds until the session has finished.

    Args:
        read: takes the session's status now.
        render: the text of one status (the same as ``starburst status`` prints).
        out: where to print.
        interval: seconds between readings (> 0).
        tty: redraw in place; default: whether ``out`` is a terminal.
        wait: waits between readings (default: :func:`_pause`); tests pass a fake clock.
        max_updates: stop after this many readings (``None``: until the session finishes).

    Returns:
        The last status read.

    Raises:
        ValueError: ``interval`` is not positive.
        KeyboardInterrupt: Ctrl-C (the caller exits 0: watching is all it stops).
    """
    if not interval > 0:
        raise ValueError(f"--interval must be a positive number of seconds, not {interval}")
    if tty is None:
        tty = out.isatty()
    pause = wait or _pause
    drawn = 0  # lines of the block on screen
    updates = 0
    while True:
        status = read()
        text = render(status).rstrip("\n")
        if tty:
            if drawn:
                out.write(_UP_AND_CLEAR.format(n=drawn))
            out.write(text + "\n")
            drawn = text.count("\n") + 1
        else:
            out.write(("\n" if updates else "") + text + "\n")
        out.flush()
        updates += 1
        if finished(status) or (max_updates is not None and updates >= max_updates):
            return status
        pause(interval)
