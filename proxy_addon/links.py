"""Absolute links in API answers point back at the proxy, so an app that follows them
(``uri``, ``contentUri``, ``navigation.nextPage.uri`` …) stays behind it and keeps getting its
token injected.

JSON answers have the platform's origin replaced by the proxy's, and the media host's (where
recordings live) by the proxy's ``/_media`` route, which forwards to the media host. The
proxy's own origin is ``[proxy] public_url`` or, by default, the address the app connected to.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from mitmproxy import http

MEDIA_ROUTE = "/_media"


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class LinkRewriter:
    def __init__(self, upstream: str, media_upstream: str | None = None,
                 public_url: str | None = None) -> None:
        self._upstream = origin(upstream).encode()
        self._media = origin(media_upstream).encode() if media_upstream else None
        media_parts = urlsplit(media_upstream) if media_upstream else None
        self._media_target = ((media_parts.scheme, media_parts.hostname or "",
                               media_parts.port or (443 if media_parts.scheme == "https"
                                                    else 80))
                              if media_parts else None)
        self._public = public_url.rstrip("/").encode() if public_url else None

    def route(self, flow: http.HTTPFlow) -> None:
        """Send ``/_media/…`` to the media host (the rest goes to the platform)."""
        request = flow.request
        if self._media_target is None or not request.path.startswith(MEDIA_ROUTE + "/"):
            return
        scheme, host, port = self._media_target
        request.path = request.path[len(MEDIA_ROUTE):]
        request.scheme, request.host, request.port = scheme, host, port
        request.headers["host"] = host if port in (80, 443) else f"{host}:{port}"

    def rewrite(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is None or response.stream:
            return
        headers = response.headers
        if "json" not in headers.get("content-type", "").lower():
            return
        encoded = "content-encoding" in headers  # rare for API answers: decode, re-encode
        body = response.content if encoded else response.raw_content
        if not body:
            return
        base = self._public or self._base(flow)
        changed = body
        if self._media is not None and self._media in changed:
            changed = changed.replace(self._media, base + MEDIA_ROUTE.encode())
        if self._upstream in changed:
            changed = changed.replace(self._upstream, base)
        if changed is body:
            return
        if encoded:
            response.content = changed
        else:
            response.raw_content = changed
            if "transfer-encoding" not in headers:
                headers["content-length"] = str(len(changed))

    @staticmethod
    def _base(flow: http.HTTPFlow) -> bytes:
        host, port = flow.client_conn.sockname[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}".encode()
