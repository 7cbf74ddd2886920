"""Absolute links in answers lead back through the proxy: follow the call log's
navigation.nextPage.uri to the end, then a recording's contentUri on the (separate) media host,
all with the app's own credential only. Only link fields change: a message text naming the
platform comes back as it was sent, and pages too large to buffer (streamed, compressed or not)
are rewritten as they pass."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

import httpx
import pytest

from tests.support.certs import make_tls_files
from tests.support.emulator import recording_sha256
from tests.support.proxy import APP_KEY
from tests.support.redis_server import free_port

CALL_LOG = "/restapi/v1.0/account/~/extension/~/call-log"


def test_follow_links_through_the_proxy(emulator_factory, proxy_factory) -> None:
    port = free_port()
    media = f"http://localhost:{port}"  # another origin than the API's 127.0.0.1
    emulator = emulator_factory("--listen", f"127.0.0.1:{port}", "--auth-rate", "0",
                                "--media-url", media + "/media")
    proxy = proxy_factory(emulator.url, media_upstream=media)
    pages = records = 0
    with proxy.http(APP_KEY) as client:
        url: str | None = proxy.url + CALL_LOG + "?perPage=25&view=Detailed"
        content_uri = None
        for _ in range(100):  # bounded
            if url is None:
                break
            assert url.startswith(proxy.url + "/"), url  # never the platform's own host
            page = client.get(url)
            assert page.status_code == 200, page.text
            body = page.json()
            assert emulator.url not in page.text and media not in page.text
            pages += 1
            for record in body["records"]:
                records += 1
                if "recording" in record:
                    content_uri = content_uri or record["recording"]["contentUri"]
            url = body["navigation"].get("nextPage", {}).get("uri")
        assert pages >= 2 and url is None
        assert content_uri is not None and content_uri.startswith(proxy.url + "/_media/")
        download = client.get(content_uri)
        assert download.status_code == 200
        rec_id = content_uri.rstrip("/").split("/")[-2]
        assert hashlib.sha256(download.content).hexdigest() == recording_sha256(
            rec_id, len(download.content))
        # ?access_token= from an app is stripped, never forwarded
        echoed = client.get("/restapi/v1.0/echo?access_token=stolen&x=1").json()
        assert "stolen" not in str(echoed) and "x=1" in str(echoed)
    print(f"figures links: {pages} pages, {records} records, recording "
          f"{len(download.content)} bytes via {content_uri.removeprefix(proxy.url)}")


SMS = "/restapi/v1.0/account/~/extension/~/sms"


def test_message_text_naming_the_platform_comes_back_unchanged(emulator_factory,
                                                              proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    text = (f"Call log at {emulator.url}{CALL_LOG} - and not {emulator.url}.evil.com/x "
            f"nor {emulator.url}@evil.com")
    with proxy.http(APP_KEY) as client:
        sent = client.post(SMS, json={"from": {"phoneNumber": "+15550100"},
                                      "to": [{"phoneNumber": "+15550101"}], "text": text})
        assert sent.status_code == 200, sent.text
        answer = sent.json()
    assert answer["subject"] == text  # user content: never rewritten
    assert answer["uri"].startswith(proxy.url + "/restapi/v1.0/account/~/extension/~/")


@pytest.mark.parametrize("coding", ["off", "gzip"])
def test_large_call_log_page_is_rewritten_as_it_streams(emulator_factory, proxy_factory,
                                                        coding: str) -> None:
    """A page over stream_threshold streams through: its links must still lead to the proxy
    (else the app follows nextPage straight to the platform, with its proxy key)."""
    emulator = emulator_factory("--auth-rate", "0", "--compress", coding)
    proxy = proxy_factory(emulator.url, stream_threshold=256)
    with proxy.http(APP_KEY) as client:
        page = client.get(CALL_LOG, params={"perPage": 25, "view": "Detailed"},
                          headers={"Accept-Encoding": "gzip"})
    assert page.status_code == 200, page.text
    assert len(page.content) > 2 * 1024  # beyond stream_threshold: streamed, not buffered
    assert emulator.url not in page.text
    if coding == "gzip":
        assert page.headers["content-encoding"] == "gzip"
    assert "content-length" not in page.headers  # its length changed: sent chunked
    body = page.json()
    assert body["navigation"]["nextPage"]["uri"].startswith(proxy.url + CALL_LOG + "?")
    assert all(r["uri"].startswith(proxy.url + "/") for r in body["records"])


def test_links_over_tls_without_public_url_name_https(tmp_path: Path, emulator_factory,
                                                      proxy_factory) -> None:
    """Without public_url the links name the address the app connected to, with its scheme."""
    ca = make_tls_files(tmp_path / "tls")
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url, tls_cert=str(tmp_path / "tls" / "server.pem"),
                          tls_key=str(tmp_path / "tls" / "server.key"))
    assert proxy.url.startswith("https://127.0.0.1:")
    answer = httpx.get(proxy.url + "/restapi/v1.0/account/~/extension/~",
                       headers={"Authorization": f"Bearer {APP_KEY}"},
                       verify=ssl.create_default_context(cafile=str(ca)), timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["uri"].startswith(proxy.url + "/restapi/v1.0/"), answer.json()["uri"]


@pytest.mark.parametrize("coding", ["off", "gzip", "br"])
def test_links_split_across_upstream_chunks_are_rewritten(emulator_factory, proxy_factory,
                                                          coding: str) -> None:
    """The platform's answer arrives in small pieces (chunked, cut anywhere, inside link values
    too): every link still leads to the proxy, and the body is whole. (An empty piece handed
    to mitmproxy ends a chunked body: a link held across a cut used to truncate the answer.)"""
    emulator = emulator_factory("--auth-rate", "0", "--compress", coding, "--chunk-bytes", "41")
    proxy = proxy_factory(emulator.url)
    with proxy.http(APP_KEY) as client:
        for _ in range(3):
            page = client.get(CALL_LOG, params={"perPage": 25, "view": "Detailed"},
                              headers={"Accept-Encoding": "gzip, br"})
            assert page.status_code == 200, page.text
            if coding != "off":
                assert page.headers["content-encoding"] == coding
            body = page.json()  # whole: it parses
            assert emulator.url not in page.text
            assert body["navigation"]["nextPage"]["uri"].startswith(proxy.url + CALL_LOG + "?")
            assert len(body["records"]) == 25
            assert all(r["uri"].startswith(proxy.url + "/") for r in body["records"])
            me = client.get("/restapi/v1.0/account/~/extension/~")
            assert me.status_code == 200 and me.json()["uri"].startswith(proxy.url + "/")
