"""Configuration loading: read the TOML file, interpolate ``${ENV}``, validate every key and
freeze the result into the dataclasses of :mod:`.model`.

First step of the data flow. Every problem is a :class:`~.model.ConfigError` naming the file,
the key path (``accounts[0].grant``) and the reason.

Why one module of ~450 lines: :class:`_Reader` is one recursive-descent reader whose section
methods share its key-path, interpolation and error helpers, and whose allowed-key sets the
documentation-drift test reads (tests/repo/test_docs.py). A pydantic v2 port was measured
(issue 14): 12 % fewer logical lines for 170-250 ms more CPU per process start, so the reader
stays; tests/config/test_config_messages.py pins its messages for any future port.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .model import (
    GRANTS,
    LOG_FORMATS,
    MAX_LIVE_TOKENS_CAP,
    RATE_MODES,
    REDIS_SCHEMES,
    STORE_BACKENDS,
    AccountConfig,
    ClientConfig,
    Config,
    ConfigError,
    EmulatorConfig,
    EventsConfig,
    HostPort,
    ProxyConfig,
    RateLimitConfig,
    Secret,
    StoreConfig,
    TracingConfig,
    key_digest,
    otlp_headers,
)

_EVENTS_PATH = re.compile(r"(/[A-Za-z0-9._-]+)+/?")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Config:
    """Read, interpolate and validate the config file at ``path``."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read file: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(source, "", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None
    return parse_config(doc, source, os.environ if environ is None else environ)


def parse_config(doc: dict[str, Any], source: str, environ: Any) -> Config:
    reader = _Reader(source, environ)
    return reader.config(doc)


