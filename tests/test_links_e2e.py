"""Absolute links in answers lead back through the proxy: follow the call log's
navigation.nextPage.uri to the end, then a recording's contentUri on the (separate) media host,
all with the app's own credential only."""

from __future__ import annotations

import hashlib

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
