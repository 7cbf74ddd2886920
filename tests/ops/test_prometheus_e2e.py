"""A real Prometheus scrapes a real proxy through a scripted bad day: normal traffic, a
revocation, an eviction, a platform API rate-limit penalty, a 429 storm at the token endpoint, an
account that needs a person, the store going away, a platform WebSocket session that could not
be recovered and apps' sockets of an account that cannot reach the platform's gateway.
Then every query of every dashboard panel and every alert rule runs through Prometheus' HTTP
API: none may fail, the panels and the alerts the day should raise return data, and those
alerts are pending or firing."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.support.prometheus import start_prometheus
from tests.support.promql import ALERTS_FILE, alert_rules, expand, panel_queries
from tests.support.proxy import APP_KEY, DEMO_CLIENT_SECRET, jwt_account

EXT = "/restapi/v1.0/account/~/extension/~"
SEEDED_KEY = "seeded-app-key-0123456789"
WRONG_KEY = "wrong-app-key-0123456789"
# Alerts the scenario cannot raise: more sessions than the budget needs a leak; unreplicated
# writes need a Redis replica that falls behind (the counter is raised for real, with a frozen
# replica, in tests/store/test_redis_sentinel_e2e.py, and the rule fires in promtool's unit
# tests, dashboards/alerts.test.yml). Their queries still run through Prometheus here.
NOT_RAISED = {"TokenproxySessionsOverBudget", "TokenproxyStoreUnreplicatedWrites"}
PRESENCE = "/restapi/v1.0/account/~/extension/~/presence"


def events_app(proxy_url: str, key: str) -> ClientConnection:
    """A WebSocket app of ``key``'s account, its subscription sent (its answer not awaited)."""
    token = httpx.post(proxy_url + "/restapi/oauth/wstoken", timeout=10,
                       headers={"Authorization": f"Bearer {key}"}).json()
    ws = connect(f"{token['uri']}?access_token={token['ws_access_token']}", open_timeout=10)
    assert json.loads(ws.recv(timeout=10))[0]["type"] == "ConnectionDetails"
    ws.send(json.dumps([{"type": "ClientRequest", "messageId": "s1", "method": "POST",
                         "path": "/restapi/v1.0/subscription"},
                        {"eventFilters": [PRESENCE],
                         "deliveryMode": {"transportType": "WebSocket"}}]))
    return ws


def frame_of(ws: ClientConnection, wanted, within: float) -> list:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while True:
        frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if wanted(frame):
            return frame


