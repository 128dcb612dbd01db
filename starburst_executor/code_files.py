"""Local modules shipped with a session (Banyan's ``code_files``), not baked into an image.

The client zips the files and packages it names (:func:`pack_code`), the zip travels as one
content-addressed blob of the session, and each worker extracts it and puts it first on
``sys.path`` before it runs anything (:func:`install_code`).
"""

from __future__ import annotations

import importlib
import io
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

__all__ = ["MAX_CODE_BYTES", "install_code", "pack_code"]

MAX_CODE_BYTES = 50 * 1024 * 1024
"""The largest code zip :func:`pack_code` makes: code, not data, travels this way."""


def _code_files(path: Path) -> Iterable[tuple[Path, str]]:
    """``(file, name in the zip)`` for one module file or package directory."""
    if path.is_file():
        if path.suffix != ".py":
            raise ValueError(
                f"{path} is not a Python module: ship .py files or package directories"
            )
        yield path, path.name
        return
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    for file in sorted(path.rglob("*")):
        rel = file.relative_to(path.parent)
        hidden = any(part.startswith(".") or part == "__pycache__" for part in rel.parts)
        if file.is_file() and not hidden and file.suffix not in (".pyc", ".pyo"):
            yield file, rel.as_posix()


def pack_code(paths: list[Path]) -> bytes:
    """Zip local modules and packages for the workers of a session.

    A file ``util.py`` becomes ``util.py`` in the zip; a directory ``mypkg/`` becomes
    ``mypkg/...`` (its files, without ``__pycache__`` or hidden entries), so
    ``import util`` and ``import mypkg`` work once :func:`install_code` has put the zip on a
    worker's path. The bytes are deterministic (sorted, fixed timestamps): the same code gives
    the same zip, and the same blob key.

    Raises:
        ValueError: a file that is not ``.py``, two paths with the same name, or a zip larger
            than :data:`MAX_CODE_BYTES`.
        FileNotFoundError: a path does not exist.
    """
    buffer = io.BytesIO()
    names: dict[str, Path] = {}
    sizes: list[tuple[int, str]] = []
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in paths:
            for file, name in _code_files(Path(path)):
                if name in names:
                    raise ValueError(
                        f"{file} and {names[name]} would both be {name!r} on the "
                        "workers: rename one"
                    )
                names[name] = file
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                data = file.read_bytes()
                archive.writestr(info, data)
                sizes.append((len(data), name))
                if buffer.tell() > MAX_CODE_BYTES:
                    largest = ", ".join(f"{n} ({s / 1e6:.1f} MB)" for s, n in sorted(sizes)[-3:])
                    raise ValueError(
                        f"the session's code is over {MAX_CODE_BYTES / 2**20:g} MB "
                        f"zipped (largest: {largest}): ship data through the store (arguments "
                        "or S3), not with the code"
                    )
    return buffer.getvalue()


def install_code(zip_bytes: bytes, target_dir: Path | None = None) -> str:
    """Extract a :func:`pack_code` zip into a new directory and put it first on ``sys.path``.

    Args:
        zip_bytes: the zip.
        target_dir: where to create the directory (default: the system temp dir).

    Returns:
        The directory now at ``sys.path[0]``.

    Raises:
        ValueError: not a zip, or a member that would land outside the directory.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(zip_bytes))
    except zipfile.BadZipFile as exc:
        raise ValueError(f"the session's code is not a zip: {exc}") from exc
    with archive:
        for name in archive.namelist():
            parts = PurePosixPath(name).parts
            if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
                raise ValueError(f"the session's code zip has an unsafe entry {name!r}")
        directory = tempfile.mkdtemp(prefix="starburst-code-", dir=target_dir)
        archive.extractall(directory)
    sys.path.insert(0, directory)
    importlib.invalidate_caches()
    return directory
