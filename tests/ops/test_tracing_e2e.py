"""OpenTelemetry spans end to end (issue 19, item 5): a real proxy process with ``[tracing]``
in front of the emulator, exporting over OTLP/HTTP to a receiver on loopback that decodes the
protobuf as a collector would.

Three requests, each with the app's ``traceparent``: the first makes the proxy log in, the
second meets a revoked session (401 OAU-213: log in again, replay), the third an expired
access token (401 OAU-210: refresh, replay). Each is one trace of the app's: request span →
renewal → token call, the platform got the proxy's request span as ``traceparent``, the
collector got the API key of ``headers_env`` (which no log line shows), and no byte exported
is a token, a secret, the JWT or the client key. A collector that is down costs the requests
nothing and does not hold the proxy's exit."""

from __future__ import annotations

import base64
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from rc_emulator.tokens import token_kind

from tests.ops.test_observability import EMULATOR_TOKEN
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.proxy import (
    APP_KEY,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_JWT,
    STORE_KEY,
    Proxy,
    client,
    jwt_account,
    render_config,
    start_proxy_with_config,
    toml_value,
)

ECHO = "/restapi/v1.0/echo"
SERVER, CLIENT = ProtoSpan.SPAN_KIND_SERVER, ProtoSpan.SPAN_KIND_CLIENT


def traced_proxy(tmp_path: Path, upstream: str, tracing: dict[str, Any],
                 env: dict[str, str] | None = None) -> Proxy:
    """A proxy (one process, its own SQLite store) with a ``[tracing]`` table."""
    config_path = tmp_path / f"traced-{time.monotonic_ns()}.toml"
    text = render_config({"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0",
                          "upstream": upstream, "auth_budget_calls": 0},
                         [jwt_account()], [client()],
                         {"backend": "sqlite", "path": str(config_path.with_suffix(".db"))})
    text += "\n[tracing]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in tracing.items())
    config_path.write_text(text)
    return start_proxy_with_config(config_path,
                                   env={"TOKENPROXY_STORE_KEY": STORE_KEY, **(env or {})})


def parent(trace_id: str) -> tuple[str, str]:
    span_id = secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", span_id


