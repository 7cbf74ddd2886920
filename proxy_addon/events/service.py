"""Real-time events, assembled: the ws tokens apps get, the hub that serves their sockets, and
one channel per account with its upstream links. Built by the composition root
(:mod:`proxy_addon.cli.run`) from ``[events]``; started before the proxy listens, stopped after.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable

import aiohttp
import httpx

from ..config import AccountConfig, ClientConfig, Config
from ..config.allow import AllowList
from ..ops.events_metrics import EventsMetrics
from ..ratelimit.governor import Governor
from ..tokens.pool import TokenPool
from .channel import AccountChannel, ChannelSettings
from .hub import Hub, HubSettings
from .platform_ws_tokens import PlatformWsTokens
from .rest_budget import RestBudget
from .upstream_link import LinkSettings, UpstreamLink
from .ws_tokens import WsTokens, signing_key

UPSTREAM_FRAME_LIMIT = 16 * 1024 * 1024


class EventsService:
    def __init__(self, config: Config, pool: TokenPool, http: httpx.AsyncClient,
                 metrics: EventsMetrics,
                 rewrite: Callable[[AccountConfig], Callable[[str, str], str]],
                 governor: Governor | None = None,
                 tls: ssl.SSLContext | bool = True) -> None:
        events = config.events
        self.config = events
        self.metrics = metrics
        self.tokens = WsTokens(signing_key(os.environ.get(config.store.key_env)),
                               events.ws_token_ttl)
        self._tls = tls  # the TLS settings of every way out to the platform
        self._session: aiohttp.ClientSession | None = None
        # the platform's frames (REST answers over the socket) are not the apps' to cap
        link_settings = LinkSettings(events.heartbeat_interval, events.request_timeout,
                                     max(events.max_frame_bytes, UPSTREAM_FRAME_LIMIT))
        channel_settings = ChannelSettings(events.upstream_sockets, events.recovery_timeout,
                                           events.recovery_buffer)
        self._pool, self._http, self._rewrite = pool, http, rewrite
        self._default_upstream = config.proxy.upstream
        self._link_settings, self._channel_settings = link_settings, channel_settings
        # REST over the socket spends the API budget as over HTTP (login clients: weight 1)
        budget = RestBudget(governor, list(config.clients)) if governor is not None else None
        self._budget = budget
        channels = {a.name: self._channel(a) for a in config.accounts}
        self.hub = Hub(channels, HubSettings(events.max_frame_bytes, events.max_app_sockets,
                                             events.subscribe_per_minute,
                                             events.filters_per_app, events.recovery_timeout),
                       metrics, {c.name: AllowList.of(c.allow) for c in config.clients
                                 if c.allow is not None})

    def _channel(self, account: AccountConfig) -> AccountChannel:
        """The account's channel: its upstream sockets take ws tokens from its own platform
        (sandbox beside production), whose ``uri`` names the gateway they connect to."""
        name, metrics = account.name, self.metrics
        budgets = self._pool.auth_budgets
        tokens = PlatformWsTokens(account.upstream or self._default_upstream, self._http,
                                  self._pool[name],
                                  budgets.for_account(account) if budgets is not None else None,
                                  lambda outcome: metrics.ws_token_call(name, outcome))

        def make(index: int, channel: AccountChannel) -> UpstreamLink:
            assert self._session is not None
            return UpstreamLink(name, index, tokens, self._session, self._link_settings,
                                channel, metrics)
        return AccountChannel(name, self._channel_settings, make, metrics,
                              self._rewrite(account), self._budget)

    async def accounts_changed(self, accounts: tuple[AccountConfig, ...]) -> None:
        """A reload: a channel for each added account (once the pool has its tokens); a
        removed account's channel closes (its apps' sockets get 1001 and reconnect in vain:
        their ws tokens name an account no longer configured)."""
        names = {a.name for a in accounts}
        channels = dict(self.hub.channels)
        for account in accounts:
            if account.name not in channels:
                self.metrics.add_accounts([account.name])
                channels[account.name] = self._channel(account)
        gone = [channels.pop(name) for name in list(channels) if name not in names]
        self.hub.channels = channels
        for channel in gone:
            await channel.close()

    def clients_changed(self, clients: tuple[ClientConfig, ...]) -> None:
        """A reload: allow lists and rate shares of REST over the socket."""
        self.hub.clients_changed({c.name: AllowList.of(c.allow) for c in clients
                                  if c.allow is not None})
        if self._budget is not None:
            self._budget.clients_changed(list(clients))

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._tls))
        await self.hub.start()

    async def stop(self) -> None:
        await self.hub.stop()
        if self._session is not None:
            await self._session.close()
