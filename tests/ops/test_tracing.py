"""OpenTelemetry spans in-process (issue 19, item 5), exported to memory by the product's own
tracer provider: the gateway's addons (request id, request span, inject, replay, span end) run
hook by hook — each hook in a task of its own, as mitmproxy runs them — around a real token
pool whose token calls go through the real ``TokenEndpoint`` to a scripted platform.

Asserted: the tree request (SERVER, parent the app's ``traceparent``) → renewal → token call
(CLIENT) with the right parent ids in one trace; the ``traceparent`` sent upstream is the
proxy's request span and the token call's is the token-call span; a refresh-ahead renewal from
a timer is a trace of its own; a replay's renewal is the replayed request's child; the
proxy's own refusal and an app that hung up end their spans; an unsampled parent records
nothing but still propagates; the platform's refusal is an error code, never its text; and no
attribute of any span holds a token, secret, JWT, client key or body."""

from __future__ import annotations

import asyncio
import base64
import itertools
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from mitmproxy import flow as mflow
from mitmproxy import hooks, http
from mitmproxy.test import taddons
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from proxy_addon.config import ClientConfig, Secret, parse_config
from proxy_addon.gateway.flow_context import attach
from proxy_addon.gateway.inject import Inject
from proxy_addon.gateway.links import LinkRewriter
from proxy_addon.gateway.replay import Replay
from proxy_addon.gateway.replay_buffer import ReplayBuffer
from proxy_addon.gateway.request_id import _TRACEPARENT, RequestId
from proxy_addon.gateway.request_span import RequestSpan
from proxy_addon.ops.metrics import Metrics
from proxy_addon.ops.tracing import extract
from proxy_addon.store.base import RecordCodec
from proxy_addon.store.crypto import TokenCipher
from proxy_addon.store.memory import MemoryStore
from proxy_addon.tokens.pool import PoolSettings, TokenPool
from proxy_addon.tokens.ports import NullObserver
from proxy_addon.upstream.token_endpoint import TokenEndpoint
from tests.gateway.fakes import (
    ERROR,
    REQUEST,
    REQUEST_HEADERS,
    RESPONSE,
    RESPONSE_HEADERS,
    FakeReplayer,
    flow,
    json_response,
    token_401,
)
from tests.support.tracing import finished_spans, memory_tracing, span_strings

PLATFORM = "https://platform.example"
APP_KEY = "tracing-app-key-0123456789"
CLIENT_ID, CLIENT_SECRET, JWT = "trace-client-id", "trace-client-secret-42", "trace-jwt-value-77"
APP_TRACE, APP_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
EXT = "/restapi/v1.0/account/123456789/extension/987654321"


@pytest.fixture(autouse=True)
def spans_kept() -> Iterator[None]:
    _, exporter = memory_tracing()
    finished_spans()  # nothing of an earlier test still in the batch queue
    exporter.clear()
    exporter.keep = True
    yield
    finished_spans()
    exporter.keep = False
    exporter.clear()


class Platform:
    """The token endpoint, scripted: new pairs (recorded, to search spans for them) or the
    refusal given; every call's request kept."""

    def __init__(self, expires_in: float = 3600.0) -> None:
        self.expires_in = expires_in
        self.calls: list[httpx.Request] = []
        self.issued: list[str] = []
        self.refuse: dict[str, Any] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        if self.refuse is not None:
            return httpx.Response(400, json=self.refuse)
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.issued += [access, refresh]
        return httpx.Response(200, json={
            "access_token": access, "refresh_token": refresh, "token_type": "bearer",
            "expires_in": self.expires_in, "refresh_token_expires_in": 604800,
            "owner_id": "100001", "scope": "ReadAccounts", "session_id": "s-1"})

    def grants(self) -> list[str]:
        return [parse_qs(c.content.decode())["grant_type"][0] for c in self.calls]

    def secrets(self) -> list[str]:
        basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        return [APP_KEY, CLIENT_SECRET, JWT, basic, *self.issued]


class Chain:
    """The gateway's tracing-relevant addons, in the gateway's order."""

    def __init__(self, pool: TokenPool, replayer: FakeReplayer) -> None:
        buffer = ReplayBuffer(1024, 4096)
        span = RequestSpan()
        self.addons: list[object] = [
            RequestId(), span, Inject(buffer),
            Replay(replayer, buffer, LinkRewriter(PLATFORM, None, "https://proxy.example"),
                   Metrics()),  # type: ignore[arg-type]
            span.end]


