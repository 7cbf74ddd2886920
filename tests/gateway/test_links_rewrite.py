"""In-process tests of link rewriting (proxy_addon/links.py): only link fields with exactly the
platform's (or the media host's) origin change, user content and look-alike hosts never do,
and the streaming scanner gives the same answer at every chunk boundary."""

from __future__ import annotations

import gzip
import json
import zlib

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import tflow

from proxy_addon.gateway.links import (
    LINK_FIELDS,
    MAX_HELD,
    LinkRewriter,
    LinkScanner,
    StreamAborted,
)

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:
    from backports import zstd  # type: ignore[import-not-found,no-redef]

PLATFORM = "https://platform.ringcentral.com"
MEDIA = "https://media.ringcentral.com"
PROXY = "https://tokenproxy.internal"
API = PLATFORM + "/restapi/v1.0/account/~/extension/~"


def rewriter(public_url: str | None = PROXY) -> LinkRewriter:
    return LinkRewriter(PLATFORM, MEDIA, public_url)


def flow_with(body: bytes, **headers: str) -> http.HTTPFlow:
    """A flow whose answer carries ``body`` as it came off the wire (``raw_content``)."""
    flow = tflow.tflow()
    flow.response = http.Response.make(200, b"", {"content-type": "application/json"})
    flow.response.headers.update(headers)
    flow.response.raw_content = body
    return flow


def rewritten(body: bytes, public_url: str | None = PROXY, **headers: str) -> bytes:
    flow = flow_with(body, **headers)
    rewriter(public_url).rewrite(flow)
    assert flow.response is not None
    return flow.response.content or b""


def streamed(body: bytes, sizes: list[int], public_url: str | None = PROXY) -> bytes:
    """``body`` through ``stream_for``, cut into pieces at the given offsets."""
    flow = flow_with(body)
    stream = rewriter(public_url).stream_for(flow)
    assert stream is not None
    out, last = b"", 0
    for cut in [*sizes, len(body)]:
        piece = body[last:cut]
        last = cut
        if not piece:
            continue  # mitmproxy never hands a stream function an empty piece mid-body
        sent = stream(piece)
        assert isinstance(sent, list) and all(sent), sent  # b"" would end a chunked body
        out += b"".join(sent)
    return out + b"".join(stream(b""))


def test_only_exact_origins_of_link_fields_change() -> None:
    answer = {
        "uri": API,
        "bare": {"uri": PLATFORM},
        "query": {"uri": PLATFORM + "?x=1"},
        "fragment": {"uri": PLATFORM + "#top"},
        "lookalike": {"uri": PLATFORM + ".evil.com/restapi/v1.0"},
        "userinfo": {"uri": PLATFORM + "@evil.com/restapi/v1.0"},
        "port": {"uri": PLATFORM + ":8443/restapi"},
        "other": {"uri": "https://example.com/restapi/v1.0"},
        "recording": {"contentUri": MEDIA + "/restapi/v1.0/account/1/recording/7/content",
                      "uri": PLATFORM + "/restapi/v1.0/account/1/recording/7"},
        "meeting": {"contentDownloadUri": MEDIA + "/rec/1"},
        "syncInfo": {"nextPageUri": PLATFORM + "/restapi/v1.0/x?page=2"},
    }
    out = json.loads(rewritten(json.dumps(answer).encode()))
    assert out["uri"] == PROXY + "/restapi/v1.0/account/~/extension/~"
    assert out["bare"]["uri"] == PROXY
    assert out["query"]["uri"] == PROXY + "?x=1"
    assert out["fragment"]["uri"] == PROXY + "#top"
    for untouched in ("lookalike", "userinfo", "port", "other"):
        assert out[untouched] == answer[untouched], untouched
    assert out["recording"] == {
        "contentUri": PROXY + "/_media/restapi/v1.0/account/1/recording/7/content",
        "uri": PROXY + "/restapi/v1.0/account/1/recording/7"}
    assert out["meeting"]["contentDownloadUri"] == PROXY + "/_media/rec/1"
    assert out["syncInfo"]["nextPageUri"] == PROXY + "/restapi/v1.0/x?page=2"


