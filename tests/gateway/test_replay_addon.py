"""In-process tests of the replay addon (proxy_addon/gateway/replay.py): only token 401s are
replayed, at most twice, with the renewed token; everything else passes on."""

from __future__ import annotations

import json

import pytest
from mitmproxy import http
from mitmproxy.connection import ConnectionState

from proxy_addon.gateway.flow_context import FlowContext, attach
from proxy_addon.gateway.links import LinkRewriter
from proxy_addon.gateway.replay import MAX_REPLAYS, Replay
from proxy_addon.gateway.replay_buffer import ReplayBuffer
from proxy_addon.ops.metrics import Metrics
from proxy_addon.upstream.platform_errors import REPLAYABLE_TOKEN_CODES
from tests.gateway.fakes import (
    CLIENT,
    RESPONSE,
    FakeAccount,
    FakeReplayer,
    drive,
    json_response,
    token_401,
    unavailable,
    with_key,
)

PLATFORM = "https://platform.example"
OK = b'{"uri":"https://platform.example/restapi/v1.0/account/1"}'


class Setup:
    def __init__(self, *answers: http.Response, buffered: int = 0) -> None:
        self.account = FakeAccount(renewed=[("renewed-2", 2), ("renewed-3", 3)])
        self.replayer = FakeReplayer(*answers)
        self.metrics = Metrics()
        self.buffer = ReplayBuffer(1024, 4096)
        self.addon = Replay(self.replayer, self.buffer,  # type: ignore[arg-type]
                            LinkRewriter(PLATFORM, None, "https://proxy.example"), self.metrics)
        self.flow = with_key(method="POST", body=b"x" * 10)
        self.context: FlowContext = attach(self.flow)
        self.context.client, self.context.account = CLIENT, self.account  # type: ignore[assignment]
        self.context.generation = 1  # injected, lease already released at responseheaders
        if buffered:
            assert self.buffer.admit(buffered)
            self.context.buffered = buffered

    def answer(self, response: http.Response) -> None:
        self.flow.response = response
        drive(self.addon, self.flow, RESPONSE)

    def replays(self, outcome: str) -> float:
        return self.metrics.registry.get_sample_value(
            "tokenproxy_replays_total", {"account": "main", "outcome": outcome}) or 0.0


@pytest.mark.parametrize("code", sorted(REPLAYABLE_TOKEN_CODES))
def test_token_401_is_renewed_and_replayed(code: str) -> None:
    setup = Setup(json_response(200, OK), buffered=10)
    setup.answer(token_401(code))
    assert setup.account.rejected_calls == [(1, code)]
    assert setup.replayer.sent == ["renewed-2"]
    assert setup.flow.response.status_code == 200
    # the replayed answer's links point at the proxy
    assert json.loads(setup.flow.response.content)["uri"].startswith("https://proxy.example/")
    assert setup.account.released == [2] and setup.account.leases == 0
    assert setup.context.replayed and setup.buffer.used == 0 and setup.replays("success") == 1


@pytest.mark.parametrize("code", ["OAU-211", "OAU-140", "CMN-401", "AGW-401"])
def test_other_401s_pass_on(code: str) -> None:
    setup = Setup(buffered=10)
    refused = token_401(code)
    setup.answer(refused)
    assert setup.flow.response is refused and setup.replayer.sent == []
    assert setup.account.rejected_calls == [] and setup.buffer.used == 0


def test_non_401_passes_on_and_gives_the_body_back() -> None:
    setup = Setup(buffered=10)
    setup.answer(json_response(403, b'{"errorCode":"OAU-213"}'))
    assert setup.replayer.sent == [] and setup.buffer.used == 0


def test_at_most_two_sends() -> None:
    setup = Setup(token_401("OAU-213"), token_401("OAU-213"), json_response(200, OK))
    setup.answer(token_401("OAU-210"))
    assert len(setup.replayer.sent) == MAX_REPLAYS == 2
    assert setup.account.rejected_calls == [(1, "OAU-210"), (2, "OAU-213")]
    assert setup.flow.response.status_code == 401 and setup.replays("failed") == 1
    assert setup.account.leases == 0


def test_second_send_after_the_replays_own_token_died() -> None:
    setup = Setup(token_401("OAU-213"), json_response(200, OK))
    setup.answer(token_401("OAU-213"))
    assert setup.replayer.sent == ["renewed-2", "renewed-3"]
    assert setup.flow.response.status_code == 200


def test_streamed_request_is_not_replayed_but_tells_the_pool() -> None:
    setup = Setup()
    setup.flow.request.stream = True
    setup.answer(token_401("OAU-213"))
    assert setup.replayer.sent == [] and setup.account.noted == [(1, "OAU-213")]
    assert setup.flow.response.status_code == 401


def test_no_token_after_a_401_answers_with_server_timing() -> None:
    setup = Setup()
    setup.account.unavailable = unavailable()
    setup.answer(token_401("OAU-213"))
    assert setup.flow.response.status_code == 503
    assert json.loads(setup.flow.response.content)["errorCode"] == "TPX-TOKEN-TIMEOUT"
    assert "token-wait;dur=" in setup.flow.response.headers["Server-Timing"]
    assert setup.replayer.sent == [] and setup.replays("failed") == 1


def test_app_gone_before_the_replay_sends_nothing() -> None:
    setup = Setup()
    setup.flow.client_conn.state = ConnectionState.CAN_WRITE
    setup.answer(token_401("OAU-213"))
    assert setup.replayer.sent == [] and setup.flow.error is not None
    assert setup.account.released == [2] and setup.replays("abandoned") == 1


def test_a_401_before_injection_is_not_replayed() -> None:
    setup = Setup()
    setup.context.generation = -1
    setup.answer(token_401("OAU-213"))
    assert setup.replayer.sent == [] and setup.account.rejected_calls == []


def test_token_errors_are_counted_by_code() -> None:
    setup = Setup(json_response(200, OK))
    setup.answer(token_401("OAU-128"))
    assert setup.metrics.registry.get_sample_value(
        "tokenproxy_upstream_token_errors_total", {"account": "main", "code": "OAU-128"}) == 1
