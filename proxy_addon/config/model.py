"""The configuration's model: frozen dataclasses for upstream, accounts, clients and store.

What :mod:`.load` produces and every other room reads. Secrets are wrapped in :class:`Secret`
so that no ``repr`` or log line can print them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

GRANTS = ("jwt", "password", "refresh_token", "authorization_code")
LOGIN_GRANTS = ("jwt", "password")
MAX_LIVE_TOKENS_CAP = 5  # the platform evicts the oldest session beyond 5 per (user, client id)

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A configuration problem; ``str()`` is the message shown to the operator."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source, self.key, self.reason = source, key, reason
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {reason}")


class Secret:
    """A credential from the config. Its value is only reachable through :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class AccountConfig:
    name: str
    client_id: str
    client_secret: Secret | None
    grant: str
    jwt: Secret | None = None
    username: str | None = None
    extension: str | None = None
    password: Secret | None = None
    refresh_token: Secret | None = None
    auth_code: Secret | None = None
    redirect_uri: str | None = None
    code_verifier: Secret | None = None
    access_token_ttl: int | None = None
    max_live_tokens: int = 1
    # its platform's origin (sandbox and production side by side); the loader fills in
    # [proxy] upstream when the account names none, so None only outside a loaded config
    upstream: str | None = None
    # its media host (recordings, under /_media); by default [proxy] media_upstream for an
    # account on the proxy's platform, none for an account on another one
    media_upstream: str | None = None

    @property
    def can_login(self) -> bool:
        """True when the proxy can start a new session by itself (no person needed)."""
        return self.grant in LOGIN_GRANTS


@dataclass(frozen=True)
class ClientConfig:
    name: str
    account: str
    key: Secret  # its first key in clear ("" when it only has digests)
    # its share of the account's API rate limits against the account's other clients
    # (weighted fair queuing, [rate_limits]); optional hard caps per group and window
    rate_weight: float = 1.0
    rate_quota: tuple[tuple[str, int], ...] = ()  # (group key, requests per window)
    # every key that identifies it: SHA-256 digests (hex) of `key`, `keys` and `key_sha256`
    # (several while a key rotates; a digest keeps the secret out of the config)
    key_sha256: tuple[str, ...] = ()
    keys: tuple[Secret, ...] = ()  # further keys in clear (`keys`), for redaction
    # what it may call: "METHOD /path" patterns (`*` within a segment, `**` across); None: all
    allow: tuple[str, ...] | None = None

    def digests(self) -> tuple[str, ...]:
        """The SHA-256 digests (hex) of every key of this client."""
        if self.key_sha256:
            return self.key_sha256
        return (key_digest(self.key.reveal()),) if self.key.reveal() else ()


def key_digest(key: str) -> str:
    """How a client key is known: its SHA-256, in hex (``key_sha256`` in the config)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class EmulatorConfig:
    """The bundled platform emulator, started by ``tokenproxy run`` as the upstream (demo)."""

    enabled: bool = False
    listen: HostPort = HostPort("127.0.0.1", 9000)
    args: tuple[str, ...] = ()


RATE_MODES = ("enforce", "observe", "off")
# the platform's published defaults per (user, app) and 60 s window (rate-limits.md, 35-42)
DEFAULT_RATE_LIMITS = (("light", 50), ("medium", 40), ("heavy", 10), ("auth", 5))


@dataclass(frozen=True)
class RateLimitConfig:
    """[rate_limits]: the account's API budget per group, shared by its apps (issue 17)."""

    # enforce: queue and refuse so the platform never answers 429; observe: learn and count
    # only; off: forward blindly
    mode: str = "enforce"
    max_wait: float = 10.0  # s a request may wait for its group's budget, then the proxy's 429
    # limits assumed until the platform's headers tell them (group key -> calls per window)
    limits: tuple[tuple[str, int], ...] = DEFAULT_RATE_LIMITS
    window: float = 60.0
    # a 429 without Retry-After: wait this long (the docs: at least 30 s)
    default_retry_after: float = 30.0
    max_penalty: float = 600.0  # no header makes a group wait longer than this
    # processes sharing one (user, app) budget without a shared count: each keeps to 1/N
    # (replicas in config x workers of this host)
    replicas: int = 1

    def limit_of(self, group: str) -> int | None:
        return dict(self.limits).get(group)


