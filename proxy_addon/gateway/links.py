"""Absolute links in API answers point back at the proxy, so an app that follows them
(``uri``, ``contentUri``, ``navigation.nextPage.uri`` …) stays behind it and keeps getting its
token injected. The addon :class:`Links` comes after :mod:`.replay`:

- ``responseheaders``: large or unsized answers stream (a 401 never: its body decides about a
  replay); a streamed JSON answer gets its links rewritten on the way (:mod:`.link_stream`).
- ``response``: a buffered answer to an identified client is rewritten in place; a 401 that
  :mod:`.replay` decided about is not (a replayed answer is rewritten by the replay).

Only the string values of known link fields (:data:`LINK_FIELDS`) change, and only when they
start with exactly the platform's origin (→ the proxy's) or the media host's (the request's
account's own when it names them: sandbox beside production), where recordings
live (→ the proxy's ``/_media`` route, which :mod:`.inject` forwards to the media host); message
text, subjects and every other value pass untouched, and so do look-alike hosts
(``https://platform.ringcentral.com.evil.com``). Buffered answers are checked to be JSON and
rewritten in place (every other byte stays as it was); large or chunked answers are rewritten
while they stream, by :class:`~.link_scanner.LinkScanner`, in bounded memory (compressed ones
decoded and encoded again on the fly; a stacked or unknown Content-Encoding streams through
unrewritten, as nothing here can read it). The proxy's own origin is ``[proxy] public_url``
or, by default, the scheme and local address the app connected to.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

from mitmproxy import http

from ..config import AccountConfig
from ..upstream.platform_errors import decode_bounded
from .flow_context import admitted
from .link_scanner import LINK_FIELDS, MAX_HELD, Fixer, LinkScanner, origin, rewrite_url
from .link_stream import (
    EXPANSION_FLOOR,
    MAX_EXPANSION,
    RECODED,
    Recoded,
    StreamAborted,
    pieces,
)

__all__ = ["LINK_FIELDS", "MAX_HELD", "MEDIA_ROUTE", "LinkRewriter", "LinkScanner", "Links",
           "StreamAborted", "origin", "rewrite_url"]

MEDIA_ROUTE = "/_media"


def _is_json(headers: http.Headers) -> bool:
    return "json" in headers.get("content-type", "").lower()


class Links:
    """The addon: which answers stream, and the links of answers to identified clients."""

    def __init__(self, rewriter: LinkRewriter, stream_threshold: int) -> None:
        self._rewriter = rewriter
        self._stream_threshold = stream_threshold

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is None or response.status_code == 401:
            return  # a 401 body is needed whole: it decides about the replay
        length = response.headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > self._stream_threshold:
            response.stream = self._rewriter.stream_for(flow) or True

    def response(self, flow: http.HTTPFlow) -> None:
        context = admitted(flow)
        if context is None or context.replayed:
            return  # nobody identified (refusals, logins), or rewritten by the replay
        response = flow.response
        if response is not None and response.status_code == 401 and not flow.request.stream:
            return  # a 401 to a replayable request passes on as it came (see .replay)
        self._rewriter.rewrite(flow)


class LinkRewriter:
    """Rewrites the links of one answer, buffered or streamed."""

    def __init__(self, upstream: str, media_upstream: str | None = None,
                 public_url: str | None = None) -> None:
        self._origins = _origins(upstream, media_upstream)
        self._public = public_url.rstrip("/") if public_url else None

    def fixer(self, base: str, account: AccountConfig | None = None) -> Fixer:
        """The rewrite of one link value for an app that reaches the proxy at ``base``; the
        origins are ``account``'s platform and media host when it names them (an account on
        another platform: sandbox beside production), else the proxy's."""
        platform, media = (_origins(account.upstream, account.media_upstream)
                           if account is not None and account.upstream else self._origins)
        pairs = ((media, base + MEDIA_ROUTE),) if media else ()
        pairs += ((platform, base),)
        return lambda value: rewrite_url(value, pairs)

    def rewrite(self, flow: http.HTTPFlow) -> None:
        """Rewrite the links of a buffered JSON answer (decoded first if it is compressed)."""
        response = flow.response
        if response is None or response.stream or not _is_json(response.headers):
            return
        body = self._decoded(response)
        if not body:  # none, or one that does not decode within bounds: left as it came
            return
        try:
            json.loads(body)
        except ValueError:  # not JSON after all: leave it
            return
        scan = LinkScanner(self.fixer(self.base(flow), _account_of(flow)))
        changed = scan(body) + scan(b"")
        if changed != body:
            try:  # encoded again as it came; sets content-length unless chunked
                response.content = changed
            except ValueError:  # a coding mitmproxy cannot encode (stacked ones): left as is
                return

    @staticmethod
    def _decoded(response: http.Response) -> bytes | None:
        """The body decoded from its codings (applied in the order listed), each decoded
        bounded: never past :data:`MAX_EXPANSION` times its encoded size (past the first MiB)."""
        body = response.raw_content or b""
        codings = [c.strip().lower()
                   for c in response.headers.get("content-encoding", "").split(",")]
        for coding in reversed([c for c in codings if c and c not in ("identity", "none")]):
            limit = max(EXPANSION_FLOOR, len(body) * MAX_EXPANSION)
            decoded = decode_bounded(body, coding, limit)
            if decoded is None:
                return None
            body = decoded
        return body

    def stream_for(self, flow: http.HTTPFlow) -> Callable[[bytes], list[bytes]] | None:
        """A ``response.stream`` function that rewrites the links of a streamed JSON answer,
        or None (not JSON, no body, or an encoding this cannot decode: it streams as it is).
        The body's length changes, so Content-Length goes and HTTP/1.1 gets chunked."""
        response = flow.response
        if response is None or not _is_json(response.headers) \
                or flow.request.method == "HEAD" or response.status_code in (204, 304):
            return None
        headers = response.headers
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", *RECODED):
            return None  # stacked or unknown encodings: passed through as they are
        scan = LinkScanner(self.fixer(self.base(flow), _account_of(flow)))
        headers.pop("content-length", None)
        if flow.request.http_version == "HTTP/1.1":
            headers["transfer-encoding"] = "chunked"
        return pieces(scan if encoding == "identity" else Recoded(encoding, scan))

    def base(self, flow: http.HTTPFlow) -> str:
        """The proxy's origin as the app sees it: ``public_url``, else the scheme the app used
        and the local address it connected to."""
        if self._public:
            return self._public
        host, port = flow.client_conn.sockname[:2]
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if flow.client_conn.tls_established else "http"
        return f"{scheme}://{host}:{port}"


@functools.lru_cache(maxsize=64)
def _origins(upstream: str, media_upstream: str | None) -> tuple[str, str | None]:
    """(platform origin, media origin or None), lower-cased; a media host equal to the
    platform cannot be told apart: its links go to the proxy."""
    platform = origin(upstream).lower()
    media = origin(media_upstream).lower() if media_upstream else None
    return platform, (None if media == platform else media)


def _account_of(flow: http.HTTPFlow) -> AccountConfig | None:
    context = admitted(flow)
    return context.account.account if context is not None and context.account else None
