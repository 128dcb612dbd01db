"""Per-user configuration: the home directory, the embedded store, the signing key, the
AWS region from the environment, and the index of sessions created on this machine.

Environment variables (all optional):

- ``STARBURST_STORE``: default store URL when none is passed.
- ``STARBURST_HOME``: base directory for the defaults below (else ``$XDG_CACHE_HOME`` or
  ``~/.cache``, then ``starburst-executor``).
- ``STARBURST_SECRET_KEY``: hex HMAC key used to sign every record. When unset, a random key
  is created once in ``STARBURST_HOME/secret.key`` (mode 0600). Workers receive the key from
  their launcher; it is never written to the store.
- ``STARBURST_KEEP_LOGS``: ``1`` keeps the worker logs of sessions that shut down cleanly
  (see ``StarburstExecutor(keep_logs=...)``).

The session index maps a session id to the store it lives in, so that ``attach(session_id)``
and the command line need no ``--store``. It is one small JSON file per session in
``STARBURST_HOME/sessions/``, each written to a temporary file and renamed into place: any
number of processes may add sessions at once without a lock and without losing one (the
single ``sessions.json`` of earlier versions lost entries to concurrent read-modify-writes;
it is still read, and its entries are moved into the directory on first use).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from starburst_executor._private import make_private_dir, open_private

__all__ = [
    "KEEP_LOGS_ENV",
    "SECRET_ENV",
    "IndexEntry",
    "aws_region",
    "default_store_url",
    "forget_session",
    "home_dir",
    "indexed_sessions",
    "keep_logs_default",
    "remember_session",
    "remembered_store",
    "secret_key",
    "validate_session_id",
]

SECRET_ENV = "STARBURST_SECRET_KEY"
HOME_ENV = "STARBURST_HOME"
KEEP_LOGS_ENV = "STARBURST_KEEP_LOGS"

# Session ids are made by ``_session.new_session_id``: ``YYYYMMDD-HHMMSS-hex``. Anything else
# is refused before it becomes part of a file name or a store key ("../x" would escape).
_SESSION_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")


def home_dir() -> Path:
    """The per-user directory for the embedded store, logs, the key and the session index."""
    explicit = os.environ.get(HOME_ENV)
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "starburst-executor"


def _writable_home(sub: str = "") -> Path:
    """``home_dir() / sub``, created 700 (it holds the key, logs and the default store); a
    ``PermissionError`` that says which variable to set.

    Raises:
        PermissionError: the directory cannot be created or written.
    """
    path = home_dir() / sub if sub else home_dir()
    try:
        make_private_dir(path)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied", str(path))
    except OSError as exc:
        raise PermissionError(
            exc.errno,
            f"cannot write starburst's per-user directory {path} ({exc.strerror or exc}): set "
            f"{HOME_ENV} to a directory you can write (e.g. export {HOME_ENV}=/tmp/starburst), "
            "or fix the permissions",
        ) from exc
    return path


def default_store_url() -> str:
    """``STARBURST_STORE`` if set, else a ``file://`` URL under :func:`home_dir`."""
    return os.environ.get("STARBURST_STORE") or (home_dir() / "store").resolve().as_uri()


