"""Virtual tokens: what an app that logs in *through* the proxy gets instead of a platform session.

A virtual pair (access + refresh) maps the app to one configured account. The tokens are random
(``TPXA…``/``TPXR…``), kept in the shared store only as SHA-256 digests with their metadata, so
every replica honours them and they survive restarts. Each record is sealed with the store key
(authenticated encryption) and names its own digest: someone who can write to the store but
has no key can neither plant a grant nor move one under a token of their choosing. A short
in-process cache keeps the hot path free of store round trips. Refreshing a virtual refresh
token rotates the pair like the platform does; revoking either token of a pair revokes that
pair only. No platform session is created: a hundred apps logging in every minute cost the
account nothing.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass

from .crypto import SEALED, UnreadableRecord
from .store import StoreError, TokenStore

ACCESS_PREFIX, REFRESH_PREFIX = "TPXA", "TPXR"
ACCESS_TTL, REFRESH_TTL = 3600, 7 * 86400
CACHE_SECONDS = 5.0  # a revocation on another replica is honoured here within this time


@dataclass(frozen=True)
class VirtualGrant:
    account: str
    client_id: str
    kind: str  # "access" | "refresh"
    expires_at: float
    pair: tuple[str, str]  # digests of the pair's access and refresh tokens

    def to_json(self, token_digest: str) -> bytes:
        return json.dumps({"digest": token_digest, "account": self.account,
                           "client_id": self.client_id, "kind": self.kind,
                           "expires_at": self.expires_at, "pair": list(self.pair)}).encode()

    @classmethod
    def from_json(cls, raw: bytes, token_digest: str) -> VirtualGrant | None:
        """The grant stored under ``token_digest``; None for a record written for another
        digest, or foreign or damaged data (as if unknown)."""
        try:
            data = json.loads(raw)
            if data["digest"] != token_digest:
                return None
            return cls(str(data["account"]), str(data["client_id"]), str(data["kind"]),
                       float(data["expires_at"]), (str(data["pair"][0]), str(data["pair"][1])))
        except (ValueError, KeyError, TypeError, IndexError):
            return None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def looks_virtual(token: str) -> bool:
    return token.startswith((ACCESS_PREFIX, REFRESH_PREFIX)) and 40 <= len(token) <= 80


@dataclass(frozen=True)
class IssuedPair:
    access_token: str
    refresh_token: str
    access_expires_in: int
    refresh_expires_in: int


class VirtualTokens:
    def __init__(self, store: TokenStore, access_ttl: int = ACCESS_TTL,
                 refresh_ttl: int = REFRESH_TTL) -> None:
        self._store = store
        self._access_ttl, self._refresh_ttl = access_ttl, refresh_ttl
        self._cache: dict[str, tuple[VirtualGrant | None, float]] = {}

    async def issue(self, account: str, client_id: str) -> IssuedPair:
        access = ACCESS_PREFIX + secrets.token_urlsafe(32)
        refresh = REFRESH_PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        pair = (digest(access), digest(refresh))
        for kind, token_digest, ttl in (("access", pair[0], self._access_ttl),
                                        ("refresh", pair[1], self._refresh_ttl)):
            grant = VirtualGrant(account, client_id, kind, now + ttl, pair)
            await self._store.put_virtual(
                token_digest, self._store.codec.cipher.seal(grant.to_json(token_digest)),
                now + ttl)
        return IssuedPair(access, refresh, self._access_ttl, self._refresh_ttl)

    async def resolve(self, token: str, kind: str) -> VirtualGrant | None:
        """The live grant of a virtual token of ``kind``, or None (unknown, revoked, expired,
        or the other kind). StoreError propagates (the caller answers 503)."""
        key = digest(token)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now - cached[1] < CACHE_SECONDS:
            grant = cached[0]
        else:
            raw = await self._store.get_virtual(key)
            grant = self._open(raw, key) if raw is not None else None
            if len(self._cache) > 50_000:  # bounded: drop everything rather than grow
                self._cache.clear()
            self._cache[key] = (grant, now)
        if grant is None or grant.kind != kind or grant.expires_at <= time.time():
            return None
        return grant

    def _open(self, raw: bytes, token_digest: str) -> VirtualGrant | None:
        cipher = self._store.codec.cipher
        if cipher.encrypts and not raw.startswith(SEALED):
            return None  # written in clear while we hold a key: planted
        try:
            plaintext = cipher.open(raw)
        except UnreadableRecord:  # not sealed with our key: foreign or damaged
            return None
        return VirtualGrant.from_json(plaintext, token_digest)

    def expired(self, token: str) -> bool:
        """True when the token was known here and has only expired (OAU-210, not OAU-213)."""
        cached = self._cache.get(digest(token))
        return bool(cached and cached[0] and cached[0].expires_at <= time.time())

    async def rotate(self, refresh_token: str, client_id: str) -> tuple[str, IssuedPair] | None:
        """A new pair for a live virtual refresh token of ``client_id`` (the old pair dies);
        None when the refresh token is not (or no longer) valid."""
        grant = await self.resolve(refresh_token, "refresh")
        if grant is None or grant.client_id != client_id:
            return None
        await self.revoke_pair(grant)
        return grant.account, await self.issue(grant.account, client_id)

    async def revoke(self, token: str) -> bool:
        """Revoke the pair ``token`` belongs to; False if it is not a live virtual token."""
        grant = await self.resolve(token, "access") or await self.resolve(token, "refresh")
        if grant is None:
            return False
        await self.revoke_pair(grant)
        return True

    async def revoke_pair(self, grant: VirtualGrant) -> None:
        await self._store.delete_virtual(list(grant.pair))
        for key in grant.pair:
            self._cache[key] = (None, time.monotonic())


__all__ = ["IssuedPair", "StoreError", "VirtualGrant", "VirtualTokens", "looks_virtual"]
