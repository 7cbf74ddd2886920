"""Sandbox and production side by side (issue 19, item 6): each account names its platform.

Two emulators play the two platforms, each knowing only its own app and user (as sandbox and
production do: ../shared/platform.md, OAU-153 "sandbox credentials used against production").
"Production" is plain HTTP on loopback (the proxy's ``[proxy] upstream``); "sandbox" is HTTPS
behind a TLS relay whose certificate is verified (``SSL_CERT_FILE``), named by the sandbox
account's own ``upstream``. Apps of both accounts (a static client key each, and an app that
logs in through the proxy with the sandbox app's credentials) are served at once; the answers'
links point back at the proxy; a revoked sandbox session is renewed and the refused request
replayed on the sandbox; the apps' WebSockets get their own platform's events. Each emulator
counts every token it did not issue (token calls refused, API 401s by code): a token sent to the
wrong platform would show there. Both with the shared upstream pool and without it (mitmproxy's
own upstream connection, re-pointed per request).
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.events.apps import PRESENCE, answer_to, connect, subscribe_frame, ws_token
from tests.support.certs import make_tls_files
from tests.support.emulator import start_emulator
from tests.support.proxy import DEMO_JWT, jwt_account, start_proxy
from tests.upstream.test_tls_resumption_e2e import TlsRelay

EXT = "/restapi/v1.0/account/~/extension/~"
PROD_KEY = "production-app-key-0123456789"
SANDBOX_KEY = "sandbox-app-key-0123456789"
SANDBOX_APP = ("sandbox-client-id", "sandbox-client-secret")
SANDBOX_JWT = "sandbox-jwt-credential"
SANDBOX_SEED = f"""
[[apps]]
client_id = "{SANDBOX_APP[0]}"
client_secret = "{SANDBOX_APP[1]}"
grants = ["jwt", "refresh_token"]

