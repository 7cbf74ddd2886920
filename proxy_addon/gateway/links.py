"""Absolute links in API answers point back at the proxy, so an app that follows them
(``uri``, ``contentUri``, ``navigation.nextPage.uri`` …) stays behind it and keeps getting its
token injected.

Only the string values of known link fields (:data:`LINK_FIELDS`) change, and only when they
start with exactly the platform's origin (→ the proxy's) or the media host's, where recordings
live (→ the proxy's ``/_media`` route, which forwards to the media host); message text, subjects
and every other value pass untouched, and so do look-alike hosts
(``https://platform.ringcentral.com.evil.com``). Buffered answers are checked to be JSON and
rewritten in place (every other byte stays as it was); large or chunked answers are rewritten
while they stream, by :class:`LinkScanner`, in bounded memory (compressed ones decoded and
encoded again on the fly; a stacked or unknown Content-Encoding streams through unrewritten,
as nothing here can read it). The proxy's own origin is
``[proxy] public_url`` or, by default, the scheme and local address the app connected to.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable
from urllib.parse import urlsplit

import brotli
from mitmproxy import http

from ..upstream.platform_errors import decode_bounded

try:  # Python 3.14 has it built in; mitmproxy depends on the backport before that
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[import-not-found,no-redef]

MEDIA_ROUTE = "/_media"

# The platform's absolute-URL fields that lead to its own API or media host. From the
# platform's OpenAPI spec, ringcentral/ringcentral-api-docs specs/ringcentral_openapi3.json
# (components.schemas, string properties with format "uri" or a name ending in Uri/Url):
# `uri` (e.g. every navigation.*Page.uri and every record's uri), `contentUri`
# (AccountCallLogResponse recording: "Link to the call recording binary content"),
# `contentDownloadUri` (ListMeetingRecordingsResponse: "Link for downloading the recorded
# file") and `nextPageUri` (AddressBookSync, format uri). Left out on purpose: links that
# users or other services supply (GlipPosts iconUri/imageUri/thumbnailUri, meeting
# joinUri/startUri, brand serviceUrl, IncomingCallEvent toUrl/recUrl, presence
# localUri/remoteUri (SIP addresses) …): they are content.
LINK_FIELDS = frozenset({"uri", "contentUri", "contentDownloadUri", "nextPageUri"})
_LINK_KEYS = frozenset(name.encode() for name in LINK_FIELDS)
MAX_HELD = 64 * 1024  # a link value longer than this streams through unchanged
_MAX_KEY = 64  # longer strings cannot be link field names: not held
_BOUNDARY = "/?#"  # what may follow an origin in a URL (or nothing)
_WS = b" \t\r\n"
_SPECIAL = re.compile(rb'["\\]')
# fast paths of the scanner, for what lies whole in one chunk: a string, and a link field with
# its string value (the slow, byte-level path handles the rest, e.g. across chunk boundaries)
_STRING_BODY = rb'[^"\\]*(?:\\.[^"\\]*)*'
_STRING = re.compile(rb'"(' + _STRING_BODY + rb')"', re.DOTALL)
# a run of bytes outside strings and of whole strings that hold no escape and are not a link
# field name: none of it can change, and it passes at once
_BULK = re.compile(rb'(?:[^"]+|"(?!(?:' + b"|".join(sorted(_LINK_KEYS)) + rb')")[^"\\]*")*')
_LINK_PAIR = re.compile(rb'"(?:' + b"|".join(sorted(_LINK_KEYS)) + rb')"[ \t\r\n]*:[ \t\r\n]*"('
                        + _STRING_BODY + rb')"', re.DOTALL)

Fixer = Callable[[str], str | None]


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def rewrite_url(value: str, pairs: tuple[tuple[str, str], ...]) -> str | None:
    """``value`` with the first matching origin replaced, or None. An origin matches only when
    it is followed by ``/``, ``?``, ``#`` or the end: ``https://host.evil.com`` and
    ``https://host@evil.com`` do not match ``https://host``."""
    for source, target in pairs:
        n = len(source)
        if value[:n].lower() == source and (len(value) == n or value[n] in _BOUNDARY):
            return target + value[n:]
    return None


def _is_json(headers: http.Headers) -> bool:
    return "json" in headers.get("content-type", "").lower()


