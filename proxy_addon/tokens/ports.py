"""What the token core is given: the platform (obtain, refresh, revoke token sets), the store
(:class:`~proxy_addon.store.base.TokenStore`, shared by every process) and an observer (what
it reports: metrics, and the secrets that logs must redact).

:mod:`proxy_addon.upstream.token_endpoint` implements :class:`Platform` over HTTP; its
exceptions subclass :class:`PlatformRefused` and :class:`PlatformUnreachable`.
:class:`proxy_addon.ops.metrics.PoolObserver` implements :class:`Observer`.
"""

from __future__ import annotations

from typing import Protocol

from ..config import AccountConfig
from ..store.base import TokenStore
from .token_set import TokenSet

__all__ = ["NullObserver", "Observer", "Platform", "PlatformRefused", "PlatformUnreachable",
           "TokenStore"]


class PlatformRefused(Exception):
    """The platform answered a token call, and said no. Subclasses supply the attributes."""

    status: int  # HTTP status of the answer
    error: str  # OAuth "error" (invalid_grant, ...) or ""
    code: str  # platform errorCode (OAU-153, ...) or ""
    retry_after: float | None  # the answer's Retry-After, in seconds

    @property
    def rate_limited(self) -> bool:
        raise NotImplementedError

    @property
    def refresh_token_dead(self) -> bool:
        """On a refresh grant: the refresh token can never work again."""
        raise NotImplementedError

    @property
    def hint(self) -> str:
        """What an operator can do about it."""
        raise NotImplementedError


class PlatformUnreachable(Exception):
    """No answer from the platform (connection refused, DNS, TLS, timeout)."""


class Platform(Protocol):
    async def login(self, account: AccountConfig) -> TokenSet:
        """A new session with the account's own grant."""
        ...

    async def refresh(self, account: AccountConfig, refresh_token: str) -> TokenSet: ...

    async def revoke(self, account: AccountConfig, token: str) -> None:
        """End the session ``token`` belongs to."""
        ...


class Observer(Protocol):
    def secrets(self, *values: str | None) -> None:
        """Token values just obtained or adopted: logs must never print them."""
        ...

    def token_wait(self, account: str, seconds: float) -> None:
        """A request waited this long for :meth:`AccountTokens.lease`."""
        ...

    def renewal(self, account: str, outcome: str) -> None:
        """A renewal ended: refreshed, logged_in, adopted or failed."""
        ...

    def session_lost(self, account: str, reason: str) -> None:
        """revoked_or_evicted or refresh_token_dead."""
        ...

    def store_lock_wait(self, backend: str, seconds: float) -> None:
        """A renewal waited this long for the store's lock (or another process's tokens)."""
        ...


class NullObserver:
    """Reports nothing (tests, tools)."""

    def secrets(self, *values: str | None) -> None:
        pass

    def token_wait(self, account: str, seconds: float) -> None:
        pass

    def renewal(self, account: str, outcome: str) -> None:
        pass

    def session_lost(self, account: str, reason: str) -> None:
        pass

    def store_lock_wait(self, backend: str, seconds: float) -> None:
        pass
