"""In-process tests of the request-metrics addon (proxy_addon/gateway/request_metrics.py) and of
the whole gateway chain in master.py's order."""

from __future__ import annotations

from mitmproxy.flow import Error

from proxy_addon.gateway.flow_context import attach
from proxy_addon.gateway.guard import Guard
from proxy_addon.gateway.identify import Identify
from proxy_addon.gateway.inject import Inject
from proxy_addon.gateway.links import LinkRewriter, Links
from proxy_addon.gateway.listening import Listening
from proxy_addon.gateway.master import Gateway
from proxy_addon.gateway.replay import Replay
from proxy_addon.gateway.replay_buffer import ReplayBuffer
from proxy_addon.gateway.request_metrics import RequestMetrics
from proxy_addon.gateway.throttle import BadKeyThrottle
from proxy_addon.ops.metrics import Metrics
from tests.gateway.fakes import (
    CLIENT,
    ERROR,
    REQUEST,
    REQUEST_HEADERS,
    RESPONSE,
    RESPONSE_HEADERS,
    FakeAccount,
    FakeReplayer,
    Pool,
    drive,
    json_response,
    token_401,
    with_key,
)


def requests(metrics: Metrics, client: str, account: str, klass: str) -> float:
    return metrics.registry.get_sample_value(
        "tokenproxy_requests_total",
        {"client": client, "account": account, "status_class": klass}) or 0.0


def test_identified_request_counts_for_its_client_and_account() -> None:
    metrics = Metrics()
    f = with_key()
    context = attach(f)
    context.client, context.account = CLIENT, FakeAccount()  # type: ignore[assignment]
    context.generation = 1
    f.response = json_response(200, b"{}")
    f.response.timestamp_start = f.request.timestamp_end + 0.25
    drive(RequestMetrics(metrics), f, RESPONSE_HEADERS, RESPONSE)
    assert requests(metrics, "app", "main", "2xx") == 1
    assert metrics.registry.get_sample_value(
        "tokenproxy_upstream_duration_seconds_sum", {"account": "main"}) == 0.25


def test_unidentified_and_login_requests() -> None:
    metrics = Metrics()
    addon = RequestMetrics(metrics)
    refused = with_key("nope")
    refused.response = json_response(401, b"{}")
    drive(addon, refused, RESPONSE_HEADERS, RESPONSE)
    assert requests(metrics, "unknown", "none", "4xx") == 1
    login = with_key()
    attach(login).client = CLIENT.__class__("main-login", "main", CLIENT.key)
    login.response = json_response(200, b"{}")
    drive(addon, login, RESPONSE)
    assert requests(metrics, "main-login", "main", "2xx") == 1
    assert metrics.registry.get_sample_value(
        "tokenproxy_upstream_duration_seconds_count", {"account": "main"}) is None


def test_errors_count_as_502_unless_the_app_hung_up() -> None:
    metrics = Metrics()
    addon = RequestMetrics(metrics)
    failed = with_key()
    failed.error = Error("connection refused")
    drive(addon, failed, ERROR)
    gone = with_key()
    gone.error = Error("Client disconnected.")
    drive(addon, gone, ERROR)
    assert requests(metrics, "unknown", "none", "5xx") == 1


def chain(metrics: Metrics, account: FakeAccount, replayer: FakeReplayer) -> Gateway:
    buffer = ReplayBuffer(1024, 4096)
    pool = Pool(account)
    rewriter = LinkRewriter("https://platform.example")
    return Gateway(
        guard=Guard(False),
        identify=Identify([CLIENT], [account.account], pool,  # type: ignore[arg-type]
                          BadKeyThrottle(0)),
        login=None,
        inject=Inject(buffer),
        replay=Replay(replayer, buffer, rewriter, metrics),  # type: ignore[arg-type]
        links=Links(rewriter, 1024),
        request_metrics=RequestMetrics(metrics),
        listening=Listening(False),
    )


def test_the_chain_refuses_before_identifying_and_counts_once() -> None:
    metrics = Metrics()
    account = FakeAccount()
    gateway = chain(metrics, account, FakeReplayer())
    f = with_key(path="/restapi/v1.0/a%2F..%2Fb")
    drive(gateway, f, REQUEST_HEADERS, REQUEST, RESPONSE_HEADERS, RESPONSE)
    assert f.response.status_code == 400 and account.leases == 0
    assert requests(metrics, "unknown", "none", "4xx") == 1


def test_the_chain_replays_a_token_401_and_counts_the_final_answer() -> None:
    metrics = Metrics()
    account = FakeAccount(renewed=[("renewed-2", 2)])
    replayer = FakeReplayer(json_response(200, b'{"uri":"https://platform.example/r"}'))
    f = with_key()

    def upstream(event: str) -> None:
        if event == "responseheaders":
            assert f.request.headers["authorization"] == "Bearer live-token-1"
            f.response = token_401("OAU-213")

    drive(chain(metrics, account, replayer), f, REQUEST_HEADERS, REQUEST, RESPONSE_HEADERS,
          RESPONSE, before=upstream)
    assert replayer.sent == ["renewed-2"] and f.response.status_code == 200
    assert f.response.content == b'{"uri":"http://127.0.0.1:8080/r"}'  # rewritten once
    assert account.released == [1, 2] and account.leases == 0
    assert requests(metrics, "app", "main", "2xx") == 1
    assert requests(metrics, "app", "main", "4xx") == 0


def test_gateway_registers_in_flow_order() -> None:
    gateway = chain(Metrics(), FakeAccount(), FakeReplayer())
    assert [type(a).__name__ for a in gateway.addons] == [
        "Guard", "Identify", "Inject", "Replay", "Links", "RequestMetrics", "Listening"]