class _Reader:
    """Walks the parsed TOML, tracking the key path for error messages."""

    def __init__(self, source: str, environ: Any) -> None:
        self.source = source
        self.environ = environ

    def fail(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.source, key, reason)

    # -- primitives ----------------------------------------------------------------------

    def table(self, value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {_kind(value)}")
        for name in value:
            if name not in allowed:
                hint = ", ".join(sorted(allowed))
                raise self.fail(_join(key, name), f"unknown key (allowed here: {hint})")
        return value

    def interpolate(self, text: str, key: str) -> str:
        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = self.environ.get(name)
            if value is None or (value == "" and default is not None):
                if default is not None:
                    return default
                raise self.fail(key, f"environment variable {name} is not set")
            return value

        return _ENV_REF.sub(sub, text)

    def string(self, table: dict[str, Any], name: str, key: str, *, required: bool = False,
               default: str | None = None) -> str | None:
        full = _join(key, name)
        if name not in table:
            if required:
                raise self.fail(full, "required key is missing")
            return default
        value = table[name]
        if not isinstance(value, str):
            raise self.fail(full, f"expected a string, got {_kind(value)}")
        value = self.interpolate(value, full)
        if required and not value:
            raise self.fail(full, "must not be empty")
        return value

    def secret(self, table: dict[str, Any], name: str, key: str, *,
               required: bool = False) -> Secret | None:
        value = self.string(table, name, key, required=required)
        return Secret(value) if value else None

    def number(self, table: dict[str, Any], name: str, key: str, default: float, *,
               minimum: float, maximum: float | None = None, integer: bool = False) -> float:
        full = _join(key, name)
        if name not in table:
            return default
        value = table[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(full, f"expected a number, got {_kind(value)}")
        if integer and not isinstance(value, int):
            raise self.fail(full, "expected a whole number")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise self.fail(full, f"must be {bound}, got {value}")
        return value

    def boolean(self, table: dict[str, Any], name: str, key: str, default: bool) -> bool:
        if name not in table:
            return default
        value = table[name]
        if not isinstance(value, bool):
            raise self.fail(_join(key, name), f"expected true or false, got {_kind(value)}")
        return value

    def access_log(self, table: dict[str, Any], key: str) -> str:
        """``"off"``, ``"stderr"`` or a file in a directory that exists and is writable."""
        value = self.string(table, "access_log", key, default="off") or "off"
        if value in ("off", "stderr"):
            return value
        directory = Path(value).parent
        if not directory.is_dir() or not os.access(directory, os.W_OK) \
                or Path(value).is_dir():
            raise self.fail(_join(key, "access_log"), f"expected \"off\", \"stderr\" or a "
                            f"file in a writable directory, got {value!r}")
        return value

    def host_port(self, text: str, key: str) -> HostPort:
        host, sep, port = text.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise self.fail(key, f"expected HOST:PORT (e.g. 127.0.0.1:8080), got {text!r}")
        return HostPort(host, int(port))

    # -- sections ------------------------------------------------------------------------

    def config(self, doc: dict[str, Any]) -> Config:
        self.table(doc, "", {"proxy", "accounts", "clients", "emulator", "store", "rate_limits",
                             "events", "tracing"})
        proxy = self.proxy(doc.get("proxy", {}))
        emulator = self.emulator(doc.get("emulator", {}))
        if emulator.enabled and "upstream" not in doc.get("proxy", {}):
            # the upstream is never implied: a demo names the emulator it starts
            raise self.fail("proxy.upstream", "required while [emulator] is enabled: name the "
                            f"emulator explicitly (upstream = \"http://{emulator.listen}\")")
        upstream_host = urlsplit(proxy.upstream).hostname or ""
        if not proxy.verify_upstream_tls and proxy.upstream.startswith("https://") \
                and not _is_loopback(upstream_host):
            raise self.fail("proxy.verify_upstream_tls", "may only be false for an upstream on "
                            "this host (tests): the platform's certificate is always verified")
        if (proxy.tls_cert is None) != (proxy.tls_key is None):
            raise self.fail("proxy.tls_cert", "tls_cert and tls_key go together")
        if not proxy.allow_plaintext_listen and proxy.tls_cert is None \
                and not _is_loopback(proxy.listen.host):
            raise self.fail("proxy.listen", f"refusing to serve plain HTTP on the non-loopback "
                            f"address {proxy.listen.host!r}: apps would send their credentials "
                            "in clear. Listen on 127.0.0.1 behind a TLS terminator, or set "
                            "[proxy] allow_plaintext_listen = true if the network is trusted")
        if proxy.public_url is None and not _is_loopback(proxy.listen.host):
            raise self.fail("proxy.public_url", f"required when listening on the non-loopback "
                            f"address {proxy.listen.host!r}: links in answers must name the "
                            "proxy as apps reach it (scheme, host, port), which the local socket "
                            "address does not tell behind a load balancer or a DNS name. Set "
                            "[proxy] public_url = \"https://tokenproxy.internal\"")
        admin = proxy.metrics_listen
        if admin is not None and not admin.is_loopback and proxy.admin_token_env is None:
            raise self.fail("proxy.metrics_listen", f"refusing to serve /metrics and /status "
                            f"without authentication on the non-loopback address {admin.host!r}: "
                            "set [proxy] admin_token_env to the name of an environment variable "
                            "holding a bearer token (openssl rand -hex 24), or listen on "
                            "127.0.0.1")
        accounts = self.platforms(self.accounts(doc.get("accounts")), proxy)
        clients = self.clients(doc.get("clients", []), {a.name for a in accounts})
        store = self.store(doc.get("store", {}))
        rate_limits = self.rate_limits(doc.get("rate_limits", {}))
        events = self.events(doc.get("events", {}))
        tracing = self.tracing(doc.get("tracing", {}))
        return Config(self.source, proxy, accounts, clients, emulator, store, rate_limits,
                      events, tracing)

    def platforms(self, accounts: tuple[AccountConfig, ...], proxy: ProxyConfig
                  ) -> tuple[AccountConfig, ...]:
        """Each account's platform and media host made explicit: its own ``upstream`` (sandbox
        beside production), else the proxy's; an upstream of its own is verified like the
        proxy's (``verify_upstream_tls = false`` only for this host)."""
        resolved = []
        for index, account in enumerate(accounts):
            upstream = account.upstream or proxy.upstream
            media = account.media_upstream
            if media is None and upstream == proxy.upstream:
                media = proxy.media_upstream
            host = urlsplit(upstream).hostname or ""
            if not proxy.verify_upstream_tls and upstream.startswith("https://") \
                    and not _is_loopback(host):
                raise self.fail(f"accounts[{index}].upstream", "is not on this host, and "
                                "[proxy] verify_upstream_tls = false is only for tests: the "
                                "platform's certificate is always verified")
            resolved.append(dataclasses.replace(account, upstream=upstream,
                                                media_upstream=media))
        return tuple(resolved)

    def events(self, value: Any) -> EventsConfig:
        key = "events"
        d = EventsConfig()
        table = self.table(value, key, {f.name for f in dataclasses.fields(EventsConfig)})
        path = self.string(table, "path", key, default=d.path) or d.path
        if not _EVENTS_PATH.fullmatch(path) or path.lower().startswith(("/restapi", "/_")):
            raise self.fail(_join(key, "path"), f"must be an absolute path of letters, digits, "
                            f"'-', '_', '.' and '/' outside /restapi and /_*, got {path!r}")

        def integer(name: str, default: int, low: int, high: int) -> int:
            return int(self.number(table, name, key, default, minimum=low, maximum=high,
                                   integer=True))

        def seconds(name: str, default: float, low: float, high: float) -> float:
            return self.number(table, name, key, default, minimum=low, maximum=high)

        return EventsConfig(
            enabled=self.boolean(table, "enabled", key, d.enabled),
            path=path.rstrip("/") or d.path,
            upstream_sockets=integer("upstream_sockets", d.upstream_sockets, 1, 50),
            ws_token_ttl=seconds("ws_token_ttl", d.ws_token_ttl, 5, 86400),
            max_frame_bytes=integer("max_frame_bytes", d.max_frame_bytes, 1024, 64 * 1024**2),
            max_app_sockets=integer("max_app_sockets", d.max_app_sockets, 1, 1_000_000),
            filters_per_app=integer("filters_per_app", d.filters_per_app, 1, 1000),
            subscribe_per_minute=integer("subscribe_per_minute", d.subscribe_per_minute, 1,
                                         10_000),
            recovery_timeout=seconds("recovery_timeout", d.recovery_timeout, 0, 3600),
            recovery_buffer=integer("recovery_buffer", d.recovery_buffer, 0, 100_000),
            heartbeat_interval=seconds("heartbeat_interval", d.heartbeat_interval, 1, 1800),
            request_timeout=seconds("request_timeout", d.request_timeout, 1, 600),
        )

    def tracing(self, value: Any) -> TracingConfig:
        key = "tracing"
        d = TracingConfig()
        table = self.table(value, key, {f.name for f in dataclasses.fields(TracingConfig)})
        endpoint = self.string(table, "otlp_endpoint", key) or None  # "" (${VAR:-}): off
        if endpoint is not None:
            parts = urlsplit(endpoint)
            try:
                parts.port  # noqa: B018 - validates the port
            except ValueError:
                parts = parts._replace(netloc="")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise self.fail(_join(key, "otlp_endpoint"), "expected the http(s) URL of an "
                                "OTLP/HTTP traces endpoint (e.g. http://127.0.0.1:4318/v1/traces), "
                                f"got {endpoint if '@' not in endpoint else 'a URL with a @'!r}")
            if "@" in parts.netloc or parts.query or parts.fragment:
                raise self.fail(_join(key, "otlp_endpoint"), "must not hold credentials, a query "
                                "or a fragment: give the collector's headers (an API key) in "
                                "headers_env")
        name = self.string(table, "service_name", key, default=d.service_name)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}", name or ""):
            raise self.fail(_join(key, "service_name"), "use 1-128 letters, digits, '.', '_', "
                            f"':', '/' or '-', starting with a letter or digit, got {name!r}")
        return TracingConfig(
            otlp_endpoint=endpoint,
            service_name=name or d.service_name,
            sample_ratio=self.number(table, "sample_ratio", key, d.sample_ratio, minimum=0,
                                     maximum=1),
            headers_env=self.headers_env(table, key),
        )

    def headers_env(self, table: dict[str, Any], key: str) -> str | None:
        """The variable's name (read as written, like ``admin_token_env``); it must hold
        ``name=value[,name=value...]``. Its value is never part of a message."""
        full = _join(key, "headers_env")
        found = self.env_reference(table, key, "headers_env",
                                   "the exporter's headers: name=value,name2=value2")
        if found is None:
            return None
        name, text = found
        try:
            otlp_headers(text)
        except ValueError as exc:
            raise self.fail(full, f"environment variable {name}: {exc} (expected "
                                  "name=value,name2=value2)") from None
        return name

    def rate_limits(self, value: Any) -> RateLimitConfig:
        key = "rate_limits"
        table = self.table(value, key, {"mode", "max_wait", "limits", "window",
                                        "default_retry_after", "max_penalty", "replicas"})
        defaults = RateLimitConfig()
        mode = self.string(table, "mode", key, default=defaults.mode) or defaults.mode
        if mode not in RATE_MODES:
            raise self.fail(_join(key, "mode"), f"must be one of {', '.join(RATE_MODES)}, "
                            f"got {mode!r}")
        limits = dict(defaults.limits)
        if "limits" in table:
            limits.update(self.group_counts(table["limits"], _join(key, "limits")))
        return RateLimitConfig(
            mode=mode,
            max_wait=self.number(table, "max_wait", key, defaults.max_wait, minimum=0,
                                 maximum=3600),
            limits=tuple(sorted(limits.items())),
            window=self.number(table, "window", key, defaults.window, minimum=0.1,
                               maximum=86400),
            default_retry_after=self.number(table, "default_retry_after", key,
                                            defaults.default_retry_after, minimum=0,
                                            maximum=3600),
            max_penalty=self.number(table, "max_penalty", key, defaults.max_penalty,
                                    minimum=1, maximum=86400),
            replicas=int(self.number(table, "replicas", key, defaults.replicas, minimum=1,
                                     maximum=1000, integer=True)),
        )

    def group_counts(self, value: Any, key: str) -> dict[str, int]:
        """A table of rate-limit group name -> requests per window (names case-insensitive)."""
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table of group = requests, got {_kind(value)}")
        counts: dict[str, int] = {}
        for name in value:
            group = group_name(name)
            if group is None:
                raise self.fail(_join(key, name), "not a group name (a letter, then up to 31 "
                                "letters, digits, '_' or '-')")
            if group in counts:
                raise self.fail(_join(key, name), f"group {group!r} given twice "
                                "(names are case-insensitive)")
            counts[group] = int(self.number(value, name, key, 0, minimum=1, maximum=1_000_000,
                                            integer=True))
        return counts

    def store(self, value: Any) -> StoreConfig:
        key = "store"
        table = self.table(value, key, {"backend", "path", "key_env", "allow_plaintext", "url",
                                        "prefix", "lock_lease", "tls_ca_file", "sentinels",
                                        "sentinel_service", "sentinel_password", "cluster",
                                        "min_replicas_ack", "failover_wait"})
        defaults = StoreConfig()
        backend = self.string(table, "backend", key, default=defaults.backend) or ""
        if backend not in STORE_BACKENDS:
            raise self.fail("store.backend", f"unknown backend {backend!r} (expected one of "
                                             f"{', '.join(STORE_BACKENDS)})")
        for name in ("sentinels", "sentinel_service", "sentinel_password", "cluster",
                     "min_replicas_ack"):
            if name in table and backend != "redis":
                raise self.fail(f"store.{name}", f"only with backend = \"redis\" (the backend "
                                                 f"is {backend!r})")
        key_env = self.string(table, "key_env", key, default=defaults.key_env) or ""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key_env):
            raise self.fail("store.key_env", "must be the name of an environment variable")
        sentinels = self.sentinels(table)
        cluster = self.boolean(table, "cluster", key, defaults.cluster)
        if sentinels and cluster:
            raise self.fail("store.cluster", "sentinels and cluster exclude each other (a Redis "
                                             "Cluster fails over by itself)")
        url = self.secret(table, "url", key, required=backend == "redis" and not sentinels)
        if url is not None and not url.reveal().startswith(REDIS_SCHEMES):
            raise self.fail("store.url", "expected a redis://, rediss:// (TLS) or unix:// URL")
        if url is not None and sentinels:
            self.sentinel_url(url.reveal())
        if url is not None and cluster and url.reveal().startswith("unix://"):
            raise self.fail("store.url", "with cluster = true, a redis:// or rediss:// URL "
                                         "naming one node of the cluster")
        service = self.string(table, "sentinel_service", key)
        if sentinels and not service:
            raise self.fail("store.sentinel_service", "required with sentinels: the name the "
                                                      "sentinels monitor the primary under")
        if service is not None and not sentinels:
            raise self.fail("store.sentinel_service", "only with sentinels")
        if service is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", service):
            raise self.fail("store.sentinel_service", "expected 1-64 letters, digits or _.-")
        sentinel_password = self.secret(table, "sentinel_password", key)
        if sentinel_password is not None and not sentinels:
            raise self.fail("store.sentinel_password", "only with sentinels")
        min_acks = int(self.number(table, "min_replicas_ack", key, 1 if sentinels else 0,
                                   minimum=0, maximum=16, integer=True))
        if cluster and min_acks:
            raise self.fail("store.min_replicas_ack", "not supported with cluster = true "
                                                      "(leave it 0)")
        prefix = self.string(table, "prefix", key, default=defaults.prefix) or ""
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", prefix):
            raise self.fail("store.prefix", "expected 1-64 letters, digits or _.:-")
        return StoreConfig(
            backend=backend,
            path=self.string(table, "path", key, default=defaults.path) or defaults.path,
            key_env=key_env,
            allow_plaintext=self.boolean(table, "allow_plaintext", key,
                                         defaults.allow_plaintext),
            url=url,
            prefix=prefix,
            tls_ca_file=self.string(table, "tls_ca_file", key),
            lock_lease=self.number(table, "lock_lease", key, defaults.lock_lease, minimum=1.0,
                                   maximum=300.0),
            failover_wait=self.number(table, "failover_wait", key, defaults.failover_wait,
                                      minimum=0.0, maximum=120.0),
            sentinels=sentinels,
            sentinel_service=service,
            sentinel_password=sentinel_password,
            cluster=cluster,
            min_replicas_ack=min_acks,
        )

    def sentinels(self, table: dict[str, Any]) -> tuple[HostPort, ...]:
        full = "store.sentinels"
        if "sentinels" not in table:
            return ()
        value = table["sentinels"]
        if not isinstance(value, list) or not value:
            raise self.fail(full, "expected a non-empty array of \"HOST:PORT\" strings")
        found: list[HostPort] = []
        for index, item in enumerate(value):
            item_key = f"{full}[{index}]"
            if not isinstance(item, str):
                raise self.fail(item_key, f"expected a \"HOST:PORT\" string, got {_kind(item)}")
            address = self.host_port(self.interpolate(item, item_key), item_key)
            if address.port == 0:
                raise self.fail(item_key, "port 0 is not a sentinel's port")
            if address in found:
                raise self.fail(item_key, f"{address} is listed twice")
            found.append(address)
        return tuple(found)

    def sentinel_url(self, url: str) -> None:
        """With sentinels, ``url`` only carries TLS, credentials and DB: the sentinels name the
        primary, so a host here would be a second, contradicting answer."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise self.fail("store.url", "with sentinels, a redis:// or rediss:// URL without "
                                         "host (redis://:PASSWORD@/DB): the sentinels name the "
                                         "primary")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.hostname or port is not None:
            raise self.fail("store.url", "with sentinels, the URL names no host (the sentinels "
                                         "name the primary): write redis://:PASSWORD@/DB or "
                                         "rediss://:PASSWORD@/DB")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise self.fail("store.url", "the DB (path of the URL) must be a number")

    def proxy(self, value: Any) -> ProxyConfig:
        key = "proxy"
        allowed = {"listen", "metrics_listen", "upstream", "token_wait_timeout",
                   "upstream_timeout", "refresh_ahead", "refresh_ahead_share",
                   "drain_timeout", "drain_grace", "shutdown_timeout", "access_log",
                   "stream_threshold",
                   "verify_upstream_tls",
                   "auth_budget_calls", "auth_budget_window", "log_format",
                   "media_upstream", "public_url", "allow_plaintext_listen", "bad_key_limit",
                   "replay_body_limit", "replay_buffer_total", "tls_cert", "tls_key",
                   "admin_token_env", "login_failure_limit", "virtual_access_ttl",
                   "virtual_grants_per_account", "virtual_grant_stale_max",
                   "upstream_pool", "upstream_pool_size", "upstream_pool_wait",
                   "upstream_keepalive", "upstream_http2", "metrics_per_account",
                   "status_report_interval"}
        table = self.table(value, key, allowed)
        defaults = ProxyConfig()
        folding = self.string(table, "metrics_per_account", key,
                              default=defaults.metrics_per_account)
        if folding not in ("full", "folded"):
            raise self.fail("proxy.metrics_per_account",
                            f"expected \"full\" or \"folded\", got {folding!r}")
        log_format = self.string(table, "log_format", key, default=defaults.log_format)
        if log_format not in LOG_FORMATS:
            raise self.fail("proxy.log_format", f"expected one of {', '.join(LOG_FORMATS)}, "
                                                f"got {log_format!r}")
        listen = self.string(table, "listen", key)
        metrics = self.string(table, "metrics_listen", key)
        upstream = self.string(table, "upstream", key, default=defaults.upstream) or ""
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.fail("proxy.upstream", f"expected an http(s) URL, got {upstream!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise self.fail("proxy.upstream", "must be a bare origin like https://host[:port]")
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError:
            raise self.fail("proxy.upstream", f"invalid port in {upstream!r}") from None
        return ProxyConfig(
            listen=self.host_port(listen, "proxy.listen") if listen else defaults.listen,
            metrics_listen=(defaults.metrics_listen if metrics is None else
                            None if metrics == "" else
                            self.host_port(metrics, "proxy.metrics_listen")),
            upstream=upstream.rstrip("/"),
            token_wait_timeout=self.number(table, "token_wait_timeout", key,
                                           defaults.token_wait_timeout, minimum=0.1),
            upstream_timeout=self.number(table, "upstream_timeout", key,
                                         defaults.upstream_timeout, minimum=0.1),
            refresh_ahead=self.number(table, "refresh_ahead", key, defaults.refresh_ahead,
                                      minimum=0),
            refresh_ahead_share=self.number(table, "refresh_ahead_share", key,
                                            defaults.refresh_ahead_share, minimum=0.0,
                                            maximum=0.5),
            drain_timeout=self.number(table, "drain_timeout", key, defaults.drain_timeout,
                                      minimum=0),
            drain_grace=self.number(table, "drain_grace", key, defaults.drain_grace, minimum=0,
                                    maximum=600),
            shutdown_timeout=self.number(table, "shutdown_timeout", key,
                                         defaults.shutdown_timeout, minimum=0, maximum=3600),
            access_log=self.access_log(table, key),
            stream_threshold=int(self.number(table, "stream_threshold", key,
                                             defaults.stream_threshold, minimum=0, integer=True)),
            verify_upstream_tls=self.boolean(table, "verify_upstream_tls", key,
                                             defaults.verify_upstream_tls),
            auth_budget_calls=int(self.number(table, "auth_budget_calls", key,
                                              defaults.auth_budget_calls, minimum=0,
                                              integer=True)),
            auth_budget_window=self.number(table, "auth_budget_window", key,
                                           defaults.auth_budget_window, minimum=1),
            log_format=log_format or defaults.log_format,
            allow_plaintext_listen=self.boolean(table, "allow_plaintext_listen", key,
                                                defaults.allow_plaintext_listen),
            tls_cert=self.readable_file(table, "tls_cert", key),
            tls_key=self.readable_file(table, "tls_key", key),
            bad_key_limit=int(self.number(table, "bad_key_limit", key, defaults.bad_key_limit,
                                          minimum=0, integer=True)),
            login_failure_limit=int(self.number(table, "login_failure_limit", key,
                                                defaults.login_failure_limit, minimum=0,
                                                integer=True)),
            virtual_access_ttl=int(self.number(table, "virtual_access_ttl", key,
                                               defaults.virtual_access_ttl, minimum=1,
                                               maximum=3600, integer=True)),
            virtual_grants_per_account=int(self.number(
                table, "virtual_grants_per_account", key, defaults.virtual_grants_per_account,
                minimum=0, integer=True)),
            virtual_grant_stale_max=self.number(table, "virtual_grant_stale_max", key,
                                                defaults.virtual_grant_stale_max, minimum=0),
            replay_body_limit=int(self.number(table, "replay_body_limit", key,
                                              defaults.replay_body_limit, minimum=0,
                                              integer=True)),
            replay_buffer_total=int(self.number(table, "replay_buffer_total", key,
                                                defaults.replay_buffer_total, minimum=0,
                                                integer=True)),
            media_upstream=self.origin_url(table, "media_upstream", key),
            public_url=self.origin_url(table, "public_url", key),
            admin_token_env=self.admin_token_env(table, key),
            upstream_pool=self.boolean(table, "upstream_pool", key, defaults.upstream_pool),
            upstream_pool_size=int(self.number(table, "upstream_pool_size", key,
                                               defaults.upstream_pool_size, minimum=1,
                                               maximum=10000, integer=True)),
            upstream_pool_wait=self.number(table, "upstream_pool_wait", key,
                                           defaults.upstream_pool_wait, minimum=0.01),
            upstream_keepalive=self.number(table, "upstream_keepalive", key,
                                           defaults.upstream_keepalive, minimum=0),
            upstream_http2=self.boolean(table, "upstream_http2", key, defaults.upstream_http2),
            metrics_per_account=folding or defaults.metrics_per_account,
            status_report_interval=self.number(table, "status_report_interval", key,
                                               defaults.status_report_interval, minimum=0.1,
                                               maximum=600),
        )

    def env_reference(self, table: dict[str, Any], key: str, field: str, holds: str
                      ) -> tuple[str, str] | None:
        """A ``*_env`` key: the variable's name, read as written (not interpolated: a
        ``${NAME}`` here would turn the secret into a name), and its value; None when the key
        is absent. ``holds`` says what the variable holds, in the message when it is unset."""
        full = _join(key, field)
        if field not in table:
            return None
        name = table[field]
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise self.fail(full, "must be the name of an environment variable (write NAME, "
                                  "not ${NAME})")
        value = self.environ.get(name)
        if value is None:
            raise self.fail(full, f"environment variable {name} is not set (it holds {holds})")
        return name, value

    def admin_token_env(self, table: dict[str, Any], key: str) -> str | None:
        """The variable's name, read as written (not interpolated: a ``${NAME}`` here would
        turn the token into a name); it must hold a token of at least 16 characters."""
        full = _join(key, "admin_token_env")
        found = self.env_reference(table, key, "admin_token_env",
                                   "the bearer token /metrics and /status require")
        if found is None:
            return None
        name, token = found
        if not token:
            raise self.fail(full, f"environment variable {name} is empty")
        if len(token) < 16:
            raise self.fail(full, f"the token in {name} is too short: use at least 16 "
                                  "characters (openssl rand -hex 24)")
        return name

    def readable_file(self, table: dict[str, Any], name: str, key: str) -> str | None:
        value = self.string(table, name, key)
        if value is None:
            return None
        try:
            with open(value, "rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise self.fail(f"{key}.{name}", f"cannot read {value!r}: {exc.strerror}") from None
        return value

    def origin_url(self, table: dict[str, Any], name: str, key: str) -> str | None:
        value = self.string(table, name, key)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname \
                or parts.path not in ("", "/") or parts.query or parts.fragment:
            raise self.fail(f"{key}.{name}", f"expected a bare http(s) origin like "
                                             f"https://host[:port], got {value!r}")
        return value.rstrip("/")

    def emulator(self, value: Any) -> EmulatorConfig:
        key = "emulator"
        table = self.table(value, key, {"enabled", "listen", "args"})
        listen = self.string(table, "listen", key)
        args = table.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise self.fail("emulator.args", "expected a list of strings")
        return EmulatorConfig(
            enabled=self.boolean(table, "enabled", key, False),
            listen=self.host_port(listen, "emulator.listen") if listen else HostPort(
                "127.0.0.1", 9000),
            args=tuple(self.interpolate(a, "emulator.args") for a in args),
        )

    def accounts(self, value: Any) -> tuple[AccountConfig, ...]:
        if value is None:
            raise self.fail("accounts", "at least one [[accounts]] table is required")
        if not isinstance(value, list) or not value:
            raise self.fail("accounts", "expected one or more [[accounts]] tables")
        accounts: list[AccountConfig] = []
        names: set[str] = set()  # a set, not a scan: 10,000 accounts parse in linear time
        for index, item in enumerate(value):
            account = self.account(item, f"accounts[{index}]")
            if account.name in names:
                raise self.fail(f"accounts[{index}].name", f"duplicate account {account.name!r}")
            names.add(account.name)
            accounts.append(account)
        return tuple(accounts)

    def account(self, value: Any, key: str) -> AccountConfig:
        allowed = {"name", "client_id", "client_secret", "grant", "jwt", "username", "extension",
                   "password", "refresh_token", "auth_code", "redirect_uri", "code_verifier",
                   "access_token_ttl", "max_live_tokens", "upstream", "media_upstream"}
        table = self.table(value, key, allowed)
        name = self.string(table, "name", key, required=True) or ""
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise self.fail(_join(key, "name"),
                            "use 1-64 letters, digits, '.', '_' or '-' (it is a metric label)")
        grant = self.string(table, "grant", key, required=True) or ""
        if grant not in GRANTS:
            raise self.fail(_join(key, "grant"),
                            f"unknown grant {grant!r} (expected one of {', '.join(GRANTS)})")
        needed = {
            "jwt": ("jwt",),
            "password": ("username", "password"),
            "refresh_token": ("refresh_token",),
            "authorization_code": ("auth_code", "redirect_uri"),
        }[grant]
        for name_needed in needed:
            if name_needed not in table:
                raise self.fail(_join(key, name_needed), f"required for grant {grant!r}")
        ttl = table.get("access_token_ttl")
        max_live = self.number(table, "max_live_tokens", key, 1, minimum=1, integer=True)
        if max_live > MAX_LIVE_TOKENS_CAP:
            raise self.fail(
                _join(key, "max_live_tokens"),
                f"must be at most {MAX_LIVE_TOKENS_CAP}: the platform evicts the oldest session "
                f"beyond {MAX_LIVE_TOKENS_CAP} per user and client id, got {max_live}")
        return AccountConfig(
            name=name,
            client_id=self.string(table, "client_id", key, required=True) or "",
            client_secret=self.secret(table, "client_secret", key),
            grant=grant,
            jwt=self.secret(table, "jwt", key, required=grant == "jwt"),
            username=self.string(table, "username", key, required=grant == "password"),
            extension=self.string(table, "extension", key),
            password=self.secret(table, "password", key, required=grant == "password"),
            refresh_token=self.secret(table, "refresh_token", key,
                                      required=grant == "refresh_token"),
            auth_code=self.secret(table, "auth_code", key,
                                  required=grant == "authorization_code"),
            redirect_uri=self.string(table, "redirect_uri", key,
                                     required=grant == "authorization_code"),
            code_verifier=self.secret(table, "code_verifier", key),
            access_token_ttl=None if ttl is None else int(self.number(
                table, "access_token_ttl", key, 3600, minimum=1, maximum=3600, integer=True)),
            max_live_tokens=int(max_live),
            upstream=self.origin_url(table, "upstream", key),
            media_upstream=self.origin_url(table, "media_upstream", key),
        )

    def clients(self, value: Any, account_names: set[str]) -> tuple[ClientConfig, ...]:
        if not isinstance(value, list):
            raise self.fail("clients", "expected [[clients]] tables")
        clients: list[ClientConfig] = []
        names: set[str] = set()  # sets, not scans: 10,000 clients parse in linear time
        keys: set[str] = set()
        for index, item in enumerate(value):
            key = f"clients[{index}]"
            table = self.table(item, key, {"name", "account", "key", "keys", "key_sha256",
                                           "rate_weight", "rate_quota", "allow"})
            name = self.string(table, "name", key, required=True) or ""
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
                raise self.fail(_join(key, "name"),
                                "use 1-64 letters, digits, '.', '_' or '-' (it is a metric label)")
            account = self.string(table, "account", key, required=True) or ""
            if account not in account_names:
                raise self.fail(_join(key, "account"), f"no [[accounts]] named {account!r}")
            if name in names:
                raise self.fail(_join(key, "name"), f"duplicate client {name!r}")
            secrets, digests = self.client_keys(table, key)
            for field_name, digest in digests:
                if digest in keys:
                    raise self.fail(_join(key, field_name),
                                    "the same key is used by another client (or twice here)")
                keys.add(digest)
            names.add(name)
            weight = self.number(table, "rate_weight", key, 1.0, minimum=0.01, maximum=1000)
            quota = (self.group_counts(table["rate_quota"], _join(key, "rate_quota"))
                     if "rate_quota" in table else {})
            allow = self.allow(table["allow"], _join(key, "allow")) if "allow" in table \
                else None
            clients.append(ClientConfig(
                name=name, account=account, key=secrets[0] if secrets else Secret(""),
                rate_weight=float(weight), rate_quota=tuple(sorted(quota.items())),
                key_sha256=tuple(d for _, d in digests), keys=tuple(secrets[1:]),
                allow=allow))
        return tuple(clients)

    def client_keys(self, table: dict[str, Any], key: str
                    ) -> tuple[list[Secret], list[tuple[str, str]]]:
        """A client's keys: ``key`` and ``keys`` in clear (at least 16 characters each),
        ``key_sha256`` as digests (one or a list); the clear ones and every (field, digest)."""
        secrets: list[Secret] = []
        digests: list[tuple[str, str]] = []
        if "key" in table:
            secret = self.secret(table, "key", key, required=True)
            assert secret is not None
            secrets.append(secret)
        if "keys" in table:
            value = table["keys"]
            if not isinstance(value, list) or not value \
                    or not all(isinstance(k, str) for k in value):
                raise self.fail(_join(key, "keys"), "expected a non-empty list of strings")
            secrets += [Secret(self.interpolate(k, _join(key, "keys"))) for k in value]
        for secret in secrets:
            field_name = "key" if secret is secrets[0] and "key" in table else "keys"
            if len(secret.reveal()) < 16:
                raise self.fail(_join(key, field_name), "too short: use at least 16 characters")
            digests.append((field_name, key_digest(secret.reveal())))
        if "key_sha256" in table:
            value = table["key_sha256"]
            items = value if isinstance(value, list) else [value]
            if not items or not all(isinstance(d, str) for d in items):
                raise self.fail(_join(key, "key_sha256"), "expected a hex SHA-256 digest or a "
                                "list of them")
            for item in items:
                digest = self.interpolate(item, _join(key, "key_sha256")).strip().lower()
                if not re.fullmatch(r"[0-9a-f]{64}", digest):
                    raise self.fail(_join(key, "key_sha256"), "expected the 64 hex digits of a "
                                    "key's SHA-256 (`tokenproxy client-key` prints both)")
                digests.append(("key_sha256", digest))
        if not digests:
            raise self.fail(_join(key, "key"), "required key is missing (or give keys / "
                            "key_sha256)")
        return secrets, digests

    def allow(self, value: Any, key: str) -> tuple[str, ...]:
        """``allow``: "METHOD /path" patterns; each is checked here (see gateway/scope.py)."""
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise self.fail(key, 'expected a list of "METHOD /path" patterns')
        patterns = []
        for index, item in enumerate(value):
            problem = pattern_problem(item)
            if problem is not None:
                raise self.fail(f"{key}[{index}]", f"{problem}, got {item!r}")
            patterns.append(item.strip())
        return tuple(patterns)


ALLOW_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "*")


def pattern_problem(pattern: str) -> str | None:
    """Why an ``allow`` pattern is not one, or None: "METHOD /path", METHOD one of
    :data:`ALLOW_METHODS`, the path absolute, without query, spaces or dot-segments."""
    method, _, path = pattern.strip().partition(" ")
    path = path.strip()
    if method.upper() not in ALLOW_METHODS:
        return f"the method must be one of {', '.join(ALLOW_METHODS)}"
    if not path.startswith("/") or any(c.isspace() or c in "?#%" for c in path):
        return "the path must be absolute, without query, '%' or spaces"
    if any(part in (".", "..") for part in path.split("/")):
        return "the path may not have '.' or '..' segments"
    return None


def group_name(name: str) -> str | None:
    """A rate-limit group name as configured, in the governor's key form (lower case)."""
    if not isinstance(name, str) or not _GROUP_NAME.match(name):
        return None
    return name.lower()


_GROUP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _kind(value: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
