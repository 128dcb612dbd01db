"""``LocalStore``: the store as a directory, the embedded default.

Atomicity comes from the filesystem, not from locks held across processes for long:

- ``put`` writes a temporary file and ``os.replace``-s it over the key: readers see the old or
  the new inode, never a partial file.
- ``put_if_absent`` writes a temporary file and ``os.link``-s it to the key: ``link`` fails
  with ``EEXIST`` if the key exists, so exactly one racing creator wins and the object is
  complete from the moment it is visible.
- ``put_if_match`` takes a short ``flock`` on a per-key lock file (kept outside the key space)
  around compare-and-replace.

The ETag is ``inode-mtime_ns-size`` of the file: every write creates a new inode, so the ETag
changes on every write, even of identical bytes.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from starburst_executor._private import make_private_dir, open_private, unsafe_dir_reason
from starburst_executor.errors import (
    ObjectNotFoundError,
    PreconditionFailedError,
    StoreConfigError,
    StoreError,
    StoreUnavailableError,
)
from starburst_executor.stores.base import ObjectInfo, StoredObject

__all__ = ["LocalStore"]

_INTERNAL = ".starburst-internal"  # temp files and locks; never a key
# Writes the disk refuses for want of room, and what to say about each.
_NO_SPACE = {
    errno.ENOSPC: "no space left on the disk holding store {root}",
    errno.EDQUOT: "disk quota exceeded on the disk holding store {root}",
    errno.EFBIG: "file too large (the filesystem's limit, or the process's ulimit -f)",
}
# A directory on a network filesystem (NFS, SMB) whose server or network went away: an outage
# that the run waits out (store_outage_timeout), not a broken store.
_UNREACHABLE = frozenset(
    {
        errno.ESTALE,
        errno.ETIMEDOUT,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.ECONNRESET,
        errno.ECONNABORTED,
    }
)


def _etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


class LocalStore:
    """A store in a local directory (shared by every process on this machine).

    Args:
        root: the directory; created if missing, 700 (its files 600): it holds pickled
            arguments and results, which are code and data.

    Raises:
        StoreConfigError: the directory cannot be created or written, or other users can
            write to it (the message says what to chmod).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = Path(root).expanduser().absolute()
        self._tmp = self._root / _INTERNAL / "tmp"
        self._locks = self._root / _INTERNAL / "locks"
        try:
            reason = unsafe_dir_reason(self._root) if self._root.is_dir() else None
            if reason is not None:
                raise StoreConfigError(
                    f"refusing to use store {self._root}: {reason}. Whoever can write a store "
                    "can run code in its workers and in the clients that read it"
                )
            make_private_dir(self._tmp)
            make_private_dir(self._locks)
            probe = self._tmp / f"probe-{secrets.token_hex(6)}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreConfigError(
                f"cannot use {self._root} as a store: {exc.strerror or exc}. Pass a directory "
                "you can write, e.g. store='file:///tmp/starburst', or fix its permissions"
            ) from exc

    @property
    def url(self) -> str:
        return self._root.as_uri()

    @property
    def root(self) -> Path:
        """The directory holding the objects."""
        return self._root

    def __repr__(self) -> str:
        return f"LocalStore({str(self._root)!r})"

    # -- paths -------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        if (
            not key
            or key.startswith("/")
            or key.endswith("/")
            or any(part in ("", ".", "..", _INTERNAL) for part in key.split("/"))
        ):
            raise ValueError(f"invalid store key {key!r}")
        return self._root / key

    def _write_temp(self, data: bytes) -> Path:
        """``data`` in a new temporary file; on any failure (a full disk fails the write or
        the close) the partial file is removed, so a failed write never eats the space that
        the next writer needs."""
        tmp = self._tmp / f"{os.getpid()}-{secrets.token_hex(8)}"
        try:
            with open(tmp, "wb", opener=open_private) as fh:
                fh.write(data)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _oserror(self, exc: OSError, key: str, action: str) -> StoreError:
        if exc.errno in _NO_SPACE:
            what = _NO_SPACE[exc.errno].format(root=self._root)
            return StoreConfigError(
                f"cannot {action} {key!r} at {self._root / key}: {what} ({exc.strerror}). "
                "Free space there, or use a store on a larger disk"
            )
        if exc.errno in _UNREACHABLE:
            return StoreUnavailableError(
                f"cannot {action} {key!r} in store {self._root}: {exc.strerror}. The directory "
                "is on a network filesystem that stopped answering: check the mount and the "
                "network"
            )
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return StoreConfigError(
                f"cannot {action} {key!r} in store {self._root}: {exc.strerror}. "
                "Check the directory's permissions and free space"
            )
        return StoreError(f"cannot {action} {key!r} in store {self._root}: {exc}")

    # -- Store protocol ----------------------------------------------------------------------

    def get(self, key: str) -> StoredObject:
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                etag = _etag(os.fstat(fh.fileno()))
                return StoredObject(fh.read(), etag)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFoundError(f"no object {key!r} in store {self._root}") from None
        except OSError as exc:
            raise self._oserror(exc, key, "read") from exc

    def put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        try:
            tmp = self._write_temp(data)
            try:
                make_private_dir(path.parent)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return _etag(os.stat(path))
        except OSError as exc:
            raise self._oserror(exc, key, "write") from exc

    def put_if_absent(self, key: str, data: bytes) -> str:
        path = self._path(key)
        try:
            tmp = self._write_temp(data)
            try:
                make_private_dir(path.parent)
                os.link(tmp, path)
                return _etag(os.stat(tmp))  # same inode as the key, and nobody can replace tmp
            except FileExistsError:
                raise PreconditionFailedError(f"object {key!r} already exists") from None
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise self._oserror(exc, key, "create") from exc

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        path = self._path(key)
        lock = self._locks / hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
        try:
            tmp = self._write_temp(data)
            try:
                with open(lock, "a+b", opener=open_private) as lock_fh:
                    fcntl.flock(lock_fh.fileno(), fcntl.LOCK_EX)
                    try:
                        current = _etag(os.stat(path))
                    except FileNotFoundError:
                        raise PreconditionFailedError(f"object {key!r} no longer exists") from None
                    if current != etag:
                        raise PreconditionFailedError(f"object {key!r} changed since it was read")
                    os.replace(tmp, path)
                    return _etag(os.stat(path))
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise self._oserror(exc, key, "update") from exc

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        # Walk directories in key order and skip whole subtrees that sort before start_after,
        # so a cursor over time-bucketed keys costs O(new keys), like S3's StartAfter.
        directory, _, leaf_prefix = prefix.rpartition("/")
        base = self._root / directory if directory else self._root
        yield from self._walk(base, directory + "/" if directory else "", leaf_prefix, start_after)

    def _walk(
        self, path: Path, rel: str, leaf_prefix: str, start_after: str | None
    ) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(path) as it:
                # Sort as full keys sort: a directory "x" holds keys "x/...", which sort after
                # a sibling key "x-y" ('-' < '/'), so compare directory names with their "/".
                entries = []
                for e in it:
                    if not e.name.startswith(leaf_prefix) or e.name == _INTERNAL:
                        continue
                    try:
                        is_dir = e.is_dir(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    entries.append((e.name + "/" if is_dir else e.name, e))
        except (FileNotFoundError, NotADirectoryError):
            return
        entries.sort(key=lambda pair: pair[0])
        for name, entry in entries:
            key = rel + name
            if name.endswith("/"):
                # Skip a subtree whose keys all sort at or before the cursor.
                if (
                    start_after is not None
                    and key < start_after
                    and not start_after.startswith(key)
                ):
                    continue
                yield from self._walk(Path(entry.path), key, "", start_after)
                continue
            if start_after is not None and key <= start_after:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted while listing
            yield ObjectInfo(key, st.st_size, _etag(st), st.st_mtime)

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            try:
                self._path(key).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise self._oserror(exc, key, "delete") from exc

    def now(self) -> float:
        return time.time()

    def close(self) -> None:
        pass
