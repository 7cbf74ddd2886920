"""Encryption at rest for stored token sets (Fernet, with key rotation).

The store never sees a token in clear: :class:`TokenCipher` seals a serialised token set
before it is written and opens it after it is read. Keys come from an environment variable
(comma-separated: the first encrypts, all decrypt, so old keys can be listed during rotation).
While older keys are listed, the stores re-seal what they hold with the first key when they
open, so the older keys can be dropped after one start of every replica.

Every sealed record is bound to what it is (a token set, a virtual-grant record, the key check)
and to its name (the account, the virtual token's digest): :func:`bind` puts both in front of
the plaintext *inside* the Fernet token, so they are encrypted and authenticated with it, and
:func:`unbind` hands them back for the reader to compare (:class:`~.base.RecordCodec`). Fernet
has no associated data; a header under its HMAC protects the binding just as well, and keeps
the key format, key rotation (``MultiFernet.rotate`` keeps the plaintext, binding included) and
the key environment variables as they are. Values sealed before the binding have no header
(:data:`BOUND` is never the start of a token set's JSON or of the old key-check value).
"""

from __future__ import annotations

import json
import logging

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

log = logging.getLogger("tokenproxy.crypto")

SEALED = b"fernet:"
PLAIN = b"plain:"
BOUND = b"tokenproxy-bound-v2 "  # + JSON [kind, name] + newline + the record's plaintext


class BadKeyMaterial(ValueError):
    """The configured key material is unusable."""


class UnreadableRecord(ValueError):
    """A stored value cannot be opened (wrong key, truncated or foreign data)."""


class TokenCipher:
    def __init__(self, keys: list[bytes] | None) -> None:
        self._fernet = MultiFernet([Fernet(k) for k in keys]) if keys else None
        self._primary = Fernet(keys[0]) if keys else None
        self.rotating = bool(keys) and len(keys) > 1  # older keys listed after the first

    @property
    def encrypts(self) -> bool:
        return self._fernet is not None

    @classmethod
    def from_key_material(cls, material: str | None) -> TokenCipher:
        if not material:
            return cls(None)
        keys = []
        for index, part in enumerate(p.strip() for p in material.split(",")):
            try:
                Fernet(part.encode())
            except (ValueError, TypeError):
                raise BadKeyMaterial(f"key #{index + 1} is not a Fernet key (32 url-safe base64 "
                                "bytes; make one with `tokenproxy keygen`)") from None
            keys.append(part.encode())
        return cls(keys)

    def seal(self, plaintext: bytes) -> bytes:
        if self._fernet is None:
            return PLAIN + plaintext
        return SEALED + self._fernet.encrypt(plaintext)

    def stale(self, blob: bytes) -> bool:
        """True for a value sealed with one of the older keys: re-seal it (:meth:`reseal`)
        so the older key can be dropped from the list."""
        if not self.rotating or not blob.startswith(SEALED):
            return False
        assert self._primary is not None
        try:
            self._primary.decrypt(blob[len(SEALED):])
        except InvalidToken:
            return True
        return False

    def reseal(self, blob: bytes) -> bytes:
        """``blob`` sealed again with the first key (UnreadableRecord if no key opens it)."""
        if self._fernet is None or not blob.startswith(SEALED):
            raise UnreadableRecord("only sealed values can be re-sealed")
        try:
            return SEALED + self._fernet.rotate(blob[len(SEALED):])
        except InvalidToken:
            raise UnreadableRecord("value cannot be decrypted with the configured "
                                   "key(s): wrong key, or corrupted") from None

    def open(self, blob: bytes) -> bytes:
        if blob.startswith(SEALED):
            if self._fernet is None:
                raise UnreadableRecord("value is encrypted but no store key is configured")
            try:
                return self._fernet.decrypt(blob[len(SEALED):])
            except InvalidToken:
                raise UnreadableRecord("value cannot be decrypted with the configured "
                                       "key(s): wrong key, or corrupted") from None
        if blob.startswith(PLAIN):
            return blob[len(PLAIN):]
        raise UnreadableRecord("value is not a tokenproxy record")


def bind(kind: str, name: str, payload: bytes) -> bytes:
    """``payload`` with what it is and whose it is in front (sealed with it)."""
    return BOUND + json.dumps([kind, name]).encode() + b"\n" + payload


def unbind(plaintext: bytes) -> tuple[str, str, bytes] | None:
    """(kind, name, payload) of a bound plaintext; None for one sealed before the binding."""
    if not plaintext.startswith(BOUND):
        return None
    head, sep, payload = plaintext[len(BOUND):].partition(b"\n")
    try:
        kind, name = json.loads(head) if sep else (None, None)
    except (ValueError, TypeError):
        kind = name = None
    if not isinstance(kind, str) or not isinstance(name, str):
        raise UnreadableRecord("its binding header is damaged")
    return kind, name, payload


def generate_key() -> str:
    return Fernet.generate_key().decode()
