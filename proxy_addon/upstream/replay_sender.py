"""Transparent replay: re-send a request the platform refused with a token 401.

The addon calls :meth:`Replayer.send` after the pool handed out a newer token. The request goes
out again byte-identical (method, path, query, headers, body) but for ``Authorization``; the
answer comes back undecoded, ready to stand in for the 401 in the client's flow.
"""

from __future__ import annotations

import io
import time

import httpx
from mitmproxy import http

from ..gateway.replay_buffer import ReplayBuffer
from .token_endpoint import UpstreamUnreachable

# Connection-level headers: meaningful for one hop only, never copied.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length", "authorization",
})


class ReplayTooLarge(Exception):
    """The replay's answer does not fit in the replay buffer (see :mod:`.replay_buffer`)."""


class Replayer:
    def __init__(self, http_client: httpx.AsyncClient, buffer: ReplayBuffer) -> None:
        self._http = http_client
        self._buffer = buffer  # a replay's answer is held whole: it takes room in the buffer

    async def send(self, request: http.Request, access_token: str) -> tuple[http.Response, int]:
        """The answer to the request sent again with ``access_token``, and the bytes it holds
        in the replay buffer (the caller releases them once the answer is passed on)."""
        headers = [(k, v) for k, v in request.headers.fields
                   if k.decode("latin-1").lower() not in HOP_BY_HOP]
        headers.append((b"Authorization", f"Bearer {access_token}".encode("latin-1")))
        body = request.raw_content or b""
        # httpx.Request, not client.build_request: no client default headers get added. The
        # request target goes out exactly as the app sent it ("target": httpx would re-encode
        # the path and query of request.url).
        outgoing = httpx.Request(request.method, request.url, headers=headers, content=body,
                                 extensions={"target": request.path.encode("latin-1",
                                                                           "surrogateescape")})
        started = time.time()
        try:
            answer = await self._http.send(outgoing, stream=True)
            try:
                raw = await self._read(answer)
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
            timestamp_start=started, timestamp_end=time.time()), len(raw)

    async def _read(self, answer: httpx.Response) -> bytes:
        """The answer's raw (still encoded) body, reserved in the replay buffer as it arrives;
        refused when it does not fit: mitmproxy sends an answer set in the ``response`` hook
        whole, so a replayed download cannot stream. The app is told to repeat the request
        instead (its token is fresh by then)."""
        length = answer.headers.get("content-length", "")
        if length.isdigit():
            if not self._buffer.admit(int(length)):
                raise ReplayTooLarge(int(length))
            reserved = int(length)
        else:
            reserved = 0
        raw = io.BytesIO()  # getvalue() hands over its buffer: the body is held once, not twice
        try:
            async for chunk in answer.aiter_raw():
                raw.write(chunk)
                size = raw.tell()
                if size > reserved:
                    if not self._buffer.admit(size - reserved):
                        raise ReplayTooLarge(size)
                    reserved = size
        except BaseException:
            self._buffer.release(reserved)
            raise
        if reserved > raw.tell():  # a shorter body than announced
            self._buffer.release(reserved - raw.tell())
        return raw.getvalue()
