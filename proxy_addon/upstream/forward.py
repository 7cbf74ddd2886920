"""Send an app's request to the platform through the data plane (:mod:`.data_plane`) and turn
the answer into a mitmproxy :class:`~mitmproxy.http.Response`.

The request goes out as the app sent it (method, exact target, headers, body) minus the headers
that belong to one hop; the answer comes back with its bytes untouched (still compressed, if it
was), minus its hop-by-hop headers. Answers up to ``whole_limit`` (and every 401, which decides a
replay, and every bodiless one) are read whole; bigger or unsized ones are handed back with the
body still upstream (:class:`Forwarded.body`), for the gateway to stream in O(1) memory.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from mitmproxy import http

from .data_plane import DataPlane, UpstreamAnswer

# Connection-level headers: meaningful for one hop only, never copied (RFC 9110 §7.6.1), plus
# the framing headers the client library sets from the body it sends.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "content-length",
})


@dataclass
class Forwarded:
    """The platform's answer: ``response`` (whole when ``body`` is None), else ``body`` yields
    the rest as it arrives and ``answer`` must be released once it is done."""

    response: http.Response
    answer: UpstreamAnswer | None = None
    body: AsyncIterator[bytes] | None = None


def outgoing_headers(request: http.Request, drop: frozenset[str] = HOP_BY_HOP
                     ) -> list[tuple[str, str]]:
    """The app's headers as they will leave (names and values as latin-1 text, order kept)."""
    listed = {t.strip().lower() for v in request.headers.get_all("connection")
              for t in v.split(",")}  # headers the app named as hop-by-hop
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.fields
            if (name := k.decode("latin-1").lower()) not in drop and name not in listed]


def bodiless(method: str, status: int) -> bool:
    """An answer that has no body whatever its headers say (RFC 9112 §6.3)."""
    return method == "HEAD" or status in (204, 304) or status < 200


async def forward(plane: DataPlane, request: http.Request, whole_limit: int) -> Forwarded:
    """Send ``request`` and return the answer; raises what :meth:`DataPlane.send` raises."""
    answer = await plane.send(request.method, request.scheme, request.host, request.port,
                              request.path, outgoing_headers(request), request.raw_content)
    started = time.time()
    try:
        return await _answer(request, answer, whole_limit, started)
    except BaseException:
        answer.release(reuse=False)
        raise


async def _answer(request: http.Request, answer: UpstreamAnswer, whole_limit: int,
                  started: float) -> Forwarded:
    listed = {t.strip().lower() for k, v in answer.raw_headers if k.lower() == b"connection"
              for t in v.decode("latin-1").split(",")}
    fields = [(k, v) for k, v in answer.raw_headers
              if (name := k.decode("latin-1").lower()) not in HOP_BY_HOP and name not in listed]
    length = next((v.decode("latin-1").strip() for k, v in answer.raw_headers
                   if k.lower() == b"content-length"), "")
    no_body = bodiless(request.method, answer.status)
    whole = no_body or answer.status == 401 or (length.isdigit() and int(length) <= whole_limit)
    content = b""
    if whole:
        if not no_body:
            content = await answer.read()
            fields.append((b"content-length", str(len(content)).encode()))
        elif length and (request.method == "HEAD" or answer.status == 304):
            fields.append((b"content-length", length.encode()))  # what a GET would carry
        answer.release()
    elif length.isdigit():
        fields.append((b"content-length", length.encode()))
    elif request.http_version == "HTTP/1.1":
        fields.append((b"transfer-encoding", b"chunked"))
    response = http.Response(
        http_version=b"HTTP/1.1" if request.http_version.startswith("HTTP/1") else
        request.http_version.encode(), status_code=answer.status,
        reason=answer.reason.encode("latin-1", "replace"), headers=http.Headers(fields),
        content=content, trailers=None, timestamp_start=started,
        timestamp_end=time.time() if whole else None)
    if whole:
        return Forwarded(response)
    response.stream = True
    return Forwarded(response, answer, answer.chunks())
