"""The official RingCentral SDKs, configured with the proxy URL as server and unchanged
otherwise, while the emulator rotates tokens every 2 s and revokes sessions at random."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.emulator import recording_sha256
from tests.support.proxy import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_JWT, jwt_account

SDK_DIR = Path(__file__).parents[1] / "sdk"
PASSWORD_ACCOUNT = {"name": "pw", "client_id": DEMO_CLIENT_ID,
                    "client_secret": DEMO_CLIENT_SECRET, "grant": "password",
                    "username": "+15550100002", "extension": "102",
                    "password": "demo-password-2"}


def revoke_at_random(emulator, stop: threading.Event, revoked: list[int]) -> None:
    rng = random.Random()
    while not stop.wait(rng.uniform(2.0, 5.0)):
        emulator.revoke_all()
        revoked.append(1)


APPS = {
    "python": [sys.executable, str(SDK_DIR / "python_sdk_app.py")],
    "javascript": ["node", str(SDK_DIR / "js" / "app.js")],
}


@pytest.mark.compression_variants  # replay/renewal: also against a compressing front end
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sdk", list(APPS))
def test_official_sdk_through_the_proxy(sdk: str, emulator_factory, proxy_factory) -> None:
    if sdk == "javascript" and not (SDK_DIR / "js" / "node_modules" / "@ringcentral").exists():
        pytest.fail("the JavaScript SDK is not installed: `make test` runs npm ci in "
                    "tests/sdk/js")
    emulator = emulator_factory("--access-ttl", "2", "--auth-rate", "0")
    proxy = proxy_factory(emulator.url, accounts=[jwt_account(), PASSWORD_ACCOUNT], clients=[])
    env = {**os.environ, "SERVER": proxy.url, "CLIENT_ID": DEMO_CLIENT_ID,
           "CLIENT_SECRET": DEMO_CLIENT_SECRET, "JWT": DEMO_JWT, "USERNAME": "+15550100002",
           "EXTENSION": "102", "PASSWORD": "demo-password-2", "DURATION": "20"}
    stop, revoked = threading.Event(), []
    revoker = threading.Thread(target=revoke_at_random, args=(emulator, stop, revoked))
    revoker.start()
    try:
        result = subprocess.run(APPS[sdk], env=env, capture_output=True, text=True,
                                timeout=240)
    finally:
        stop.set()
        revoker.join(10)
    assert result.returncode == 0, result.stderr[-3000:]
    done = json.loads(result.stdout.strip().splitlines()[-1])
    counters = emulator.counters()
    print(f"figures {sdk}-sdk: {({k: v for k, v in done.items() if isinstance(v, int)})} "
          f"revocations={len(revoked)} platform token_calls={counters['token_calls_by_grant']} "
          f"api_401={counters['api_401_by_code']}")
    rounds = done["sms"]
    assert rounds >= 3 and done["fax"] == done["recordings"] == rounds
    assert done["extension"] == 2 * rounds and done["pages"] >= 4 * rounds
    for rec_id, digest in done["recording_sha256"].items():
        assert digest == recording_sha256(rec_id, done["recording_size"][rec_id])
    # the run really spanned revocations and 2 s rotations, none of which the app saw
    assert len(revoked) >= 2 and counters["token_calls_by_grant"]["refresh_token"] >= 3
