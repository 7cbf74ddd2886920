"""The streaming JSON scanner behind link rewriting (:mod:`.links`): which fields are links
(:data:`LINK_FIELDS`), how one link value is rewritten (:func:`rewrite_url`: only exactly the
platform's or the media host's origin), and :class:`LinkScanner`, which finds those values in a
body fed to it in chunks, in bounded memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from urllib.parse import urlsplit

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
