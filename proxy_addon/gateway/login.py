"""Logins through the proxy: the OAuth token and revoke routes that :mod:`.guard` marked
(``FlowContext.login``) are answered at ``request``, once the small form is in, by
:class:`proxy_addon.virtual.login.LoginInterceptor`, in the platform's exact shapes; they never
reach the platform. A successful login counts for the account's login client
(:func:`.identify.login_client_name`) in :mod:`.request_metrics`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable

from mitmproxy import http

from ..config import AccountConfig
from ..virtual.login import LoginInterceptor, issued_account
from .flow_context import FlowContext, context_of
from .identify import login_clients


class Login:
    def __init__(self, interceptor: LoginInterceptor, accounts: Iterable[AccountConfig]) -> None:
        self._interceptor = interceptor
        self._login_clients = login_clients(accounts)

    def accounts_changed(self, accounts: Iterable[AccountConfig]) -> None:
        """A reload added or removed accounts (see :meth:`.identify.Identify.accounts_changed`)."""
        self._login_clients = login_clients(accounts)

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response is not None:
            return None
        context = context_of(flow)
        if context is None or not context.login:
            return None
        return self._answer(flow, context)

    async def _answer(self, flow: http.HTTPFlow, context: FlowContext) -> None:
        await self._interceptor.answer(flow)
        account = issued_account(flow.response) if flow.response is not None else None
        if account:
            context.client = self._login_clients.get(account)
