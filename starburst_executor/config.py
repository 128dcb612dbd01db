"""Per-user defaults: where the embedded store lives and the payload signing key.

Environment variables (all optional):

- ``STARBURST_STORE``: default store URL when none is passed.
- ``STARBURST_HOME``: base directory for the defaults below (else ``$XDG_CACHE_HOME`` or
  ``~/.cache``, then ``starburst-executor``).
- ``STARBURST_SECRET_KEY``: hex HMAC key used to sign every record. When unset, a random key
  is created once in ``STARBURST_HOME/secret.key`` (mode 0600). Workers receive the key from
  their launcher; it is never written to the store.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["default_store_url", "home_dir", "secret_key"]

SECRET_ENV = "STARBURST_SECRET_KEY"


def home_dir() -> Path:
    """The per-user directory for the embedded store and the signing key."""
    explicit = os.environ.get("STARBURST_HOME")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "starburst-executor"


def default_store_url() -> str:
    """``STARBURST_STORE`` if set, else a ``file://`` URL under :func:`home_dir`."""
    return os.environ.get("STARBURST_STORE") or (home_dir() / "store").resolve().as_uri()


def secret_key() -> bytes:
    """The HMAC key that signs records: ``STARBURST_SECRET_KEY`` or the per-user key file.

    Raises:
        ValueError: ``STARBURST_SECRET_KEY`` is not hex of at least 16 bytes.
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
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
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
