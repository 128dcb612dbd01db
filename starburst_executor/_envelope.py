"""The signed envelope every stored record travels in: ``magic | version | kind | HMAC |
payload``. Records are verified here before anything is unpickled: pickles are code.

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

PROTOCOL_VERSION = 1
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

    def _seal(self, kind: bytes, payload: bytes) -> bytes:
        header = _MAGIC + bytes([PROTOCOL_VERSION]) + kind
        mac = hmac.new(self._key, header + payload, hashlib.sha256).digest()
        return header + mac + payload

    def _open(self, blob: bytes, kind: bytes, where: str) -> bytes:
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
        expected = hmac.new(self._key, blob[:_HEADER] + payload, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise CorruptRecordError(
                f"{where} failed its signature check: it was tampered with, or written with "
                "another STARBURST_SECRET_KEY (client and workers must share the key)"
            )
        return payload

    def encode_json(self, record: dict[str, Any]) -> bytes:
        return self._seal(_JSON, json.dumps(record, separators=(",", ":")).encode())

    def decode_json(self, blob: bytes, where: str) -> dict[str, Any]:
        payload = self._open(blob, _JSON, where)
        try:
            value = json.loads(payload)
        except ValueError as exc:
            raise CorruptRecordError(f"{where} holds invalid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise CorruptRecordError(f"{where} does not hold a JSON object")
        return value

    def encode_pickle(self, record: Any) -> bytes:
        """Records of plain containers and bytes: the user's objects are already pickled."""
        return self._seal(_PICKLE, pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))

    def decode_pickle(self, blob: bytes, where: str) -> Any:
        payload = self._open(blob, _PICKLE, where)
        try:
            return pickle.loads(payload)
        except Exception as exc:  # a signed payload that will not load: a bug, say where
            raise CorruptRecordError(f"{where} could not be decoded: {exc!r}") from exc

    def encode_blob(self, data: bytes) -> bytes:
        return self._seal(_PICKLE, data)

    def decode_blob(self, blob: bytes, where: str) -> bytes:
        return self._open(blob, _PICKLE, where)
