"""Transparent replay: re-send a request the platform refused with a token 401.

The addon calls :meth:`Replayer.send` after the pool handed out a newer token. The request goes
out again byte-identical (method, path, query, headers, body) but for ``Authorization``, through
the same shared pool as forwarded requests (:mod:`.data_plane`); the answer comes back
undecoded, ready to stand in for the 401 in the client's flow.
"""

from __future__ import annotations

import io
import time

from mitmproxy import http

from ..gateway.replay_buffer import ReplayBuffer
from .data_plane import DataPlane, UpstreamAnswer
from .forward import HOP_BY_HOP, bodiless, outgoing_headers

_NOT_COPIED = HOP_BY_HOP | {"authorization"}


class ReplayTooLarge(Exception):
    """The replay's answer does not fit in the replay buffer (see :mod:`.replay_buffer`)."""


class Replayer:
    def __init__(self, plane: DataPlane, buffer: ReplayBuffer) -> None:
        self._plane = plane
        self._buffer = buffer  # a replay's answer is held whole: it takes room in the buffer

    async def send(self, request: http.Request, access_token: str) -> tuple[http.Response, int]:
        """The answer to the request sent again with ``access_token``, and the bytes it holds
        in the replay buffer (the caller releases them once the answer is passed on). Raises
        what :meth:`DataPlane.send` raises, or :class:`ReplayTooLarge`."""
        headers = outgoing_headers(request, _NOT_COPIED)
        headers.append(("Authorization", f"Bearer {access_token}"))
        started = time.time()
        answer = await self._plane.send(request.method, request.scheme, request.host,
                                        request.port, request.path, headers,
                                        request.raw_content)
        complete = False
        try:
            raw = b"" if bodiless(request.method, answer.status) else await self._read(answer)
            complete = True
        finally:
            answer.release(reuse=complete)
        fields = [(k, v) for k, v in answer.raw_headers
                  if k.decode("latin-1").lower() not in _NOT_COPIED]
        fields.append((b"content-length", str(len(raw)).encode()))
        return http.Response(
            http_version=b"HTTP/1.1", status_code=answer.status,
            reason=answer.reason.encode("latin-1", "replace"),
            headers=http.Headers(fields), content=raw, trailers=None,
            timestamp_start=started, timestamp_end=time.time()), len(raw)

    async def _read(self, answer: UpstreamAnswer) -> bytes:
        """The answer's raw (still encoded) body, reserved in the replay buffer as it arrives;
        refused when it does not fit: mitmproxy sends an answer set in the ``response`` hook
        whole, so a replayed download cannot stream. The app is told to repeat the request
        instead (its token is fresh by then)."""
        length = next((v.decode("latin-1").strip() for k, v in answer.raw_headers
                       if k.lower() == b"content-length"), "")
        if length.isdigit():
            if not self._buffer.admit(int(length)):
                raise ReplayTooLarge(int(length))
            reserved = int(length)
        else:
            reserved = 0
        raw = io.BytesIO()  # getvalue() hands over its buffer: the body is held once, not twice
        try:
            async for chunk in answer.chunks():
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
