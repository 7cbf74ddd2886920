"""aiohttp application wiring: shared keys, the error/auth middleware, rate-limit headers, logging.

The middleware authenticates every request under ``/restapi/v1.0`` and ``/media`` (before
routing errors, so an unknown API path answers 401 without a token and 404 with one), counts it
in its rate-limit group (:mod:`.ratelimit`; a 429 when refused, before routing too), turns
:class:`~.errors.PlatformError` and aiohttp's HTTP errors into the platform's JSON envelopes and
never lets an exception become a bare 500.

With ``policy.compress`` on, every answer (error bodies included) goes out compressed as a
compressing front end would send it, in a coding the client's ``Accept-Encoding`` accepts:
buffered answers by :func:`compression_middleware` (gzip, deflate, br, zstd), streamed ones
(recording content) by :func:`_compress_stream` (gzip, deflate: aiohttp's zlib compressor).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import math
import sys
import zlib
from dataclasses import dataclass
from typing import Any

import brotli
from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger

from . import errors
from .errors import PlatformError
from .policy import WsPolicy
from .ratelimit import request_group
from .state import Platform, Session
from .ws_events import WsHub

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # installed with mitmproxy on Python < 3.14
    from backports import zstd

log = logging.getLogger("rc_emulator")


@dataclass
class Urls:
    """Bases for absolute URLs in API responses (filled in once the port is known)."""

    public: str = ""
    media: str = ""


PLATFORM = web.AppKey("platform", Platform)
URLS = web.AppKey("urls", Urls)
WS_HUB = web.AppKey("ws_hub", WsHub)  # WebSocket notifications (.ws, .ws_events)
SESSION_KEY = "emulator.session"
RATE_KEY = "emulator.rate_headers"

API_PREFIX = "/restapi/v1.0"
MEDIA_PREFIX = "/media"
OAUTH_PREFIX = "/restapi/oauth"
MAX_BODY = 64 * 1024 * 1024


def is_api_path(path: str) -> bool:
    return (
        path == API_PREFIX
        or path.startswith(API_PREFIX + "/")
        or path == MEDIA_PREFIX
        or path.startswith(MEDIA_PREFIX + "/")
    )


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode("utf-8"),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


def error_response(exc: PlatformError) -> web.Response:
    return json_response(exc.body, exc.status, dict(exc.headers))


def session_of(request: web.Request) -> Session:
    session: Session = request[SESSION_KEY]
    return session


def http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's HTTP error (404, 405, 413...) in the platform's envelope."""
    status = exc.status
    if status == 404:
        code, message = "CMN-102", "Resource not found"
    elif status == 405:
        code, message = "CMN-405", f"Method {request.method} is not allowed"
    elif status == 413:
        code, message = "CMN-101", "Request body is too large"
    else:
        code, message = f"CMN-{status}", exc.reason or "Request failed"
    if request.path.startswith(OAUTH_PREFIX):
        body = errors.oauth_body("invalid_request", code, message)
    else:
        body = errors.generic_body(code, message)
    headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
    return json_response(body, status, headers)


@web.middleware
async def platform_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    platform = request.app[PLATFORM]
    try:
        if is_api_path(request.path):
            group = request_group(request.method, request.path, MEDIA_PREFIX,
                                  platform.policy.api_group_source == "table")
            try:
                session = platform.check_access(request.headers.get("Authorization"))
            except PlatformError:
                if group is not None:
                    request[RATE_KEY] = platform.api_rate_headers_unauthenticated(group)
                raise
            request[SESSION_KEY] = session
            if group is not None:  # None: a NoThrottling operation, not counted
                request[RATE_KEY], refused = platform.api_rate_hit(group, session)
                if refused is not None:
                    raise refused
        response: web.StreamResponse = await handler(request)
        return response
    except PlatformError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_error(request, exc)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unexpected error handling %s %s", request.method, request.path)
        return error_response(errors.api_error(500, "CMN-500", "Internal server error"))


async def _add_rate_headers(request: web.Request, response: web.StreamResponse) -> None:
    rate = request.get(RATE_KEY)
    if rate:
        for name, value in rate.items():
            response.headers[name] = value


# -- compression (policy.compress) --------------------------------------------------------------
# RingCentral's docs list the HTTP headers of the API's representation (Content-Type,
# Content-Length, Accept: ringcentral-api-docs docs/basics/formats/objects.md:5-19) and say
# nothing about Accept-Encoding or Content-Encoding; no page documents whether the platform's
# front ends compress. The option exists because a front end (CDN, load balancer, gateway) may
# compress, error bodies included, whenever the client accepts it (RFC 9110 section 12.5.3).
CODING_PREFERENCE = ("br", "zstd", "gzip", "deflate")  # "any": best first among equal q
STREAM_CODINGS = ("gzip", "deflate")  # aiohttp's streaming compressor is zlib only


def accepted_codings(header: str | None) -> dict[str, float]:
    """``Accept-Encoding`` as {coding: q}; a malformed or out-of-range q counts as 0."""
    accepted: dict[str, float] = {}
    for item in (header or "").split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not math.isfinite(q) or not 0.0 <= q <= 1.0:
                    q = 0.0
        accepted.setdefault("gzip" if name == "x-gzip" else name, q)
    return accepted


