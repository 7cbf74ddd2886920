"""Real-time events at the gateway (issue 18), after :mod:`.identify`.

- ``POST /restapi/oauth/wstoken`` (marked by :mod:`.guard`; the app identified by its client
  key or virtual token): answered at ``request`` by the proxy with a ws token of its own
  (:mod:`proxy_addon.events.ws_tokens`) and a ``uri`` naming the proxy's events path, ``ws://``
  or ``wss://`` as the app reaches the proxy (``public_url``, else its connection). No platform
  call is spent on it, and the rate limiter never counts it.
- ``GET <events path>`` with ``Upgrade: websocket``: the ws token comes in the ``access_token``
  query parameter (the docs: ``subscribing.md``) or as ``Authorization: Bearer`` (one SDK's
  way); a missing, unknown, expired or in-use token, or a request that is no upgrade, is
  answered here (401/400 JSON, the platform's error shape) and nothing reaches the platform.
  A good one is swapped for a one-time ticket of the :class:`~proxy_addon.events.hub.Hub` and
  the request goes to the hub's loopback port, without any credential; mitmproxy then relays
  the socket (the app keeps its connection and TLS). ``websocket_message`` keeps only the
  current message on the flow: mitmproxy would otherwise hold every message of a socket that
  lives for days.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from mitmproxy import http

from ..events.hub import Hub
from ..events.ws_tokens import WsTokenError, WsTokens
from ..ops.events_metrics import EventsMetrics
from . import errors
from .early_answer import refuse_at_headers
from .flow_context import context_of

MAX_WSC = 512
# the proxy's code of a refused upgrade -> its metric label
REFUSALS = {"TPX-WS-TOKEN-UNKNOWN": "unknown", "TPX-WS-TOKEN-EXPIRED": "expired",
            "TPX-WS-TOKEN-IN-USE": "in_use", "TPX-WS-BUSY": "busy"}


class EventsRoute:
    def __init__(self, tokens: WsTokens, hub: Hub, path: str,
                 base_of: Callable[[http.HTTPFlow], str], metrics: EventsMetrics) -> None:
        self._tokens = tokens
        self._hub = hub
        self._path = path
        self._base_of = base_of  # the proxy's origin as the app sees it (links.LinkRewriter)
        self._metrics = metrics

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        context = context_of(flow)
        if context is not None and context.events_socket:
            self._upgrade(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        context = context_of(flow)
        if context is None or not context.ws_token or context.client is None:
            return
        if flow.request.method.upper() != "POST":
            flow.response = errors.error_response(
                405, "TPX-METHOD-NOT-ALLOWED", "Ask for a ws token with POST.")
            return
        token, _ = self._tokens.issue(context.client.name, context.client.account)
        base = self._base_of(flow)
        uri = ("wss" if base.startswith("https:") else "ws") + base[base.index(":"):] + self._path
        self._metrics.app_token("issued")
        flow.response = http.Response.make(
            200, json.dumps({"ws_access_token": token, "uri": uri,
                             "expires_in": int(self._tokens.ttl)}),
            {"Content-Type": "application/json", "Cache-Control": "no-store"})

    def _upgrade(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        if request.method.upper() != "GET" \
                or "websocket" not in request.headers.get("upgrade", "").lower():
            refuse_at_headers(flow, errors.error_response(
                400, "TPX-WS-UPGRADE-REQUIRED", f"{self._path} serves WebSocket upgrades only: "
                "connect with the uri and ws token of POST /restapi/oauth/wstoken."))
            return
        token = request.query.get("access_token") or _bearer(request.headers.get("authorization"))
        if not token:
            self._refuse(flow, "missing", 401, "TPX-WS-TOKEN-MISSING", "No ws token: connect to "
                         "the uri of POST /restapi/oauth/wstoken with ?access_token=<its "
                         "ws_access_token>.")
            return
        wsc = request.query.get("wsc") or None
        if wsc is not None and len(wsc) > MAX_WSC:
            wsc = ""  # no session of ours: recovery fails, the app subscribes again
        try:
            grant = self._tokens.verify(token)
            ticket = self._hub.admit(grant, wsc, self._base_of(flow))
        except WsTokenError as exc:
            status = 503 if exc.code == "TPX-WS-BUSY" else 401
            self._refuse(flow, REFUSALS.get(exc.code, "unknown"), status, exc.code, str(exc))
            return
        context = context_of(flow)
        assert context is not None
        context.events_ticket = ticket
        for name in ("authorization", "cookie", "proxy-authorization"):
            request.headers.pop(name, None)
        request.scheme = "http"
        request.host = "127.0.0.1"
        request.port = self._hub.port
        request.path = f"/hub/{ticket}"
        request.headers["host"] = f"127.0.0.1:{self._hub.port}"

    def _refuse(self, flow: http.HTTPFlow, reason: str, status: int, code: str,
                message: str) -> None:
        self._metrics.app_token(reason)
        refuse_at_headers(flow, errors.error_response(status, code, message))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if context is not None and context.events_ticket and flow.response is not None \
                and flow.response.status_code != 101:
            self._hub.cancel(context.events_ticket)  # never reached the hub's socket

    def error(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        if context is not None and context.events_ticket and flow.websocket is None:
            self._hub.cancel(context.events_ticket)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        messages = flow.websocket.messages if flow.websocket is not None else None
        if messages and len(messages) > 1:
            del messages[:-1]


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, credential = header.strip().partition(" ")
    return credential.strip() or None if scheme.lower() == "bearer" else None
