"""Keep every account inside the platform's API rate limits (after :mod:`.identify`, before
:mod:`.inject`): the gateway side of :mod:`proxy_addon.ratelimit`.

- ``requestheaders``: the request's group (:meth:`Governor.classify`); a slot of the account's
  budget for it at once, or a wait in the group's fair queue (before any token lease, and
  before the body is read: the app's socket holds it) up to ``[rate_limits] max_wait`` from the
  request's arrival; past it the proxy answers ``429`` itself in the platform's envelope
  (``CMN-301``, a truthful ``Retry-After``, ``X-Tokenproxy-Error: TPX-RATE-LIMITED``). During a
  platform penalty nothing of the group is sent, so the proxy's own traffic never restarts it.
- ``request``: the body is in and the request leaves: its slot counts from now (a slow upload
  must not arrive at the platform together with requests admitted a window later).
- ``responseheaders``: the answer's ``X-Rate-Limit-*`` headers teach the budget and the
  operation's group; a platform ``429`` starts the group's penalty (``Retry-After``, capped).
- ``response``: a request the platform answered ``429`` was not acted on: it waits for the
  penalty's end within its deadline and is sent once more (through the shared pool, with the
  account's current token), like a token-401 replay; a streamed upload (its body is gone) or a
  deadline the penalty outlasts gets the proxy's 429 instead.

``observe`` mode learns and counts only; ``off`` leaves this addon out of the chain.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Iterable

from mitmproxy import http

from ..config import ClientConfig
from ..ops.metrics import Metrics
from ..ratelimit.governor import ClientShare, Governor, RateRefused
from ..tokens.pool import TokenUnavailable
from ..upstream.data_plane import PoolBusy
from ..upstream.replay_sender import Replayer, ReplayTooLarge
from ..upstream.token_endpoint import UpstreamUnreachable
from . import errors
from .early_answer import refuse_at_headers
from .flow_context import FlowContext, admitted, client_gone
from .replay_buffer import ReplayBuffer

log = logging.getLogger("tokenproxy.rate_limit")

_MESSAGE = "Request rate exceeded"  # the platform's own CMN-301 message (errors.md)


class RateLimit:
    def __init__(self, governor: Governor, replayer: Replayer | None, buffer: ReplayBuffer,
                 metrics: Metrics) -> None:
        self._governor = governor
        self._replayer = replayer  # None: a platform 429 passes on (no pool to resend with)
        self._buffer = buffer  # a resent answer is held whole, like a replayed one
        self._metrics = metrics
        self._shares: dict[str, ClientShare] = {}

    # -- the request's way in ----------------------------------------------------------------

    def clients_changed(self, clients: Iterable[ClientConfig]) -> None:
        """A reload: weights and quotas are read again from each request's client."""
        self._shares.clear()

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response is not None:
            return None
        context = admitted(flow)
        if context is None or context.login or context.ws_token or context.client is None:
            return None  # logins and ws tokens are answered by the proxy itself
        operation, group = self._governor.classify(flow.request.method, flow.request.path)
        context.rate_operation, context.rate_group = operation, group
        if group is None:
            return None
        account = context.client.account
        share = self._share(context)
        stamp = self._governor.try_admit(account, group, share)
        if stamp is not None:
            context.rate_admitted = stamp
            return None
        return self._wait(flow, context, account, group, share)

    async def _wait(self, flow: http.HTTPFlow, context: FlowContext, account: str, group: str,
                    share: ClientShare) -> None:
        try:
            waited, context.rate_admitted, context.rate_slot = await self._governor.wait(
                account, group, share, self._governor.deadline(flow.request.timestamp_start))
        except RateRefused as exc:
            self._refuse(flow, context, group, exc.retry_after, exc.penalty)
            return
        self._metrics.rate_wait.labels(account, group).observe(waited)
        context.rate_waited = waited
        if client_gone(flow):  # the app gave up while it waited: send nothing
            flow.kill()

    def _refuse(self, flow: http.HTTPFlow, context: FlowContext, group: str,
                retry_after: float, penalty: bool) -> None:
        assert context.client is not None
        account = context.client.account
        gate = self._governor.gate(account, group)
        self._metrics.rate_refused.labels(context.client.name, account, group).inc()
        context.rate_refused = True
        refuse_at_headers(flow, rate_limited(group, gate.limit, gate.window, retry_after))
        log.info("account %s: %s %s refused: group %s %s (Retry-After %d s)", account,
                 flow.request.method, flow.request.path.split("?", 1)[0], group,
                 "in a platform penalty" if penalty else "budget used up",
                 math.ceil(retry_after), extra={"event": "rate_limited", "account": account,
                                                "group": group})

    def request(self, flow: http.HTTPFlow) -> None:
        """The body is in, the request leaves now: its slot counts from now."""
        context = admitted(flow)
        if context is None or context.rate_admitted is None or context.rate_group is None \
                or flow.response is not None or context.client is None:
            return
        context.rate_admitted = self._governor.restamp(
            context.client.account, context.rate_group, context.rate_admitted,
            context.rate_slot)

    # -- the answer --------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        context = admitted(flow)
        if context is None or context.rate_refused or flow.response is None \
                or context.client is None:
            return
        self._learn(flow, context, flow.response)

    def _learn(self, flow: http.HTTPFlow, context: FlowContext, response: http.Response) -> None:
        assert context.client is not None
        account = context.client.account
        latency = (self._governor.now() - context.rate_admitted
                   if context.rate_admitted is not None else None)
        group = self._governor.learn(account, flow.request.method, context.rate_operation,
                                     context.rate_group, response.headers, latency,
                                     response.status_code)
        group = group or context.rate_group
        if response.status_code == 429 and group is not None:
            seconds = self._governor.penalize(account, group, response.headers)
            self._metrics.platform_429.labels(account, group).inc()
            log.warning("account %s: the platform answered 429 for group %s: nothing of it is "
                        "sent for %.0f s", account, group, seconds,
                        extra={"event": "platform_rate_limited", "account": account,
                               "group": group})

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        context = admitted(flow)
        response = flow.response
        if context is None or context.rate_refused or response is None \
                or response.status_code != 429 or context.rate_resent \
                or context.rate_group is None or self._governor.mode != "enforce":
            return None
        if flow.request.stream or self._replayer is None:
            return None  # its body is gone: the app is told (the platform's 429 passes on)
        return self._resend(flow, context)

    async def _resend(self, flow: http.HTTPFlow, context: FlowContext) -> None:
        """Wait out the penalty (within the request's deadline) and send the request again."""
        assert context.client is not None and context.account is not None
        assert context.rate_group is not None and self._replayer is not None
        context.rate_resent = True
        account, group = context.client.account, context.rate_group
        try:
            _, context.rate_admitted, context.rate_slot = await self._governor.wait(
                account, group, self._share(context),
                self._governor.deadline(flow.request.timestamp_start))
        except RateRefused as exc:
            self._refuse_answered(flow, context, group, exc.retry_after)
            return
        if client_gone(flow):
            flow.kill()
            return
        tokens = context.account
        try:
            token, generation = await tokens.lease(tokens.deadline(flow.request.timestamp_start))
        except TokenUnavailable:
            return  # the platform's 429 passes on
        try:
            flow.response, held = await self._replayer.send(flow.request, token)
            self._buffer.release(held)  # passed on as soon as this hook returns
        except (UpstreamUnreachable, PoolBusy, ReplayTooLarge) as exc:
            log.warning("account %s: resending after the platform's 429 failed: %s", account,
                        type(exc).__name__, extra={"event": "rate_resend_failed",
                                                   "account": account})
            return  # the platform's 429 passes on
        finally:
            tokens.release(generation)
        self._metrics.rate_resent.labels(account, group).inc()
        context.generation = generation  # a token 401 now is about this token (see .replay)
        self._learn(flow, context, flow.response)

    def _refuse_answered(self, flow: http.HTTPFlow, context: FlowContext, group: str,
                         retry_after: float) -> None:
        assert context.client is not None
        account = context.client.account
        gate = self._governor.gate(account, group)
        self._metrics.rate_refused.labels(context.client.name, account, group).inc()
        flow.response = rate_limited(group, gate.limit, gate.window, retry_after)

    def _share(self, context: FlowContext) -> ClientShare:
        client = context.client
        assert client is not None
        share = self._shares.get(client.name)
        if share is None:
            share = self._shares[client.name] = ClientShare(
                client.name, client.rate_weight, dict(client.rate_quota))
        return share


def rate_limited(group: str, limit: int, window: float, retry_after: float) -> http.Response:
    """The proxy's 429, in the platform's envelope and with its headers."""
    body = json.dumps({"errorCode": "CMN-301", "message": _MESSAGE,
                       "errors": [{"errorCode": "CMN-301", "message": _MESSAGE}]}).encode()
    return http.Response.make(429, body, {
        "Content-Type": "application/json",
        "Retry-After": str(max(1, math.ceil(retry_after))),
        "X-Rate-Limit-Group": group.capitalize(),
        "X-Rate-Limit-Limit": str(limit),
        "X-Rate-Limit-Remaining": "0",
        "X-Rate-Limit-Window": f"{window:g}",
        "X-Tokenproxy-Error": errors.RATE_LIMITED,
    })
