"""Swap the app's credential for the account's live token (after :mod:`.identify`).

- ``requestheaders``: the body policy. Bodies up to ``replay_body_limit`` are buffered
  (replayable) while the process-wide ``replay_buffer_total`` has room
  (:class:`~.replay_buffer.ReplayBuffer`); others stream through and cannot be replayed after
  a token 401. A streamed request leaves as soon as its headers are done, so its credential is
  swapped right here.
- ``request``: the swap for every other request: the request is pointed at its account's
  platform (an account may name its own: sandbox beside production) and ``/_media/…`` at its
  media host, an ``access_token`` query parameter goes, and ``Authorization`` carries the
  account's token, leased from the pool without awaiting anything while the token is fresh;
  else the request waits for one (bounded per request from its arrival) or is answered by
  :func:`.unavailable.refuse_unavailable`.
- ``responseheaders`` / ``response`` / ``error``: the platform authenticated (or refused) the
  request, or the flow died: the lease on the token generation ends (an error also gives the
  buffered body's bytes back; an answer does so in :mod:`.replay`, once no replay needs them).

Flows already answered, not identified, or answered by the login interceptor are skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable
from urllib.parse import urlsplit

from mitmproxy import http

from ..config import AccountConfig
from ..tokens.pool import TokenUnavailable
from .early_answer import has_body
from .flow_context import FlowContext, admitted, client_gone
from .links import MEDIA_ROUTE
from .replay_buffer import ReplayBuffer
from .unavailable import refuse_unavailable


class Inject:
    def __init__(self, buffer: ReplayBuffer, media_upstream: str | None = None) -> None:
        self._buffer = buffer
        # the media host of accounts that name no platform of their own (a loaded config
        # gives every account both: see AccountConfig.upstream)
        self._media_upstream = media_upstream

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response is not None:
            return None
        context = admitted(flow)
        if context is None or not self._streams(flow, context):
            return None
        # a streamed request leaves as soon as its headers are done: swap the credential now
        return self._swap(flow, context)

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response is not None:
            return None
        context = admitted(flow)
        if context is None or context.generation >= 0:  # none, or swapped already (streamed)
            return None
        return self._swap(flow, context)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        context = admitted(flow)
        if context is not None:
            release_lease(context)

    def response(self, flow: http.HTTPFlow) -> None:
        context = admitted(flow)
        if context is not None:
            release_lease(context)

    def error(self, flow: http.HTTPFlow) -> None:
        context = admitted(flow)
        if context is not None:
            release_lease(context)
            release_body(context, self._buffer)

    def _streams(self, flow: http.HTTPFlow, context: FlowContext) -> bool:
        """Buffer the body (reserving its bytes) or stream it; True when it streams."""
        headers = flow.request.headers
        length = headers.get("content-length", "")
        if "chunked" not in headers.get("transfer-encoding", "").lower() and length.isdigit():
            size = int(length)
            if size == 0 or self._buffer.admit(size):
                context.buffered = size
                return False
        elif not has_body(flow.request):
            return False
        flow.request.stream = True
        return True

    def _swap(self, flow: http.HTTPFlow, context: FlowContext) -> Awaitable[None] | None:
        request = flow.request
        assert context.account is not None
        self._route(request, context.account.account)
        if "access_token=" in request.path:
            request.query.pop("access_token", None)
        lease = context.account.try_lease()
        if lease is not None:
            _inject(flow, context, lease)
            return None
        return self._inject_after_wait(flow, context)

    def _route(self, request: http.Request, account: AccountConfig) -> None:
        """Send the request to the account's own platform (sandbox beside production: the
        listener's reverse target is the proxy's upstream), and ``/_media/…`` to its media
        host. Replays and the shared pool send it where it now points."""
        media = account.media_upstream if account.upstream else self._media_upstream
        if media is not None and request.path.startswith(MEDIA_ROUTE + "/"):
            request.path = request.path[len(MEDIA_ROUTE):]
            _point(request, media)
        elif account.upstream:
            _point(request, account.upstream)

    @staticmethod
    async def _inject_after_wait(flow: http.HTTPFlow, context: FlowContext) -> None:
        account = context.account
        assert account is not None
        try:
            lease = await account.lease(account.deadline(flow.request.timestamp_start))
        except TokenUnavailable as exc:
            refuse_unavailable(flow, exc)
            return
        if client_gone(flow):  # the app went away while we waited: send nothing
            account.release(lease[1])
            flow.kill()
            return
        _inject(flow, context, lease)


@functools.lru_cache(maxsize=64)
def _target(origin: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, Host header) of an ``http(s)://host[:port]`` origin."""
    parts = urlsplit(origin)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    authority = f"[{host}]" if ":" in host else host
    return (parts.scheme, host, port,
            authority if port == (443 if parts.scheme == "https" else 80)
            else f"{authority}:{port}")


def _point(request: http.Request, origin: str) -> None:
    scheme, host, port, authority = _target(origin)
    if (request.scheme, request.host, request.port) != (scheme, host, port):
        request.scheme, request.host, request.port = scheme, host, port
        request.headers["host"] = authority


def _inject(flow: http.HTTPFlow, context: FlowContext, lease: tuple[str, int]) -> None:
    token, context.generation = lease
    context.leased = True
    flow.request.headers["authorization"] = f"Bearer {token}"


def release_lease(context: FlowContext) -> None:
    if context.leased and context.account is not None:
        context.leased = False
        context.account.release(context.generation)


def release_body(context: FlowContext, buffer: ReplayBuffer) -> None:
    """The body is no longer needed for a replay: its bytes go back to the buffer."""
    if context.buffered:
        buffer.release(context.buffered)
        context.buffered = 0
