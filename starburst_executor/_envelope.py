"""The signed envelope every stored record travels in: ``magic | version | kind | HMAC |
payload``. Records are verified here before anything is unpickled: pickles are code.

The HMAC also covers the key the record is bound to (not stored: both sides know it), and
every key names its session (``sessions/{sid}/...``, ``index/{sid}``). So a validly signed
record copied onto another key, or replayed from another session, fails its check: without
this, a result copied onto another batch's key was delivered as that batch's result, and a
batch from another session was run.

:mod:`starburst_executor.protocol` defines the records and re-exports :class:`Codec` and
:data:`PROTOCOL_VERSION`; import them from there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
from typing import Any

from starburst_executor.errors import CorruptRecordError, ProtocolMismatchError

__all__ = ["PROTOCOL_VERSION", "Codec"]

# 2: the HMAC covers the record's key (1 signed the body alone).
PROTOCOL_VERSION = 2
_MAGIC = b"SBX"
_JSON, _PICKLE = b"J", b"P"
_MAC_SIZE = 32
_HEADER = len(_MAGIC) + 1 + 1


class Codec:
    """Encodes and verifies records: ``magic | version | kind | HMAC | payload``.

    Args:
        key: the HMAC key (see :func:`starburst_executor.config.secret_key`).
    """

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, header: bytes, key: str, payload: bytes) -> bytes:
        bound = key.encode()
        # Length-prefixed, so no key/payload split of the same bytes signs alike.
        message = header + len(bound).to_bytes(4, "big") + bound + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def _seal(self, kind: bytes, payload: bytes, key: str) -> bytes:
        header = _MAGIC + bytes([PROTOCOL_VERSION]) + kind
        return header + self._mac(header, key, payload) + payload

    def _open(self, blob: bytes, kind: bytes, key: str, where: str | None) -> bytes:
        where = where or key
        if len(blob) < _HEADER + _MAC_SIZE or blob[:3] != _MAGIC:
            raise CorruptRecordError(f"{where} is not a starburst record (bad header)")
        if blob[3] != PROTOCOL_VERSION:
            raise ProtocolMismatchError(
                f"{where} was written with store protocol version {blob[3]}, this is version "
                f"{PROTOCOL_VERSION}: use the same starburst-executor version on both sides"
            )
        if blob[4:5] != kind:
            raise CorruptRecordError(f"{where} holds the wrong kind of record")
        mac = blob[_HEADER : _HEADER + _MAC_SIZE]
        payload = blob[_HEADER + _MAC_SIZE :]
        if not hmac.compare_digest(mac, self._mac(blob[:_HEADER], key, payload)):
            raise CorruptRecordError(
                f"{where} failed its signature check: it was tampered with, copied there from "
                "another key or another session, or written with another "
                "STARBURST_SECRET_KEY (client and workers must share the key)"
            )
        return payload

    def encode_json(self, record: dict[str, Any], key: str) -> bytes:
        """Sign ``record`` as JSON, bound to ``key`` (the key it is stored under)."""
        return self._seal(_JSON, json.dumps(record, separators=(",", ":")).encode(), key)

    def decode_json(self, blob: bytes, key: str, where: str | None = None) -> dict[str, Any]:
        """Verify and load a JSON record.

        Args:
            blob: the stored bytes.
            key: the key the record must be bound to.
            where: how errors name the object read (default ``key``): differs for a record
                that rides inside another object (a result inline in its done event).

        Raises:
            CorruptRecordError: damaged, bound to another key, or not a JSON object.
            ProtocolMismatchError: written by another protocol version.
        """
        where = where or key
        payload = self._open(blob, _JSON, key, where)
        try:
            value = json.loads(payload)
        except ValueError as exc:
            raise CorruptRecordError(f"{where} holds invalid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise CorruptRecordError(f"{where} does not hold a JSON object")
        return value

    def encode_pickle(self, record: Any, key: str) -> bytes:
        """Records of plain containers and bytes (the user's objects are already pickled),
        bound to ``key``."""
        return self._seal(_PICKLE, pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL), key)

    def decode_pickle(self, blob: bytes, key: str, where: str | None = None) -> Any:
        """Verify, then unpickle (see :meth:`decode_json` for the arguments and errors)."""
        where = where or key
        payload = self._open(blob, _PICKLE, key, where)
        try:
            return pickle.loads(payload)
        except Exception as exc:  # a signed payload that will not load: a bug, say where
            raise CorruptRecordError(f"{where} could not be decoded: {exc!r}") from exc

    def encode_blob(self, data: bytes, key: str) -> bytes:
        return self._seal(_PICKLE, data, key)

    def decode_blob(self, blob: bytes, key: str) -> bytes:
        return self._open(blob, _PICKLE, key, key)
