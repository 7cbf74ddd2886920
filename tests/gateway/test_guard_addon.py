"""In-process tests of the guard addon (proxy_addon/gateway/guard.py): what is refused at the
request headers, and what a request that goes on loses."""

from __future__ import annotations

import json

import pytest

from proxy_addon.gateway.flow_context import context_of
from proxy_addon.gateway.guard import LOGIN_FORM_LIMIT, SPOOFABLE_HEADERS, Guard
from tests.gateway.fakes import REQUEST_HEADERS, drive, flow


def guarded(f, **options) -> None:  # type: ignore[no-untyped-def]
    drive(Guard(options.pop("require_tls", False), **options), f, REQUEST_HEADERS)


def code_of(f) -> str:  # type: ignore[no-untyped-def]
    assert f.response is not None
    return json.loads(f.response.content)["errorCode"]


def test_absolute_form_naming_another_host_is_refused() -> None:
    f = flow()
    f.request.authority = "evil.example:443"
    guarded(f)
    assert f.response.status_code == 400 and code_of(f) == "TPX-BAD-REQUEST-TARGET"


def test_absolute_form_naming_the_proxy_goes_on_in_origin_form() -> None:
    f = flow()
    f.request.authority = "127.0.0.1:8080"
    guarded(f)
    assert f.response is None and f.request.authority == ""


@pytest.mark.parametrize("path", ["/restapi/v1.0/../oauth/token", "/restapi/v1.0/a%2Fb",
                                  "/restapi/./v1.0"])
def test_dot_segments_and_encoded_slashes_are_refused(path: str) -> None:
    f = flow(path)
    guarded(f)
    assert f.response.status_code == 400 and code_of(f) == "TPX-BAD-REQUEST-TARGET"


@pytest.mark.parametrize("path", ["/RESTAPI/oauth/revoke/", "/restapi/oauth/token",
                                  "/restapi/OAuth/authorize?x=1"])
def test_oauth_routes_are_guarded_without_login_interception(path: str) -> None:
    f = flow(path, method="POST")
    guarded(f)
    assert f.response.status_code == 403 and code_of(f) == "TPX-OAUTH-MANAGED"
    assert context_of(f) is None


def test_oauth_token_route_is_marked_for_login_in_canonical_spelling() -> None:
    f = flow("/RESTAPI/oauth/token/", method="POST", body=b"grant_type=x")
    guarded(f, login_enabled=True)
    assert f.response is None
    assert f.request.path == "/restapi/oauth/token"
    context = context_of(f)
    assert context is not None and context.login and context.account is None


def test_oversized_or_chunked_login_forms_are_refused() -> None:
    big = flow("/restapi/oauth/token", method="POST",
               headers=[("content-length", str(LOGIN_FORM_LIMIT + 1))])
    guarded(big, login_enabled=True)
    assert big.response.status_code == 413 and code_of(big) == "TPX-BODY-REFUSED"
    chunked = flow("/restapi/oauth/token", method="POST",
                   headers=[("transfer-encoding", "chunked")])
    guarded(chunked, login_enabled=True)
    assert chunked.response.status_code == 411


def test_emulator_admin_routes_are_never_served() -> None:
    f = flow("/_emulator/outside-login", method="POST")
    guarded(f)
    assert f.response.status_code == 404 and code_of(f) == "TPX-NOT-SERVED"


def test_connect_is_refused() -> None:
    f = flow(method="CONNECT")
    guarded(f)
    assert f.response.status_code == 405


def test_plain_http_is_refused_when_tls_is_required() -> None:
    f = flow()
    guarded(f, require_tls=True)
    assert f.response.status_code == 400 and code_of(f) == "TPX-TLS-REQUIRED"
    secure = flow(tls=True)
    guarded(secure, require_tls=True)
    assert secure.response is None


def test_spoofable_and_listed_hop_by_hop_headers_are_dropped() -> None:
    headers = [(name, "1.2.3.4") for name in SPOOFABLE_HEADERS]
    headers += [("Connection", "keep-alive, X-Secret"), ("X-Secret", "s"), ("X-Kept", "k")]
    f = flow(headers=headers)
    guarded(f)
    assert f.response is None
    assert not any(name in f.request.headers for name in SPOOFABLE_HEADERS)
    assert "x-secret" not in f.request.headers and f.request.headers["x-kept"] == "k"


def test_a_refusal_is_answered_at_the_headers_without_continue() -> None:
    f = flow("/a/../b", method="POST", headers=[("Expect", "100-continue")], body=b"x" * 10)
    f.request.stream = True
    guarded(f)
    assert f.response.status_code == 400
    assert "expect" not in f.request.headers and f.request.stream is False


@pytest.mark.parametrize("path", ["/restapi/oauth/wstoken", "/RESTAPI/oauth/WSTOKEN/"])
def test_wstoken_goes_on_to_the_events_route_only_with_events_on(path: str) -> None:
    on = flow(path, method="POST")
    guarded(on, events_path="/ws")
    assert on.response is None and context_of(on).ws_token
    off = flow(path, method="POST")
    guarded(off)  # [events] enabled = false
    assert off.response.status_code == 403 and code_of(off) == "TPX-OAUTH-MANAGED"


def test_the_events_path_is_marked_for_the_events_route() -> None:
    f = flow("/ws?access_token=abc", method="GET")
    guarded(f, events_path="/ws")
    context = context_of(f)
    assert f.response is None and context.events_socket and not context.ws_token
    other = flow("/wss", method="GET")
    guarded(other, events_path="/ws")
    assert context_of(other) is None or not context_of(other).events_socket