[[users]]
owner_id = "200001"
username = "+15550200001"
extension = "101"
password = "sandbox-password"
jwt = "{SANDBOX_JWT}"
"""
ROUNDS = 15  # requests per app and thread


def sandbox_account() -> dict:
    return {"name": "sandbox", "client_id": SANDBOX_APP[0], "client_secret": SANDBOX_APP[1],
            "grant": "jwt", "jwt": SANDBOX_JWT}


def foreign_tokens(counters: dict) -> dict:
    """What an emulator refused: token calls (by code) and API calls with a token it does not
    know or that is dead (401 by code)."""
    return {"token_errors": counters["token_errors_by_code"],
            "api_401": counters["api_401_by_code"]}


def hammer(proxy_url: str, key: str, owner: str, results: list[str]) -> None:
    with httpx.Client(base_url=proxy_url, headers={"Authorization": f"Bearer {key}"},
                      timeout=30) as http:
        for _ in range(ROUNDS):
            answer = http.get(EXT)
            body = answer.json() if answer.status_code == 200 else {}
            results.append("ok" if str(body.get("id")) == owner
                           and body.get("uri", "").startswith(proxy_url)
                           else f"{answer.status_code} {answer.text[:200]}")


async def events_of_both(proxy_url: str, production, sandbox) -> tuple[list, list]:
    """Each app subscribes through the proxy; each platform emits one event of its own."""
    async with aiohttp.ClientSession() as session:
        sockets = []
        for key in (PROD_KEY, SANDBOX_KEY):
            async with httpx.AsyncClient(base_url=proxy_url, timeout=30,
                                         headers={"Authorization": f"Bearer {key}"}) as http:
                ws, _ = await connect(session, await ws_token(http))
            await ws.send_str(subscribe_frame("s1", [PRESENCE]))
            assert (await answer_to(ws, "s1"))[0]["status"] == 200
            sockets.append(ws)
        await asyncio.to_thread(production.ws_emit, PRESENCE, {"platform": "production"})
        await asyncio.to_thread(sandbox.ws_emit, PRESENCE, {"platform": "sandbox"})
        got: list[list] = [[], []]
        for index, ws in enumerate(sockets):
            try:
                while True:
                    frame = json.loads((await ws.receive(timeout=3)).data)
                    if frame[0]["type"] == "ServerNotification":
                        got[index].append(frame[1]["body"]["platform"])
            except TimeoutError:
                pass
            await ws.close()
        return got[0], got[1]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("pool", [True, False], ids=["shared-pool", "own-connection"])
def test_sandbox_and_production_side_by_side(tmp_path: Path, pool: bool) -> None:
    cert_dir = tmp_path / "tls"
    ca = make_tls_files(cert_dir)
    seed = tmp_path / "sandbox-seed.toml"
    seed.write_text(SANDBOX_SEED)
    with start_emulator("--auth-rate", "0") as production, \
            TlsRelay(("127.0.0.1", 0), cert_dir) as relay:
        sandbox_url = f"https://127.0.0.1:{relay.port}"
        with start_emulator("--auth-rate", "0", "--seed-file", str(seed),
                            "--public-url", sandbox_url) as sandbox:
            host, port = sandbox.url.removeprefix("http://").split(":")
            relay.target = (host, int(port))  # the relay was bound first: its port is the URL
            proxy = start_proxy(
                tmp_path, production.url, upstream_pool=pool,
                accounts=[jwt_account("production"),
                          {**sandbox_account(), "upstream": sandbox_url}],
                clients=[{"name": "prod-app", "account": "production", "key": PROD_KEY},
                         {"name": "sandbox-app", "account": "sandbox", "key": SANDBOX_KEY}],
                env={"SSL_CERT_FILE": str(ca)})
            try:
                # apps of both platforms at once
                results: dict[str, list[str]] = {"production": [], "sandbox": []}
                threads = [threading.Thread(target=hammer, args=(
                    proxy.url, key, owner, results[name])) for _ in range(2)
                    for name, key, owner in (("production", PROD_KEY, "100001"),
                                             ("sandbox", SANDBOX_KEY, "200001"))]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(120)
                for name, outcomes in results.items():
                    assert outcomes == ["ok"] * 2 * ROUNDS, (name, outcomes[:5])
                assert foreign_tokens(production.counters()) == \
                    foreign_tokens(sandbox.counters()) == {"token_errors": {}, "api_401": {}}
                assert production.counters()["api_requests"] == 2 * ROUNDS
                assert sandbox.counters()["api_requests"] == 2 * ROUNDS
                # every sandbox request went over TLS to the relay (none to production)
                assert sum(1 for c in relay.connections if c[1]) >= 1

                # an app logging in through the proxy with the sandbox app's credentials: its
                # login is checked by the sandbox (production does not know that app)
                login = httpx.post(proxy.url + "/restapi/oauth/token", auth=SANDBOX_APP,
                                   data={"grant_type": "urn:ietf:params:oauth:grant-type:"
                                                       "jwt-bearer", "assertion": SANDBOX_JWT},
                                   timeout=30)
                assert login.status_code == 200, login.text
                virtual = login.json()["access_token"]
                answer = httpx.get(proxy.url + EXT, timeout=30,
                                   headers={"Authorization": f"Bearer {virtual}"})
                assert answer.status_code == 200, answer.text
                assert str(answer.json()["id"]) == "200001"
                # ...and the production app's credentials are refused on the sandbox account
                wrong = httpx.post(proxy.url + "/restapi/oauth/token",
                                   auth=("sandbox-client-id", "demo-client-secret"),
                                   data={"grant_type": "urn:ietf:params:oauth:grant-type:"
                                                       "jwt-bearer", "assertion": DEMO_JWT},
                                   timeout=30)
                assert wrong.status_code in (400, 401), wrong.text

                # the sandbox revokes every session: its request is replayed there, renewed
                # there; production never sees a sandbox token
                before = production.counters()
                sandbox.revoke_all()
                with proxy.http(SANDBOX_KEY) as http:
                    replayed = http.get(EXT)
                assert replayed.status_code == 200 and str(replayed.json()["id"]) == "200001"
                after = production.counters()
                assert after["token_calls"] == before["token_calls"]
                assert foreign_tokens(after) == {"token_errors": {}, "api_401": {}}
                assert sandbox.counters()["logins"] >= 2  # the new session: on the sandbox

                # WebSockets: each app gets its own platform's events only
                prod_events, sandbox_events = asyncio.run(
                    events_of_both(proxy.url, production, sandbox))
                assert prod_events == ["production"] and sandbox_events == ["sandbox"]
                assert foreign_tokens(production.counters()) == {"token_errors": {},
                                                                 "api_401": {}}
                log = proxy.logs()
                for secret in (SANDBOX_APP[1], SANDBOX_JWT, PROD_KEY, SANDBOX_KEY, virtual):
                    assert secret not in log
            finally:
                proxy.stop()


def test_check_config_tells_which_platform_the_credentials_belong_to(tmp_path: Path) -> None:
    """OAU-153 on one platform: check-config probes the same client credentials on the config's
    other platform (a refresh grant with a deliberately invalid token: no session made) and
    says where they belong, both ways round; credentials right on their platform pass."""
    from tests.cli.test_cli_e2e import assert_no_secret, cli, line_of, write_config

    seed = tmp_path / "sandbox-seed.toml"
    seed.write_text(SANDBOX_SEED)
    with start_emulator("--auth-rate", "0") as production, \
            start_emulator("--auth-rate", "0", "--seed-file", str(seed)) as sandbox:
        path = write_config(tmp_path, production.url, [
            jwt_account("production"),
            {**sandbox_account(), "upstream": sandbox.url},
            {**sandbox_account(), "name": "misplaced"},  # sandbox app on production
            jwt_account("reversed", upstream=sandbox.url),  # production app on the sandbox
        ])
        result = cli("check-config", "--config", str(path))
        sessions = (production.counters()["live_sessions"], sandbox.counters()["live_sessions"])
    assert result.returncode == 1
    assert sandbox.url in line_of(result, "OK   upstream " + sandbox.url)
    assert "revoked at once" in line_of(result, "OK   account production:")
    assert "revoked at once" in line_of(result, "OK   account sandbox:")
    misplaced = line_of(result, "FAIL account misplaced:")
    assert "OAU-153" in misplaced
    assert f"accepted by {sandbox.url}" in misplaced and f'upstream = "{sandbox.url}"' in misplaced
    reversed_ = line_of(result, "FAIL account reversed:")
    assert f"refused by {sandbox.url} but accepted by {production.url}" in reversed_
    assert sessions == ({}, {})  # every test session revoked, the probes made none
    assert_no_secret(result, SANDBOX_APP[1], SANDBOX_JWT)