@dataclass(frozen=True)
class EventsConfig:
    """[events]: apps' WebSocket subscriptions through the proxy (issue 18)."""

    enabled: bool = True
    path: str = "/ws"  # the proxy's WebSocket route (the ``uri`` of the ws tokens it issues)
    upstream_sockets: int = 1  # per account: sockets to the platform's gateway (50 allowed)
    ws_token_ttl: float = 600.0  # s an app's ws token opens sockets (the SDKs' default)
    max_frame_bytes: int = 256 * 1024  # an app frame beyond this closes its socket (1009)
    max_app_sockets: int = 10_000  # per process
    filters_per_app: int = 100  # event filters in one app's subscription
    subscribe_per_minute: int = 20  # subscription changes per app socket and minute
    recovery_timeout: float = 180.0  # s an app's session waits for it to reconnect
    recovery_buffer: int = 100  # notifications kept for an app while it is away
    heartbeat_interval: float = 300.0  # s between the proxy's Heartbeats upstream
    request_timeout: float = 60.0  # s for the platform's answer over the socket


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True)
class TracingConfig:
    """[tracing]: OpenTelemetry spans (request -> renewal -> token call) exported over
    OTLP/HTTP (issue 19); without ``otlp_endpoint`` tracing is off and costs nothing."""

    otlp_endpoint: str | None = None  # http(s) URL of the traces endpoint (.../v1/traces)
    service_name: str = "tokenproxy"  # the spans' service.name
    sample_ratio: float = 1.0  # share of new traces kept; an app's sampled flag is followed
    # environment variable holding the exporter's headers ("name=value,..."; e.g. an API key:
    # a secret, never logged)
    headers_env: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.otlp_endpoint)

    def headers(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The exporter's headers from ``headers_env`` (ValueError: not ``name=value,...``)."""
        if self.headers_env is None:
            return {}
        return otlp_headers(environ.get(self.headers_env, ""))


def otlp_headers(text: str) -> dict[str, str]:
    """``name=value,name2=value2`` (OTEL_EXPORTER_OTLP_HEADERS' format, values
    percent-decoded); ValueError without the value in its message."""
    headers: dict[str, str] = {}
    for number, item in enumerate(text.split(","), 1):
        name, sep, value = item.partition("=")
        name, value = name.strip(), unquote(value.strip())
        if not sep or not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"item {number} is not name=value")
        if not value or any(c in value for c in "\r\n\0"):
            raise ValueError(f"header {name} has an empty or multi-line value")
        headers[name.lower()] = value
    return headers


LOG_FORMATS = ("text", "json")
STORE_BACKENDS = ("sqlite", "redis", "memory")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class StoreConfig:
    backend: str = "sqlite"
    path: str = "var/tokens.db"  # relative to the working directory
    key_env: str = "TOKENPROXY_STORE_KEY"
    allow_plaintext: bool = False
    url: Secret | None = None  # redis://[:password@]host:port/db or rediss:// (TLS)
    prefix: str = "tokenproxy"  # Redis key prefix: one per deployment sharing a server
    tls_ca_file: str | None = None  # CA bundle that signed a rediss:// server's certificate
    lock_lease: float = 6.0  # seconds a crashed replica can hold an account's renewal lock
    # seconds a renewal waiting for another process's pair keeps trying a failing store (a
    # Sentinel failover, a restart) before requests are told the store is down; 0: at once
    failover_wait: float = 5.0
    # Redis Sentinel: the sentinels' addresses and the service (master name) they watch; then
    # `url` is optional and names no host (scheme for TLS, the primary's password, DB)
    sentinels: tuple[HostPort, ...] = ()
    sentinel_service: str | None = None
    sentinel_password: Secret | None = None  # the sentinels' own requirepass, if any
    cluster: bool = False  # Redis Cluster: `url` names any node
    # replicas that must confirm a rotated pair (WAIT) before it is counted as durable; the
    # loader makes it 1 when sentinels are configured, 0 otherwise
    min_replicas_ack: int = 0


