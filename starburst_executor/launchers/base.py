"""The launcher interface: the seam between the executor and whatever runs workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Launcher", "WorkerExit"]


@dataclass(frozen=True)
class WorkerExit:
    """A worker that ended.

    Attributes:
        worker: the worker id.
        code: its exit code (negative: killed by that signal), ``None`` if unknown.
        reason: a human explanation (ECS stop reason, signal name ...).
        log_tail: the last lines of its log, when the launcher has them.
    """

    worker: str
    code: int | None
    reason: str = ""
    log_tail: str = ""


class Launcher(Protocol):
    """Starts workers for one session and reports when they end."""

    def start(self, count: int) -> list[str]:
        """Start ``count`` more workers; returns their ids."""
        ...

    def running(self) -> int:
        """How many started workers have not been reported as ended."""
        ...

    def poll(self) -> list[WorkerExit]:
        """Workers that ended since the last call."""
        ...

    def stop(self, timeout: float = 10.0) -> None:
        """Ask every worker to stop (SIGTERM: they hand back their claims) and wait up to
        ``timeout`` seconds before killing what is left."""
        ...