class LinkScanner:
    """An incremental JSON scanner: call it with each chunk of a body, then with ``b""`` at
    the end; it returns the bytes to send on (an empty piece mid-body only costs the rewrite
    of a link value it cuts). String values of :data:`LINK_FIELDS` keys are
    passed to ``fix`` whole (held across chunks up to :data:`MAX_HELD` bytes); everything else
    goes out as it came. A string followed by ``:`` is a key; its value is the next string if
    only whitespace and the colon lie between them."""

    _PASS, _KEY, _LINK = 0, 1, 2
    _GAP_NONE, _GAP_AFTER_STRING, _GAP_AFTER_COLON = 0, 1, 2

    def __init__(self, fix: Fixer) -> None:
        self._fix = fix
        self._in_string = False
        self._escape = False  # the last byte seen was a backslash inside a string
        self._kind = self._PASS
        self._held = bytearray()
        self._gap = self._GAP_NONE
        self._after_link_key = False  # the last string closed was a link field name
        self._fast_end = 0

    def __call__(self, chunk: bytes) -> bytes:
        out = bytearray()
        if not chunk:  # the end of the body (or an empty piece): a held link value goes out
            if self._in_string:  # unchanged; a key's bytes were sent already, as they came
                if self._kind == self._LINK:
                    out += self._held
                self._held.clear()
                self._kind = self._PASS  # the rest of this string, if any, passes as it is
            return bytes(out)
        i, n = 0, len(chunk)
        while i < n:
            if not self._in_string:
                if not self._after_link_key:
                    run_end = _BULK.match(chunk, i).end()  # type: ignore[union-attr]
                    if run_end > i:
                        run = chunk[i:run_end]
                        last_quote = run.rfind(b'"')
                        if last_quote >= 0:  # it ended with a string, then maybe a gap
                            self._gap = self._GAP_AFTER_STRING
                            run_gap = run[last_quote + 1:]
                        else:
                            run_gap = run
                        self._feed_gap(run_gap)
                        out += run
                        i = run_end
                        continue
                j = chunk.find(b'"', i)
                gap = chunk[i:] if j < 0 else chunk[i:j]
                self._feed_gap(gap)
                out += gap
                if j < 0:
                    break
                link = self._gap == self._GAP_AFTER_COLON and self._after_link_key
                if not link and self._fast(chunk, j, out):
                    i = self._fast_end
                    continue
                out += b'"'
                self._in_string = True
                self._kind = self._LINK if link else self._KEY
                self._held.clear()
                i = j + 1
            elif self._escape:  # the escaped byte, after a backslash at the end of a chunk
                self._take(chunk[i:i + 1], out)
                self._escape = False
                i += 1
            else:
                match = _SPECIAL.search(chunk, i)
                end = n if match is None else match.start()
                self._take(chunk[i:end], out)
                if match is None:
                    break
                if chunk[end] == 0x5C:  # backslash: it and the next byte belong to the string
                    self._take(b"\\", out)
                    self._escape = True
                    i = end + 1
                    continue
                self._close(out)
                i = end + 1
        return bytes(out)

    def _fast(self, chunk: bytes, start: int, out: bytearray) -> bool:
        """Handle a whole string (or link field and value) at ``chunk[start]`` at C speed;
        False when it does not lie whole in this chunk, or is a link field name without its
        value: the byte-level path takes it."""
        pair = _LINK_PAIR.match(chunk, start)
        if pair is not None:
            value = pair.group(1)
            out += chunk[start:pair.start(1)]
            out += self._fixed(value) if len(value) <= MAX_HELD else value
            out += b'"'
            self._fast_end = pair.end()
        else:
            string = _STRING.match(chunk, start)
            if string is None or string.group(1) in _LINK_KEYS or b"\\" in string.group(1):
                return False  # (an escaped key might spell a link field name)
            out += chunk[start:string.end()]
            self._fast_end = string.end()
        self._gap = self._GAP_AFTER_STRING
        self._after_link_key = False
        return True

    def _feed_gap(self, gap: bytes) -> None:
        if self._gap == self._GAP_NONE:
            return
        rest = gap.lstrip(_WS)
        if not rest:
            return
        if self._gap == self._GAP_AFTER_STRING and rest[:1] == b":":
            self._gap = self._GAP_AFTER_COLON if not rest[1:].lstrip(_WS) else self._GAP_NONE
        else:
            self._gap = self._GAP_NONE

    def _take(self, piece: bytes, out: bytearray) -> None:
        if not piece:
            return
        kind, held = self._kind, self._held
        if kind == self._LINK:
            if len(held) + len(piece) > MAX_HELD:  # too long to be a link: pass it on
                out += held
                out += piece
                held.clear()
                self._kind = self._PASS
            else:
                held += piece
            return
        out += piece
        if kind == self._KEY:
            if len(held) + len(piece) > _MAX_KEY:
                held.clear()
                self._kind = self._PASS
            else:
                held += piece

    def _close(self, out: bytearray) -> None:
        held, kind = self._held, self._kind
        self._after_link_key = False
        if kind == self._LINK:
            out += self._fixed(bytes(held))
        elif kind == self._KEY:
            name = bytes(held)
            if b"\\" in name:
                try:
                    name = json.loads(b'"' + name + b'"').encode()
                except ValueError:
                    name = b""
            self._after_link_key = name in _LINK_KEYS
        out += b'"'
        held.clear()
        self._in_string = False
        self._kind = self._PASS
        self._gap = self._GAP_AFTER_STRING

    def _fixed(self, raw: bytes) -> bytes:
        plain = b"\\" not in raw  # the common case: no escape to decode, none to add back
        try:
            value = raw.decode() if plain else json.loads(b'"' + raw + b'"')
        except ValueError:  # not a valid JSON string: leave it
            return raw
        new = self._fix(value)
        if new is None:
            return raw
        return new.encode() if plain else json.dumps(new, ensure_ascii=False)[1:-1].encode()


