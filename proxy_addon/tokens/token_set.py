"""The token set one account holds: parsed from a token-endpoint answer, checked for freshness.

Produced by :mod:`proxy_addon.upstream.token_endpoint`,
held by :mod:`proxy_addon.tokens.account`. Times are wall-clock seconds (Unix time, the
clock's ``wall()``) so a token set can be persisted and shared between processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


class MalformedTokenResponse(ValueError):
    """The token endpoint answered 200 with a body that is not a usable token set."""


@dataclass(frozen=True, slots=True)
class TokenSet:
    access_token: str
    access_expires_at: float
    refresh_token: str | None
    refresh_expires_at: float | None
    issued_at: float = 0.0
    owner_id: str = ""
    session_id: str = ""
    scope: str = ""
    # The lineage of the store record this set was written in: minted when a record is
    # created (generation 1), kept by every rotation after it. A different epoch under the
    # same account means the store was reset (flushed, restored) and written anew since.
    epoch: str = ""

    @property
    def access_lifetime(self) -> float:
        """How long the access token was issued for (seconds)."""
        return max(0.0, self.access_expires_at - self.issued_at)

    def access_alive(self, now: float) -> bool:
        return bool(self.access_token) and now < self.access_expires_at

    def refresh_alive(self, now: float) -> bool:
        if not self.refresh_token:
            return False
        return self.refresh_expires_at is None or now < self.refresh_expires_at

    def __repr__(self) -> str:  # never print token values
        return (f"TokenSet(owner_id={self.owner_id!r}, session_id={self.session_id!r}, "
                f"access_expires_at={self.access_expires_at:.3f}, "
                f"refresh_expires_at={self.refresh_expires_at})")

    def to_json(self) -> bytes:
        """Serialised for the store (which encrypts it)."""
        return json.dumps({
            "access_token": self.access_token, "access_expires_at": self.access_expires_at,
            "refresh_token": self.refresh_token, "refresh_expires_at": self.refresh_expires_at,
            "issued_at": self.issued_at, "owner_id": self.owner_id,
            "session_id": self.session_id, "scope": self.scope,
            **({"epoch": self.epoch} if self.epoch else {}),
        }, separators=(",", ":")).encode()

    def same_pair(self, other: TokenSet) -> bool:
        """The same tokens (by value): one session's pair, whatever was stored beside it."""
        return (self.access_token, self.refresh_token) == (other.access_token,
                                                            other.refresh_token)

    def shares_a_token(self, other: TokenSet) -> bool:
        """Either token is the other set's too: revoking one would end the other."""
        mine = {self.access_token, self.refresh_token} - {None, ""}
        return bool(mine & {other.access_token, other.refresh_token})

    @classmethod
    def from_json(cls, raw: bytes) -> TokenSet:
        """Inverse of :meth:`to_json`; raises ValueError on anything else."""
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError("stored token set is not an object")
        try:
            tokens = cls(
                access_token=str(body["access_token"]),
                access_expires_at=float(body["access_expires_at"]),
                refresh_token=None if body["refresh_token"] is None else str(
                    body["refresh_token"]),
                refresh_expires_at=None if body["refresh_expires_at"] is None else float(
                    body["refresh_expires_at"]),
                issued_at=float(body.get("issued_at", 0.0)),
                owner_id=str(body.get("owner_id", "")),
                session_id=str(body.get("session_id", "")),
                scope=str(body.get("scope", "")),
                epoch=str(body.get("epoch", "")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"stored token set is incomplete: {exc}") from None
        if not tokens.access_token and not tokens.refresh_token:
            raise ValueError("stored token set holds no token")
        return tokens

    @classmethod
    def from_response(cls, raw: bytes, requested_at: float) -> TokenSet:
        """Parse a token-endpoint success body. Expiry counts from when the call was *sent*,
        so the proxy's idea of expiry is never later than the platform's."""
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise MalformedTokenResponse("token endpoint answered 200 with non-JSON") from None
        if not isinstance(body, dict):
            raise MalformedTokenResponse("token endpoint answered 200 with a non-object body")
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise MalformedTokenResponse("token endpoint answer has no access_token")
        expires_in = _seconds(body, "expires_in", default=3600.0)
        refresh = body.get("refresh_token")
        if refresh is not None and not isinstance(refresh, str):
            raise MalformedTokenResponse("token endpoint answer has a non-string refresh_token")
        refresh_in = _seconds(body, "refresh_token_expires_in", default=None)
        return cls(
            access_token=access,
            access_expires_at=requested_at + expires_in,
            refresh_token=refresh or None,
            refresh_expires_at=None if refresh_in is None else requested_at + refresh_in,
            issued_at=requested_at,
            owner_id=str(body.get("owner_id") or ""),
            session_id=str(body.get("session_id") or ""),
            scope=str(body.get("scope") or ""),
        )


def _seconds(body: dict[str, object], name: str, default: float | None) -> float | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise MalformedTokenResponse(f"token endpoint answer has a malformed {name}")
    try:
        seconds = float(value)
    except ValueError:
        raise MalformedTokenResponse(f"token endpoint answer has a malformed {name}") from None
    if not 0 < seconds < 10 * 365 * 86400:
        raise MalformedTokenResponse(f"token endpoint answer has an out-of-range {name}")
    return seconds
