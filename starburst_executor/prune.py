"""``starburst prune``: remove what crashed clients and old sessions left behind.

A plain ``StarburstExecutor`` deletes its session's data when it shuts down cleanly; a client
that crashed (or never called ``shutdown``) leaves the session in the store, its worker logs
in ``STARBURST_HOME/logs/`` and its entry in the session index. Removed here:

- a plain (not detached) session whose client process is gone (same host, and no process
  with its pid that started before the session; a client on another host cannot be checked,
  so such a session goes once its last activity is older than the age);
- any session closed, expired or cancelled (or already deleted) whose last activity is older
  than the age;
- worker log directories of removed sessions, and of sessions no store holds any more once
  older than the age; index entries of removed sessions.

Open detached sessions are never removed: they are meant to outlive their client.
"""

from __future__ import annotations

import logging
import shutil
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

from starburst_executor.config import forget_session, home_dir, indexed_sessions
from starburst_executor.errors import SessionError, StarburstError
from starburst_executor.launchers.local import process_started
from starburst_executor.protocol import INDEX, SessionKeys
from starburst_executor.sessions import SessionReader, codec_for
from starburst_executor.stores import Store, open_store

__all__ = ["Pruned", "parse_age", "prune"]

logger = logging.getLogger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Pruned:
    """One thing ``prune`` removed (or would remove, with ``dry_run``).

    Attributes:
        session_id: the session.
        store_url: its store ("" for a log directory with no session).
        reason: why it was removed.
        objects: store objects deleted.
    """

    session_id: str
    store_url: str
    reason: str
    objects: int = 0


def parse_age(text: str) -> float:
    """Seconds in an age such as ``7d``, ``12h``, ``30m``, ``90s``, ``2w`` or ``3600``.

    Raises:
        ValueError: not a number with an optional unit s/m/h/d/w.
    """
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in _UNITS else "s"
    number = value[:-1] if value[-1:] in _UNITS else value
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(
            f"age {text!r} is not a number with an optional unit: use e.g. 7d, 12h, 30m, 90s"
        ) from None
    if seconds < 0:
        raise ValueError(f"age {text!r} is negative")
    return seconds


def _client_gone(client: object, created: float) -> bool | None:
    """Whether a session's client process has ended: ``None`` when it cannot be told (another
    host, or a session from a version that did not record its client)."""
    if not isinstance(client, dict) or client.get("host") != socket.gethostname():
        return None
    try:
        pid = int(client["pid"])
    except (KeyError, TypeError, ValueError):
        return None
    started = process_started(pid)
    if started is None:
        return True  # no such process (or no /proc: then the pid is not checked further)
    recorded = client.get("started")
    # A process that started after the session was created reused the client's pid.
    limit = float(recorded) + 1.0 if isinstance(recorded, (int, float)) else created + 1.0
    return started > limit


def _verdict(reader: SessionReader, older_than: float, now: float) -> str | None:
    manifest = reader.manifest
    status = reader.status()
    age = now - status.last_activity
    if not manifest.detached:
        gone = _client_gone(manifest.extra.get("client"), manifest.created)
        if gone:
            return "its client process is gone"
        if gone is None and age > older_than and not status.state.terminal:
            return f"its client cannot be checked and it was idle for {_fmt_age(age)}"
    if status.state.terminal and age > older_than:
        return f"{status.state} {_fmt_age(age)} ago"
    return None


def _fmt_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _prune_store(store: Store, older_than: float, dry_run: bool) -> list[Pruned]:
    codec = codec_for(store)
    now = store.now()
    out: list[Pruned] = []
    for info in list(store.list(INDEX)):
        sid = SessionKeys.leaf(info.key)
        try:
            reader = SessionReader(store, sid, codec)
        except SessionError:  # data deleted earlier: only the "deleted" marker is left
            if now - info.last_modified > older_than:
                if not dry_run:
                    store.delete_many([info.key])
                out.append(Pruned(sid, store.url, "deleted earlier; marker removed", 1))
            continue
        except StarburstError as exc:  # damaged manifest, other version: say, do not touch
            logger.warning("session %s in %s skipped: %s", sid, store.url, exc)
            continue
        reason = _verdict(reader, older_than, now)
        if reason is None:
            continue
        objects = 0 if dry_run else reader.remove()
        out.append(Pruned(sid, store.url, reason, objects))
    return out


def prune(
    stores: Iterable[str | Store] | None = None,
    *,
    older_than: float = 7 * 86400.0,
    dry_run: bool = False,
) -> list[Pruned]:
    """Remove leftover sessions (see the module docstring); returns what was removed.

    Args:
        stores: where to look; default: every store in the session index, and the default
            store.
        older_than: seconds of inactivity after which ended sessions are removed.
        dry_run: only report what would be removed.

    Raises:
        StoreError: a store could not be read (nothing further is removed from it).
    """
    if stores is None:
        urls = {e.store_url for e in indexed_sessions()}
        urls.add(open_store(None).url)
        targets: list[str | Store] = [*sorted(urls)]
    else:
        targets = list(stores)
    removed: list[Pruned] = []
    for target in targets:
        store = open_store(target)
        removed.extend(_prune_store(store, older_than, dry_run))
    gone = {p.session_id for p in removed}
    if not dry_run:
        for sid in gone:
            forget_session(sid)
            shutil.rmtree(home_dir() / "logs" / sid, ignore_errors=True)
    removed.extend(_orphan_logs(gone, older_than, dry_run))
    return removed


def _orphan_logs(gone: set[str], older_than: float, dry_run: bool) -> list[Pruned]:
    """Log directories of sessions that neither the index nor any store knows any more."""
    logs = home_dir() / "logs"
    known = {e.session_id for e in indexed_sessions()}
    out = []
    try:
        dirs = [d for d in logs.iterdir() if d.is_dir()]
    except OSError:
        return []
    for directory in dirs:
        sid = directory.name
        if sid in gone or sid in known:
            continue
        try:
            age = time.time() - directory.stat().st_mtime
        except OSError:
            continue
        if age > older_than:
            if not dry_run:
                shutil.rmtree(directory, ignore_errors=True)
            out.append(Pruned(sid, "", f"worker logs of an unknown session, {_fmt_age(age)} old"))
    return out