class StreamAborted(Exception):
    """A streamed answer cannot go on: the part already sent is all the app gets, and its
    connection is cut (:mod:`.stream_abort`), so it cannot take a truncated body for whole."""


# A streamed compressed answer that decodes to more than this many times its encoded size
# (past the first MiB) is a decompression bomb, not JSON: the proxy stops it (JSON compresses
# some 5-30 times, deflate at most 1032 times)
MAX_EXPANSION = 64
_EXPANSION_FLOOR = 1024 * 1024
_TOO_MUCH = f"it decodes to more than {MAX_EXPANSION} times its size"


class _Recoded:
    """Decode a streamed body, scan it, encode it again the same way (gzip, deflate, br,
    zstd), flushing after every chunk so the app gets data as it comes. Decoding is bounded
    (:data:`MAX_EXPANSION`); a body that does not decode, or decodes past the bound, raises
    :class:`StreamAborted`."""

    def __init__(self, encoding: str, scan: LinkScanner) -> None:
        self._encoding = encoding
        self._scan = scan
        self._encoded = 0  # bytes received so far
        self._decoded = 0  # bytes they decoded to
        self._decode: Callable[[bytes, int], bytes] | None = None
        self._encode: Callable[[bytes], bytes] = lambda data: data
        self._finish: Callable[[], bytes] = lambda: b""

    def _start(self, first: bytes) -> None:
        if self._encoding in ("gzip", "deflate"):
            if self._encoding == "gzip":
                wbits = 31
            else:  # zlib-wrapped (RFC 9110 section 8.4.1.2) or, from some servers, raw
                zlib_header = len(first) >= 2 and first[0] & 0x0F == 8 \
                    and (first[0] << 8 | first[1]) % 31 == 0
                wbits = 15 if zlib_header else -15
            zdec = [zlib.decompressobj(wbits)]
            zenc = zlib.compressobj(wbits=wbits)

            def zlib_decode(chunk: bytes, most: int) -> bytes:
                out = zdec[0].decompress(chunk, most)
                if zdec[0].unconsumed_tail:
                    raise StreamAborted(_TOO_MUCH)
                while zdec[0].eof and zdec[0].unused_data:  # gzip: another member follows
                    rest = zdec[0].unused_data
                    zdec[0] = zlib.decompressobj(wbits)
                    out += zdec[0].decompress(rest, max(1, most - len(out)))
                    if zdec[0].unconsumed_tail:
                        raise StreamAborted(_TOO_MUCH)
                return out

            self._decode = zlib_decode
            self._encode = lambda data: zenc.compress(data) + zenc.flush(zlib.Z_SYNC_FLUSH)
            self._finish = zenc.flush
        elif self._encoding == "br":
            bdec, benc = brotli.Decompressor(), brotli.Compressor(quality=1)

            def br_decode(chunk: bytes, most: int) -> bytes:
                out = bdec.process(chunk, output_buffer_limit=most)
                if len(out) >= most and not bdec.is_finished():
                    raise StreamAborted(_TOO_MUCH)
                return out

            self._decode = br_decode
            self._encode = lambda data: benc.process(data) + benc.flush()
            self._finish = benc.finish
        else:
            sdec = [zstd.ZstdDecompressor()]
            senc = zstd.ZstdCompressor()

            def zstd_decode(chunk: bytes, most: int) -> bytes:
                out = sdec[0].decompress(chunk, max_length=most)
                while True:
                    if len(out) >= most and not sdec[0].needs_input:
                        raise StreamAborted(_TOO_MUCH)
                    if not (sdec[0].eof and sdec[0].unused_data):
                        return out
                    rest = sdec[0].unused_data  # another frame follows
                    sdec[0] = zstd.ZstdDecompressor()
                    out += sdec[0].decompress(rest, max_length=max(1, most - len(out)))

            self._decode = zstd_decode
            self._encode = lambda data: senc.compress(data, zstd.ZstdCompressor.FLUSH_BLOCK)
            self._finish = lambda: senc.flush(zstd.ZstdCompressor.FLUSH_FRAME)

    def __call__(self, chunk: bytes) -> bytes:
        try:
            if not chunk:  # the end
                if self._decode is None:
                    return b""
                return self._encode(self._scan(b"")) + self._finish()
            if self._decode is None:
                self._start(chunk)
            assert self._decode is not None
            self._encoded += len(chunk)
            most = max(_EXPANSION_FLOOR, self._encoded * MAX_EXPANSION) - self._decoded + 1
            plain = self._decode(chunk, most)
            self._decoded += len(plain)
            return self._encode(self._scan(plain))
        except (zlib.error, brotli.error, zstd.ZstdError, EOFError) as exc:
            raise StreamAborted(f"it does not decode as {self._encoding}: {exc}") from None
        except StreamAborted as exc:
            raise StreamAborted(f"{exc} ({self._encoding}, {self._encoded} bytes received)") \
                from None


