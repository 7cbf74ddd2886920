"""A real proxy on a real Redis that freezes (SIGSTOP): an app that logged in through the proxy
keeps being served with its virtual token, a virtual token the proxy has not seen gets 503
TPX-STORE-UNAVAILABLE at once (not after the Redis client's ~4 s of timeouts), and ``/readyz``
stays ready but says it is degraded and what is impaired."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx

from tests.support.proxy import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_JWT,
    STORE_KEY,
    jwt_account,
    render_config,
    start_proxy_with_config,
)

EXT = "/restapi/v1.0/account/~/extension/~"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def api(url: str, token: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.get(url + EXT, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return response, time.monotonic() - started


def test_known_virtual_tokens_are_served_through_a_redis_outage(tmp_path: Path,
                                                                 emulator_factory,
                                                                 redis_factory) -> None:
    redis = redis_factory()
    emulator = emulator_factory("--auth-rate", "0")
    config = tmp_path / "outage.toml"
    config.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "upstream": emulator.url,
         "auth_budget_calls": 0, "virtual_grant_stale_max": 60},
        [jwt_account()], [{"name": "app", "account": "main", "key": "k" * 24}],
        {"backend": "redis", "url": redis.url, "prefix": f"v{uuid.uuid4().hex[:8]}"}))
    proxy = start_proxy_with_config(config, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
    try:
        login = httpx.post(proxy.url + "/restapi/oauth/token", timeout=30,
                           data={"grant_type": JWT_GRANT, "assertion": DEMO_JWT},
                           auth=(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET))
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        assert api(proxy.url, token)[0].status_code == 200  # read once: known here
        redis.pause()
        try:
            time.sleep(5.5)  # past the 5 s refresh interval: the grant is due for a re-read
            known = [api(proxy.url, token) for _ in range(4)]
            unknown = api(proxy.url, "TPXA" + uuid.uuid4().hex + uuid.uuid4().hex)
            ready = httpx.get(proxy.admin_url + "/readyz", timeout=10)
        finally:
            redis.resume()
    finally:
        proxy.stop()
    statuses = [r.status_code for r, _ in known]
    took = [round(t, 2) for _, t in known]
    print(f"figures: known={statuses} took={took} unknown={unknown[0].status_code} "
          f"in {unknown[1]:.2f} s readyz={ready.status_code} {ready.json()}")
    assert statuses == [200] * 4, (statuses, [r.text[:200] for r, _ in known])
    assert max(took) < 2.0, took
    assert unknown[0].status_code == 503, unknown[0].text
    assert unknown[0].json()["errors"][0]["errorCode"] == "TPX-STORE-UNAVAILABLE"
    assert unknown[1] < 2.0, f"an unknown virtual token waited {unknown[1]:.2f} s"
    body = ready.json()
    assert ready.status_code == 200 and body["ready"] is True, body
    assert body["degraded"] is True and body["store"]["ok"] is False, body
    assert "uncached_virtual_tokens" in body["impaired"], body