@dataclass(frozen=True)
class ProxyConfig:
    listen: HostPort = HostPort("127.0.0.1", 8080)
    metrics_listen: HostPort | None = HostPort("127.0.0.1", 9464)
    upstream: str = "https://platform.ringcentral.com"
    token_wait_timeout: float = 10.0
    upstream_timeout: float = 60.0
    refresh_ahead: float = 60.0
    refresh_ahead_share: float = 0.04  # ... but never more than this share of the lifetime
    drain_timeout: float = 2.0
    # SIGTERM: /readyz turns 503 and new connections are served this long (load balancers
    # notice), then in-flight requests get up to shutdown_timeout to finish; then exit 0
    drain_grace: float = 0.0
    shutdown_timeout: float = 30.0
    access_log: str = "off"  # the audit trail: "off", "stderr" or a file (one JSON line each)
    stream_threshold: int = 1024 * 1024
    verify_upstream_tls: bool = True
    auth_budget_calls: int = 5
    auth_budget_window: float = 60.0
    log_format: str = "text"  # text | json (one object per line)
    allow_plaintext_listen: bool = False  # listen beyond loopback without TLS (opt-in)
    tls_cert: str | None = None  # PEM certificate (chain) the proxy serves TLS with ...
    tls_key: str | None = None  # ... and its private key; then plain HTTP is refused
    bad_key_limit: int = 20  # unknown client keys per address per minute before slowing down
    # failed logins through the proxy per client id per minute before its logins get 429
    login_failure_limit: int = 30
    virtual_access_ttl: int = 3600  # seconds a virtual access token lives (apps' logins)
    # outstanding virtual grants (logins through the proxy) per account; beyond, the least
    # recently refreshed one ends. 0: no cap
    virtual_grants_per_account: int = 1000
    # seconds a virtual grant read from the store is still served while the store is away
    virtual_grant_stale_max: float = 300.0
    replay_body_limit: int = 64 * 1024 * 1024  # request bodies up to this are replayable
    # request-body bytes buffered for replay by the whole process at once (a quarter of the
    # 1 GiB memory limit of deploy/k8s); beyond it bodies stream
    replay_buffer_total: int = 256 * 1024 * 1024
    media_upstream: str | None = None  # media host of recordings, served under /_media
    public_url: str | None = None  # the proxy's URL as apps see it (links in answers)
    # environment variable holding the bearer token /metrics and /status require
    admin_token_env: str | None = None
    # the shared upstream pool (issue 16): every app connection's requests and the replays
    # leave through one set of keep-alive connections; false: one per app connection
    upstream_pool: bool = True
    # connections (= requests out at once) per process: Envoy's default circuit-breaker limit
    upstream_pool_size: int = 1024
    upstream_pool_wait: float = 5.0  # s a request waits for a free connection, then 503
    upstream_keepalive: float = 60.0  # s an idle pooled connection is kept (nginx's default)
    # "full": every account's own series; "folded": counters and histograms of all accounts
    # in one series (account="_all"), per-account gauges only for accounts needing attention
    metrics_per_account: str = "full"
    upstream_http2: bool = False  # HTTP/2 to the platform (ALPN), off: it measured slower
    # s between the reports each process writes of itself to the store for `tokenproxy status`
    # (issue 19.7); a report is shown for six times this (the window), then dropped
    status_report_interval: float = 10.0


@dataclass(frozen=True)
class Config:
    source: str
    proxy: ProxyConfig
    accounts: tuple[AccountConfig, ...]
    clients: tuple[ClientConfig, ...]
    emulator: EmulatorConfig = field(default_factory=EmulatorConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    rate_limits: RateLimitConfig = field(default_factory=RateLimitConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)

    def secret_values(self) -> list[str]:
        """Every credential in the config (for log redaction)."""
        values = [c.key.reveal() for c in self.clients if c.key.reveal()]
        values += [k.reveal() for c in self.clients for k in c.keys]
        for account in self.accounts:
            for item in (account.client_secret, account.jwt, account.password,
                         account.refresh_token, account.auth_code, account.code_verifier):
                if item:
                    values.append(item.reveal())
        if self.store.url:
            values.append(self.store.url.reveal())
        if self.store.sentinel_password:
            values.append(self.store.sentinel_password.reveal())
        return values

    def account(self, name: str) -> AccountConfig:
        for account in self.accounts:
            if account.name == name:
                return account
        raise KeyError(name)


# --------------------------------------------------------------------------------------------
# loading


