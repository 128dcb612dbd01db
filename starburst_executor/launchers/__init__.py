"""Launchers start, watch and stop a session's workers; ``make_launcher`` picks one."""

from __future__ import annotations

from starburst_executor.launchers.base import Launcher, WorkerExit
from starburst_executor.launchers.local import LocalLauncher
from starburst_executor.protocol import SessionManifest

__all__ = ["Launcher", "LocalLauncher", "WorkerExit", "make_launcher"]


def make_launcher(manifest: SessionManifest, *, poll_max: float) -> Launcher:
    """The launcher of a session's backend ("local" or "aws"), from its manifest alone, so
    that a reattaching process starts workers exactly as the first one did.

    Raises:
        ValueError: the manifest names an unknown backend.
    """
    if manifest.backend == "local":
        return LocalLauncher(manifest.store_url, manifest.session_id, poll_max=poll_max)
    if manifest.backend == "aws":
        from starburst_executor.aws.launcher import ECSLauncher

        return ECSLauncher.for_session(manifest, poll_max=poll_max)
    raise ValueError(f"session {manifest.session_id} uses unknown backend {manifest.backend!r}")
