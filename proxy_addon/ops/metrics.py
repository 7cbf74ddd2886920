"""Prometheus metrics: what the pool, the token endpoint client, the store and the addon report,
served on ``[proxy] metrics_listen`` at ``/metrics``.

Label values come only from bounded sets: account and client names from the config, grants,
outcomes, states and error codes from the fixed tuples below (anything else becomes ``other``),
status classes ``1xx``..``5xx``. Never token values, paths, query strings or client input.
Per-account gauges (state, seconds left, sessions) are read from the pool at scrape time.
Every series an account or client can have exists from start-up (at 0), so dashboards and
alerts see a value instead of "no data".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .logs import remember

if TYPE_CHECKING:
    from ..config import Config
    from ..tokens.pool import TokenPool

PREFIX = "tokenproxy"
GRANTS = ("jwt", "password", "refresh_token", "authorization_code")
TOKEN_CALL_OUTCOMES = ("success", "rejected", "rate_limited", "server_error", "unreachable")
RENEWAL_OUTCOMES = ("refreshed", "logged_in", "adopted", "failed")
TOKEN_ERROR_CODES = ("OAU-210", "OAU-128", "OAU-129", "OAU-213", "other")
REPLAY_OUTCOMES = ("success", "failed", "abandoned")
SESSION_LOSS_REASONS = ("revoked_or_evicted", "refresh_token_dead")
STATES = ("idle", "healthy", "refreshing", "backing_off", "reauth_required", "misconfigured")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
STORE_OPERATIONS = ("load", "generation", "compare_and_set", "acquire_lock", "release_lock",
                    "put_virtual", "get_virtual", "delete_virtual")
STORE_OUTCOMES = ("ok", "error")
UNKNOWN_CLIENT = "unknown"  # requests without a configured client key
NO_ACCOUNT = "none"

disable_created_metrics()  # no *_created series: they double the scrape for no dashboard

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RATE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def bounded(value: str, allowed: Iterable[str]) -> str:
    """``value`` if it is one of ``allowed``, else ``other``."""
    return value if value in allowed else "other"


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "5xx"


class Metrics:
    """The proxy's metric objects, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None, folded: bool = False) -> None:
        self.registry = registry or CollectorRegistry()
        self.folded = folded  # [proxy] metrics_per_account = "folded": see _Folded
        r, p = self.registry, PREFIX
        self.token_calls = Counter(
            f"{p}_token_endpoint_calls", "Calls to the platform's token endpoint.",
            ["account", "grant", "outcome"], registry=r)
        self.token_call_seconds = Histogram(
            f"{p}_token_endpoint_duration_seconds", "Latency of token-endpoint calls.",
            ["account"], buckets=LATENCY_BUCKETS, registry=r)
        self.token_rate_limited = Counter(
            f"{p}_token_endpoint_rate_limited", "429 answers from the token endpoint.",
            ["account"], registry=r)
        self.renewals = Counter(
            f"{p}_refreshes", "Token renewals by how they ended: refreshed, logged in anew, "
            "adopted from the store (another process renewed), failed.",
            ["account", "outcome"], registry=r)
        self.token_errors = Counter(
            f"{p}_upstream_token_errors", "Token 401s the platform answered to proxied "
            "requests, by error code.", ["account", "code"], registry=r)
        self.replays = Counter(
            f"{p}_replays", "Requests replayed after a token 401, by outcome.",
            ["account", "outcome"], registry=r)
        self.sessions_lost = Counter(
            f"{p}_sessions_lost", "Sessions the account lost to something outside the "
            "proxy: revoked or evicted (OAU-213), or a refresh token that died.",
            ["account", "reason"], registry=r)
        self.token_wait = Histogram(
            f"{p}_token_wait_seconds", "Time requests waited for a token renewal.",
            ["account"], buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter(
            f"{p}_requests", "Requests answered to apps, by client, account and status class.",
            ["client", "account", "status_class"], registry=r)
        self.upstream_seconds = Histogram(
            f"{p}_upstream_duration_seconds", "Time from sending a request upstream to the "
            "first byte of its answer.", ["account"], buckets=LATENCY_BUCKETS, registry=r)
        self.store_ops = Counter(
            f"{p}_store_operations", "Token store operations by backend, operation, outcome.",
            ["backend", "operation", "outcome"], registry=r)
        self.store_lock_wait = Histogram(
            f"{p}_store_lock_wait_seconds", "Time a renewal waited for the account's lock "
            "(or for another process's newer tokens).", ["backend"], buckets=LATENCY_BUCKETS,
            registry=r)
        self.store_up = Gauge(
            f"{p}_store_up", "1 while the token store answers, 0 while it does not.",
            ["backend"], registry=r)
        self.store_unreplicated = Counter(
            f"{p}_store_unreplicated_writes", "Token writes that fewer replicas than [store] "
            "min_replicas_ack confirmed in time (a failover then could lose them).",
            ["backend"], registry=r)
        # API rate limits (issue 17): what the governor held, refused and resent
        self.rate_wait = Histogram(
            f"{p}_rate_limit_wait_seconds", "Time a request waited in its group's fair queue "
            "for the account's API budget (requests let through at once are not observed).",
            ["account", "group"], buckets=RATE_WAIT_BUCKETS, registry=r)
        self.rate_refused = Counter(
            f"{p}_rate_limit_refused", "Requests the proxy answered 429 TPX-RATE-LIMITED: the "
            "group's budget stayed used up (or in a platform penalty) for max_wait.",
            ["client", "account", "group"], registry=r)
        self.platform_429 = Counter(
            f"{p}_rate_limit_platform_429", "429 answers from the platform (should stay 0 in "
            "enforce mode: each one starts a penalty for the whole group).",
            ["account", "group"], registry=r)
        self.rate_resent = Counter(
            f"{p}_rate_limit_resent", "Requests sent again after the platform's 429, once its "
            "penalty ended.", ["account", "group"], registry=r)
        self.config_reloads = Counter(
            f"{p}_config_reloads", "Config reloads (SIGHUP, tokenproxy reload) by outcome: "
            "applied, or refused (the file is bad: the running config stays).", ["outcome"],
            registry=r)
        for outcome in ("applied", "refused"):
            self.config_reloads.labels(outcome)
        if folded:  # every account's counters and histograms in one series, account="_all"
            for name in ("token_calls", "token_call_seconds", "token_rate_limited", "renewals",
                         "token_errors", "replays", "sessions_lost", "token_wait",
                         "upstream_seconds", "rate_wait", "platform_429", "rate_resent"):
                setattr(self, name, _Folded(getattr(self, name), (0,)))
            self.requests = _Folded(self.requests, (0, 1))  # client and account
            self.rate_refused = _Folded(self.rate_refused, (0, 1))

    def prepare(self, config: Config, backend: str) -> None:
        """Create every series the configured accounts, clients and store can have, at 0
        (folded: those of ``_all``)."""
        self.prepare_names(config)
        for operation in STORE_OPERATIONS:
            for outcome in STORE_OUTCOMES:
                self.store_ops.labels(backend, operation, outcome)
        self.store_lock_wait.labels(backend)
        self.store_up.labels(backend).set(1)
        self.store_unreplicated.labels(backend)

    def prepare_names(self, config: Config) -> None:
        """The accounts' and clients' series at 0 (start-up, and what a reload adds)."""
        for account in (config.accounts[:1] if self.folded else config.accounts):
            name = account.name
            self.token_call_seconds.labels(name)
            self.token_rate_limited.labels(name)
            self.token_wait.labels(name)
            self.upstream_seconds.labels(name)
            for grant in {account.grant, "refresh_token"}:
                for outcome in TOKEN_CALL_OUTCOMES:
                    self.token_calls.labels(name, grant, outcome)
            for outcome in RENEWAL_OUTCOMES:
                self.renewals.labels(name, outcome)
            for code in TOKEN_ERROR_CODES:
                self.token_errors.labels(name, code)
            for outcome in REPLAY_OUTCOMES:
                self.replays.labels(name, outcome)
            for reason in SESSION_LOSS_REASONS:
                self.sessions_lost.labels(name, reason)
        for client in (config.clients[:1] if self.folded else config.clients):
            for klass in STATUS_CLASSES:
                self.requests.labels(client.name, client.account, klass)
        for account in (config.accounts[:1] if self.folded else config.accounts):  # logins
            for klass in STATUS_CLASSES:
                self.requests.labels(f"{account.name}-login", account.name, klass)
        for klass in ("4xx", "5xx"):
            self.requests.labels(UNKNOWN_CLIENT, NO_ACCOUNT, klass)

    def watch_pool(self, pool: TokenPool) -> None:
        self.registry.register(PoolCollector(pool, self.folded))

    def watch_upstream(self, plane: UpstreamPool) -> None:
        self.registry.register(UpstreamPoolCollector(plane))

    def watch_rate_limits(self, governor: RateBudgets) -> None:
        self.registry.register(RateLimitCollector(governor, self.folded))
        governor.on_gate = self._rate_series

    def _rate_series(self, account: str, group: str) -> None:
        """A budget the governor just met: its counters start at 0 (an alert on increase()
        sees the first platform 429; a series born at 1 would show no increase)."""
        self.platform_429.labels(account, group)
        self.rate_resent.labels(account, group)


class RateBudgets(Protocol):
    """What the metrics read of the rate-limit governor (``ratelimit.governor.Governor``)."""

    would_wait: int
    bad_headers: int
    on_gate: Callable[[str, str], None] | None

    def views(self) -> list[Any]: ...


class RateLimitCollector(Collector):
    """Each (account, group) budget as the governor knows it, read at scrape time. Folded:
    only the budgets with requests queued or in a platform penalty keep their own series."""

    def __init__(self, governor: RateBudgets, folded: bool = False) -> None:
        self._governor = governor
        self._folded = folded

    def collect(self) -> Iterator[Metric]:
        p = PREFIX
        labels = ["account", "group"]
        limit = GaugeMetricFamily(f"{p}_rate_limit_limit", "Requests per window the "
                                  "platform allows the account in this group (learned from "
                                  "X-Rate-Limit-Limit, else the configured default).",
                                  labels=labels)
        used = GaugeMetricFamily(f"{p}_rate_limit_used", "Requests of the group this process "
                                 "counts in the current window (its own and, alone, the "
                                 "platform's count of others').", labels=labels)
        remaining = GaugeMetricFamily(f"{p}_rate_limit_remaining", "X-Rate-Limit-Remaining of "
                                      "the group's latest answer.", labels=labels)
        queued = GaugeMetricFamily(f"{p}_rate_limit_queued", "Requests waiting for the "
                                   "group's budget now.", labels=labels)
        penalty = GaugeMetricFamily(f"{p}_rate_limit_penalty_seconds", "Seconds left of the "
                                    "platform's penalty on the group (0: none).", labels=labels)
        for view in self._governor.views():
            if self._folded and not view.queued and not view.penalty_left:
                continue
            key = [view.account, view.group]
            limit.add_metric(key, view.limit)
            used.add_metric(key, view.used)
            if view.platform_remaining is not None:
                remaining.add_metric(key, view.platform_remaining)
            queued.add_metric(key, view.queued)
            penalty.add_metric(key, view.penalty_left)
        yield from (limit, used, remaining, queued, penalty)
        yield CounterMetricFamily(f"{p}_rate_limit_would_wait", "observe mode: requests that "
                                  "enforcing would have held for the budget.",
                                  value=self._governor.would_wait)
        yield CounterMetricFamily(f"{p}_rate_limit_bad_headers", "Answers with an "
                                  "X-Rate-Limit-* header that was not believed (malformed, "
                                  "negative, out of range).", value=self._governor.bad_headers)


class UpstreamPool(Protocol):
    """What the metrics read of the shared upstream pool (``upstream.data_plane.DataPlane``)."""

    size: int  # its connections
    busy: int  # requests out now
    connects: int  # connections opened so far
    refused: int  # requests refused: no connection came free in time


class UpstreamPoolCollector(Collector):
    """The shared upstream pool's gauges and counters, read at scrape time."""

    def __init__(self, plane: UpstreamPool) -> None:
        self._plane = plane

    def collect(self) -> Iterator[Metric]:
        p, plane = PREFIX, self._plane
        yield GaugeMetricFamily(f"{p}_upstream_pool_size", "Connections the shared upstream "
                                "pool may hold ([proxy] upstream_pool_size).", value=plane.size)
        yield GaugeMetricFamily(f"{p}_upstream_pool_in_use", "Requests out to the platform "
                                "through the shared pool right now (one connection each).",
                                value=plane.busy)
        yield CounterMetricFamily(f"{p}_upstream_connections_opened", "Connections (TLS "
                                  "handshakes, on https) the shared pool opened to the "
                                  "platform.", value=plane.connects)
        yield CounterMetricFamily(f"{p}_upstream_pool_refused", "Requests refused with 503 "
                                  "TPX-UPSTREAM-BUSY: no pooled connection came free in "
                                  "upstream_pool_wait.", value=plane.refused)


class PoolObserver:
    """What the token core reports (its :class:`~proxy_addon.tokens.ports.Observer` port):
    into these metrics, and the token values it obtains into the log redaction."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def secrets(self, *values: str | None) -> None:
        remember(*values)

    def token_wait(self, account: str, seconds: float) -> None:
        self._metrics.token_wait.labels(account).observe(seconds)

    def renewal(self, account: str, outcome: str) -> None:
        self._metrics.renewals.labels(account, outcome).inc()

    def session_lost(self, account: str, reason: str) -> None:
        self._metrics.sessions_lost.labels(account, reason).inc()

    def store_lock_wait(self, backend: str, seconds: float) -> None:
        self._metrics.store_lock_wait.labels(backend).observe(seconds)


FOLDED = "_all"  # the account (and client) label of folded series
# folded: an account keeps its own gauges only while it needs attention
ROUTINE_STATES = ("idle", "healthy", "refreshing")
ATTENTION_REFRESH_LEFT = 2 * 86400.0  # s: a refresh token closer to its end than this


class _Folded:
    """A labelled metric whose per-account labels (by position) all read ``_all``: with
    10,000 accounts the full set is 91 samples an account (a 21 s, 70 MiB scrape)."""

    def __init__(self, metric: Any, positions: tuple[int, ...]) -> None:
        self._metric = metric
        self._positions = positions

    def labels(self, *values: str) -> Any:
        folded = [FOLDED if i in self._positions else v for i, v in enumerate(values)]
        return self._metric.labels(*folded)


class PoolCollector(Collector):
    """Per-account gauges, read from the pool's snapshots at scrape time, and the number of
    accounts in each state. Folded: per-account gauges only for the accounts that need
    attention (a state other than idle, healthy or refreshing, or a refresh token with less
    than two days left), so the alerts on them still name the account."""

    def __init__(self, pool: TokenPool, folded: bool = False) -> None:
        self._pool = pool
        self._folded = folded

    def collect(self) -> Iterator[Metric]:
        p = PREFIX
        state = GaugeMetricFamily(f"{p}_account_state", "1 for the account's current state, "
                                  "0 for the others.", labels=["account", "state"])
        access = GaugeMetricFamily(f"{p}_access_token_remaining_seconds", "Seconds until the "
                                   "held access token expires (0: none usable).",
                                   labels=["account"])
        refresh = GaugeMetricFamily(f"{p}_refresh_token_remaining_seconds", "Seconds until "
                                    "the held refresh token expires (0: none).",
                                    labels=["account"])
        live = GaugeMetricFamily(f"{p}_live_sessions", "Platform sessions the account holds.",
                                 labels=["account"])
        budget = GaugeMetricFamily(f"{p}_max_live_sessions", "The account's session budget "
                                   "(max_live_tokens).", labels=["account"])
        last = GaugeMetricFamily(f"{p}_last_refresh_timestamp_seconds", "When the account's "
                                 "tokens were last renewed (Unix time; 0: never).",
                                 labels=["account"])
        counts = GaugeMetricFamily(f"{p}_accounts", "Accounts in each state.",
                                   labels=["state"])
        by_state = dict.fromkeys(STATES, 0)
        for tokens in self._pool.accounts.values():
            snap = tokens.snapshot()
            by_state[str(snap["state"])] = by_state.get(str(snap["state"]), 0) + 1
            refresh_left = snap["refresh_expires_in"]
            if self._folded and snap["state"] in ROUTINE_STATES and (
                    refresh_left is None
                    or float(refresh_left) > ATTENTION_REFRESH_LEFT):  # type: ignore[arg-type]
                continue
            name = str(snap["account"])
            for candidate in STATES:
                state.add_metric([name, candidate], 1.0 if snap["state"] == candidate else 0.0)
            access.add_metric([name], float(snap["access_expires_in"] or 0.0))
            refresh.add_metric([name], float(refresh_left) if refresh_left is not None
                               else (1e9 if snap["live_sessions"] else 0.0))
            live.add_metric([name], float(snap["live_sessions"]))  # type: ignore[arg-type]
            budget.add_metric([name], float(snap["max_live_tokens"]))  # type: ignore[arg-type]
            last.add_metric([name], float(snap["last_refresh"] or 0.0))  # type: ignore[arg-type]
        for candidate, number in by_state.items():
            counts.add_metric([candidate], float(number))
        yield from (state, access, refresh, live, budget, last, counts)


# Every metric name a dashboard or alert may use (counters carry their _total suffix; the
# histograms their _bucket/_sum/_count). Kept in step with the objects above by a test.
EXPORTED = (
    "tokenproxy_config_reloads_total",
    "tokenproxy_token_endpoint_calls_total", "tokenproxy_token_endpoint_duration_seconds",
    "tokenproxy_token_endpoint_rate_limited_total", "tokenproxy_refreshes_total",
    "tokenproxy_upstream_token_errors_total", "tokenproxy_replays_total",
    "tokenproxy_sessions_lost_total", "tokenproxy_token_wait_seconds",
    "tokenproxy_requests_total", "tokenproxy_upstream_duration_seconds",
    "tokenproxy_store_operations_total", "tokenproxy_store_lock_wait_seconds",
    "tokenproxy_store_up", "tokenproxy_store_unreplicated_writes_total",
    "tokenproxy_account_state",
    "tokenproxy_access_token_remaining_seconds", "tokenproxy_refresh_token_remaining_seconds",
    "tokenproxy_live_sessions", "tokenproxy_max_live_sessions",
    "tokenproxy_last_refresh_timestamp_seconds",
    "tokenproxy_accounts",
    "tokenproxy_upstream_pool_size", "tokenproxy_upstream_pool_in_use",
    "tokenproxy_upstream_connections_opened_total", "tokenproxy_upstream_pool_refused_total",
    "tokenproxy_rate_limit_wait_seconds", "tokenproxy_rate_limit_refused_total",
    "tokenproxy_rate_limit_platform_429_total", "tokenproxy_rate_limit_resent_total",
    "tokenproxy_rate_limit_limit", "tokenproxy_rate_limit_used", "tokenproxy_rate_limit_remaining",
    "tokenproxy_rate_limit_queued", "tokenproxy_rate_limit_penalty_seconds",
    "tokenproxy_rate_limit_would_wait_total", "tokenproxy_rate_limit_bad_headers_total",
    # real-time events (issue 18): ops/events_metrics.py
    "tokenproxy_events_app_sockets", "tokenproxy_events_upstream_sockets",
    "tokenproxy_events_upstream_connects_total", "tokenproxy_events_relayed_total",
    "tokenproxy_events_ws_token_calls_total", "tokenproxy_events_app_ws_tokens_total",
    "tokenproxy_events_refused_frames_total", "tokenproxy_events_bad_upstream_frames_total",
)