class Rig:
    def __init__(self, platform: Platform, *replayed: http.Response) -> None:
        self.platform = platform
        config = parse_config({
            "proxy": {"upstream": PLATFORM},
            "accounts": [{"name": "main", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                          "grant": "jwt", "jwt": JWT}],
        }, "test", {})
        self.http = httpx.AsyncClient(transport=httpx.MockTransport(platform))
        self.pool = TokenPool.build(
            config, TokenEndpoint(PLATFORM, self.http),
            MemoryStore(RecordCodec(TokenCipher(None))), observer=NullObserver(),
            settings=PoolSettings(auth_budget_calls=0))
        self.replayer = FakeReplayer(*replayed)
        self.chain = Chain(self.pool, self.replayer)
        self.ids = itertools.count(1)

    async def request(self, answer: http.Response | None, *, traceparent: str | None = None,
                      path: str = EXT, refuse: http.Response | None = None) -> http.HTTPFlow:
        """One request through the chain: its hooks, each in a task of its own; ``answer``
        is the platform's (None: the app hangs up instead); ``refuse``: the proxy answers at
        the request's headers (as guard, identify and scope do)."""
        headers = [("X-Request-Id", f"req-{next(self.ids)}")]
        if traceparent is not None:
            headers.append(("traceparent", traceparent))
        f = flow(path=path, headers=[("Authorization", f"Bearer {APP_KEY}"), *headers])
        f.request.timestamp_start = time.time()  # token waits count from the arrival
        context = attach(f)
        context.client = ClientConfig("app", "main", Secret(APP_KEY))
        context.account = self.pool["main"]
        with taddons.context(self.chain, loadcore=False) as tctx:
            async def hook(event: Callable[[http.HTTPFlow], hooks.Hook]) -> None:
                await asyncio.create_task(tctx.master.addons.invoke_addon(self.chain, event(f)))

            await hook(REQUEST_HEADERS)
            if refuse is not None:
                f.response = refuse
                await hook(RESPONSE)
                return f
            await hook(REQUEST)
            if f.response is not None:  # the proxy answered itself (no token to be had)
                await hook(RESPONSE)
                return f
            if answer is None:
                f.error = mflow.Error("client disconnected")
                await hook(ERROR)
                return f
            f.response = answer
            await hook(RESPONSE_HEADERS)
            await hook(RESPONSE)
        return f

    async def close(self) -> None:
        self.pool.close()
        await self.http.aclose()


def ok() -> http.Response:
    return json_response(200, b'{"id": 1}')


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def traceparent_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def assert_no_secret(spans: list[ReadableSpan], values: list[str]) -> None:
    texts = list(span_strings(spans))
    assert texts, "no span strings read"
    leaked = [v for v in values if any(v in text for text in texts)]
    assert not leaked, f"{len(leaked)} secret(s) in span attributes"


def test_request_renewal_and_token_call_form_one_trace() -> None:
    platform = Platform()

    async def scenario() -> http.HTTPFlow:
        rig = Rig(platform)
        try:
            return await rig.request(ok(), traceparent=f"00-{APP_TRACE}-{APP_SPAN}-01")
        finally:
            await rig.close()

    f = asyncio.run(scenario())
    spans = finished_spans()
    request = one(spans, "GET /restapi/v1.0/account/{}/extension/{}")
    renewal = one(spans, "tokenproxy renewal")
    call = one(spans, "POST /restapi/oauth/token")
    assert len(spans) == 3
    # one trace, the app's; request -> renewal -> token call
    assert {f"{s.context.trace_id:032x}" for s in spans} == {APP_TRACE}
    assert request.parent is not None and f"{request.parent.span_id:016x}" == APP_SPAN
    assert request.parent.is_remote and request.kind is SpanKind.SERVER
    assert renewal.parent is not None and renewal.parent.span_id == request.context.span_id
    assert call.parent is not None and call.parent.span_id == renewal.context.span_id
    assert call.kind is SpanKind.CLIENT
    # what went out: upstream the proxy's request span, to the token endpoint the call's span
    assert f.request.headers["traceparent"] == traceparent_of(request)
    assert platform.calls[0].headers["traceparent"] == traceparent_of(call)
    assert dict(request.attributes or {}) == {
        "http.request.method": "GET", "url.path": "/restapi/v1.0/account/{}/extension/{}",
        "http.response.status_code": 200, "tokenproxy.client": "app",
        "tokenproxy.account": "main", "tokenproxy.request_id": "req-1",
        "tokenproxy.replayed": False}
    assert dict(renewal.attributes or {}) == {
        "tokenproxy.account": "main", "tokenproxy.renewal.reason": "initial",
        "tokenproxy.renewal.outcome": "logged_in", "tokenproxy.generation": 1}
    assert dict(call.attributes or {}) == {
        "http.request.method": "POST", "url.path": "/restapi/oauth/token",
        "tokenproxy.account": "main", "tokenproxy.grant": "jwt",
        "http.response.status_code": 200}
    assert request.status.status_code is StatusCode.UNSET
    # nothing ends before what it contains
    assert request.start_time <= renewal.start_time <= call.start_time
    assert call.end_time <= renewal.end_time <= request.end_time
    assert_no_secret(spans, platform.secrets())


