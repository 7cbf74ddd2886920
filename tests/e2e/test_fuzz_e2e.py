"""Fuzzing a running proxy (hypothesis): random headers, bodies, paths and token-endpoint forms
never crash it, never get a non-HTTP answer, and never make it reveal a real platform token."""

from __future__ import annotations

import asyncio
import string
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_addon.store.base import RecordCodec
from proxy_addon.store.crypto import TokenCipher
from proxy_addon.store.sqlite import SQLiteStore
from tests.support.emulator import Emulator, start_emulator
from tests.support.proxy import APP_KEY, STORE_KEY, Proxy, jwt_account, start_proxy

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_CHARS = string.ascii_letters + string.digits + "-._~+/="
HEADER_NAME = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=20)
HEADER_VALUE = st.text(string.printable.strip() + " ", max_size=80).map(str.strip)
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, Emulator, Path]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    emulator = start_emulator("--auth-rate", "0")
    store = tmp / "fuzz.db"
    proxy = start_proxy(tmp, emulator.url, accounts=[jwt_account()],
                        store={"backend": "sqlite", "path": str(store)}, bad_key_limit=0)
    with proxy.http(APP_KEY) as client:
        assert client.get("/restapi/v1.0/account/~/extension/~").status_code == 200
    yield proxy, emulator, store
    proxy.stop()
    emulator.stop()


def real_tokens(store_path: Path) -> list[str]:
    async def load() -> list[str]:
        store = SQLiteStore(RecordCodec(TokenCipher([STORE_KEY.encode()])), store_path)
        await store.open()
        try:
            record = await store.load("main")
        finally:
            await store.close()
        assert record is not None
        return [t for t in (record.tokens.access_token, record.tokens.refresh_token) if t]

    return asyncio.run(load())


def assert_no_leak(response: httpx.Response, secrets: list[str]) -> None:
    text = response.content.decode("latin-1") + str(response.headers)
    for secret in secrets:
        assert secret not in text


@SETTINGS
@given(headers=st.dictionaries(HEADER_NAME, HEADER_VALUE, max_size=8),
       auth=st.one_of(st.none(), st.just(f"Bearer {APP_KEY}"),
                      st.text(TOKEN_CHARS + " ", max_size=60).map(str.strip)),
       path=st.text(string.ascii_letters + string.digits + "/~._-%?=&", max_size=60),
       method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
       body=st.binary(max_size=2048))
def test_fuzzed_requests(running, headers, auth, path, method, body) -> None:
    proxy, _, store = running
    headers = {k: v for k, v in headers.items() if k.lower() not in
               ("content-length", "transfer-encoding", "host", "connection", "expect")}
    if auth is not None:
        headers["Authorization"] = auth
    response = httpx.request(method, f"{proxy.url}/restapi/v1.0/{path}", headers=headers,
                             content=body or None, timeout=30)
    assert 100 <= response.status_code < 600
    assert_no_leak(response, real_tokens(store))


@SETTINGS
@given(grant=st.sampled_from([JWT_GRANT, "password", "refresh_token", "authorization_code",
                              "client_credentials", "", "x" * 300]),
       fields=st.dictionaries(st.sampled_from(["assertion", "username", "password",
                                               "extension", "refresh_token", "code",
                                               "client_id", "redirect_uri", "token", "x"]),
                              st.text(max_size=100), max_size=6),
       basic=st.one_of(st.none(), st.tuples(st.text(max_size=30), st.text(max_size=30))),
       endpoint=st.sampled_from(["token", "revoke"]))
def test_fuzzed_login_forms(running, grant, fields, basic, endpoint) -> None:
    proxy, emulator, store = running
    before = emulator.counters()["token_calls"]
    form = {"grant_type": grant, **fields}
    auth = None
    if basic is not None:
        auth = httpx.BasicAuth(basic[0].encode("utf-8", "replace"),
                               basic[1].encode("utf-8", "replace"))
    response = httpx.post(f"{proxy.url}/restapi/oauth/{endpoint}", data=form, auth=auth,
                          timeout=30)
    assert response.status_code in (200, 400, 401, 405), response.text
    assert_no_leak(response, real_tokens(store))
    assert emulator.counters()["token_calls"] == before  # never reaches the platform


def test_proxy_survived(running) -> None:
    proxy, _, store = running
    assert proxy.proc.poll() is None
    with proxy.http(APP_KEY) as client:
        assert client.get("/restapi/v1.0/account/~/extension/~").status_code == 200
    logs = proxy.logs()
    for secret in real_tokens(store):
        assert secret not in logs
