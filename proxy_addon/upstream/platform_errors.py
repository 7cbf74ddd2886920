"""Reading the platform's error answers: which 401s are token errors, what a token-endpoint
error means, and the operator hint for each known cause.

The addon asks :func:`token_error_code_of` whether an upstream 401 should trigger a refresh and
a replay (reading the body decoded: a front end may compress it, and the app's own
``Accept-Encoding`` is forwarded); the token endpoint client turns 4xx/429 answers into
:class:`TokenEndpointError`.
"""

from __future__ import annotations

import json
import sys
import zlib
from dataclasses import dataclass

import brotli
from mitmproxy import http

from ..tokens.ports import PlatformRefused

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # installed with mitmproxy on Python < 3.14
    from backports import zstd

# A 401 carrying one of these means "the access token we sent is no good": refresh and replay.
REPLAYABLE_TOKEN_CODES = frozenset({"OAU-213", "OAU-210", "OAU-128", "OAU-129"})

# Codes with which the token endpoint says a refresh token can no longer be used.
DEAD_REFRESH_CODES = frozenset({"OAU-210", "OAU-211", "OAU-213", "OAU-128", "OAU-129"})

HINTS: dict[str, str] = {
    "OAU-153": (
        "invalid client: check client_id/client_secret of this account; the Basic header must be "
        "base64(client_id:client_secret); sandbox app credentials only work against the sandbox "
        "server and production credentials only against production"),
    "OAU-140": (
        "wrong user credentials: check username/extension/password (use the sandbox account's "
        "credentials, not your developer-portal login)"),
    "OAU-251": (
        "grant not enabled for this app: enable the grant type (e.g. JWT auth flow) in the "
        "app's settings in the developer console, or use the grant the app was created for"),
    "OAU-211": "refresh token already used or revoked: the account must log in again",
    "OAU-210": "token expired: the account must log in again",
    "OAU-213": "token not found (revoked, evicted or unknown): the account must log in again",
    "CMN-301": "token endpoint rate limit reached: the proxy backs off and retries later",
}