def test_a_replay_renewal_is_the_replayed_requests_child() -> None:
    platform = Platform()

    async def scenario() -> tuple[http.HTTPFlow, http.HTTPFlow]:
        rig = Rig(platform, ok())
        try:
            first = await rig.request(ok())  # no traceparent: the proxy starts the trace
            second = await rig.request(token_401("OAU-213"),
                                       traceparent=f"00-{APP_TRACE}-{APP_SPAN}-01")
            return first, second
        finally:
            await rig.close()

    first, second = asyncio.run(scenario())
    spans = finished_spans()
    assert platform.grants() == ["urn:ietf:params:oauth:grant-type:jwt-bearer"] * 2  # 213: login
    requests = sorted((s for s in spans if s.kind is SpanKind.SERVER), key=lambda s: s.start_time)
    renewals = sorted((s for s in spans if s.name == "tokenproxy renewal"),
                      key=lambda s: s.start_time)
    calls = sorted((s for s in spans if s.kind is SpanKind.CLIENT), key=lambda s: s.start_time)
    assert len(requests) == len(renewals) == len(calls) == 2 and len(spans) == 6
    # the first request's trace is the proxy's own: a root span
    assert requests[0].parent is None
    assert first.request.headers["traceparent"] == traceparent_of(requests[0])
    # the second: the app's trace, replayed after OAU-213, its renewal and call beneath it
    replayed = requests[1]
    assert f"{replayed.context.trace_id:032x}" == APP_TRACE
    assert renewals[1].parent is not None
    assert renewals[1].parent.span_id == replayed.context.span_id
    assert calls[1].parent is not None and calls[1].parent.span_id == renewals[1].context.span_id
    assert (renewals[1].attributes or {})["tokenproxy.renewal.reason"] == "rejected:OAU-213"
    assert (replayed.attributes or {})["tokenproxy.replayed"] is True
    assert (replayed.attributes or {})["http.response.status_code"] == 200
    # the replay went out with the same traceparent: the proxy's request span
    assert second.request.headers["traceparent"] == traceparent_of(replayed)
    assert platform.calls[1].headers["traceparent"] == traceparent_of(calls[1])
    assert_no_secret(spans, platform.secrets())


def test_a_timer_renewal_is_a_trace_of_its_own() -> None:
    """The refresh-ahead timer was armed inside the first renewal (its span current then):
    the renewal it starts must not be that renewal's child nor the request's."""
    platform = Platform(expires_in=1.0)  # refresh-ahead ~0.95 s after the login

    async def scenario() -> None:
        rig = Rig(platform)
        try:
            await rig.request(ok(), traceparent=f"00-{APP_TRACE}-{APP_SPAN}-01")
            for _ in range(60):
                await asyncio.sleep(0.05)
                if len(platform.calls) >= 2 and rig.pool["main"]._renewal is None:
                    break
        finally:
            await rig.close()

    asyncio.run(scenario())
    assert platform.grants()[1] == "refresh_token"
    spans = finished_spans()
    ahead = one([s for s in spans if s.name == "tokenproxy renewal"
                 and (s.attributes or {}).get("tokenproxy.renewal.reason") == "ahead"],
                "tokenproxy renewal")
    assert ahead.parent is None and f"{ahead.context.trace_id:032x}" != APP_TRACE
    assert (ahead.attributes or {})["tokenproxy.renewal.outcome"] == "refreshed"
    refresh = [s for s in spans if s.kind is SpanKind.CLIENT
               and (s.attributes or {}).get("tokenproxy.grant") == "refresh_token"]
    assert len(refresh) == 1 and refresh[0].parent is not None
    assert refresh[0].parent.span_id == ahead.context.span_id
    assert platform.calls[1].headers["traceparent"] == traceparent_of(refresh[0])
    assert_no_secret(spans, platform.secrets())


