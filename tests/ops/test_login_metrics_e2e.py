"""Logins through the proxy are counted for the account's login client, not as unknown."""

from __future__ import annotations

import httpx

from tests.gateway.test_replay_e2e import _metric
from tests.support.proxy import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_JWT

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def test_logins_through_the_proxy_count_for_the_login_client(emulator_factory,
                                                            proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    answer = httpx.post(proxy.url + "/restapi/oauth/token", timeout=10,
                        auth=(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET),
                        data={"grant_type": JWT_GRANT, "assertion": DEMO_JWT})
    assert answer.status_code == 200, answer.text
    assert _metric(proxy, "tokenproxy_requests_total", account="main", client="main-login",
                   status_class="2xx") == 1
    assert _metric(proxy, "tokenproxy_requests_total", account="none", client="unknown",
                   status_class="2xx") in (-1.0, 0.0)
