"""Issue 3 acceptance: the token pool against the real emulator, through a real proxy."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.proxy import APP_KEY

EXT = "/restapi/v1.0/account/~/extension/~"


async def _burst(url: str, count: int, key: str = APP_KEY) -> list[int]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        go = asyncio.Event()

        async def one() -> int:
            await go.wait()
            return (await client.get(EXT)).status_code

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        await asyncio.sleep(0.05)
        go.set()
        return await asyncio.gather(*tasks)


@pytest.mark.compression_variants  # replay/renewal: also against a compressing front end
def test_1000_concurrent_requests_after_expiry_make_one_token_call(emulator_factory,
                                                                   proxy_factory) -> None:
    emulator = emulator_factory("--access-ttl", "2", "--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    with proxy.http() as client:
        assert client.get(EXT).status_code == 200
    time.sleep(5)  # one refresh-ahead (the token was used), then idle: the token expires
    assert proxy.account_status()["access_expires_in"] == 0
    # the renewed token lives 60 s: no refresh-ahead while the 1000 requests are served
    emulator.set_policy(access_ttl=60)
    emulator.reset_counters()
    statuses = asyncio.run(_burst(proxy.url, 1000))
    counters = emulator.counters()
    print(f"figures burst: {Counter(statuses)} token_calls={counters['token_calls']}")
    assert Counter(statuses) == {200: 1000}
    assert counters["token_calls"] == 1, counters
    assert sum(counters["api_401_by_code"].values()) == 0  # nobody used the expired token


def test_steady_traffic_never_sees_a_token_401(emulator_factory, proxy_factory) -> None:
    """60 s, access TTL 3 s, refresh-ahead: 0 token 401s, 0 errors, <= 60/3 + 2 token calls."""
    emulator = emulator_factory("--access-ttl", "3", "--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    end = time.monotonic() + 60

    def worker() -> None:
        with proxy.http() as client:
            for _ in range(3000):  # bounded; ~12 requests/s per worker
                if time.monotonic() >= end:
                    return
                status = client.get(EXT).status_code
                with lock:
                    statuses[status] += 1
                time.sleep(0.08)

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(worker) for _ in range(4)]:
            future.result(timeout=120)
    counters = emulator.counters()
    print(f"figures steady: {statuses} token_calls={counters['token_calls']} "
          f"api_401={counters['api_401_by_code']}")
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) > 1500
    assert counters["api_401_by_code"] == {} or sum(counters["api_401_by_code"].values()) == 0
    assert counters["token_calls"] <= 60 / 3 + 2, counters
    assert counters["logins"] == 1


def test_keepalive_saves_an_idle_account(emulator_factory, proxy_factory) -> None:
    """Refresh TTL 5 s, idle 20 s: the next request works without a new login."""
    emulator = emulator_factory("--access-ttl", "2", "--refresh-ttl", "5", "--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    with proxy.http() as client:
        assert client.get(EXT).status_code == 200
        time.sleep(20)
        assert client.get(EXT).status_code == 200
    counters = emulator.counters()
    print(f"figures keepalive: logins={counters['logins']} refreshes={counters['refreshes']}")
    assert counters["logins"] == 1, counters
    assert counters["refreshes"] >= 4  # kept alive by refreshes, not by new logins


@pytest.mark.compression_variants  # replay/renewal: also against a compressing front end
def test_outside_eviction_and_session_budget(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    with proxy.http() as client:
        assert client.get(EXT).status_code == 200
        emulator.outside_login(count=5)  # the 5th outside session evicts the proxy's
        assert client.get(EXT).status_code == 200
        # 30 s of chaos: outside logins keep evicting the proxy's session under traffic
        statuses: Counter[int] = Counter()
        end = time.monotonic() + 30
        next_eviction = time.monotonic() + 2
        for _ in range(5000):
            now = time.monotonic()
            if now >= end:
                break
            if now >= next_eviction:
                emulator.outside_login(count=5)
                next_eviction = now + 3
            statuses[client.get(EXT).status_code] += 1
            time.sleep(0.02)
    counters = emulator.counters()
    assert set(statuses) == {200}, statuses
    print(f"figures eviction: {statuses} evictions={counters['evictions']} "
          f"max_proxy={counters['max_live_sessions_proxy']}")
    assert counters["evictions"] >= 10
    assert max(counters["max_live_sessions_proxy"].values()) <= 1  # max_live_tokens = 1


def test_auth_rate_limit_is_never_tripped(emulator_factory, proxy_factory) -> None:
    """Platform limit 5/min with a 60 s penalty, 200 clients, revocations every 5 s: the
    emulator never has to refuse a token call; clients get data or a quick 503."""
    emulator = emulator_factory("--auth-rate", "5", "--auth-window", "60",
                                "--auth-penalty", "60")
    proxy = proxy_factory(emulator.url, auth_budget_calls=5, auth_budget_window=60,
                          token_wait_timeout=3)
    results: list[tuple[int, float, str | None]] = []
    proxy_waits: list[float] = []  # the proxy's own account (Server-Timing) of each refusal

    async def run() -> None:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=proxy.url, limits=limits, timeout=30,
                                     headers={"Authorization": f"Bearer {APP_KEY}"}) as client:
            # open the 200 connections first: cold connection setup on 2 cores is not what
            # this test measures (the bound is on waiting for a token)
            warm = await asyncio.gather(*(client.get(EXT) for _ in range(200)))
            assert {r.status_code for r in warm} == {200}
            end = time.monotonic() + 40

            async def worker() -> None:
                for _ in range(400):  # bounded
                    if time.monotonic() >= end:
                        return
                    started = time.monotonic()
                    response = await client.get(EXT)
                    results.append((response.status_code, time.monotonic() - started,
                                    response.headers.get("retry-after")))
                    if response.status_code == 503:
                        timing = response.headers["server-timing"]
                        proxy_waits.append(float(timing.split("dur=")[1]) / 1000)
                    await asyncio.sleep(1.0)  # 200 clients, ~200 requests/s in all

            async def revoker() -> None:
                for _ in range(8):
                    await asyncio.sleep(5)
                    await asyncio.to_thread(emulator.revoke_all)

            await asyncio.gather(revoker(), *(worker() for _ in range(200)))

    asyncio.run(run())
    counters = emulator.counters()
    statuses = Counter(status for status, _, _ in results)
    slowest_503 = max((e for status, e, _ in results if status == 503), default=0.0)
    slowest = max(e for _, e, _ in results)
    print(f"figures ratelimit: {statuses} token_calls={counters['token_calls']} "
          f"rate_limited={counters['rate_limited']} slowest 503 {slowest_503:.2f}s "
          f"(proxy's wait {max(proxy_waits, default=0):.2f}s), slowest {slowest:.2f}s")
    assert counters["rate_limited"] == 0, counters
    assert counters["token_calls"] <= 5, counters
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] > 0 and statuses[503] > 0  # the budget ran out within 40 s
    assert all(retry for status, _, retry in results if status == 503)
    # waiting for a token ends by the wait timeout (3 s), by the proxy's own clock: a refusal
    # never comes later ...
    assert len(proxy_waits) == statuses[503] and max(proxy_waits) < 3 + 0.5, max(proxy_waits)
    # ... and nothing hangs (the client's view adds queueing on 2 cores shared with the
    # suite's other load tests, up to ~10 s seen; the deadline itself is checked precisely
    # in-process, in test_pool_inprocess.py)
    assert slowest < 25


@pytest.mark.compression_variants  # replay/renewal: also against a compressing front end
def test_reauth_required_then_authorize(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    seeded = {"name": "seeded", "client_id": "demo-client-id",
              "client_secret": "demo-client-secret", "grant": "refresh_token",
              "refresh_token": emulator.user2_refresh_token(),
              "redirect_uri": "http://127.0.0.1:0/callback"}
    main = {"name": "main", "client_id": "demo-client-id",
            "client_secret": "demo-client-secret", "grant": "jwt",
            "jwt": "demo-jwt-credential"}
    seeded_key = "seeded-app-key-0123456789"
    proxy = proxy_factory(emulator.url, accounts=[main, seeded],
                          clients=[{"name": "main-app", "account": "main", "key": APP_KEY},
                                   {"name": "seeded-app", "account": "seeded",
                                    "key": seeded_key}])
    with proxy.http() as main_client, proxy.http(seeded_key) as seeded_client:
        assert main_client.get(EXT).status_code == 200
        assert seeded_client.get(EXT).status_code == 200
        emulator.revoke_all()
        refused = seeded_client.get(EXT)
        assert refused.status_code == 503
        body = refused.json()
        assert body["errorCode"] == "TPX-REAUTH-REQUIRED"
        assert "tokenproxy authorize seeded" in body["message"]
        assert main_client.get(EXT).status_code == 200  # the other account is unaffected
        assert proxy.account_status("seeded")["state"] == "reauth_required"
        assert not proxy.status()["healthy"]

        authorize = subprocess.Popen(
            [sys.executable, "-m", "proxy_addon", "authorize", "seeded", "--config",
             str(proxy.config_path), "--login-hint", "+15550100002", "--timeout", "30"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **proxy.env})
        try:
            assert authorize.stdout is not None
            url = None
            for _ in range(5):
                line = authorize.stdout.readline().strip()
                if line.startswith("http"):
                    url = line
                    break
            assert url and "code_challenge=" in url, url
            # play the browser: the emulator approves and redirects to the callback
            assert httpx.get(url, follow_redirects=True, timeout=10).status_code == 200
            out, err = authorize.communicate(timeout=30)
        finally:
            if authorize.poll() is None:
                authorize.kill()
        assert authorize.returncode == 0, err
        assert "authorized" in out
        deadline = time.monotonic() + 10
        status = 0
        while time.monotonic() < deadline:
            status = seeded_client.get(EXT).status_code
            if status == 200:
                break
            time.sleep(0.3)
        assert status == 200
        assert proxy.account_status("seeded")["state"] == "healthy"
    assert emulator.counters()["token_calls_by_grant"]["authorization_code"] == 1


def test_wrong_secret_is_explained_and_not_retried_in_a_loop(emulator_factory,
                                                             proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    account = {"name": "main", "client_id": "demo-client-id", "client_secret": "not-the-secret",
               "grant": "jwt", "jwt": "demo-jwt-credential"}
    proxy = proxy_factory(emulator.url, accounts=[account])
    end = time.monotonic() + 35
    with proxy.http() as client:
        for _ in range(1000):
            if time.monotonic() >= end:
                break
            assert client.get(EXT).status_code == 503
            time.sleep(0.05)
    state = proxy.account_status()
    assert state["state"] == "misconfigured"
    assert state["last_error"] == "OAU-153"
    assert "sandbox" in state["hint"]
    calls = emulator.counters()["token_calls"]
    print(f"figures wrongsecret: token_calls={calls} in 35 s")
    assert 1 <= calls <= 2, calls  # ~30 s back-off: at most 3 a minute
    proxy.stop()
    explained = [line for line in proxy.logs().splitlines() if "OAU-153" in line]
    assert len(explained) == 1 and "hint" in explained[0]  # once per cause, with the hint
    assert "not-the-secret" not in proxy.logs()
