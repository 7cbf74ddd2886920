"""The audit trail and request ids (issue 19, item 5): one JSON line per answered request —
the proxy's own refusals and the platform's answers alike — with the path as a template and
never a token, a client key or a query; ``X-Request-Id`` taken from the app when sane (else
made), sent upstream and back; a W3C ``traceparent`` propagated, a malformed one dropped."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
from rc_emulator.tokens import token_kind

from tests.ops.test_observability import EMULATOR_TOKEN
from tests.support.proxy import APP_KEY

EXT = "/restapi/v1.0/account/~/extension/~"
ECHO = "/restapi/v1.0/echo"
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_one_audit_line_per_answered_request(tmp_path: Path, emulator_factory,
                                             proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    access_log = tmp_path / "access.log"
    proxy = proxy_factory(emulator.url, access_log=str(access_log))
    answered: list[httpx.Response] = []
    given = [f"app-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    with proxy.http() as app:
        for request_id in given:
            answered.append(app.get(EXT, headers={"X-Request-Id": request_id}))
        answered.append(app.get(EXT + "?access_token=" + "q" * 44))  # a token in a query
        answered.append(app.post(EXT + "/sms", json={
            "from": {"phoneNumber": "+15550100001"}, "to": [{"phoneNumber": "+15550109999"}],
            "text": "audited"}))
        echo_good = app.get(ECHO, headers={"traceparent": PARENT, "X-Request-Id": "bad id!"})
        echo_bad = app.get(ECHO, headers={"traceparent": "00-zz-yy-01", "tracestate": "a=b"})
        answered += [echo_good, echo_bad]
        answered.append(app.get("/restapi/v1.0/account/123456789/extension/987654321/nothing"))
    with proxy.http("not-a-key-0123456789abcdef") as stranger:
        answered.append(stranger.get(EXT))  # refused by the proxy: audited too
    proxy.stop()  # the log is complete
    lines = [json.loads(line) for line in access_log.read_text().splitlines()]
    statuses = sorted(r.status_code for r in answered)
    print(f"figures audit: {len(answered)} requests, {len(lines)} audit lines, statuses "
          f"{statuses}")
    assert len(lines) == len(answered)
    assert sorted(line["status"] for line in lines) == statuses
    # request ids: the app's own when sane, else a new one; the same on the answer and upstream
    for request_id, response in zip(given, answered[:5], strict=True):
        assert response.headers["x-request-id"] == request_id
    by_id = {line["request_id"]: line for line in lines}
    assert set(given) <= set(by_id) and all(r.headers.get("x-request-id") in by_id
                                            for r in answered)
    upstream = echo_good.json()["headers"]
    assert upstream["x-request-id"] == echo_good.headers["x-request-id"] != "bad id!"
    assert upstream["traceparent"] == PARENT
    assert "traceparent" not in echo_bad.json()["headers"]
    assert "tracestate" not in echo_bad.json()["headers"]
    first = by_id[given[0]]
    assert first == {**first, "client": "app", "account": "main", "method": "GET",
                     "path": "/restapi/v1.0/account/{}/extension/{}", "status": 200,
                     "replayed": False}
    assert first["upstream_ms"] is not None and first["bytes_out"] > 0
    assert any(line["path"] == "/restapi/v1.0/account/{}/extension/{}/nothing" for line in lines)
    refused = [line for line in lines if line["status"] == 401]
    assert refused and refused[0]["client"] is None
    text = access_log.read_text()
    assert APP_KEY not in text and "not-a-key" not in text and "access_token" not in text
    assert "q" * 44 not in text and "?" not in text
    assert not [t for t in EMULATOR_TOKEN.findall(text) if token_kind(t) is not None]
