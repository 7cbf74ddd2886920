"""Which upstream answers are token errors (refresh + replay) and which pass through."""

from __future__ import annotations

import gzip
import json
import zlib

import brotli
import pytest
from mitmproxy import http
from mitmproxy.net import encoding

from proxy_addon.upstream import platform_errors
from proxy_addon.upstream.platform_errors import (
    MAX_DECODED_401,
    TokenEndpointError,
    decode_bounded,
    token_error_code,
    token_error_code_of,
)


def api_envelope(code: str, message: str = "m") -> bytes:
    return json.dumps({"errorCode": "TokenInvalid", "message": message,
                       "errors": [{"errorCode": code, "message": message}]}).encode()


OAUTH_EXPIRED = json.dumps({"error": "invalid_grant", "error_description": "Token expired",
                            "errors": [{"errorCode": "OAU-210", "message": "Token expired"}]
                            }).encode()


@pytest.mark.parametrize("code", ["OAU-213", "OAU-210", "OAU-128", "OAU-129"])
def test_token_errors_are_replayable(code: str) -> None:
    assert token_error_code(401, api_envelope(code)) == code


def test_oauth_envelope_expired_is_replayable() -> None:
    assert token_error_code(401, OAUTH_EXPIRED) == "OAU-210"


@pytest.mark.parametrize(("status", "body"), [
    (401, api_envelope("OAU-149")),  # garbage token: replaying cannot help
    (401, json.dumps({"errorCode": "AGW-401", "message": "no header"}).encode()),
    (401, b"not json"),
    (401, b""),
    (401, b"[1, 2]"),
    (403, api_envelope("OAU-213")),
    (200, api_envelope("OAU-213")),
])
def test_other_answers_pass_through(status: int, body: bytes) -> None:
    assert token_error_code(status, body) is None


def test_token_endpoint_error_parsing() -> None:
    body = json.dumps({"error": "invalid_client", "error_description": "Invalid client: x",
                       "errors": [{"errorCode": "OAU-153", "message": "Invalid client: x"}]})
    error = TokenEndpointError.from_response(400, body.encode(), None)
    assert (error.error, error.code) == ("invalid_client", "OAU-153")
    assert "sandbox" in error.hint
    limited = TokenEndpointError.from_response(429, b'{"errorCode":"CMN-301"}', "60")
    assert limited.rate_limited and limited.retry_after == 60
    assert TokenEndpointError.from_response(429, b"", "soon").retry_after is None


# -- token_error_code_of: the decoded body of a (possibly compressed) upstream 401 -----------


def answer(status: int, raw: bytes, content_encoding: str | None = None) -> http.Response:
    """A response carrying ``raw`` as it came off the wire (not encoded here)."""
    response = http.Response.make(status)
    response.raw_content = raw
    if content_encoding is not None:
        response.headers["content-encoding"] = content_encoding
    return response


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_compressed_token_401_is_a_token_error(coding: str) -> None:
    raw = encoding.encode(api_envelope("OAU-213"), coding)
    assert token_error_code_of(answer(401, raw, coding)) == "OAU-213"
    assert token_error_code_of(answer(401, raw, coding.upper())) == "OAU-213"
    assert token_error_code(401, raw) is None  # what the proxy read before: compressed bytes
    # the answer stays as the platform sent it
    response = answer(401, raw, coding)
    token_error_code_of(response)
    assert response.raw_content == raw and response.headers["content-encoding"] == coding


def test_other_encodings_of_a_token_401() -> None:
    body = api_envelope("OAU-210")
    assert token_error_code_of(answer(401, body)) == "OAU-210"
    assert token_error_code_of(answer(401, body, "identity")) == "OAU-210"
    assert token_error_code_of(answer(401, gzip.compress(body), "x-gzip")) == "OAU-210"
    raw_deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    assert token_error_code_of(answer(401, raw_deflate.compress(body) + raw_deflate.flush(),
                                      "deflate")) == "OAU-210"
    two = gzip.compress(body[:10]) + gzip.compress(body[10:])  # two gzip members
    assert token_error_code_of(answer(401, two, "gzip")) == "OAU-210"
    stacked = brotli.compress(gzip.compress(body))  # applied in the order listed
    assert token_error_code_of(answer(401, stacked, "gzip, br")) == "OAU-210"


@pytest.mark.parametrize(("raw", "coding"), [
    (b"\x1f\x8b\x08garbage", "gzip"),
    (gzip.compress(api_envelope("OAU-213"))[:-12], "gzip"),  # truncated
    (b"not brotli at all", "br"),
    (encoding.encode(api_envelope("OAU-213"), "zstd")[:-4], "zstd"),
    (b"junk", "deflate"),
    (api_envelope("OAU-213"), "compress"),  # a coding the proxy cannot decode
    (gzip.compress(api_envelope("OAU-213")), "br"),  # mislabelled
], ids=["gzip-bad-magic", "gzip-truncated", "br-garbage", "zstd-truncated", "deflate-garbage",
        "compress-unsupported", "gzip-labelled-br"])  # gzip bytes hold a timestamp: fixed ids
def test_undecodable_401_is_not_a_token_error(raw: bytes, coding: str) -> None:
    assert token_error_code_of(answer(401, raw, coding)) is None


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_decoding_is_bounded(coding: str) -> None:
    """A token error padded past the limit is never decoded whole: not a token error."""
    body = api_envelope("OAU-213")
    padded = body + b" " * (MAX_DECODED_401 - len(body))
    assert token_error_code_of(answer(401, encoding.encode(padded, coding), coding)) \
        == "OAU-213"  # up to the limit: decoded
    bomb = encoding.encode(padded + b" ", coding)
    assert token_error_code_of(answer(401, bomb, coding)) is None
    assert decode_bounded(bomb, coding, 100) is None
    assert decode_bounded(encoding.encode(b"x" * 100, coding), coding, 100) == b"x" * 100


def test_only_401s_are_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("a non-401 body was decoded")

    monkeypatch.setattr(platform_errors, "decode_bounded", refuse)
    raw = gzip.compress(api_envelope("OAU-213"))
    for status in (200, 403, 429, 500):
        assert token_error_code_of(answer(status, raw, "gzip")) is None