def _error_entries(body: object) -> list[dict[str, object]]:
    if not isinstance(body, dict):
        return []
    errors = body.get("errors")
    entries = [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
    return [body, *entries]


def error_codes(raw: bytes) -> list[str]:
    """All ``errorCode`` values in a platform error body (either envelope); [] if unreadable."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return []
    codes = []
    for entry in _error_entries(body):
        code = entry.get("errorCode")
        if isinstance(code, str):
            codes.append(code)
    return codes


def token_error_code(status: int, raw: bytes) -> str | None:
    """The replayable token error code in a 401 body, or None for any other answer."""
    if status != 401:
        return None
    for code in error_codes(raw):
        if code in REPLAYABLE_TOKEN_CODES:
            return code
    return None


# A token error body is a few hundred bytes; a 401 body that decodes beyond this is no token
# error, and is never decoded further (a decompression bomb must not grow the proxy's memory).
MAX_DECODED_401 = 1024 * 1024


def token_error_code_of(response: http.Response) -> str | None:
    """The replayable token error code of an upstream answer, read from its body decoded as
    its ``Content-Encoding`` says (gzip, deflate, br, zstd, as mitmproxy decodes them). Only a
    401 is decoded; a body that is undecodable or decodes beyond ``MAX_DECODED_401`` bytes is
    not a token error. The response itself is left as it is (still encoded, for the app)."""
    if response.status_code != 401:
        return None
    raw = response.raw_content or b""
    codings = [c.strip().lower() for c in response.headers.get("content-encoding", "").split(",")]
    body: bytes | None = raw
    for coding in reversed([c for c in codings if c and c not in ("identity", "none")]):
        body = decode_bounded(body, coding, MAX_DECODED_401)
        if body is None:
            return None
    return token_error_code(401, body)


def decode_bounded(data: bytes, coding: str, limit: int) -> bytes | None:
    """``data`` decoded from one content coding, or None when it is undecodable, of an unknown
    coding, or longer than ``limit`` decoded (decoded incrementally: never more than that)."""
    try:
        if coding in ("gzip", "x-gzip"):
            return _zlib_members(data, 47, limit)  # gzip or zlib header, as mitmproxy reads it
        if coding == "deflate":  # the zlib format; some servers send raw deflate (mitmproxy too)
            try:
                return _zlib_members(data, 15, limit)
            except zlib.error:
                return _zlib_members(data, -15, limit)
        if coding == "br":
            decompressor = brotli.Decompressor()
            out = decompressor.process(data, output_buffer_limit=limit + 1)
            return out if len(out) <= limit and decompressor.is_finished() else None
        if coding == "zstd":
            return _zstd_frames(data, limit)
    except (zlib.error, brotli.error, zstd.ZstdError, EOFError, ValueError):
        return None
    return None


def _zlib_members(data: bytes, wbits: int, limit: int) -> bytes | None:
    """Every member (gzip allows several in a row; trailing bytes that are none are ignored,
    as mitmproxy and browsers do)."""
    out = bytearray()
    first = True
    while data:
        decompressor = zlib.decompressobj(wbits)
        try:
            out += decompressor.decompress(data, limit + 1 - len(out))  # max_length >= 1
        except zlib.error:
            if first:
                raise
            break
        if len(out) > limit or decompressor.unconsumed_tail:
            return None
        if not decompressor.eof:
            raise zlib.error("truncated")
        data, first = decompressor.unused_data, False
    return bytes(out)


def _zstd_frames(data: bytes, limit: int) -> bytes | None:
    out = bytearray()
    while data:
        decompressor = zstd.ZstdDecompressor()
        out += decompressor.decompress(data, max_length=limit + 1 - len(out))
        if len(out) > limit or (not decompressor.needs_input and not decompressor.eof):
            return None
        if not decompressor.eof:
            raise EOFError("truncated")
        data = decompressor.unused_data
    return bytes(out)


@dataclass
class TokenEndpointError(PlatformRefused):
    """The token endpoint refused a grant (4xx/5xx) or rate limited us (429)."""

    status: int
    error: str  # OAuth "error" (invalid_grant, invalid_client, ...) or "" when absent
    code: str  # platform errorCode (OAU-153, CMN-301, ...) or "" when absent
    description: str
    retry_after: float | None = None

    def __str__(self) -> str:
        parts = [f"token endpoint answered {self.status}"]
        if self.error:
            parts.append(self.error)
        if self.code:
            parts.append(self.code)
        if self.description:
            parts.append(repr(self.description[:200]))
        return " ".join(parts)

    @property
    def rate_limited(self) -> bool:
        return self.status == 429

    @property
    def refresh_token_dead(self) -> bool:
        """On a refresh grant: the refresh token can never work again (log in anew)."""
        return self.error == "invalid_grant" or self.code in DEAD_REFRESH_CODES

    @property
    def hint(self) -> str:
        if self.code in HINTS:
            return HINTS[self.code]
        if self.error == "invalid_client":
            return HINTS["OAU-153"]
        if self.error == "unauthorized_client":
            return HINTS["OAU-251"]
        if self.status >= 500:
            return "the platform's token endpoint failed: the proxy retries with back-off"
        return "see the error code in the RingCentral API documentation"

    @classmethod
    def from_response(cls, status: int, raw: bytes, retry_after: str | None) -> TokenEndpointError:
        error = code = description = ""
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict):
            error = str(body.get("error") or "")
            description = str(body.get("error_description") or body.get("message") or "")
            codes = error_codes(raw)
            code = codes[0] if codes else ""
            if code == "TokenInvalid" and len(codes) > 1:
                code = codes[1]
        elif raw:
            description = raw[:200].decode("utf-8", "replace")
        return cls(status, error, code, description, _parse_retry_after(retry_after))


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 86400 else None