def test_user_content_is_never_rewritten() -> None:
    answer = {"uri": API + "/message-store/1", "subject": f"see {API} and {MEDIA}/x",
              "text": PLATFORM + "/restapi", "from": {"name": PLATFORM},
              "attachments": [PLATFORM, {"description": API}],
              "iconUri": PLATFORM + "/icon.png"}  # a Glip post's icon: the user's link
    out = json.loads(rewritten(json.dumps(answer).encode()))
    assert out["uri"] == PROXY + "/restapi/v1.0/account/~/extension/~/message-store/1"
    assert {k: v for k, v in out.items() if k != "uri"} == \
        {k: v for k, v in answer.items() if k != "uri"}


def test_other_bytes_stay_as_they_were() -> None:
    # formatting, number spellings and key order survive; nothing to change: byte-identical
    body = b'{\n  "n": 1.50E+2, "uri" : "%s/x",\n  "text": "%s/y" }' % (
        PLATFORM.encode(), PLATFORM.encode())
    assert rewritten(body) == body.replace(PLATFORM.encode() + b"/x", PROXY.encode() + b"/x")
    untouched = b'{ "text": "%s/y", "uri": "https://example.com/" }' % PLATFORM.encode()
    assert rewritten(untouched) == untouched


def test_invalid_json_is_left_alone() -> None:
    body = b'{"uri": "%s/x", oops' % PLATFORM.encode()
    assert rewritten(body) == body
    assert rewritten(b"") == b""


def test_compressed_answer_is_rewritten_once_decoded() -> None:
    body = json.dumps({"uri": API, "text": API}).encode()
    flow = flow_with(gzip.compress(body), **{"content-encoding": "gzip"})
    rewriter().rewrite(flow)
    assert flow.response is not None and flow.response.headers["content-encoding"] == "gzip"
    out = json.loads(gzip.decompress(flow.response.raw_content or b""))
    assert out == {"uri": PROXY + "/restapi/v1.0/account/~/extension/~", "text": API}
    assert flow.response.headers["content-length"] == str(len(flow.response.raw_content or b""))


def test_base_without_public_url_follows_the_app_connection() -> None:
    flow = flow_with(json.dumps({"uri": API}).encode())
    flow.client_conn.sockname = ("127.0.0.1", 8443)
    flow.client_conn.timestamp_tls_setup = 1.0  # TLS done
    rewriter(None).rewrite(flow)
    assert flow.response is not None
    assert flow.response.json()["uri"].startswith("https://127.0.0.1:8443/restapi/")
    flow = flow_with(json.dumps({"uri": API}).encode())
    flow.client_conn.sockname = ("::1", 8080)
    flow.client_conn.timestamp_tls_setup = None
    rewriter(None).rewrite(flow)
    assert flow.response is not None
    assert flow.response.json()["uri"].startswith("http://[::1]:8080/restapi/")


SAMPLE = (
    b'{"uri":"' + PLATFORM.encode() + b'/restapi/v1.0/call-log?page=1",'
    b'"records":[{"id":"1","uri" : "' + PLATFORM.encode() + b'\\/restapi\\/v1.0\\/CL1",'
    b'"text":"a \\"quoted\\" ' + PLATFORM.encode() + b'/x \\\\","recording":'
    b'{"contentUri":"' + MEDIA.encode() + b'/rec/1/content","u\\u0072i":"'
    + PLATFORM.encode() + b'/esc-key"}},{"uri":"' + PLATFORM.encode() + b'.evil.com/x"}],'
    b'"navigation":{"nextPage":{"uri":"' + PLATFORM.encode() + b'/restapi?page=2"},'
    b'"lastPage":{"uri":"' + PLATFORM.encode() + b'/restapi?page=9"}},'
    b'"n":[1,2.5e3,true,null,"uri","' + PLATFORM.encode() + b'/list"],"\\\\":"\\u00e9"}'
)


