"""Prometheus metrics of real-time events (issue 18): app and upstream sockets, recoveries by
outcome, events relayed, ws-token calls, refused tokens and frames. Labels are config names and
fixed tuples only."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge

from .metrics import PREFIX, Metrics, bounded

LINK_OUTCOMES = ("new", "recovered", "lost", "error")  # recovered: recoveryState Successful
RELAYED_KINDS = ("notification", "client_request")
WS_TOKEN_OUTCOMES = ("ok", "rejected", "limited", "error")
APP_TOKEN_OUTCOMES = ("issued", "missing", "unknown", "expired", "in_use", "busy")
REFUSED_FRAME_REASONS = ("malformed", "too_big", "subscribe_rate", "busy", "slow_reader",
                         "oauth_route", "rate_limited", "scope")


class EventsMetrics:
    def __init__(self, metrics: Metrics, accounts: Iterable[str]) -> None:
        r, p = metrics.registry, PREFIX
        self.app_sockets = Gauge(
            f"{p}_events_app_sockets", "Apps' WebSockets open on the proxy.", ["account"],
            registry=r)
        self.upstream_sockets = Gauge(
            f"{p}_events_upstream_sockets", "WebSockets open to the platform's gateway.",
            ["account"], registry=r)
        self.links = Counter(
            f"{p}_events_upstream_connects", "Upstream socket connects by outcome: new, "
            "recovered (recoveryState Successful), lost (the platform's session and its "
            "buffered events are gone: subscriptions re-created), error (a connect failed).",
            ["account", "outcome"], registry=r)
        self.relayed = Counter(
            f"{p}_events_relayed", "Notifications and REST-over-WebSocket answers relayed to "
            "app sockets.", ["account", "kind"], registry=r)
        self.ws_token_calls = Counter(
            f"{p}_events_ws_token_calls", "Calls to the platform's /restapi/oauth/wstoken "
            "(Auth group) by outcome.", ["account", "outcome"], registry=r)
        self.app_tokens = Counter(
            f"{p}_events_app_ws_tokens", "ws tokens the proxy issued to apps, and upgrades it "
            "refused by reason.", ["outcome"], registry=r)
        self.refused_frames = Counter(
            f"{p}_events_refused_frames", "App frames answered with an error or a close "
            "instead of going on, by reason.", ["reason"], registry=r)
        self.bad_upstream = Counter(
            f"{p}_events_bad_upstream_frames", "Malformed frames from the platform's gateway "
            "(ignored).", ["account"], registry=r)
        self.add_accounts(accounts)
        for outcome in APP_TOKEN_OUTCOMES:
            self.app_tokens.labels(outcome)
        for reason in REFUSED_FRAME_REASONS:
            self.refused_frames.labels(reason)

    def add_accounts(self, accounts: Iterable[str]) -> None:
        """Create the accounts' series at 0 (start-up, and accounts a reload adds)."""
        for account in accounts:
            self.app_sockets.labels(account)
            self.upstream_sockets.labels(account)
            self.bad_upstream.labels(account)
            for outcome in LINK_OUTCOMES:
                self.links.labels(account, outcome)
            for kind in RELAYED_KINDS:
                self.relayed.labels(account, kind)
            for outcome in WS_TOKEN_OUTCOMES:
                self.ws_token_calls.labels(account, outcome)

    # the link's and channel's view (see events.upstream_link / events.channel)

    def link_up(self, account: str, outcome: str, recovering: bool) -> None:
        self.links.labels(account, bounded(outcome, LINK_OUTCOMES)).inc()
        self.upstream_sockets.labels(account).inc()

    def link_down(self, account: str) -> None:
        self.upstream_sockets.labels(account).dec()

    def link_error(self, account: str) -> None:
        self.links.labels(account, "error").inc()

    def bad_upstream_frame(self, account: str) -> None:
        self.bad_upstream.labels(account).inc()

    def ws_token_call(self, account: str, outcome: str) -> None:
        self.ws_token_calls.labels(account, bounded(outcome, WS_TOKEN_OUTCOMES)).inc()

    def relayed_event(self, account: str, kind: str, count: int = 1) -> None:
        self.relayed.labels(account, kind).inc(count)

    def app_token(self, outcome: str) -> None:
        self.app_tokens.labels(bounded(outcome, APP_TOKEN_OUTCOMES)).inc()

    def refused_frame(self, reason: str) -> None:
        self.refused_frames.labels(bounded(reason, REFUSED_FRAME_REASONS)).inc()

    def app_socket(self, account: str, delta: int) -> None:
        self.app_sockets.labels(account).inc(delta)


EVENTS_EXPORTED = (
    "tokenproxy_events_app_sockets", "tokenproxy_events_upstream_sockets",
    "tokenproxy_events_upstream_connects_total", "tokenproxy_events_relayed_total",
    "tokenproxy_events_ws_token_calls_total", "tokenproxy_events_app_ws_tokens_total",
    "tokenproxy_events_refused_frames_total", "tokenproxy_events_bad_upstream_frames_total",
)