def keep_logs_default() -> bool:
    """Whether ``STARBURST_KEEP_LOGS`` asks to keep the logs of cleanly closed sessions."""
    return os.environ.get(KEEP_LOGS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def aws_region() -> str | None:
    """The region named by the environment: ``AWS_REGION``, else ``AWS_DEFAULT_REGION``.

    boto3 reads only ``AWS_DEFAULT_REGION``, while the AWS CLI v2, the other SDKs, Lambda and
    ECS set or document ``AWS_REGION`` (and give it precedence): every boto3 session of the
    package passes this, so both work. ``None`` leaves the choice to boto3 (profile, config).
    """
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def secret_key() -> bytes:
    """The HMAC key that signs records: ``STARBURST_SECRET_KEY`` or the per-user key file.

    Raises:
        ValueError: ``STARBURST_SECRET_KEY`` is not hex of at least 16 bytes.
        PermissionError: the key file must be created and ``STARBURST_HOME`` is not writable.
    """
    value = os.environ.get(SECRET_ENV)
    if value:
        try:
            key = bytes.fromhex(value)
        except ValueError:
            raise ValueError(
                f"{SECRET_ENV} must be a hex string (e.g. from secrets.token_hex(32))"
            ) from None
        if len(key) < 16:
            raise ValueError(f"{SECRET_ENV} must hold at least 16 bytes (32 hex characters)")
        return key
    path = home_dir() / "secret.key"
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, NotADirectoryError):
        pass
    _writable_home()  # a PermissionError naming STARBURST_HOME, not an obscure OSError
    tmp = path.with_name(f".secret.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)  # first writer wins; every process then reads the same key
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return bytes.fromhex(path.read_text().strip())


def validate_session_id(session_id: object) -> str:
    """Return ``session_id`` if it has the shape of a session id, else raise.

    Raises:
        TypeError: it is not a string.
        ValueError: it is not ``YYYYMMDD-HHMMSS-xxxxxx`` (as ``ex.session_id`` prints).
    """
    if not isinstance(session_id, str):
        raise TypeError(f"a session id is a string, not {type(session_id).__name__}")
    if not _SESSION_ID.fullmatch(session_id):
        raise ValueError(
            f"{session_id!r} is not a session id: expected YYYYMMDD-HHMMSS-xxxxxx (6 hex "
            "digits), e.g. '20261121-081500-3fa9c2', as printed by ex.session_id or "
            "`starburst sessions`"
        )
    return session_id


# -- the session index -------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexEntry:
    """Where a session created (or attached) on this machine lives.

    Attributes:
        session_id: the session's id.
        store_url: its store.
        created: POSIX time the entry was written.
        host: the host of the process that wrote it.
        pid: that process's id.
    """

    session_id: str
    store_url: str
    created: float = 0.0
    host: str = ""
    pid: int = 0


def _index_dir() -> Path:
    return home_dir() / "sessions"


def _legacy_index() -> Path:
    return home_dir() / "sessions.json"


def _write_entry(entry: IndexEntry) -> None:
    directory = _writable_home("sessions")
    tmp = directory / f".{entry.session_id}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    with open(tmp, "w", opener=open_private) as fh:
        fh.write(json.dumps(asdict(entry)))
    os.replace(tmp, directory / f"{entry.session_id}.json")  # atomic: readers see old or new


def _read_entry(path: Path) -> IndexEntry | None:
    try:
        data = json.loads(path.read_text())
        return IndexEntry(
            session_id=str(data["session_id"]),
            store_url=str(data["store_url"]),
            created=float(data.get("created", 0.0)),
            host=str(data.get("host", "")),
            pid=int(data.get("pid", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # vanished (forgotten meanwhile) or damaged: as if absent


def _migrate_legacy() -> None:
    """Move the entries of an old ``sessions.json`` into the directory, then remove it.

    Entries already in the directory win (they are newer). Safe to run concurrently: every
    writer writes the same content, and the rename of the old file happens once.
    """
    legacy = _legacy_index()
    try:
        data = json.loads(legacy.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        data = {}
    if isinstance(data, dict):
        for sid, url in data.items():
            if (
                isinstance(sid, str)
                and _SESSION_ID.fullmatch(sid)
                and url
                and not (_index_dir() / f"{sid}.json").exists()
            ):
                _write_entry(IndexEntry(sid, str(url)))
    try:
        legacy.rename(legacy.with_name("sessions.json.migrated"))
    except FileNotFoundError:
        pass  # another process migrated it first


def remember_session(session_id: str, store_url: str) -> None:
    """Record which store a session lives in (``STARBURST_HOME/sessions/{id}.json``).

    Raises:
        PermissionError: ``STARBURST_HOME`` is not writable (the message says what to set).
    """
    _migrate_legacy()
    _write_entry(IndexEntry(session_id, store_url, time.time(), socket.gethostname(), os.getpid()))


def remembered_store(session_id: str) -> str | None:
    """The store URL recorded for a session created or attached on this machine, if any."""
    if not _SESSION_ID.fullmatch(session_id):
        return None
    entry = _read_entry(_index_dir() / f"{session_id}.json")
    if entry is not None:
        return entry.store_url
    try:
        value = json.loads(_legacy_index().read_text()).get(session_id)
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def forget_session(session_id: str) -> None:
    """Remove a session's entry from the index (nothing happens if it has none)."""
    if not _SESSION_ID.fullmatch(session_id):
        return
    _migrate_legacy()
    (_index_dir() / f"{session_id}.json").unlink(missing_ok=True)


def indexed_sessions() -> list[IndexEntry]:
    """Every entry of the index, oldest session first."""
    try:
        _migrate_legacy()
    except PermissionError:
        pass  # read-only home: list what is there
    entries = []
    try:
        paths = sorted(_index_dir().glob("*.json"))
    except OSError:
        return []
    for path in paths:
        entry = _read_entry(path)
        if entry is not None:
            entries.append(entry)
    return entries
