"""Launchers start, watch and stop a session's workers."""

from starburst_executor.launchers.base import Launcher, WorkerExit
from starburst_executor.launchers.local import LocalLauncher

__all__ = ["Launcher", "LocalLauncher", "WorkerExit"]
