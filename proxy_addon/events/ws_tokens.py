"""The ws tokens the proxy issues to apps (``POST /restapi/oauth/wstoken`` answered by the proxy).

A token names the app (its client) and its account, expires after ``[events] ws_token_ttl``
seconds and is signed (HMAC-SHA256), so any worker or replica holding the same key verifies it
without a store round trip: the key derives from the store's encryption key, which all of them
share (a memory store without one gets a random per-process key). Reuse follows the SDKs rather
than the docs' strictest reading (issue 18, item 1): the docs' sample calls the token single-use
with ``expires_in: 30`` (ringcentral-api-docs ``docs/notifications/websockets/subscribing.md``),
while the SDKs keep one token for reconnects until 80 % of ``expires_in``, 600 s by default
(ringcentral-extensible ``packages/extensions/ws/src/index.ts``, ``_connect``). So a still-valid
token opens a socket again, but never two at once (:class:`SocketTokens`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass

PREFIX = "TPXWS1"


@dataclass(frozen=True, slots=True)
class WsGrant:
    client: str
    account: str
    expires: float  # Unix time
    nonce: str


class WsTokenError(ValueError):
    """Why a ws token is refused; ``code`` is the proxy's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def signing_key(store_key_material: str | None) -> bytes:
    if store_key_material:
        return hashlib.sha256(b"tokenproxy ws tokens\0" + store_key_material.encode()).digest()
    return os.urandom(32)


class WsTokens:
    def __init__(self, key: bytes, ttl: float) -> None:
        self._key = key
        self.ttl = ttl

    def issue(self, client: str, account: str) -> tuple[str, WsGrant]:
        grant = WsGrant(client, account, round(time.time() + self.ttl, 3),
                        base64.urlsafe_b64encode(os.urandom(12)).decode())
        payload = _b64(json.dumps([grant.client, grant.account, grant.expires,
                                   grant.nonce], separators=(",", ":")).encode())
        return f"{PREFIX}.{payload}.{self._sign(payload)}", grant

    def verify(self, token: str) -> WsGrant:
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != PREFIX or len(token) > 1024:
            raise WsTokenError("TPX-WS-TOKEN-UNKNOWN", "Not a ws token this proxy issued: get "
                               "one with POST /restapi/oauth/wstoken.")
        if not hmac.compare_digest(self._sign(parts[1]), parts[2]):
            raise WsTokenError("TPX-WS-TOKEN-UNKNOWN", "The ws token's signature does not "
                               "verify: get a new one with POST /restapi/oauth/wstoken.")
        try:
            client, account, expires, nonce = json.loads(_unb64(parts[1]))
            grant = WsGrant(str(client), str(account), float(expires), str(nonce))
        except (ValueError, TypeError):
            raise WsTokenError("TPX-WS-TOKEN-UNKNOWN", "The ws token is malformed.") from None
        if time.time() >= grant.expires:
            raise WsTokenError("TPX-WS-TOKEN-EXPIRED", "The ws token expired: get a new one "
                               "with POST /restapi/oauth/wstoken.")
        return grant

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())


class SocketTokens:
    """The ws tokens that have a socket open in this process: a token opens one at a time."""

    def __init__(self) -> None:
        self._open: set[str] = set()

    def claim(self, grant: WsGrant) -> None:
        if grant.nonce in self._open:
            raise WsTokenError("TPX-WS-TOKEN-IN-USE", "This ws token already has a socket "
                               "open: a token opens one connection at a time; get a new one "
                               "with POST /restapi/oauth/wstoken.")
        self._open.add(grant.nonce)

    def release(self, grant: WsGrant) -> None:
        self._open.discard(grant.nonce)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
