"""Transparent replay (after :mod:`.inject`, before :mod:`.links`): a 401 with
OAU-213/210/128/129 (:func:`~proxy_addon.upstream.platform_errors.token_error_code_of`) means
the token injected died; the account renews once (coalesced in the pool by generation) and the
request is sent again with the newer token (:class:`~proxy_addon.upstream.replay_sender.Replayer`),
its answer standing in for the 401. If the replay's own, newer token died too (a revocation or
eviction landing between renewal and replay), once more: at most :data:`MAX_REPLAYS` sends, all
within the request's token-wait deadline. A streamed request cannot be replayed (its body is
gone): its token 401 passes on and only tells the pool to renew. Any other 401 passes on.

``response`` is also where a buffered body's bytes go back to the replay buffer: once the answer
is final, no replay needs them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from mitmproxy import http

from ..ops.metrics import TOKEN_ERROR_CODES, Metrics, bounded
from ..tokens.pool import TokenUnavailable
from ..upstream.data_plane import PoolBusy
from ..upstream.platform_errors import token_error_code_of
from ..upstream.replay_sender import Replayer, ReplayTooLarge
from ..upstream.token_endpoint import UpstreamUnreachable
from . import errors
from .flow_context import FlowContext, admitted, client_gone
from .inject import release_body
from .links import LinkRewriter
from .replay_buffer import ReplayBuffer
from .unavailable import refuse_unavailable, unavailable_code

log = logging.getLogger("tokenproxy.addon")  # the logger name operators filter on: kept

# A request is sent again after a token 401; once more only if the replay's own, newer token
# died too (a revocation or eviction landing between renewal and replay).
MAX_REPLAYS = 2


class Replay:
    def __init__(self, replayer: Replayer, buffer: ReplayBuffer, links: LinkRewriter,
                 metrics: Metrics) -> None:
        self._replayer = replayer
        self._buffer = buffer
        self._links = links  # a replayed answer's links are rewritten here (see .links)
        self._metrics = metrics

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        context = admitted(flow)
        if context is None:
            return None
        response = flow.response
        if response is None or response.status_code != 401 or context.replayed \
                or flow.request.stream:  # a streamed body is gone: it cannot be replayed
            if response is not None and response.status_code == 401 and flow.request.stream:
                code = token_error_code_of(response)
                if code is not None and context.generation >= 0:
                    assert context.account is not None
                    context.account.note_rejected(context.generation, code)
            release_body(context, self._buffer)
            return None
        code = token_error_code_of(response)
        if code is None or context.generation < 0:
            release_body(context, self._buffer)
            return None
        assert context.client is not None
        self._metrics.token_errors.labels(context.client.account,
                                          bounded(code, TOKEN_ERROR_CODES)).inc()
        return self._replay(flow, context, code)

    async def _replay(self, flow: http.HTTPFlow, context: FlowContext, code: str) -> None:
        """Renew (coalesced by generation) and send the request again with the new token."""
        context.replayed = True
        account = context.account
        assert account is not None
        name = account.account.name
        outcome = "failed"
        failed_generation, failed_code = context.generation, code
        deadline = account.deadline(flow.request.timestamp_start)
        try:
            for _ in range(MAX_REPLAYS):
                try:
                    token, generation = await account.rejected(
                        failed_generation, failed_code, deadline)
                except TokenUnavailable as exc:
                    refuse_unavailable(flow, exc)
                    unavailable = unavailable_code(exc)
                    log.warning("account %s: replay after %s failed: %s", name, failed_code,
                                unavailable, extra={"event": "replay_failed", "account": name,
                                                    "code": unavailable})
                    return
                if client_gone(flow):  # nobody waits: a retried POST must not go out twice
                    account.release(generation)
                    outcome = "abandoned"
                    log.info("account %s: %s %s not replayed: the app hung up", name,
                             flow.request.method, flow.request.path.split("?", 1)[0],
                             extra={"event": "replay_abandoned", "account": name})
                    flow.kill()
                    return
                try:
                    flow.response, held = await self._replayer.send(flow.request, token)
                    self._buffer.release(held)  # passed on as soon as this hook returns
                except UpstreamUnreachable as exc:
                    flow.response = errors.error_response(
                        502, errors.UPSTREAM_UNREACHABLE,
                        f"The platform is unreachable: {exc}")
                    log.warning("account %s: replay after %s failed: upstream unreachable",
                                name, failed_code,
                                extra={"event": "replay_failed", "account": name})
                    return
                except PoolBusy as exc:
                    flow.response = errors.error_response(
                        503, errors.UPSTREAM_BUSY, f"The proxy's connections to the platform "
                        f"are all busy: {exc}; retry shortly.", 1.0)
                    return
                except ReplayTooLarge:
                    flow.response = errors.error_response(
                        503, errors.REPLAY_TOO_LARGE, "The platform refused the token this "
                        "request carried; the proxy renewed it, but the answer is too large to "
                        "replay here: repeat the request.", 1.0)
                    return
                finally:
                    account.release(generation)
                log.debug("account %s: replayed %s %s after %s", name, flow.request.method,
                          flow.request.path.split("?", 1)[0], failed_code)
                again = token_error_code_of(flow.response)
                if again is None:
                    outcome = "success"
                    self._links.rewrite(flow)
                    return
                self._metrics.token_errors.labels(name, bounded(again, TOKEN_ERROR_CODES)).inc()
                failed_generation, failed_code = generation, again
            log.warning("account %s: the replay got a token error again (%s)", name,
                        failed_code, extra={"event": "replay_failed", "account": name,
                                            "code": failed_code})
        finally:
            self._metrics.replays.labels(name, outcome).inc()
            release_body(context, self._buffer)
