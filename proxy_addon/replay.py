"""Transparent replay: re-send a request the platform refused with a token 401.

The addon calls :meth:`Replayer.send` after the pool handed out a newer token. The request goes
out again byte-identical (method, path, query, headers, body) but for ``Authorization``; the
answer comes back undecoded, ready to stand in for the 401 in the client's flow.
"""

from __future__ import annotations

import time

import httpx
from mitmproxy import http

from .oauth import UpstreamUnreachable

# Connection-level headers: meaningful for one hop only, never copied.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length", "authorization",
})


class Replayer:
    def __init__(self, http_client: httpx.AsyncClient) -> None:
        self._http = http_client

    async def send(self, request: http.Request, access_token: str) -> http.Response:
        headers = [(k, v) for k, v in request.headers.fields
                   if k.decode("latin-1").lower() not in HOP_BY_HOP]
        headers.append((b"Authorization", f"Bearer {access_token}".encode("latin-1")))
        body = request.raw_content or b""
        # httpx.Request, not client.build_request: no client default headers get added.
        outgoing = httpx.Request(request.method, request.url, headers=headers, content=body)
        started = time.time()
        try:
            answer = await self._http.send(outgoing, stream=True)
            try:
                raw = b"".join([chunk async for chunk in answer.aiter_raw()])
            finally:
                await answer.aclose()
        except httpx.TimeoutException:
            raise UpstreamUnreachable("timed out replaying the request upstream") from None
        except httpx.TransportError as exc:
            raise UpstreamUnreachable(
                f"cannot reach the upstream to replay: {type(exc).__name__}") from None
        fields = [(k, v) for k, v in answer.headers.raw
                  if k.decode("latin-1").lower() not in HOP_BY_HOP]
        fields.append((b"content-length", str(len(raw)).encode()))
        return http.Response(
            http_version=b"HTTP/1.1", status_code=answer.status_code,
            reason=answer.reason_phrase.encode("latin-1", "replace"),
            headers=http.Headers(fields), content=raw, trailers=None,
            timestamp_start=started, timestamp_end=time.time())