def choose_coding(setting: str, header: str | None,
                  offered: tuple[str, ...] = CODING_PREFERENCE) -> str | None:
    """The coding to compress an answer with, or None: never one the client did not accept
    (no ``Accept-Encoding``, or q=0); ``*`` stands for the codings it does not name."""
    if setting == "off":
        return None
    accepted = accepted_codings(header)
    candidates = offered if setting == "any" else (setting,)
    best, best_q = None, 0.0
    for coding in candidates:
        if coding not in offered:
            continue
        q = accepted.get(coding, accepted.get("*", 0.0))
        if q > best_q:
            best, best_q = coding, q
    return best


def encode_body(body: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.compress(body, mtime=0)
    if coding == "deflate":
        return zlib.compress(body)  # HTTP "deflate" is the zlib format (RFC 9110 8.4.1.2)
    if coding == "br":
        return brotli.compress(body, quality=4)
    return zstd.compress(body)


def _compressible(request: web.BaseRequest, response: web.StreamResponse) -> bool:
    return (request.method != hdrs.METH_HEAD and response.status >= 200
            and response.status not in (204, 304)
            and hdrs.CONTENT_ENCODING not in response.headers)


@web.middleware
async def chunking_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """With ``chunk_bytes`` set, send a buffered answer (already compressed, if it is) chunked,
    in pieces of that size with a pause between them, each written and drained on its own."""
    response: web.StreamResponse = await handler(request)
    size = request.app[PLATFORM].policy.chunk_bytes
    if not size or not isinstance(response, web.Response) or response.prepared \
            or request.version < (1, 1):
        return response
    body = response.body
    if not isinstance(body, bytes | bytearray) or len(body) <= size \
            or request.method == hdrs.METH_HEAD:
        return response
    streamed = web.StreamResponse(status=response.status, reason=response.reason,
                                  headers=response.headers)
    streamed.headers.popall(hdrs.CONTENT_LENGTH, None)
    streamed.enable_chunked_encoding()
    await streamed.prepare(request)
    for start in range(0, len(body), size):
        await streamed.write(bytes(body[start:start + size]))
        await asyncio.sleep(0.002)  # lets each piece leave in its own segment
    await streamed.write_eof()
    return streamed


@web.middleware
async def compression_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Compress a buffered answer (any status) in the coding the policy and the client agree
    on. The outermost middleware: the platform's error envelopes are compressed too."""
    response: web.StreamResponse = await handler(request)
    setting = request.app[PLATFORM].policy.compress
    if setting == "off" or not isinstance(response, web.Response) or response.prepared:
        return response
    body = response.body
    if not isinstance(body, bytes | bytearray) or not body or not _compressible(request, response):
        return response
    coding = choose_coding(setting, request.headers.get(hdrs.ACCEPT_ENCODING))
    if coding is not None:
        response.headers.popall(hdrs.CONTENT_LENGTH, None)
        response.body = encode_body(bytes(body), coding)
        response.headers[hdrs.CONTENT_ENCODING] = coding
    return response


async def _compress_stream(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """``on_response_prepare``: ``Vary`` on every answer while compression is on, and a streamed
    answer (not a buffered :class:`web.Response`) compressed on the fly. The signal fires before
    the headers are sent; the writer is switched to chunked, zlib-compressed output (the public
    :class:`~aiohttp.abc.AbstractStreamWriter` interface). br and zstd are not offered for streams:
    aiohttp's writer compresses with zlib only, so a stream goes out in gzip/deflate or as is."""
    setting = request.app[PLATFORM].policy.compress
    if setting == "off":
        return
    vary = response.headers.get(hdrs.VARY, "")
    if "accept-encoding" not in vary.lower():
        response.headers[hdrs.VARY] = f"{vary}, Accept-Encoding" if vary else "Accept-Encoding"
    if isinstance(response, web.Response) or request.version < (1, 1) \
            or not _compressible(request, response):
        return
    coding = choose_coding(setting, request.headers.get(hdrs.ACCEPT_ENCODING), STREAM_CODINGS)
    if coding is None:
        return
    writer = request.writer
    writer.length = None  # the declared length was of the uncompressed body
    writer.enable_chunking()
    writer.enable_compression(coding)
    response.headers.popall(hdrs.CONTENT_LENGTH, None)
    response.headers[hdrs.TRANSFER_ENCODING] = "chunked"
    response.headers[hdrs.CONTENT_ENCODING] = coding


class AccessLogger(AbstractAccessLogger):
    """One debug line per request: method, path WITHOUT the query (it may carry tokens)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.debug(
            "%s %s %s %.1fms", request.method, request.path, response.status, time * 1000
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)


def build_app(platform: Platform, public_url: str = "", media_url: str = "",
              ws_policy: WsPolicy | None = None) -> web.Application:
    """The emulator's aiohttp application; URLs may be set later through ``app[URLS]``."""
    from . import admin, api, ws

    app = web.Application(middlewares=[chunking_middleware, compression_middleware,
                                       platform_middleware],
                          client_max_size=MAX_BODY)
    app[PLATFORM] = platform
    app[URLS] = Urls(public_url.rstrip("/"), media_url.rstrip("/"))
    app[WS_HUB] = WsHub(platform, ws_policy)
    app.on_response_prepare.append(_add_rate_headers)
    app.on_response_prepare.append(_compress_stream)
    api.add_routes(app)
    ws.add_routes(app)
    admin.add_routes(app)
    return app
