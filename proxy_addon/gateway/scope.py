"""Per-app scopes (issue 19, item 3), after :mod:`.identify`: a client with an ``allow`` list
(``[[clients]] allow``, :class:`proxy_addon.config.allow.AllowList`) may call only what it
lists; anything else is answered ``403 TPX-SCOPE-DENIED`` at the request's headers and never
reaches the platform (nor a ws token: ``POST /restapi/oauth/wstoken`` is a request like any
other). A client without ``allow`` calls the account's whole API, as before (``check-config``
warns). Apps that log in through the proxy (virtual tokens) are not scoped.
"""

from __future__ import annotations

from collections.abc import Iterable

from mitmproxy import http

from ..config import ClientConfig
from ..config.allow import AllowList
from . import errors
from .early_answer import refuse_at_headers
from .flow_context import context_of


class Scope:
    def __init__(self, clients: Iterable[ClientConfig]) -> None:
        self._lists = {c.name: AllowList.of(c.allow) for c in clients if c.allow is not None}

    def clients_changed(self, clients: Iterable[ClientConfig]) -> None:
        """A reload: the new allow lists apply from the next request on."""
        self._lists = {c.name: AllowList.of(c.allow) for c in clients if c.allow is not None}

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not self._lists:
            return
        context = context_of(flow)
        client = context.client if context is not None else None
        allowed = self._lists.get(client.name) if client is not None else None
        if allowed is None or allowed.allows(flow.request.method, flow.request.path):
            return
        assert client is not None
        refuse_at_headers(flow, errors.error_response(
            403, errors.SCOPE_DENIED, f"Client {client.name!r} may not call "
            f"{flow.request.method} {flow.request.path.split('?', 1)[0]}: it is outside its "
            "[[clients]] allow list."))
