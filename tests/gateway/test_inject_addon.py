"""In-process tests of the inject addon (proxy_addon/gateway/inject.py): the app's credential
out, the account's token in, bodies buffered or streamed, leases released."""

from __future__ import annotations

import json

from mitmproxy import http

from proxy_addon.gateway.flow_context import FlowContext, attach, context_of
from proxy_addon.gateway.inject import Inject
from proxy_addon.gateway.replay_buffer import ReplayBuffer
from tests.gateway.fakes import (
    APP_KEY,
    CLIENT,
    ERROR,
    REQUEST,
    REQUEST_HEADERS,
    RESPONSE,
    RESPONSE_HEADERS,
    Account,
    FakeAccount,
    drive,
    unavailable,
    with_key,
)


def admitted(f: http.HTTPFlow, account: FakeAccount) -> FlowContext:
    """As identify leaves a flow of a configured client."""
    context = attach(f)
    context.client, context.account = CLIENT, account  # type: ignore[assignment]
    return context


def test_app_credential_stripped_and_account_token_injected() -> None:
    account = FakeAccount()
    f = with_key(path="/restapi/v1.0/account/~?access_token=app-secret&x=1")
    context = admitted(f, account)
    drive(Inject(ReplayBuffer(1024, 4096)), f, REQUEST_HEADERS, REQUEST)
    assert f.request.headers["authorization"] == "Bearer live-token-1"
    assert APP_KEY not in str(f.request.headers) and "access_token" not in f.request.path
    assert f.request.query["x"] == "1"
    assert (context.generation, context.leased, account.leases) == (1, True, 1)


def test_lease_released_at_responseheaders_once() -> None:
    account = FakeAccount()
    f = with_key()
    admitted(f, account)

    def answer(event: str) -> None:
        if event == "responseheaders":
            f.response = http.Response.make(200, b"{}")

    drive(Inject(ReplayBuffer(1024, 4096)), f, REQUEST_HEADERS, REQUEST, RESPONSE_HEADERS,
          RESPONSE, before=answer)
    assert account.released == [1] and account.leases == 0


def test_lease_and_body_released_on_error() -> None:
    account = FakeAccount()
    buffer = ReplayBuffer(1024, 4096)
    f = with_key(method="POST", body=b"x" * 100)
    context = admitted(f, account)
    drive(Inject(buffer), f, REQUEST_HEADERS, REQUEST)
    assert buffer.used == 100 and context.buffered == 100 and not f.request.stream
    drive(Inject(buffer), f, ERROR)
    assert account.released == [1] and buffer.used == 0 and context.buffered == 0


def test_large_body_streams_and_is_swapped_at_the_headers() -> None:
    account = FakeAccount()
    buffer = ReplayBuffer(10, 4096)
    f = with_key(method="POST", body=b"x" * 100)
    context = admitted(f, account)
    drive(Inject(buffer), f, REQUEST_HEADERS)
    assert f.request.stream is True and buffer.used == 0 and context.buffered == 0
    assert f.request.headers["authorization"] == "Bearer live-token-1"
    drive(Inject(buffer), f, REQUEST)  # not swapped twice
    assert account.leases == 1


def test_full_buffer_makes_a_small_body_stream() -> None:
    buffer = ReplayBuffer(1024, 150)
    first, second = with_key(method="POST", body=b"x" * 100), with_key(method="POST",
                                                                       body=b"y" * 100)
    admitted(first, FakeAccount())
    admitted(second, FakeAccount())
    drive(Inject(buffer), first, REQUEST_HEADERS)
    drive(Inject(buffer), second, REQUEST_HEADERS)
    assert not first.request.stream and second.request.stream


def test_waits_for_a_token_when_none_is_fresh() -> None:
    account = FakeAccount(fresh=False, token="renewed", generation=2)
    f = with_key()
    context = admitted(f, account)
    drive(Inject(ReplayBuffer(1024, 4096)), f, REQUEST_HEADERS, REQUEST)
    assert f.request.headers["authorization"] == "Bearer renewed" and context.generation == 2


