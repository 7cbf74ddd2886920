"""PROTOTYPE for issue 16 (docs/design/upstream-pool.md, option 1c) — not product code.

The loopback pooling hop: mitmproxy forwards in plain HTTP to an in-process aiohttp forwarder
on loopback, which sends every request on through ONE shared ``httpx.AsyncClient`` (the pool)
and streams the answer back (undecoded). No mitmproxy patch; every stock streaming path stays.

    POOL_UPSTREAM=https://127.0.0.1:PORT POOL_HOP_PORT=N mitmdump \
        --mode reverse:http://127.0.0.1:N -s bench/proto_loophop.py
"""

from __future__ import annotations

import logging
import os
import ssl

import httpx
from aiohttp import web

log = logging.getLogger("proto_loophop")

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
})


class LoopHop:
    def __init__(self) -> None:
        self.client: httpx.AsyncClient | None = None
        self.runner: web.AppRunner | None = None

    async def running(self) -> None:
        upstream = os.environ["POOL_UPSTREAM"]
        verify: ssl.SSLContext | bool = True
        if os.environ.get("POOL_CA"):
            verify = ssl.create_default_context(cafile=os.environ["POOL_CA"])
        self.client = httpx.AsyncClient(
            base_url=upstream, verify=verify,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100,
                                keepalive_expiry=60), timeout=30.0)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.forward)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = int(os.environ["POOL_HOP_PORT"])
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        log.warning("proto_pool: forwarding (loop hop on %d) to %s", port, upstream)

    async def done(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.client is not None:
            await self.client.aclose()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        assert self.client is not None
        headers = [(k, v) for k, v in request.raw_headers
                   if k.decode("latin-1").lower() not in HOP_BY_HOP]
        body = await request.read()
        outgoing = httpx.Request(request.method, str(self.client.base_url).rstrip("/")
                                 + request.raw_path, headers=headers, content=body,
                                 extensions={"target": request.raw_path.encode()})
        answer = await self.client.send(outgoing, stream=True)
        try:
            response = web.StreamResponse(status=answer.status_code, reason=answer.reason_phrase)
            for key, value in answer.headers.raw:
                if key.decode("latin-1").lower() not in HOP_BY_HOP:
                    response.headers.add(key.decode("latin-1"), value.decode("latin-1"))
            length = answer.headers.get("content-length")
            if length is not None:
                response.content_length = int(length)
            await response.prepare(request)
            async for chunk in answer.aiter_raw():
                await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            await answer.aclose()


addons = [LoopHop()]
