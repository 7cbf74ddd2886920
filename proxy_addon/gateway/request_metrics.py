"""The last addon a flow meets: it counts every answered request
(``tokenproxy_requests_total``, labelled only with configured client and account names and a
status class) and, at ``responseheaders``, how long the platform took to answer a request that
carried an injected token (``tokenproxy_upstream_seconds``). A request counts once its answer is
final, a replayed one after the replay; one that died without an answer counts as a 502 (unless
the app hung up). A flow nobody identified counts as the unknown client; a login through the
proxy for the account's login client (set by :mod:`.login`).
"""

from __future__ import annotations

from typing import Any

from mitmproxy import http

from ..ops.metrics import NO_ACCOUNT, UNKNOWN_CLIENT, Metrics, status_class
from .flow_context import context_of


class RequestMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # metric children by label values (all from the config and fixed sets: bounded);
        # looking them up once keeps prometheus-client's label handling off the hot path
        self._request_counters: dict[tuple[str, str, str], Any] = {}
        self._upstream_histograms: dict[str, Any] = {}

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        context = context_of(flow)
        response = flow.response
        if context is None or context.generation < 0 or response is None \
                or not response.timestamp_start or context.client is None:
            return
        account = context.client.account
        histogram = self._upstream_histograms.get(account)
        if histogram is None:
            histogram = self._metrics.upstream_seconds.labels(account)
            self._upstream_histograms[account] = histogram
        histogram.observe(max(0.0, response.timestamp_start - (flow.request.timestamp_end or 0)))

    def response(self, flow: http.HTTPFlow) -> None:
        self._count(flow, flow.response.status_code if flow.response is not None else 502)

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.response is None and flow.error is not None \
                and "disconnect" not in flow.error.msg.lower():
            self._count(flow, 502)  # answered with mitmproxy's error page

    def _count(self, flow: http.HTTPFlow, status: int) -> None:
        """One answered request, labelled only with configured names and a status class."""
        context = context_of(flow)
        client = context.client if context is not None else None
        if client is None:
            labels = (UNKNOWN_CLIENT, NO_ACCOUNT, status_class(status))
        else:
            labels = (client.name, client.account, status_class(status))
        counter = self._request_counters.get(labels)
        if counter is None:
            counter = self._request_counters[labels] = self._metrics.requests.labels(*labels)
        counter.inc()