def test_scanner_gives_the_same_answer_at_every_chunk_boundary() -> None:
    whole = rewritten(SAMPLE)
    out = json.loads(whole)
    assert out["uri"] == PROXY + "/restapi/v1.0/call-log?page=1"
    record = out["records"][0]
    assert record["uri"] == PROXY + "/restapi/v1.0/CL1"  # escaped slashes decoded first
    assert record["text"] == f'a "quoted" {PLATFORM}/x \\'
    assert record["recording"] == {"contentUri": PROXY + "/_media/rec/1/content",
                                   "uri": PROXY + "/esc-key"}
    assert out["records"][1]["uri"] == PLATFORM + ".evil.com/x"
    assert out["navigation"] == {"nextPage": {"uri": PROXY + "/restapi?page=2"},
                                 "lastPage": {"uri": PROXY + "/restapi?page=9"}}
    assert out["n"] == [1, 2500.0, True, None, "uri", PLATFORM + "/list"]
    for cut in range(len(SAMPLE) + 1):
        assert streamed(SAMPLE, [cut]) == whole, cut
    for cut in range(0, len(SAMPLE), 7):  # two cuts, and one-byte chunks
        assert streamed(SAMPLE, [cut, min(len(SAMPLE), cut + 3)]) == whole, cut
    assert streamed(SAMPLE, list(range(1, len(SAMPLE)))) == whole


def test_a_link_longer_than_the_bound_passes_unchanged() -> None:
    long = PLATFORM + "/" + "a" * MAX_HELD
    body = json.dumps({"uri": long, "next": {"uri": API}}).encode()
    out = json.loads(streamed(body, list(range(0, len(body), 4096))))
    assert out == {"uri": long, "next": {"uri": PROXY + "/restapi/v1.0/account/~/extension/~"}}


def test_stream_for_sends_chunked_and_skips_what_is_not_json() -> None:
    flow = flow_with(b"{}", **{"content-length": "2"})
    assert rewriter().stream_for(flow) is not None
    assert flow.response is not None
    assert "content-length" not in flow.response.headers
    assert flow.response.headers["transfer-encoding"] == "chunked"
    flow = flow_with(b"binary")
    assert flow.response is not None
    flow.response.headers["content-type"] = "audio/mpeg"
    assert rewriter().stream_for(flow) is None
    head = flow_with(b"")
    head.request.method = "HEAD"
    assert rewriter().stream_for(head) is None


ENCODERS = {
    "gzip": (gzip.compress, gzip.decompress),
    "deflate": (zlib.compress, zlib.decompress),
    "br": (brotli.compress, brotli.decompress),
    "zstd": (zstd.compress, zstd.decompress),
}


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_compressed_stream_is_rewritten(encoding: str) -> None:
    encode, decode = ENCODERS[encoding]
    raw = encode(SAMPLE)
    flow = flow_with(raw, **{"content-encoding": encoding})
    stream = rewriter().stream_for(flow)
    assert stream is not None
    out = b"".join(b"".join(stream(raw[i:i + 5])) for i in range(0, len(raw), 5))
    out += b"".join(stream(b""))
    assert decode(out) == rewritten(SAMPLE)


def test_raw_deflate_stream_is_rewritten() -> None:
    packer = zlib.compressobj(wbits=-15)
    raw = packer.compress(SAMPLE) + packer.flush()
    flow = flow_with(raw, **{"content-encoding": "deflate"})
    stream = rewriter().stream_for(flow)
    assert stream is not None
    out = b"".join(stream(raw) + stream(b""))
    assert zlib.decompress(out, -15) == rewritten(SAMPLE)


# -- differential: the scanner against a walk over the parsed JSON ---------------------------

def reference(node: object, fix) -> object:
    """What rewriting means, on the parsed document: link fields' string values only."""
    if isinstance(node, dict):
        return {k: (fix(v) or v) if k in LINK_FIELDS and isinstance(v, str) else reference(v, fix)
                for k, v in node.items()}
    if isinstance(node, list):
        return [reference(v, fix) for v in node]
    return node


_texts = st.sampled_from([PLATFORM, PLATFORM + "/restapi?x=1", PLATFORM + ".evil.com/x",
                          PLATFORM + "@evil.com", MEDIA + "/rec/1", "uri", "contentUri",
                          'a "q" \\ é ☎', "", "https://example.com/"])