def test_spans_reach_the_collector_as_one_trace_per_request(tmp_path: Path,
                                                            emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    api_key = "otlp-key-" + secrets.token_hex(12)
    traces = [secrets.token_hex(16) for _ in range(3)]
    with OtlpReceiver() as receiver:
        proxy = traced_proxy(tmp_path, emulator.url, {
            "otlp_endpoint": receiver.url, "service_name": "tokenproxy-e2e",
            "headers_env": "TP_OTLP_HEADERS"}, env={"TP_OTLP_HEADERS": f"x-api-key={api_key}"})
        echoed: list[dict[str, Any]] = []
        app_spans: list[str] = []
        try:
            with proxy.http() as app:
                for index, trace_id in enumerate(traces):
                    if index == 1:
                        emulator.revoke_all()  # the next request meets OAU-213
                    if index == 2:
                        emulator.expire_now()  # the next request meets OAU-210
                    header, span_id = parent(trace_id)
                    answer = app.get(ECHO, headers={"traceparent": header})
                    assert answer.status_code == 200, answer.text
                    echoed.append({**answer.json()["headers"],
                                   "answer-request-id": answer.headers["x-request-id"]})
                    app_spans.append(span_id)
        finally:
            proxy.stop()  # SIGTERM: the last spans are flushed on the way out
        spans = receiver.spans()
        raw = receiver.raw()
        headers = list(receiver.headers)
    print(f"figures tracing e2e: {len(spans)} spans in {len(headers)} exports")
    assert proxy.proc.returncode == 0
    by_id = {s.span_id: s for s in spans}
    grants = []
    for trace_id, app_span, upstream in zip(traces, app_spans, echoed, strict=True):
        mine = [s for s in spans if s.trace_id == trace_id]
        request = [s for s in mine if s.kind == SERVER]
        assert len(request) == 1, [(s.name, s.kind) for s in mine]
        request_span = request[0]
        assert request_span.parent_span_id == app_span  # the app's span is its parent
        assert request_span.name == f"GET {ECHO}"
        assert request_span.attributes["http.response.status_code"] == 200
        assert request_span.attributes["tokenproxy.client"] == "app"
        assert request_span.attributes["tokenproxy.account"] == "main"
        assert request_span.attributes["tokenproxy.request_id"] == upstream["x-request-id"] \
            == upstream["answer-request-id"]
        # the platform's call is the proxy span's child
        assert upstream["traceparent"] == f"00-{trace_id}-{request_span.span_id}-01"
        renewals = [s for s in mine if s.name == "tokenproxy renewal"]
        assert len(renewals) == 1 and renewals[0].parent_span_id == request_span.span_id
        calls = [s for s in mine if s.kind == CLIENT]
        assert len(calls) == 1 and calls[0].parent_span_id == renewals[0].span_id
        assert calls[0].attributes["http.response.status_code"] == 200
        grants.append(calls[0].attributes["tokenproxy.grant"])
        assert all(by_id.get(s.parent_span_id, s).trace_id == trace_id for s in mine)
    assert grants == ["jwt", "jwt", "refresh_token"]  # first use, OAU-213, OAU-210
    replayed = [s.attributes["tokenproxy.replayed"] for s in spans if s.kind == SERVER
                and s.trace_id in traces]
    assert replayed == [False, True, True]
    assert {s.resource["service.name"] for s in spans} == {"tokenproxy-e2e"}
    # the collector got the API key; no log line of the proxy shows it
    assert headers and all(h.get("x-api-key") == api_key for h in headers)
    assert all(h.get("content-type") == "application/x-protobuf" for h in headers)
    assert api_key not in proxy.logs()
    # not one secret in what was exported
    text = raw.decode("latin-1")
    basic = base64.b64encode(f"{DEMO_CLIENT_ID}:{DEMO_CLIENT_SECRET}".encode()).decode()
    for secret in (APP_KEY, DEMO_JWT, DEMO_CLIENT_SECRET, basic, api_key):
        assert secret not in text
    assert not [t for t in EMULATOR_TOKEN.findall(text) if token_kind(t) is not None]
    assert "Bearer" not in text and "access_token" not in text


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_dead_collector_costs_requests_nothing(tmp_path: Path, emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    port = _closed_port()
    # export every 50 ms: the exporter fails (and retries) all along while requests run
    proxy = traced_proxy(tmp_path, emulator.url,
                         {"otlp_endpoint": f"http://127.0.0.1:{port}/v1/traces"},
                         env={"OTEL_BSP_SCHEDULE_DELAY": "50"})
    slowest = 0.0
    with proxy.http() as app:
        app.get(ECHO).raise_for_status()  # first use: the login
        for _ in range(40):
            started = time.monotonic()
            answer = app.get(ECHO, headers={"traceparent": parent(secrets.token_hex(16))[0]})
            slowest = max(slowest, time.monotonic() - started)
            assert answer.status_code == 200
            time.sleep(0.02)
    started = time.monotonic()
    proxy.stop()
    exit_took = time.monotonic() - started
    print(f"figures tracing dead collector: slowest request {slowest * 1000:.0f} ms, "
          f"exit {exit_took:.1f} s")
    assert proxy.proc.returncode == 0
    assert slowest < 1.0  # the exporter's connection errors and back-off never show here
    assert exit_took < 5.0  # the flush on exit is bounded (2 s), retries cut short
    # the exporter's retries are not logged, its failures at most once a minute
    logs = proxy.logs()
    assert "Transient error" not in logs and logs.count("Failed to export") <= 1


def test_without_tracing_the_apps_traceparent_passes_as_sent(tmp_path: Path,
                                                             emulator_factory,
                                                             proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    header, _ = parent(secrets.token_hex(16))
    with proxy.http() as app:
        answer = app.get(ECHO, headers={"traceparent": header, "tracestate": "app=1"})
    assert answer.json()["headers"]["traceparent"] == header
    assert answer.json()["headers"]["tracestate"] == "app=1"
