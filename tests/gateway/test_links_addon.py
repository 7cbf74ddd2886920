"""In-process tests of the links addon (proxy_addon/gateway/links.py, class Links): which
answers stream, and which answers get their links rewritten."""

from __future__ import annotations

import json

from mitmproxy import http

from proxy_addon.gateway.flow_context import attach
from proxy_addon.gateway.links import LinkRewriter, Links
from tests.gateway.fakes import (
    CLIENT,
    RESPONSE,
    RESPONSE_HEADERS,
    FakeAccount,
    drive,
    json_response,
    with_key,
)

PLATFORM = "https://platform.example"
PROXY = "https://proxy.example"
BODY = json.dumps({"uri": PLATFORM + "/restapi/v1.0/x", "text": PLATFORM + "/y"}).encode()


def links(threshold: int = 1024) -> Links:
    return Links(LinkRewriter(PLATFORM, None, PROXY), threshold)


def answered(response: http.Response, identified: bool = True) -> http.HTTPFlow:
    f = with_key()
    if identified:
        context = attach(f)
        context.client, context.account = CLIENT, FakeAccount()  # type: ignore[assignment]
        context.generation = 1
    f.response = response
    return f


def test_buffered_answer_to_an_identified_client_is_rewritten() -> None:
    f = answered(json_response(200, BODY))
    drive(links(), f, RESPONSE_HEADERS, RESPONSE)
    body = json.loads(f.response.content)
    assert body["uri"] == PROXY + "/restapi/v1.0/x"
    assert body["text"] == PLATFORM + "/y"  # not a link field: content
    assert f.response.stream is False


def test_answers_nobody_identified_are_not_rewritten() -> None:
    f = answered(json_response(200, BODY), identified=False)
    drive(links(), f, RESPONSE)
    assert f.response.content == BODY


def test_a_401_to_a_replayable_request_passes_as_it_came() -> None:
    f = answered(json_response(401, b'{"errorCode":"TokenInvalid","uri":"' + PLATFORM.encode()
                               + b'/z","errors":[{"errorCode":"OAU-140","message":"x"}]}'))
    before = f.response.content
    drive(links(threshold=1), f, RESPONSE_HEADERS, RESPONSE)
    assert f.response.content == before and f.response.stream is False  # never streamed


def test_a_replayed_answer_is_left_to_the_replay() -> None:
    f = answered(json_response(200, BODY))
    attach(f).replayed = True
    drive(links(), f, RESPONSE)
    assert f.response.content == BODY


def test_large_or_unsized_answers_stream_and_are_rewritten_on_the_way() -> None:
    f = answered(json_response(200, BODY))
    drive(links(threshold=10), f, RESPONSE_HEADERS)
    stream = f.response.stream
    assert callable(stream) and "content-length" not in f.response.headers
    assert f.response.headers["transfer-encoding"] == "chunked"
    out = b"".join(stream(BODY) + stream(b""))
    assert json.loads(out)["uri"] == PROXY + "/restapi/v1.0/x"
    drive(links(threshold=10), f, RESPONSE)  # a streamed answer is not rewritten again
    unsized = answered(http.Response.make(200, b"abc", {"Content-Type": "text/plain"}))
    del unsized.response.headers["content-length"]
    drive(links(), unsized, RESPONSE_HEADERS)
    assert unsized.response.stream is True  # not JSON: streams as it is


def test_small_answers_stay_buffered() -> None:
    f = answered(json_response(200, BODY))
    drive(links(threshold=len(BODY)), f, RESPONSE_HEADERS)
    assert f.response.stream is False
