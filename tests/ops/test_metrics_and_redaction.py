"""The metric catalogue matches what is exported, and the log redaction catches secrets."""

from __future__ import annotations

import logging

import httpx
from prometheus_client import generate_latest

from proxy_addon.config import parse_config
from proxy_addon.ops.events_metrics import EventsMetrics
from proxy_addon.ops.logs import REDACTED, JsonFormatter, RedactingFormatter, SecretRegistry
from proxy_addon.ops.metrics import EXPORTED, Metrics, PoolObserver, bounded, status_class
from proxy_addon.ratelimit.governor import Governor
from proxy_addon.ratelimit.groups import GroupTable
from proxy_addon.store.base import RecordCodec
from proxy_addon.store.crypto import TokenCipher
from proxy_addon.store.memory import MemoryStore
from proxy_addon.tokens.pool import TokenPool
from proxy_addon.upstream.data_plane import DataPlane
from proxy_addon.upstream.token_endpoint import TokenEndpoint

CONFIG = {
    "proxy": {"upstream": "http://127.0.0.1:9"},
    "accounts": [{"name": "main", "client_id": "id", "client_secret": "s", "grant": "jwt",
                  "jwt": "j"}],
    "clients": [{"name": "app", "account": "main", "key": "k" * 20}],
}


def test_catalogue_is_what_the_registry_exports() -> None:
    config = parse_config(CONFIG, "test", {})
    metrics = Metrics()
    metrics.prepare(config, "sqlite")
    EventsMetrics(metrics, ["main"])  # real-time events (issue 18)
    pool = TokenPool.build(config, TokenEndpoint("http://127.0.0.1:9", httpx.AsyncClient()),
                           MemoryStore(RecordCodec(TokenCipher(None))),
                           observer=PoolObserver(metrics))
    metrics.watch_pool(pool)
    metrics.watch_upstream(DataPlane(size=4, timeout=1, acquire_timeout=1, verify=True))
    governor = Governor(config.rate_limits, GroupTable.bundled())
    governor.learn("main", "GET", "GET /x", "light", {  # a budget the platform told of
        "x-rate-limit-group": "Light", "x-rate-limit-limit": "50",
        "x-rate-limit-remaining": "49", "x-rate-limit-window": "60"})
    metrics.watch_rate_limits(governor)
    metrics.rate_wait.labels("main", "light").observe(0.2)  # labelled series appear when used
    metrics.rate_refused.labels("app", "main", "light").inc()
    metrics.platform_429.labels("main", "light").inc()
    metrics.rate_resent.labels("main", "light").inc()
    names = set()
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and not name.endswith("_total"):
                    name = name.removesuffix(suffix)
            names.add(name)
    assert names == set(EXPORTED)


def test_label_values_are_bounded() -> None:
    assert bounded("OAU-213", ("OAU-213",)) == "OAU-213"
    assert bounded("/restapi/v1.0/account/123", ("OAU-213",)) == "other"
    assert [status_class(s) for s in (101, 200, 302, 404, 503, 999, -1)] == [
        "1xx", "2xx", "3xx", "4xx", "5xx", "5xx", "5xx"]


def test_redaction_of_known_and_credential_shaped_values() -> None:
    secrets = SecretRegistry(recent=2)
    secrets.add(["config-jwt-value"], fixed=True)
    secrets.add(["token-one-aaaa", "token-two-bbbb", "token-three-cccc"])  # keeps the last 2
    text = secrets.redact(
        "jwt config-jwt-value; Authorization: Bearer abcdef123456; Basic ZGVtbzpzZWNyZXQ=; "
        "url /x?access_token=abc123&b=1; form refresh_token=r1&grant_type=refresh_token; "
        '{"access_token": "at-1", "refresh_token":"rt-1"}; redis://:hunter2@127.0.0.1:6379/0; '
        "token-two-bbbb token-three-cccc token-one-aaaa")
    for leaked in ("config-jwt-value", "abcdef123456", "ZGVtbzpzZWNyZXQ=", "abc123", "r1&",
                   "at-1", "rt-1", "hunter2", "token-two-bbbb", "token-three-cccc"):
        assert leaked not in text, leaked
    assert "token-one-aaaa" in text  # dropped from the bounded recent set
    assert text.count(REDACTED) >= 10 and "grant_type=refresh_token" in text


def test_formatters_redact_messages_and_exceptions() -> None:
    secrets = SecretRegistry()
    secrets.add(["s3cr3t-value"], fixed=True)
    record = logging.LogRecord("tokenproxy.pool", logging.ERROR, __file__, 1,
                               "failed with %s", ("s3cr3t-value",), None)
    record.account = "main"
    try:
        raise ValueError("boom s3cr3t-value")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = RedactingFormatter(JsonFormatter(), secrets).format(record)
    assert "s3cr3t-value" not in line and '"account": "main"' in line


def test_redaction_with_many_secrets_and_nested_ones() -> None:
    """10,000 accounts' credentials (bench scale): every one is still found, anywhere in a
    line; a secret that contains another, or shares its first characters, is replaced whole."""
    secrets = SecretRegistry(recent=4)
    secrets.add([f"jwt-{i:05d}-credential" for i in range(10_000)], fixed=True)
    secrets.add(["shared-prefix-long-secret", "shared-prefix"], fixed=True)
    secrets.add(["shared-prefix-recent-token", "abcdef"])
    line = ("x jwt-04242-credential y jwt-09999-credential"
            " shared-prefix-long-secret shared-prefix shared-prefix-recent-token abcdef")
    assert secrets.redact(line) == f"x {REDACTED} y {REDACTED} {REDACTED} {REDACTED} " \
                                   f"{REDACTED} {REDACTED}"
    near_misses = "jwt-00001-credentiaX and jwt-0000"
    assert secrets.redact(near_misses) == near_misses
    assert secrets.redact("") == "" and secrets.redact("short") == "short"