_keys = st.sampled_from([*sorted(LINK_FIELDS), "text", "subject", "a", 'u"ri'])
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), _texts,
              st.builds(lambda a, b: a + b, _texts, _texts)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(_keys, inner, max_size=5)),
    max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(doc=st.dictionaries(_keys, _json, max_size=6), ascii_only=st.booleans(),
       indent=st.sampled_from([None, 0, 2]), escape_slashes=st.booleans(),
       cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=6))
def test_scanner_agrees_with_a_walk_over_the_parsed_json(doc, ascii_only, indent,
                                                         escape_slashes, cuts) -> None:
    text = json.dumps(doc, ensure_ascii=ascii_only, indent=indent)
    if escape_slashes:  # "/" appears only inside strings: "\/" is the same JSON
        text = text.replace("/", "\\/")
    body = text.encode()
    fix = rewriter().fixer(PROXY)
    expected = reference(doc, fix)
    assert json.loads(rewritten(body)) == expected
    assert json.loads(streamed(body, sorted(min(c, len(body)) for c in cuts))) == expected


# -- regressions: the end of a body, and bounded decoding ---------------------------------

def test_the_end_inside_a_key_sends_nothing_twice() -> None:
    """A body that ends inside a key (truncated upstream) goes out as it came: the key's bytes
    were sent already (they used to go out a second time at the end)."""
    scan = LinkScanner(rewriter().fixer(PROXY))
    assert scan(b'{"abc') + scan(b"") == b'{"abc'
    scan = LinkScanner(rewriter().fixer(PROXY))
    cut = b'{"uri": "' + PLATFORM.encode() + b'/rest'
    assert scan(cut) + scan(b"") == cut  # a held link value goes out unchanged, once


def _gzip_bomb(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b" " * (1024 * 1024)
    return b"".join([packer.compress(b'{"uri": "x"'), *(packer.compress(block)
                     for _ in range(size // len(block))), packer.compress(b"}"), packer.flush()])


def test_buffered_bomb_is_left_as_it_came() -> None:
    bomb = _gzip_bomb(300 * 1024 * 1024)
    flow = flow_with(bomb, **{"content-encoding": "gzip"})
    rewriter().rewrite(flow)
    assert flow.response is not None and flow.response.raw_content == bomb


def test_streamed_bomb_and_corrupt_streams_abort() -> None:
    bomb = _gzip_bomb(64 * 1024 * 1024)
    stream = rewriter().stream_for(flow_with(bomb, **{"content-encoding": "gzip"}))
    assert stream is not None
    with pytest.raises(StreamAborted, match="decodes to more than"):
        for i in range(0, len(bomb), 16 * 1024):
            stream(bomb[i:i + 16 * 1024])
    raw = gzip.compress(SAMPLE)
    stream = rewriter().stream_for(flow_with(raw, **{"content-encoding": "gzip"}))
    assert stream is not None
    assert b"".join(stream(raw[:40]))  # a valid start goes out
    with pytest.raises(StreamAborted, match="does not decode as gzip"):
        stream(b"\xff" * 64)  # then garbage: never passed on raw after re-encoded bytes


def test_an_account_on_another_platform_has_its_own_origins_rewritten() -> None:
    """Sandbox beside production: a sandbox account's links (platform and media host) come
    back to the proxy; the proxy's default platform is not the sandbox account's."""
    from proxy_addon.config import AccountConfig

    sandbox = AccountConfig("sandbox", "id", None, "jwt",
                            upstream="https://platform.devtest.ringcentral.com",
                            media_upstream="https://media.devtest.ringcentral.com")
    fix = rewriter().fixer(PROXY, sandbox)
    assert fix("https://platform.devtest.ringcentral.com/restapi/v1.0") == PROXY + "/restapi/v1.0"
    assert fix("https://media.devtest.ringcentral.com/r/1") == PROXY + "/_media/r/1"
    assert fix(API) is None  # production's links are not this account's platform
    assert rewriter().fixer(PROXY)(API) == PROXY + "/restapi/v1.0/account/~/extension/~"
