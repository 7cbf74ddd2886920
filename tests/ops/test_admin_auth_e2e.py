"""Issue 13, point 9: the operator listener (``[proxy] metrics_listen``) behind a bearer token.

With ``[proxy] admin_token_env`` a real proxy answers ``/metrics`` and ``/status`` only to
``Authorization: Bearer <token>`` (401 with a JSON error otherwise, for a missing, wrong or
non-Bearer credential), while the probes ``/healthz`` and ``/readyz`` stay open and say nothing
an operator's page would not; ``tokenproxy status`` (a real subprocess) sends the token from
the environment. The config refuses a non-loopback ``metrics_listen`` without a token, and a
token variable that is unset, empty or too short, each naming the key; ``tokenproxy run`` exits
2 with that message before binding anything. No token value reaches a log or an answer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy_addon.config import ConfigError, parse_config
from tests.support.proxy import (
    APP_KEY,
    STORE_KEY,
    Proxy,
    client,
    jwt_account,
    render_config,
)

EXT = "/restapi/v1.0/account/~/extension/~"
TOKEN_ENV = "TPX_TEST_ADMIN_TOKEN"
TOKEN = "admin-token-for-tests-0123456789"
GUARDED = ("/metrics", "/status")
OPEN = ("/healthz", "/readyz")


def doc(**proxy: Any) -> dict[str, Any]:
    return {"proxy": {"upstream": "http://127.0.0.1:9", **proxy},
            "accounts": [jwt_account()], "clients": [client()],
            "store": {"backend": "memory"}}


def admin_get(proxy: Proxy, path: str, authorization: str | None = None) -> httpx.Response:
    assert proxy.admin_url
    headers = {"Authorization": authorization} if authorization is not None else {}
    return httpx.get(proxy.admin_url + path, headers=headers, timeout=10, trust_env=False)


def status_cli(url: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in (TOKEN_ENV,
                                                              "TOKENPROXY_ADMIN_TOKEN")}
    result = subprocess.run([sys.executable, "-m", "proxy_addon", "status", "--url", url, *args],
                            capture_output=True, text=True, timeout=60, env={**clean, **env},
                            stdin=subprocess.DEVNULL)
    print(f"$ tokenproxy status {' '.join(args)} -> {result.returncode}\n{result.stdout}"
          f"{result.stderr}")
    return result


@pytest.fixture
def guarded_proxy(emulator_factory, proxy_factory) -> Proxy:
    emulator = emulator_factory()
    return proxy_factory(emulator.url, admin_token_env=TOKEN_ENV, env={TOKEN_ENV: TOKEN})


def test_metrics_and_status_need_the_bearer_token(guarded_proxy: Proxy) -> None:
    proxy = guarded_proxy
    with proxy.http() as app:
        assert app.get(EXT).status_code == 200  # something to show on /metrics and /status
    refused = [None, "", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"Basic {TOKEN}",
               TOKEN, f"Bearer {APP_KEY}", "Bearer"]
    for path in GUARDED:
        for authorization in refused:
            answer = admin_get(proxy, path, authorization)
            assert answer.status_code == 401, (path, authorization, answer.status_code)
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
            body = answer.json()
            assert body["error"] == "unauthorized" and "admin_token_env" in body["message"]
            assert "tokenproxy_" not in answer.text and "main" not in answer.text
        for authorization in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN}"):
            answer = admin_get(proxy, path, authorization)
            assert answer.status_code == 200, (path, authorization, answer.text)
    assert "tokenproxy_requests_total" in admin_get(proxy, "/metrics", f"Bearer {TOKEN}").text
    status = admin_get(proxy, "/status", f"Bearer {TOKEN}").json()
    assert [a["account"] for a in status["accounts"]] == ["main"]

    # the probes stay open, and tell a stranger no more than "up" and "ready"
    assert admin_get(proxy, "/healthz").json() == {"status": "ok"}
    ready = admin_get(proxy, "/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True and "error" not in ready.json()["store"]
    assert "main" not in ready.text
    assert TOKEN not in proxy.logs()


def test_status_cli_sends_the_token_from_the_environment(guarded_proxy: Proxy) -> None:
    proxy = guarded_proxy
    assert proxy.admin_url
    with proxy.http() as app:
        assert app.get(EXT).status_code == 200

    default = status_cli(proxy.admin_url, {"TOKENPROXY_ADMIN_TOKEN": TOKEN})
    assert default.returncode == 0, default.stderr
    assert default.stdout.splitlines()[0].startswith("ACCOUNT")
    named = status_cli(proxy.admin_url, {TOKEN_ENV: TOKEN}, "--token-env", TOKEN_ENV, "--json")
    assert named.returncode == 0, named.stderr
    assert '"account": "main"' in named.stdout

    missing = status_cli(proxy.admin_url, {})
    assert missing.returncode == 2
    assert "401" in missing.stderr and "TOKENPROXY_ADMIN_TOKEN" in missing.stderr
    wrong = status_cli(proxy.admin_url, {TOKEN_ENV: "not-the-admin-token-0123"},
                       "--token-env", TOKEN_ENV)
    assert wrong.returncode == 2 and "401" in wrong.stderr and TOKEN_ENV in wrong.stderr
    for result in (default, named, missing, wrong):
        assert TOKEN not in result.stdout + result.stderr


def test_config_refuses_an_open_admin_listener_beyond_loopback() -> None:
    for host in ("0.0.0.0", "10.1.2.3", "[::]", "tokenproxy.internal"):
        with pytest.raises(ConfigError) as refused:
            parse_config(doc(metrics_listen=f"{host}:9464"), "t.toml", {})
        assert refused.value.key == "proxy.metrics_listen"
        assert "admin_token_env" in refused.value.reason and "127.0.0.1" in refused.value.reason
    for loopback in ("127.0.0.1:9464", "[::1]:9464", "localhost:9464", ""):
        parse_config(doc(metrics_listen=loopback), "t.toml", {})  # no token needed
    config = parse_config(doc(metrics_listen="0.0.0.0:9464", admin_token_env=TOKEN_ENV),
                          "t.toml", {TOKEN_ENV: TOKEN})
    assert config.proxy.admin_token_env == TOKEN_ENV
    assert TOKEN not in repr(config)  # the config holds the variable's name only


@pytest.mark.parametrize(("name", "environ", "reason"), [
    (TOKEN_ENV, {}, f"environment variable {TOKEN_ENV} is not set"),
    (TOKEN_ENV, {TOKEN_ENV: ""}, f"environment variable {TOKEN_ENV} is empty"),
    (TOKEN_ENV, {TOKEN_ENV: "short"}, "at least 16 characters"),
    ("${TPX}", {"TPX": TOKEN}, "the name of an environment variable"),
    ("", {}, "the name of an environment variable"),
])
def test_config_refuses_a_token_variable_that_holds_no_usable_token(
        name: str, environ: dict[str, str], reason: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(doc(admin_token_env=name), "t.toml", environ)
    assert refused.value.key == "proxy.admin_token_env"
    assert reason in refused.value.reason
    assert TOKEN not in str(refused.value)


def test_run_refuses_an_open_admin_listener_before_binding(tmp_path: Path) -> None:
    config = tmp_path / "open.toml"
    config.write_text(render_config(
        # TEST-NET-1: not an address of this host, so nothing is exposed even if it were bound
        {"listen": "127.0.0.1:0", "metrics_listen": "192.0.2.1:0",
         "upstream": "http://127.0.0.1:9"},
        [jwt_account()], [client()], {"backend": "memory"}))
    result = subprocess.run([sys.executable, "-m", "proxy_addon", "run", "--config", str(config)],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TOKENPROXY_STORE_KEY": STORE_KEY},
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "proxy.metrics_listen" in result.stderr and "admin_token_env" in result.stderr
    assert "tokenproxy metrics on" not in result.stdout


def test_check_config_recognises_a_guarded_proxy_on_its_port(guarded_proxy: Proxy,
                                                             tmp_path: Path) -> None:
    proxy = guarded_proxy
    admin = httpx.URL(proxy.admin_url or "")
    beside = tmp_path / "beside.toml"
    beside.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": f"{admin.host}:{admin.port}",
         "upstream": "http://127.0.0.1:9", "admin_token_env": TOKEN_ENV},
        [jwt_account()], [client()], {"backend": "memory"}))
    result = subprocess.run(
        [sys.executable, "-m", "proxy_addon", "check-config", "--offline", "--config",
         str(beside)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        env={**os.environ, "TOKENPROXY_STORE_KEY": STORE_KEY, TOKEN_ENV: TOKEN})
    print(result.stdout + result.stderr)
    (line,) = [x for x in result.stdout.splitlines() if x.startswith(("OK   metrics_listen:",
                                                                     "FAIL metrics_listen:"))]
    assert line.startswith("OK") and "running tokenproxy (accounts: main)" in line, line
    assert TOKEN not in result.stdout + result.stderr
