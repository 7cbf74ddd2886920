"""``[proxy] upstream_http2 = true`` (issue 16, item 3): the apps' requests reach an upstream
that offers HTTP/2 (ALPN ``h2``) as streams of one TLS connection; apps keep speaking HTTP/1.1.

The HTTP/2 upstream is the media host (``/_media/…``), so the platform itself (the emulator,
plain HTTP/1.1) still serves the token endpoint: the option applies to the data plane only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.support.certs import make_tls_files
from tests.support.h2_upstream import H2Upstream
from tests.support.proxy import jwt_account, start_proxy
from tests.upstream.test_shared_pool_e2e import body_of, request, status_of

MEDIA = "/_media/restapi/v1.0/account/~/recording/1/content"


def test_connection_per_request_apps_become_streams_of_one_http2_connection(
        tmp_path: Path, emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    ca = make_tls_files(tmp_path / "tls")
    with H2Upstream(tmp_path / "tls", big_size=6 * 1024 * 1024) as upstream:
        proxy = start_proxy(tmp_path, emulator.url, accounts=[jwt_account()],
                            media_upstream=f"https://127.0.0.1:{upstream.port}",
                            upstream_http2=True, env={"SSL_CERT_FILE": str(ca)})
        try:
            port = int(proxy.url.rsplit(":", 1)[1])
            answers = [request(port, target=MEDIA) for _ in range(10)]  # bounded
            big = request(port, target=MEDIA.replace("/content", "/big"))
        finally:
            proxy.stop()
        streams, connections = list(upstream.streams), upstream.connections
    assert [status_of(a) for a in answers] == [200] * 10, answers[0][:300]
    assert all(body_of(a) == b'{"ok": true}' for a in answers)
    assert status_of(big) == 200
    assert hashlib.sha256(body_of(big)).digest() == hashlib.sha256(upstream.big).digest()
    assert len(streams) == 11 and connections == 1, (streams, connections)
    # /_media is routed to the media host without its prefix
    assert sorted({path for _, _, path in streams}) == [
        "/restapi/v1.0/account/~/recording/1/big", "/restapi/v1.0/account/~/recording/1/content"]
