"""The official SDKs' subscription clients through the proxy (issue 18, first acceptance point):
npm ``@ringcentral/subscriptions`` and the Python SDK's WebSocket client, pointed at the proxy and
unchanged otherwise, subscribe and receive events while the emulator rotates tokens every 2 s,
revokes the session twice and drops the upstream sockets five times: every event is delivered
exactly once and in order, and the app's socket is never closed. The JavaScript run covers both
readings of the platform the proxy must survive (``--ws-token-use single|reusable``,
``--ws-replay missed|buffer``)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.events.apps import EXT, PRESENCE, SMS, AppProcess, seqs
from tests.support.proxy import APP_KEY, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_JWT

SDK_DIR = Path(__file__).parents[1] / "sdk"
APPS = {
    "javascript": ["node", str(SDK_DIR / "js" / "subscribe.js")],
    "python": [sys.executable, str(SDK_DIR / "python_ws_app.py")],
}
VARIANTS = [("javascript", "single", "missed"), ("javascript", "reusable", "buffer"),
            ("python", "single", "missed")]


def _post_sms(proxy_url: str) -> None:
    answer = httpx.post(proxy_url + EXT + "/sms", headers={"Authorization": f"Bearer {APP_KEY}"},
                        json={"from": {"phoneNumber": "+15550100001"},
                              "to": [{"phoneNumber": "+15550109999"}], "text": "event"},
                        timeout=30)
    assert answer.status_code == 200, answer.text


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("sdk", "token_use", "replay"), VARIANTS)
def test_sdk_subscription_survives_rotation_revocation_and_drops(
        sdk: str, token_use: str, replay: str, emulator_factory, proxy_factory) -> None:
    if sdk == "javascript" and not (SDK_DIR / "js" / "node_modules" /
                                    "@ringcentral" / "subscriptions").exists():
        pytest.fail("the JavaScript SDK is not installed: `make test` runs npm ci in "
                    "tests/sdk/js")
    emulator = emulator_factory("--access-ttl", "2", "--auth-rate", "0",
                                "--ws-token-use", token_use, "--ws-replay", replay)
    proxy = proxy_factory(emulator.url)
    env = {**os.environ, "SERVER": proxy.url, "CLIENT_ID": DEMO_CLIENT_ID,
           "CLIENT_SECRET": DEMO_CLIENT_SECRET, "JWT": DEMO_JWT,
           "FILTERS": f'["{PRESENCE}", "{SMS}"]'}
    app = AppProcess(APPS[sdk], env)
    try:
        app.wait_for(lambda lines: any("ready" in x for x in lines), 60, "subscription")
        emitted = 0

        def emit(count: int) -> None:
            nonlocal emitted
            for _ in range(count):
                emitted += 1
                assert emulator.ws_emit(PRESENCE, {"seq": emitted}) >= 0

        def delivered_all() -> None:
            app.wait_for(lambda lines: len(seqs([x["event"] for x in lines if "event" in x]))
                         >= emitted, 60, f"{emitted} events")

        emit(5)
        delivered_all()
        started = time.monotonic()
        drops = revocations = 0
        for round_ in range(5):
            assert emulator.ws_drop("abort" if round_ % 2 else "close") >= 1
            drops += 1
            emit(3)  # while the proxy's socket is down: the platform buffers them
            if round_ in (1, 3):
                emulator.revoke_all()  # kills the session; its sockets drop with it
                revocations += 1
                emit(2)
            _post_sms(proxy.url)
            delivered_all()
            time.sleep(1.0)  # the 2 s rotation goes on between rounds
        elapsed = time.monotonic() - started
        events = app.events()
        got = seqs(events)
        assert got == list(range(1, emitted + 1)), got  # each exactly once, in order
        sms = [e for e in events if "message-store/instant" in e.get("event", "")]
        app.wait_for(lambda lines: len([x for x in lines if "event" in x
                                        and "instant" in x["event"].get("event", "")]) >= 5,
                     30, "5 SMS events")
        sms = [e for e in app.events() if "message-store/instant" in e.get("event", "")]
        assert len(sms) == 5 and len({e["uuid"] for e in sms}) == 5
        counters = emulator.counters()
        if sdk == "javascript":
            app.send("exit")
            app.wait_for(lambda lines: any("summary" in x for x in lines), 15, "summary")
            summary = next(x["summary"] for x in app.lines if "summary" in x)
            assert summary["sockets"] == 1 and summary["closes"] == [], summary
        else:
            assert app.proc.poll() is None and not any("closed" in x for x in app.lines)
        metrics = httpx.get(proxy.admin_url + "/metrics", timeout=10).text
        print(f"figures events-{sdk}-{token_use}-{replay}: {emitted} emitted, {len(got)} "
              f"delivered in order, {len(sms)} SMS events, {drops} drops + {revocations} "
              f"revocations in {elapsed:.1f} s; platform: ws_connects={counters['ws_connects']} "
              f"recoveries ok={counters['ws_recoveries_successful']} "
              f"failed={counters['ws_recoveries_failed']} "
              f"ws_token_calls={counters['ws_token_calls']} "
              f"refreshes={counters['token_calls_by_grant']['refresh_token']}")
        assert counters["ws_recoveries_successful"] >= 5  # drops 5, revocations 2: recovered
        assert counters["token_calls_by_grant"]["refresh_token"] >= 2  # tokens rotated meanwhile
        assert 'tokenproxy_events_upstream_connects_total{account="main",outcome="recovered"}' \
            in metrics
    finally:
        app.stop()
