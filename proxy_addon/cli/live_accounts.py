"""Accounts a reload adds, changes or removes, applied to the running process (issue 19, item 1).

:mod:`.reload` decides what changed and in which order; this module does it to everything of
this process that knows accounts: the token pool, identification of apps that log in through
the proxy (:mod:`proxy_addon.gateway.identify`, :mod:`proxy_addon.gateway.login`,
:mod:`proxy_addon.virtual.login`), the WebSocket channels, the metrics' series.

- **added**: its tokens adopt the stored session if there is one (another worker or replica may
  have made it), else it authenticates on first use, like an account at start-up;
- **changed** credentials (secret, JWT, password, token lifetime, session budget, media host):
  the session stays; its next login or refresh uses the new ones; virtual grants bound to the
  old credentials end (:meth:`VirtualTokens.use_accounts`);
- **removed**: no new request reaches it (its clients left in the same reload); the requests
  holding its token finish (bounded), then its session is revoked on the platform and cleared
  from the store under the account's renewal lock, as ``tokenproxy revoke`` does. Every worker
  and replica does this; the first revokes, the others find the store cleared.

An account whose app (``client_id``), platform (``upstream``) or ``grant`` changes would be
another app's session under the same name: :mod:`.reload` refuses that file.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from ..config import AccountConfig, Config
from ..ops.metrics import Metrics
from ..store import TokenStore
from ..tokens.pool import AccountTokens, TokenPool
from .revoke import RevokeError, revoke_session

log = logging.getLogger("tokenproxy.reload")

IDENTITY = ("client_id", "upstream", "grant")  # what makes a session another app's
RETIRE_GRACE_MAX = 30.0  # s at most for a removed account's requests in flight


@dataclass(frozen=True)
class AccountChanges:
    added: tuple[AccountConfig, ...]
    changed: tuple[AccountConfig, ...]
    removed: tuple[AccountConfig, ...]

    @classmethod
    def between(cls, old: Config, new: Config) -> AccountChanges:
        before = {a.name: a for a in old.accounts}
        after = {a.name: a for a in new.accounts}
        return cls(tuple(a for a in new.accounts if a.name not in before),
                   tuple(a for a in new.accounts if a.name in before and a != before[a.name]),
                   tuple(a for a in old.accounts if a.name not in after))

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def identity_changes(self, old: Config) -> list[str]:
        """``name (field, ...)`` of each account whose app, platform or grant changed."""
        before = {a.name: a for a in old.accounts}
        found = []
        for account in self.changed:
            fields = [f for f in IDENTITY
                      if getattr(account, f) != getattr(before[account.name], f)]
            if fields:
                found.append(f"{account.name} ({', '.join(fields)})")
        return found


class LiveAccounts:
    """This process's parts that know accounts, told of a reload's accounts."""

    def __init__(self, pool: TokenPool, store: TokenStore, metrics: Metrics,
                 listeners: Iterable[Callable[[tuple[AccountConfig, ...]], object]],
                 async_listeners: Iterable[
                     Callable[[tuple[AccountConfig, ...]], Awaitable[None]]] = ()) -> None:
        self._pool = pool
        self._store = store
        self._metrics = metrics
        self._listeners = list(listeners)  # identify, login, the login interceptor
        self._async_listeners = list(async_listeners)  # the WebSocket channels
        self._retiring: dict[str, AccountTokens] = {}  # removed, session not yet revoked

    async def add(self, new: Config, changes: AccountChanges) -> None:
        """Before the clients that name them: added accounts join the pool (store read),
        changed ones take their new settings."""
        for account in changes.added:
            await self._pool.add(account)
        for account in changes.changed:
            self._pool.update(account)
        if changes.added:
            self._metrics.prepare_names(new)

    async def settle(self, new: Config, changes: AccountChanges) -> None:
        """After the clients: every part knows the new accounts; removed ones leave the pool
        (nothing finds them any more)."""
        for account in changes.removed:
            self._retiring[account.name] = self._pool.remove(account.name)
        for listener in self._listeners:
            listener(new.accounts)
        for listener_async in self._async_listeners:
            await listener_async(new.accounts)

    async def retire(self, old: Config, changes: AccountChanges) -> None:
        """The removed accounts' requests in flight finish, then their sessions end."""
        grace = min(old.proxy.shutdown_timeout, RETIRE_GRACE_MAX)
        for account in changes.removed:
            tokens = self._retiring.pop(account.name, None)
            if tokens is not None:
                await tokens.retire(grace)
            try:
                lines = await revoke_session(old, account, self._store)
            except RevokeError as exc:
                log.error("account %s removed by the reload; its session could not be revoked: "
                          "%s", account.name, exc, extra={"event": "account_removed"})
                continue
            log.info("account %s removed by the reload: %s", account.name,
                     "; ".join(line.strip() for line in lines), extra={"event": "account_removed"})