def test_no_token_to_be_had_is_answered_with_server_timing() -> None:
    account = FakeAccount(fresh=False, unavailable=unavailable(2.0))
    f = with_key()
    context = admitted(f, account)
    drive(Inject(ReplayBuffer(1024, 4096)), f, REQUEST_HEADERS, REQUEST)
    assert f.response is not None and f.response.status_code == 503
    assert json.loads(f.response.content)["errorCode"] == "TPX-TOKEN-TIMEOUT"
    assert f.response.headers["Retry-After"] == "2"
    assert f.response.headers["Server-Timing"].startswith("token-wait;dur=")
    assert f.request.headers["authorization"] == f"Bearer {APP_KEY}"  # never sent on
    assert context.generation == -1 and not context.leased


def test_app_gone_while_waiting_gets_nothing_sent() -> None:
    from mitmproxy.connection import ConnectionState

    account = FakeAccount(fresh=False)
    f = with_key()
    admitted(f, account)
    f.client_conn.state = ConnectionState.CAN_WRITE  # read side closed: the app hung up
    drive(Inject(ReplayBuffer(1024, 4096)), f, REQUEST_HEADERS, REQUEST)
    assert f.error is not None and account.released == [1] and account.leases == 0


def test_media_route_goes_to_the_media_host() -> None:
    f = with_key(path="/_media/restapi/v1.0/recording/1/content")
    admitted(f, FakeAccount())
    drive(Inject(ReplayBuffer(1024, 4096), "https://media.example:8443"), f, REQUEST)
    assert (f.request.scheme, f.request.host, f.request.port) == ("https", "media.example", 8443)
    assert f.request.path == "/restapi/v1.0/recording/1/content"
    assert f.request.headers["host"] == "media.example:8443"


def test_an_account_on_its_own_platform_is_sent_there_media_included() -> None:
    """Sandbox beside production: the request of an account naming its platform leaves for
    it (Host included), its ``/_media`` for its own media host, never the proxy's."""
    sandbox = Account("sandbox", "https://platform.devtest.example:8443",
                      "https://media.devtest.example")
    api = with_key()
    admitted(api, FakeAccount(account=sandbox))
    drive(Inject(ReplayBuffer(1024, 4096), "https://media.example"), api, REQUEST)
    assert (api.request.scheme, api.request.host, api.request.port) == (
        "https", "platform.devtest.example", 8443)
    assert api.request.headers["host"] == "platform.devtest.example:8443"
    assert api.request.headers["authorization"] == "Bearer live-token-1"
    media = with_key(path="/_media/restapi/v1.0/recording/1/content")
    admitted(media, FakeAccount(account=sandbox))
    drive(Inject(ReplayBuffer(1024, 4096), "https://media.example"), media, REQUEST)
    assert (media.request.host, media.request.port, media.request.headers["host"]) == (
        "media.devtest.example", 443, "media.devtest.example")
    # on another platform without a media host of its own: /_media is not sent to the
    # proxy's media host (another platform's), it goes to its platform as it is
    bare = with_key(path="/_media/restapi/v1.0/recording/1/content")
    admitted(bare, FakeAccount(account=Account("sandbox", "https://platform.devtest.example")))
    drive(Inject(ReplayBuffer(1024, 4096), "https://media.example"), bare, REQUEST)
    assert (bare.request.host, bare.request.path) == (
        "platform.devtest.example", "/_media/restapi/v1.0/recording/1/content")


def test_flows_not_identified_or_answered_are_left_alone() -> None:
    nobody = with_key()
    drive(Inject(ReplayBuffer(1024, 4096)), nobody, REQUEST_HEADERS, REQUEST)
    assert nobody.request.headers["authorization"] == f"Bearer {APP_KEY}"
    account = FakeAccount()
    refused = with_key()
    admitted(refused, account)
    refused.response = http.Response.make(401, b"")
    drive(Inject(ReplayBuffer(1024, 4096)), refused, REQUEST_HEADERS, REQUEST)
    assert account.leases == 0 and context_of(refused).generation == -1  # type: ignore[union-attr]
