"""Files and directories only their owner can read: the directory store, worker logs and the
session index hold pickled arguments, results and task output (pickles are code, and the
output may be anyone's data). Directories are created 700 and files 600, whatever the umask;
an existing store that other users can write to is refused.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "make_private_dir", "open_private", "unsafe_dir_reason"]

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents, each 700 (``mkdir -p`` gives the parents the
    umask's mode, usually 755). Directories that exist already are left as they are.

    Raises:
        OSError: a directory cannot be created.
    """
    missing: list[Path] = []
    parent = path
    while not parent.exists():
        missing.append(parent)
        if parent.parent == parent:
            break
        parent = parent.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # created meanwhile by another process: its creator set its mode
        os.chmod(directory, DIR_MODE)  # explicit: a umask of e.g. 0o277 would narrow it
    return path


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open`` creating ``path`` 600: usable as ``open(..., opener=open_private)``."""
    return os.open(path, flags, FILE_MODE)


def unsafe_dir_reason(path: Path) -> str | None:
    """Why other users could tamper with the directory ``path`` (whoever can write a store
    can run code in its workers and its clients), or ``None`` when only its owner can.

    Raises:
        OSError: ``path`` cannot be inspected.
    """
    st = path.stat()
    if st.st_uid != os.getuid():
        return (
            f"{path} is owned by another user (uid {st.st_uid}, you are {os.getuid()}): use "
            "a store directory of your own"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (
            f"{path} can be written by other users (mode {stat.S_IMODE(st.st_mode):03o}): "
            f"run `chmod 700 {path}` (or at least `chmod go-w {path}`)"
        )
    return None
