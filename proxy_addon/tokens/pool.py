"""The token pool: every account of one proxy process, each with one always-fresh token set
shared by all its clients (:class:`~.account.AccountTokens`).

Built by the composition root (:mod:`proxy_addon.cli.run`) from the config and the ports it is
given: the platform, the store, an observer and a clock. It relays the store's notifications
(another process wrote an account) to the accounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable

from ..config import AccountConfig, Config
from ..store.base import StoreError, TokenStore
from .account import AccountTokens, Lease, process_owner
from .budget import AuthBudgets
from .clock import Clock, SystemClock
from .failures import Reason, TokenUnavailable
from .ports import Observer, Platform
from .settings import PoolSettings
from .states import AccountState

__all__ = ["AccountState", "AccountTokens", "Lease", "PoolSettings", "Reason", "TokenPool",
           "TokenUnavailable"]

log = logging.getLogger("tokenproxy.pool")

MEMBER_TTL = 6.0  # seconds a process stays a member without a heartbeat (every 2 s)

class TokenPool:
    """All accounts of one proxy process."""

    def __init__(self, accounts: dict[str, AccountTokens],
                 store: TokenStore | None = None, owner: str = "",
                 clock: Clock | None = None) -> None:
        self.accounts = accounts
        self.auth_budgets: AuthBudgets | None = None  # token-call budgets (build() sets them)
        self._store = store
        self._owner = owner or process_owner()
        self._clock = clock or SystemClock()
        self._heartbeat: asyncio.Task[None] | None = None
        # _rotation_near's last answer, valid until this monotonic instant unless an account
        # changed since (stale)
        self._near = False
        self._near_until = -math.inf
        self._near_stale = True
        # how build() makes an account's tokens: a reload adds accounts with it (add())
        self._make: Callable[[AccountConfig], AccountTokens] | None = None
        for account in accounts.values():
            account._changed = self._account_changed

    @classmethod
    def build(cls, config: Config, platform: Platform, store: TokenStore, *,
              observer: Observer, settings: PoolSettings | None = None,
              clock: Clock | None = None, owner: str = "") -> TokenPool:
        settings = settings or PoolSettings.from_config(config)
        clock = clock or SystemClock()
        budgets = AuthBudgets(settings.auth_budget_calls, settings.safe_budget_window,
                              clock.monotonic, store)
        owner = owner or process_owner()

        def make(account: AccountConfig) -> AccountTokens:
            return AccountTokens(account, platform, settings, store, budgets.for_account(account),
                                 clock=clock, owner=owner, observer=observer)

        pool = cls({a.name: make(a) for a in config.accounts}, store, owner, clock)
        pool.auth_budgets = budgets
        pool._make = make
        return pool

    # -- a reload (cli/reload.py): accounts added, changed, removed --------------------------
    # ``accounts`` is replaced, never changed in place: whoever iterates it across an await
    # (metrics, /status, the store's notifications) keeps a consistent view

    async def add(self, account: AccountConfig) -> AccountTokens:
        """``account`` joins: its tokens adopt a stored session if there is one, else it
        authenticates on first use, like an account at start-up."""
        assert self._make is not None, "a pool built by build() adds accounts"
        tokens = self._make(account)
        tokens._changed = self._account_changed
        await tokens.start()
        self.accounts = {**self.accounts, account.name: tokens}
        self._near_stale = True
        return tokens

    def update(self, account: AccountConfig) -> None:
        """``account``'s settings changed (rotated credentials, token lifetime, session
        budget): its session stays; its next login or refresh uses them."""
        self.accounts[account.name].account = account
        self._near_stale = True

    def remove(self, name: str) -> AccountTokens:
        """``name`` leaves: no new request finds it; the caller retires its tokens."""
        tokens = self.accounts[name]
        self.accounts = {k: v for k, v in self.accounts.items() if k != name}
        self._near_stale = True
        return tokens

    def __getitem__(self, name: str) -> AccountTokens:
        return self.accounts[name]

    async def start(self) -> None:
        for account in self.accounts.values():
            await account.start()
        if self._store is not None:
            await self._beat()  # a member before anyone can announce a rotation to us
            self._heartbeat = asyncio.get_running_loop().create_task(
                self._keep_beating(), name="tokenproxy-member-heartbeat")
            await self._store.watch(self._stored, self._announced, self._rotation_near)

    async def _beat(self) -> None:
        if self._store is None:
            return
        try:
            await self._store.heartbeat(self._owner, MEMBER_TTL)
        except StoreError as exc:
            log.warning("store: membership heartbeat failed: %s", exc)

    async def _keep_beating(self) -> None:
        """Stay a member of the processes sharing the store, whose acknowledgements a
        rotation waits for (cluster-wide drain)."""
        while True:
            await self._clock.sleep(MEMBER_TTL / 3)
            await self._beat()

    def _announced(self, account: str, generation: int, owner: str) -> None:
        """Another process announced it is about to rotate ``account`` from ``generation``."""
        if owner != self._owner and account in self.accounts:
            self.accounts[account].announced(generation)

    def _account_changed(self) -> None:
        self._near_stale = True

    def _rotation_near(self) -> bool:
        """Whether a rotation of any account may be announced soon. Stores without
        notifications ask before every poll (up to 20 a second): the answer is kept until
        the next instant time alone can change it, or until an account changes, so an idle
        pool is not scanned account by account on every poll (issue 16: 8 ms a poll at
        10,000 accounts)."""
        now = self._clock.monotonic()
        if not self._near_stale and now < self._near_until:
            return self._near
        self._near_stale = False
        soonest = math.inf
        for account in self.accounts.values():
            start, end = account.rotation_window()
            if start <= now < end:  # near until at least its end
                self._near, self._near_until = True, end
                return True
            if now < start < end:
                soonest = min(soonest, start)
        self._near, self._near_until = False, soonest
        return False

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
        if self._heartbeat is not None:
            self._heartbeat.cancel()

    async def leave(self) -> None:
        """Shutting down: rotations no longer wait for this process."""
        if self._store is not None:
            with contextlib.suppress(StoreError):
                await self._store.leave(self._owner)
