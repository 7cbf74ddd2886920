"""Encryption at rest for stored token sets (Fernet, with key rotation).

The store never sees a token in clear: :class:`TokenCipher` seals a serialised token set
before it is written and opens it after it is read. Keys come from an environment variable
(comma-separated: the first encrypts, all decrypt, so old keys can be listed during rotation).
"""

from __future__ import annotations

import logging

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

log = logging.getLogger("tokenproxy.crypto")

SEALED = b"fernet:"
PLAIN = b"plain:"


class BadKeyMaterial(ValueError):
    """The configured key material is unusable."""


class UnreadableRecord(ValueError):
    """A stored value cannot be opened (wrong key, truncated or foreign data)."""


class TokenCipher:
    def __init__(self, keys: list[bytes] | None) -> None:
        self._fernet = MultiFernet([Fernet(k) for k in keys]) if keys else None

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


def generate_key() -> str:
    return Fernet.generate_key().decode()
