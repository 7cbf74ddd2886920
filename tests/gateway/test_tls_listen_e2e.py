"""TLS on the app side: with [proxy] tls_cert/tls_key the proxy serves HTTPS (and may then
listen beyond loopback); plain HTTP to it is refused before anything is forwarded."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from tests.support.certs import make_tls_files
from tests.support.proxy import APP_KEY

EXT = "/restapi/v1.0/account/~/extension/~"


def test_tls_listener(tmp_path: Path, emulator_factory, proxy_factory) -> None:
    ca = make_tls_files(tmp_path / "tls")
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url, tls_cert=str(tmp_path / "tls" / "server.pem"),
                          tls_key=str(tmp_path / "tls" / "server.key"))
    assert proxy.url.startswith("https://127.0.0.1:")
    headers = {"Authorization": f"Bearer {APP_KEY}"}
    trust = ssl.create_default_context(cafile=str(ca))
    response = httpx.get(proxy.url + EXT, headers=headers, verify=trust, timeout=30)
    assert response.status_code == 200 and response.json()["id"] == 100001
    before = emulator.counters()["api_requests"]
    plain = httpx.get(proxy.url.replace("https://", "http://") + EXT, headers=headers,
                      timeout=30)
    assert plain.status_code == 400
    assert plain.json()["errorCode"] == "TPX-TLS-REQUIRED"
    assert emulator.counters()["api_requests"] == before  # nothing forwarded