def _pieces(rewrite: Callable[[bytes], bytes]) -> Callable[[bytes], list[bytes]]:
    """A ``response.stream`` function from a bytes-to-bytes rewrite: mitmproxy sends every
    piece returned as a chunk, and an empty one over HTTP/1.1 would end the body."""
    def stream(chunk: bytes) -> list[bytes]:
        out = rewrite(chunk)
        return [out] if out else []
    return stream


_RECODED = ("gzip", "deflate", "br", "zstd")


class LinkRewriter:
    def __init__(self, upstream: str, media_upstream: str | None = None,
                 public_url: str | None = None) -> None:
        self._upstream = origin(upstream).lower()
        self._media = origin(media_upstream).lower() if media_upstream else None
        if self._media == self._upstream:
            self._media = None  # one origin cannot be told apart: its links go to the proxy
        media_parts = urlsplit(media_upstream) if media_upstream else None
        self._media_target = ((media_parts.scheme, media_parts.hostname or "",
                               media_parts.port or (443 if media_parts.scheme == "https"
                                                    else 80))
                              if media_parts else None)
        self._public = public_url.rstrip("/") if public_url else None

    def route(self, flow: http.HTTPFlow) -> None:
        """Send ``/_media/…`` to the media host (the rest goes to the platform)."""
        request = flow.request
        if self._media_target is None or not request.path.startswith(MEDIA_ROUTE + "/"):
            return
        scheme, host, port = self._media_target
        request.path = request.path[len(MEDIA_ROUTE):]
        request.scheme, request.host, request.port = scheme, host, port
        request.headers["host"] = host if port in (80, 443) else f"{host}:{port}"

    def fixer(self, base: str) -> Fixer:
        """The rewrite of one link value for an app that reaches the proxy at ``base``."""
        pairs = ((self._media, base + MEDIA_ROUTE),) if self._media else ()
        pairs += ((self._upstream, base),)
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
        scan = LinkScanner(self.fixer(self.base(flow)))
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
            limit = max(_EXPANSION_FLOOR, len(body) * MAX_EXPANSION)
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
        if encoding not in ("identity", *_RECODED):
            return None  # stacked or unknown encodings: passed through as they are
        scan = LinkScanner(self.fixer(self.base(flow)))
        headers.pop("content-length", None)
        if flow.request.http_version == "HTTP/1.1":
            headers["transfer-encoding"] = "chunked"
        return _pieces(scan if encoding == "identity" else _Recoded(encoding, scan))

    def base(self, flow: http.HTTPFlow) -> str:
        """The proxy's origin as the app sees it: ``public_url``, else the scheme the app used
        and the local address it connected to."""
        if self._public:
            return self._public
        host, port = flow.client_conn.sockname[:2]
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if flow.client_conn.tls_established else "http"
        return f"{scheme}://{host}:{port}"
