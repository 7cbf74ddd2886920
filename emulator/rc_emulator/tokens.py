"""Opaque token format of the emulator.

A token is the unpadded base64url encoding of 33 bytes::

    b"RCE1" | kind (1 byte) | 24 random bytes | first 4 bytes of sha256(of the preceding 29)

so the emulator can tell a string it could have issued ("parsable": maybe unknown, revoked,
expired...) from garbage (OAU-149). Kinds: ``A`` access token, ``R`` refresh token,
``C`` authorization code, ``W`` WebSocket access token, ``S`` WebSocket session (wsc) token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from typing import Literal

Kind = Literal["A", "R", "C", "W", "S"]

_MAGIC = b"RCE1"
_RANDOM_LEN = 24
_RAW_LEN = len(_MAGIC) + 1 + _RANDOM_LEN + 4
_ENCODED_LEN = (_RAW_LEN * 4) // 3  # 33 bytes -> 44 chars, no padding
_KINDS = frozenset(b"ARCWS")
_SHAPE = re.compile(rf"[A-Za-z0-9_-]{{{_ENCODED_LEN}}}")


def _checksum(head: bytes) -> bytes:
    return hashlib.sha256(head).digest()[:4]


def new_token(kind: Kind) -> str:
    """Return a fresh random token of ``kind``."""
    head = _MAGIC + kind.encode("ascii") + secrets.token_bytes(_RANDOM_LEN)
    return base64.urlsafe_b64encode(head + _checksum(head)).decode("ascii")


def token_kind(token: str) -> Kind | None:
    """Kind of a well-formed token, or None when ``token`` is not in the emulator's format."""
    if _SHAPE.fullmatch(token) is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
    except (binascii.Error, ValueError):
        return None
    if len(raw) != _RAW_LEN or not raw.startswith(_MAGIC):
        return None
    head, check = raw[:-4], raw[-4:]
    if _checksum(head) != check or raw[len(_MAGIC)] not in _KINDS:
        return None
    return chr(raw[len(_MAGIC)])  # type: ignore[return-value]
