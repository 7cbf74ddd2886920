"""What ops see: JSON logs (structured, every secret redacted), `tokenproxy status` on an
account that needs a person, and metric series that stay bounded whatever clients send."""

from __future__ import annotations

import asyncio
import json
import random
import re
import string
import subprocess
import sys
import time

import httpx
import pytest
from rc_emulator.tokens import token_kind

from tests.support.proxy import APP_KEY, DEMO_CLIENT_SECRET, DEMO_JWT, jwt_account

EXT = "/restapi/v1.0/account/~/extension/~"
SEEDED_KEY = "seeded-app-key-0123456789"
EMULATOR_TOKEN = re.compile(r"[A-Za-z0-9_-]{44}")


def series(metrics_text: str) -> set[str]:
    """Every series identity (name and labels) in an exposition."""
    return {line.rsplit(" ", 1)[0] for line in metrics_text.splitlines()
            if line and not line.startswith("#")}


def test_json_logs_status_cli_and_reauth(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0", "--access-ttl", "2")
    seeded = {"name": "seeded", "client_id": "demo-client-id",
              "client_secret": DEMO_CLIENT_SECRET, "grant": "refresh_token",
              "refresh_token": emulator.user2_refresh_token()}
    proxy = proxy_factory(emulator.url, accounts=[jwt_account(), seeded],
                          clients=[{"name": "app", "account": "main", "key": APP_KEY},
                                   {"name": "seeded-app", "account": "seeded",
                                    "key": SEEDED_KEY}],
                          log_format="json")
    with proxy.http(APP_KEY) as main, proxy.http(SEEDED_KEY) as other:
        for _ in range(3):  # login, refresh-ahead, a revocation and its replay
            assert main.get(EXT).status_code == 200
            assert other.get(EXT).status_code == 200
            time.sleep(1)
        emulator.revoke_all()
        assert main.get(EXT).status_code == 200  # JWT: logs in again, replays
        response = other.get(EXT)  # refresh_token grant: a person must authorize
        assert response.status_code == 503
        assert response.json()["errorCode"] == "TPX-REAUTH-REQUIRED"
        # a client sending a token-shaped credential and query: refused, never logged
        bogus = main.get(EXT + "?access_token=" + "x" * 44,
                         headers={"Authorization": "Bearer " + "Y" * 44})
        assert bogus.status_code == 401

    cli = [sys.executable, "-m", "proxy_addon", "status", "--url", proxy.admin_url]
    table = subprocess.run(cli, capture_output=True, text=True, timeout=30)
    assert table.returncode == 1, table  # not every account is healthy
    seeded_row = next(line for line in table.stdout.splitlines()
                      if line.startswith("seeded "))
    assert "reauth_required" in seeded_row and "refresh token dead" in seeded_row
    assert "tokenproxy authorize seeded" in table.stdout  # the hint names the command
    as_json = subprocess.run([*cli, "--json"], capture_output=True, text=True, timeout=30)
    assert as_json.returncode == 1
    states = {a["account"]: a["state"] for a in json.loads(as_json.stdout)["accounts"]}
    # a 2 s access token is renewed ahead about every second: "refreshing" is routine too
    assert states["main"] in ("healthy", "refreshing"), states
    assert states["seeded"] == "reauth_required"
    proxy.stop()

    lines = proxy.logs().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    events = {(e.get("event"), e.get("account")) for e in entries}
    assert ("reauth_required", "seeded") in events
    assert ("renewal", "main") in events and ("state_change", "seeded") in events
    renewals = [e for e in entries if e.get("event") == "renewal"]
    assert {"refreshed", "logged_in"} <= {e["state"] for e in renewals}
    text = proxy.logs()
    leaked = [t for t in EMULATOR_TOKEN.findall(text) if token_kind(t) is not None]
    assert not leaked, f"{len(leaked)} token(s) in the logs"
    for secret in (DEMO_JWT, DEMO_CLIENT_SECRET, APP_KEY, SEEDED_KEY, seeded["refresh_token"]):
        assert secret not in text
    print(f"figures logs: {len(entries)} JSON lines, events "
          f"{sorted({e.get('event') for e in entries if e.get('event')})}")


REQUESTS = 6_000  # half with the app's key, half with bogus keys


@pytest.mark.timeout(600)  # 6,000 requests through a Python emulator: minutes on a loaded CI
def test_metric_series_stay_bounded(emulator_factory, proxy_factory) -> None:
    """6,000 requests with random paths, query strings and bogus client keys add no series."""
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url, bad_key_limit=0)  # no slow-down for the flood
    with proxy.http() as client:
        assert client.get(EXT).status_code == 200
        for method in ("POST", "DELETE"):  # the rate-limit groups these methods fall in
            client.request(method, "/restapi/v1.0/warm-up/1")
    before = series(httpx.get(proxy.admin_url + "/metrics", timeout=10).text)
    rng = random.Random(7)

    def junk(n: int) -> str:
        return "".join(rng.choices(string.ascii_letters + string.digits + "-_.", k=n))

    async def flood() -> dict[int, int]:
        statuses: dict[int, int] = {}
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30, limits=limits) as http:
            async def one(i: int) -> None:
                path = f"/restapi/v1.0/{junk(8)}/{rng.randrange(10**9)}?{junk(5)}={junk(12)}"
                key = APP_KEY if i % 2 else junk(rng.choice([0, 5, 20, 44]))
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                response = await http.request(rng.choice(["GET", "POST", "DELETE"]), path,
                                              headers=headers)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

            for start in range(0, REQUESTS, 500):  # bounded batches
                await asyncio.gather(*(one(i) for i in range(start, start + 500)))
        return statuses

    statuses = asyncio.run(flood())
    after = series(httpx.get(proxy.admin_url + "/metrics", timeout=10).text)
    print(f"figures cardinality: {sum(statuses.values())} requests {statuses}, "
          f"{len(before)} series before, {len(after)} after")
    assert sum(statuses.values()) == REQUESTS
    assert statuses.get(401, 0) >= REQUESTS * 2 // 5  # the bogus keys were refused
    assert after == before, sorted(after - before)[:10]
    assert not any(junk_label in s for s in after for junk_label in ("restapi/", "?"))