def test_refusals_and_hang_ups_end_their_spans() -> None:
    platform = Platform()

    async def scenario() -> None:
        rig = Rig(platform)
        try:
            refused = json_response(403, b'{"errorCode":"TPX-SCOPE-DENIED"}')
            await rig.request(None, refuse=refused, path="/restapi/v1.0/account/~/a-place")
            await rig.request(None)  # logs in, then the app hangs up before the answer
            await rig.request(json_response(503, b"{}"))
        finally:
            await rig.close()

    asyncio.run(scenario())
    spans = sorted((s for s in finished_spans() if s.kind is SpanKind.SERVER),
                   key=lambda s: s.start_time)
    refused, gone, failed = spans
    assert (refused.attributes or {})["http.response.status_code"] == 403
    assert (refused.attributes or {})["url.path"] == "/restapi/v1.0/account/{}/a-place"
    assert refused.status.status_code is StatusCode.UNSET  # a 4xx is the app's problem
    assert "http.response.status_code" not in (gone.attributes or {})
    assert (gone.attributes or {})["error.type"] == "disconnected"
    assert gone.status.status_code is StatusCode.ERROR
    assert failed.status.status_code is StatusCode.ERROR
    assert (failed.attributes or {})["http.response.status_code"] == 503


def test_an_unsampled_parent_records_nothing_but_propagates() -> None:
    platform = Platform()

    async def scenario() -> http.HTTPFlow:
        rig = Rig(platform)
        try:
            return await rig.request(ok(), traceparent=f"00-{APP_TRACE}-{APP_SPAN}-00")
        finally:
            await rig.close()

    f = asyncio.run(scenario())
    assert finished_spans() == []
    upstream = f.request.headers["traceparent"].split("-")
    assert upstream[1] == APP_TRACE and upstream[3] == "00"
    assert upstream[2] != APP_SPAN  # the proxy's (unrecorded) span, the app's as its parent
    token_call = platform.calls[0].headers["traceparent"].split("-")
    assert token_call[1] == APP_TRACE and token_call[3] == "00"


def test_a_refused_token_call_names_its_code_never_its_text() -> None:
    platform = Platform()
    platform.refuse = {"error": "invalid_client", "errorCode": "OAU-153",
                       "error_description": f"Invalid client {CLIENT_SECRET} body-text-9931",
                       "errors": [{"errorCode": "OAU-153", "message": "body-text-9931"}]}

    async def scenario() -> http.HTTPFlow:
        rig = Rig(platform)
        try:
            return await rig.request(ok())
        finally:
            await rig.close()

    f = asyncio.run(scenario())
    assert f.response is not None and f.response.status_code >= 500  # the proxy's own answer
    spans = finished_spans()
    request = one(spans, "GET /restapi/v1.0/account/{}/extension/{}")  # the proxy's answer
    assert (request.attributes or {})["http.response.status_code"] == f.response.status_code
    assert request.status.status_code is StatusCode.ERROR
    renewal = one(spans, "tokenproxy renewal")
    call = one(spans, "POST /restapi/oauth/token")
    assert (call.attributes or {})["tokenproxy.error_code"] == "OAU-153"
    assert (call.attributes or {})["error.type"] == "invalid_client"
    assert (call.attributes or {})["http.response.status_code"] == 400
    assert call.status.status_code is StatusCode.ERROR
    assert (renewal.attributes or {})["tokenproxy.renewal.outcome"] == "failed"
    assert renewal.status.status_code is StatusCode.ERROR
    assert renewal.status.description == "misconfigured"
    assert_no_secret(spans, [*platform.secrets(), "body-text-9931"])
    assert not [s for s in spans if s.events]  # no exception events (their text could leak)


def test_span_strings_would_see_a_secret() -> None:
    """The secret check reads attribute values: a span holding one is caught."""
    with trace.get_tracer("test").start_as_current_span("x", attributes={"k": JWT}):
        pass
    with pytest.raises(AssertionError, match="1 secret"):
        assert_no_secret(finished_spans(), [JWT])


def test_traceparent_formats_agree() -> None:
    """The request-id addon's check and OpenTelemetry's parser accept the same headers."""
    for header in (f"00-{APP_TRACE}-{APP_SPAN}-01", f"00-{APP_TRACE}-{APP_SPAN}-00",
                   f"00-{'0' * 32}-{APP_SPAN}-01", f"00-{APP_TRACE}-{'0' * 16}-01",
                   f"00-{APP_TRACE.upper()}-{APP_SPAN}-01", "00-zz-yy-01"):
        valid = trace.get_current_span(extract({"traceparent": header})).get_span_context()
        assert bool(_TRACEPARENT.fullmatch(header)) == valid.is_valid, header
