"""In-process tests of the login addon (proxy_addon/gateway/login.py)."""

from __future__ import annotations

import json

from mitmproxy import http

from proxy_addon.gateway.flow_context import attach, context_of
from proxy_addon.gateway.login import Login
from proxy_addon.virtual.login import SESSION_PREFIX
from tests.gateway.fakes import REQUEST, Account, drive, flow


class Interceptor:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.answered: list[str] = []

    async def answer(self, f: http.HTTPFlow) -> None:
        self.answered.append(f.request.path)
        body = {"access_token": "TPXA" + "a" * 43, "session_id": SESSION_PREFIX + "main"}
        f.response = http.Response.make(self.status, json.dumps(body).encode(),
                                        {"Content-Type": "application/json"})


def test_marked_oauth_route_is_answered_by_the_interceptor() -> None:
    interceptor = Interceptor()
    f = flow("/restapi/oauth/token", method="POST", body=b"grant_type=password")
    attach(f).login = True
    drive(Login(interceptor, [Account("main")]), f, REQUEST)  # type: ignore[arg-type]
    assert interceptor.answered == ["/restapi/oauth/token"]
    context = context_of(f)
    assert f.response.status_code == 200
    assert context is not None and context.client is not None
    assert (context.client.name, context.client.account) == ("main-login", "main")
    assert context.account is None  # a login gets no token injected


def test_failed_login_counts_for_nobody() -> None:
    f = flow("/restapi/oauth/token", method="POST")
    attach(f).login = True
    drive(Login(Interceptor(400), [Account("main")]), f, REQUEST)  # type: ignore[arg-type]
    assert f.response.status_code == 400 and context_of(f).client is None  # type: ignore[union-attr]


def test_other_flows_are_not_answered() -> None:
    interceptor = Interceptor()
    plain = flow()
    drive(Login(interceptor, []), plain, REQUEST)  # type: ignore[arg-type]
    refused = flow("/restapi/oauth/token", method="POST")
    attach(refused).login = True
    refused.response = http.Response.make(413, b"")
    drive(Login(interceptor, []), refused, REQUEST)  # type: ignore[arg-type]
    assert interceptor.answered == [] and plain.response is None
    assert refused.response.status_code == 413
