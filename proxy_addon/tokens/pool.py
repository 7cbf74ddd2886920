"""The token pool: every account of one proxy process, each with one always-fresh token set
shared by all its clients (:class:`~.account.AccountTokens`).

Built by the composition root (:mod:`proxy_addon.cli.run`) from the config and the ports it is
given: the platform, the store, an observer and a clock. It relays the store's notifications
(another process wrote an account) to the accounts.
"""

from __future__ import annotations

from ..config import Config
from ..store.base import TokenStore
from .account import AccountTokens, Lease, process_owner
from .budget import AuthBudgets
from .clock import Clock, SystemClock
from .failures import Reason, TokenUnavailable
from .ports import Observer, Platform
from .settings import PoolSettings
from .states import AccountState

__all__ = ["AccountState", "AccountTokens", "Lease", "PoolSettings", "Reason", "TokenPool",
           "TokenUnavailable"]

class TokenPool:
    """All accounts of one proxy process."""

    def __init__(self, accounts: dict[str, AccountTokens],
                 store: TokenStore | None = None) -> None:
        self.accounts = accounts
        self._store = store

    @classmethod
    def build(cls, config: Config, platform: Platform, store: TokenStore, *,
              observer: Observer, settings: PoolSettings | None = None,
              clock: Clock | None = None, owner: str = "") -> TokenPool:
        settings = settings or PoolSettings.from_config(config)
        clock = clock or SystemClock()
        budgets = AuthBudgets(settings.auth_budget_calls, settings.safe_budget_window,
                              clock.monotonic)
        owner = owner or process_owner()
        return cls({a.name: AccountTokens(a, platform, settings, store,
                                          budgets.for_client(a.client_id), clock=clock,
                                          owner=owner, observer=observer)
                    for a in config.accounts}, store)

    def __getitem__(self, name: str) -> AccountTokens:
        return self.accounts[name]

    async def start(self) -> None:
        for account in self.accounts.values():
            await account.start()
        if self._store is not None:
            await self._store.watch(self._stored)

    def _stored(self, account: str, generation: int) -> None:
        """A store notification: ``account`` has a new ``generation`` ("" = all, maybe)."""
        if not account:
            for tokens in self.accounts.values():
                tokens.notice(0)
        elif account in self.accounts:
            self.accounts[account].notice(generation)

    def close(self) -> None:
        for account in self.accounts.values():
            account.close()