@pytest.mark.timeout(400)
def test_dashboards_and_alerts_on_a_bad_day(tmp_path: Path, emulator_factory, proxy_factory,
                                            redis_factory) -> None:
    redis = redis_factory()
    # API limits far above the traffic: the proxy enforces them (learned from the headers)
    # without ever holding the day's traffic, until the platform's penalty below
    emulator = emulator_factory("--access-ttl", "3", "--refresh-ttl", "600", "--auth-rate",
                                "0", "--api-limits", "Light=100000,Medium=100000,Heavy=100000")
    seeded = {"name": "seeded", "client_id": "demo-client-id",
              "client_secret": DEMO_CLIENT_SECRET, "grant": "refresh_token",
              "refresh_token": emulator.user2_refresh_token()}
    wrong = jwt_account("wrong", client_secret="not-the-secret")  # OAU-153: misconfigured
    proxy = proxy_factory(
        emulator.url, accounts=[jwt_account(), seeded, wrong],
        clients=[{"name": "app", "account": "main", "key": APP_KEY},
                 {"name": "seeded-app", "account": "seeded", "key": SEEDED_KEY},
                 {"name": "wrong-app", "account": "wrong", "key": WRONG_KEY}],
        store={"backend": "redis", "url": redis.url, "prefix": f"p{uuid.uuid4().hex[:8]}"},
        rate_limits={"mode": "enforce", "max_wait": 1.5}, token_wait_timeout=2)
    assert proxy.admin_url is not None
    prometheus = start_prometheus(tmp_path / "prometheus",
                                  [proxy.admin_url.removeprefix("http://")], [ALERTS_FILE])
    statuses: Counter[int] = Counter()
    stop = threading.Event()
    sockets: list[ClientConnection] = []

    def traffic(key: str) -> None:
        with proxy.http(key) as client:
            for _ in range(5000):  # bounded
                if stop.is_set():
                    return
                statuses[client.get(EXT).status_code] += 1
                time.sleep(0.05)

    threads = [threading.Thread(target=traffic, args=(k,), daemon=True)
               for k in [APP_KEY] * 14 + [SEEDED_KEY] * 3 + [WRONG_KEY]]
    try:
        for thread in threads:
            thread.start()
        time.sleep(6)  # normal traffic, refreshes every ~3 s
        # events: main's app subscribes; its platform socket drops and the platform refuses
        # the recovery (subscription re-created, the app told recoveryState Failed); the
        # misconfigured account's app never gets a platform socket
        main_ws = events_app(proxy.url, APP_KEY)
        sockets.append(main_ws)
        frame_of(main_ws, lambda f: f[0].get("messageId") == "s1", 20)
        sockets.append(events_app(proxy.url, WRONG_KEY))
        emulator.ws_refuse_recovery(True)
        emulator.ws_drop("close")
        frame_of(main_ws, lambda f: f[1].get("recoveryState") == "Failed", 20)
        emulator.ws_refuse_recovery(False)
        # the platform rate-limits the Light group for 2 s: one platform 429 (then the proxy
        # holds the group), requests waiting it out (<= 1.5 s) or answered the proxy's 429
        emulator.rate_penalty("Light", retry_after=2, seconds=2)
        time.sleep(4)
        for _ in range(30):  # tokens expiring under traffic: token 401s, replayed
            emulator.expire_now()
            time.sleep(0.3)
        emulator.revoke_all()  # main logs in again; seeded needs a person now
        time.sleep(6)
        emulator.outside_login(count=5)  # someone else logs in 5 times: main is evicted
        time.sleep(6)
        # a 429 storm: the platform now allows 3 token calls a minute, and sessions keep dying
        emulator.set_policy(auth_rate=3, auth_window=60, auth_penalty=20)
        for _ in range(4):
            emulator.revoke_all()
            time.sleep(2)
        time.sleep(4)
        redis.pause()  # the store goes away
        time.sleep(15)
        # Prometheus has scraped every second all along; a few more evaluations
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not prometheus.targets_up():
            time.sleep(1)

        failures, empty = [], []
        for dashboard, panel, expr in panel_queries():
            try:
                if not prometheus.query(expand(expr)):
                    empty.append(f"{dashboard} / {panel}: {expr}")
            except AssertionError as exc:
                failures.append(f"{dashboard} / {panel}: {exc}")
        raised, quiet = set(), set()
        for rule in alert_rules():
            try:
                result = prometheus.query(rule["expr"])
            except AssertionError as exc:
                failures.append(f"alert {rule['alert']}: {exc}")
                continue
            (raised if result else quiet).add(rule["alert"])
        active = {a["labels"]["alertname"]: a["state"] for a in prometheus.alerts()}
    finally:
        stop.set()
        for ws in sockets:
            ws.close()
        redis.resume()
        for thread in threads:
            thread.join(30)
        prometheus.stop()
    counters = emulator.counters()
    print(f"figures prometheus: traffic={dict(statuses)} "
          f"token_calls={counters['token_calls_by_grant']} "
          f"rate_limited={counters['rate_limited']} evictions={counters['evictions']} "
          f"{len(panel_queries())} panel queries, {len(alert_rules())} alerts; "
          f"raised={sorted(raised)} active={active}")
    assert not failures, failures
    assert not empty, empty
    all_alerts = {rule["alert"] for rule in alert_rules()}
    assert raised == all_alerts - NOT_RAISED, (raised, quiet)
    assert quiet == NOT_RAISED
    assert set(active) == all_alerts - NOT_RAISED, active
    assert set(active.values()) <= {"pending", "firing"}
    assert counters["rate_limited"] > 0 and counters["evictions"] > 0


def test_prometheus_scrapes_a_guarded_proxy_with_the_bearer_token(
        tmp_path: Path, emulator_factory, proxy_factory) -> None:
    """`[proxy] admin_token_env` set: a real Prometheus scraping with `authorization:
    credentials_file` (as deploy/compose/prometheus.yml does) gets the metrics; the same target
    scraped without the token is down with a 401."""
    token = f"prometheus-admin-token-{uuid.uuid4().hex}"
    emulator = emulator_factory()
    proxy = proxy_factory(emulator.url, admin_token_env="TPX_PROM_ADMIN_TOKEN",
                          env={"TPX_PROM_ADMIN_TOKEN": token})
    assert proxy.admin_url is not None
    with proxy.http() as client:
        assert client.get(EXT).status_code == 200
    token_file = tmp_path / "admin-token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    prometheus = start_prometheus(tmp_path / "prometheus",
                                  [proxy.admin_url.removeprefix("http://")], [ALERTS_FILE],
                                  credentials_file=token_file, unauthenticated_job=True)
    try:
        deadline = time.monotonic() + 60
        health: dict[str, tuple[str, str]] = {}
        while time.monotonic() < deadline:  # bounded: both jobs scraped at least once
            health = prometheus.target_health()
            if set(health) == {"tokenproxy", "tokenproxy-unauthenticated"} and all(
                    state != "unknown" for state, _ in health.values()):
                break
            time.sleep(0.5)
        assert health["tokenproxy"][0] == "up", health
        assert health["tokenproxy-unauthenticated"][0] == "down", health
        assert "401" in health["tokenproxy-unauthenticated"][1], health
        result = prometheus.query('tokenproxy_requests_total{job="tokenproxy"}')
        assert result and sum(float(r["value"][1]) for r in result) >= 1
        assert not prometheus.query('up{job="tokenproxy-unauthenticated"} == 1')
    finally:
        prometheus.stop()
    assert token not in proxy.logs() and token not in prometheus.log()
