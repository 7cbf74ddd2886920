"""Issue 2 acceptance: a real tokenproxy process in front of the real emulator, over HTTP."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.emulator import recording_sha256
from tests.support.proxy import APP_KEY

EXT = "/restapi/v1.0/account/~/extension/~"


def token_calls(emulator) -> int:
    return emulator.counters()["token_calls"]


def test_steady_traffic_with_2s_tokens(emulator_factory, proxy_factory) -> None:
    """500 requests over 10 s, access TTL 2 s: no errors, token calls <= 10/2 + 2."""
    emulator = emulator_factory("--access-ttl", "2", "--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    statuses: Counter[int] = Counter()
    started = time.monotonic()
    with proxy.http() as client:
        for i in range(500):
            # pace to 10 s overall; bounded by the count
            delay = started + i * 0.02 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            statuses[client.get(EXT).status_code] += 1
    elapsed = time.monotonic() - started
    counters = emulator.counters()
    assert statuses == {200: 500}, statuses
    assert elapsed >= 9.9
    assert counters["token_calls"] <= 10 / 2 + 2, counters
    assert counters["logins"] == 1  # one session, kept alive by refreshes


@pytest.mark.compression_variants  # replay/renewal: also against a compressing front end
def test_revocation_under_50_concurrent_requests(emulator_factory, proxy_factory) -> None:
    """50 requests in flight when every token is revoked: all succeed, <= 2 token calls."""
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    with proxy.http() as warm:
        assert warm.get(EXT).status_code == 200
    emulator.reset_counters()
    stop = threading.Event()
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def worker() -> None:
        with proxy.http() as client:
            for _ in range(200):  # bounded
                if stop.is_set():
                    return
                status = client.get(EXT).status_code
                with lock:
                    statuses[status] += 1

    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(worker) for _ in range(50)]
        time.sleep(1.0)
        assert emulator.revoke_all() >= 1
        time.sleep(1.5)
        stop.set()
        for future in futures:
            future.result(timeout=60)
    counters = emulator.counters()
    print(f"figures revocation: {statuses} token_calls={counters['token_calls']} "
          f"api_401={counters['api_401_by_code']}")
    assert set(statuses) == {200}, statuses
    assert counters["api_401_by_code"].get("OAU-213", 0) >= 1  # the revocation did bite
    assert counters["token_calls"] <= 2, counters


def _proxy_with_revoked_token(emulator_factory, proxy_factory):
    """A proxy holding a token the platform has just revoked: the next request is refused
    with OAU-213 first and must be replayed. Returns the OAU-213 count before it."""
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    with proxy.http() as client:
        assert client.get(EXT).status_code == 200
    emulator.revoke_all()
    return emulator, proxy, emulator.counters()["api_401_by_code"].get("OAU-213", 0)


@pytest.mark.compression_variants  # replay/renewal: also against a compressing front end
def test_a_replay_whose_new_token_died_too_is_sent_once_more(emulator_factory,
                                                            proxy_factory) -> None:
    """The token is revoked, and the pair the proxy renews to is revoked too before the replay
    reaches the platform (the emulator revokes the next token set it issues): the app still
    gets its 200, after one more renewal and a second replay, and no more than that."""
    emulator, proxy, before = _proxy_with_revoked_token(emulator_factory, proxy_factory)
    emulator.set_policy(revoke_issued=1)
    calls = token_calls(emulator)
    with proxy.http() as client:
        answer = client.get(EXT)
        assert answer.status_code == 200, answer.text
        assert client.get(EXT).status_code == 200
    assert emulator.counters()["api_401_by_code"]["OAU-213"] == before + 2
    assert token_calls(emulator) == calls + 2  # two renewals, not a retry storm
    assert emulator.set_policy()["revoke_issued"] == 0


@pytest.mark.compression_variants  # replay/renewal: also against a compressing front end
def test_replays_stop_after_the_second(emulator_factory, proxy_factory) -> None:
    """Every new token dies at once: the app gets the platform's 401 after two replays, and
    the proxy does not keep renewing for this request."""
    emulator, proxy, before = _proxy_with_revoked_token(emulator_factory, proxy_factory)
    emulator.set_policy(revoke_issued=100)
    calls = token_calls(emulator)
    with proxy.http() as client:
        answer = client.get(EXT)
    assert answer.status_code == 401
    assert answer.json()["errors"][0]["errorCode"] == "OAU-213"
    assert emulator.counters()["api_401_by_code"]["OAU-213"] == before + 3  # first + 2 replays
    assert token_calls(emulator) == calls + 2


@pytest.mark.compression_variants  # replay/renewal: also against a compressing front end
@pytest.mark.parametrize("kind", ["json", "multipart"])
def test_post_bodies_are_replayed_byte_identical(emulator_factory, proxy_factory,
                                                 kind: str) -> None:
    emulator, proxy, before = _proxy_with_revoked_token(emulator_factory, proxy_factory)
    with proxy.http() as client:
        if kind == "json":
            body = json.dumps({"from": {"phoneNumber": "+15550100001"},
                               "to": [{"phoneNumber": "+15550100002"}],
                               "text": "héllo ☃ " * 50}).encode()
            headers = {"Content-Type": "application/json", "X-Trace": "abc-123"}
            response = client.post(EXT + "/sms", content=body, headers=headers)
        else:
            boundary = "tokenproxy-boundary-7d1f"
            pdf = bytes(range(256)) * 2000
            body = (f"--{boundary}\r\nContent-Type: application/json\r\n\r\n"
                    '{"to":[{"phoneNumber":"+15550100002"}]}\r\n'
                    f"--{boundary}\r\nContent-Type: application/pdf\r\n"
                    'Content-Disposition: form-data; name="attachment"; filename="a.pdf"\r\n\r\n'
                    ).encode() + pdf + f"\r\n--{boundary}--\r\n".encode()
            headers = {"Content-Type": f"multipart/form-data; boundary={boundary}",
                       "X-Trace": "abc-123"}
            response = client.post(EXT + "/fax", content=body, headers=headers)
        after = emulator.counters()["api_401_by_code"].get("OAU-213", 0)
    assert response.status_code == 200, response.text
    assert response.json()["bodySha256"] == hashlib.sha256(body).hexdigest()
    assert after == before + 1  # exactly one refused attempt, then the replay


@pytest.mark.compression_variants  # replay/renewal: also against a compressing front end
@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "GET"])
def test_replay_keeps_method_path_query_headers(emulator_factory, proxy_factory,
                                                method: str) -> None:
    emulator, proxy, before = _proxy_with_revoked_token(emulator_factory, proxy_factory)
    with proxy.http() as client:
        body = b"" if method == "GET" else b"payload \x00\xff"
        response = client.request(method, "/restapi/v1.0/echo?a=1&b=two&b=3", content=body,
                                  headers={"X-Trace": "echo-1", "Content-Type": "text/x-odd"})
    assert response.status_code == 200, response.text
    echoed = response.json()
    assert emulator.counters()["api_401_by_code"].get("OAU-213", 0) == before + 1
    assert echoed["method"] == method
    assert echoed["path"] == "/restapi/v1.0/echo"
    assert echoed["query"] == "a=1&b=two&b=3"
    assert echoed["headers"]["x-trace"] == "echo-1"
    assert echoed["bodySha256"] == hashlib.sha256(body).hexdigest()
    assert echoed["bodyLength"] == len(body)


@pytest.mark.compression_variants  # replay/renewal: also against a compressing front end
def test_recording_download_is_byte_identical(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    size = 5 * 1024 * 1024
    path = f"/media/restapi/v1.0/account/~/recording/rec-42/content?size={size}"
    with proxy.http() as client:
        digest = hashlib.sha256()
        received = 0
        with client.stream("GET", path) as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():  # decoded, if the platform compressed it
                digest.update(chunk)
                received += len(chunk)
        assert received == size
        assert digest.hexdigest() == recording_sha256("rec-42", size)
        # and through the replay path (token revoked just before)
        emulator.revoke_all()
        replayed = client.get(path)
    assert replayed.status_code == 200
    assert hashlib.sha256(replayed.content).hexdigest() == recording_sha256("rec-42", size)


@pytest.mark.compression_variants  # replay/renewal: also against a compressing front end
@pytest.mark.parametrize("envelope", ["api", "oauth"])
def test_expired_token_is_refreshed_not_relogged(emulator_factory, proxy_factory,
                                                 envelope: str) -> None:
    emulator = emulator_factory("--auth-rate", "0", "--expired-envelope", envelope)
    proxy = proxy_factory(emulator.url)
    with proxy.http() as client:
        assert client.get(EXT).status_code == 200
        emulator.expire_now()
        before = emulator.counters()
        assert client.get(EXT).status_code == 200
    after = emulator.counters()
    assert after["api_401_by_code"].get("OAU-210", 0) == \
        before["api_401_by_code"].get("OAU-210", 0) + 1
    assert after["refreshes"] == before["refreshes"] + 1
    assert after["logins"] == before["logins"]


def test_unknown_client_never_reaches_upstream(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory()
    proxy = proxy_factory(emulator.url)
    before = emulator.counters()["api_requests"]
    cases = {"unknown": "wrong-key-0123456789", "empty": "", "basic": None}
    for name, key in cases.items():
        headers = {"Authorization": "Basic dXNlcjpwYXNz"} if key is None else (
            {"Authorization": f"Bearer {key}"} if key else {})
        response = httpx.get(proxy.url + EXT, headers=headers, timeout=10)
        assert response.status_code == 401, name
        body = response.json()
        assert body["errorCode"] == "TPX-CLIENT-UNKNOWN"
        assert "[[clients]]" in body["message"]
        assert "wrong-key" not in response.text
    after = emulator.counters()
    assert after["api_requests"] == before
    assert after["token_calls"] == 0  # the pool was never touched


def test_bearer_scheme_is_case_insensitive(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory()
    proxy = proxy_factory(emulator.url)
    response = httpx.get(proxy.url + "/restapi/v1.0/echo",
                         headers={"Authorization": f"bEaReR {APP_KEY}",
                                  "Proxy-Authorization": "Basic Zm9vOmJhcg=="}, timeout=10)
    assert response.status_code == 200
    headers = response.json()["headers"]
    assert "proxy-authorization" not in headers
    assert APP_KEY not in response.text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_upstream_down_before_first_token(proxy_factory) -> None:
    proxy = proxy_factory(f"http://127.0.0.1:{_free_port()}", token_wait_timeout=5)
    with proxy.http() as client:
        response = client.get(EXT)
    assert response.status_code == 502
    body = response.json()
    assert body["errorCode"] == "TPX-UPSTREAM-UNREACHABLE"
    assert "unreachable" in body["message"]


def test_upstream_down_with_cached_token(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory()
    proxy = proxy_factory(emulator.url)
    with proxy.http() as client:
        assert client.get(EXT).status_code == 200
    emulator.stop()
    with proxy.http() as client:  # a new connection: mitmproxy must connect upstream anew
        response = client.get(EXT)
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/json"
    assert response.json()["errorCode"] == "TPX-UPSTREAM-UNREACHABLE"


def test_other_oauth_paths_are_refused(emulator_factory, proxy_factory) -> None:
    """The proxy answers the token and revoke endpoints itself (login interception) and sends
    browsers to the platform's authorize page; any other OAuth path is refused."""
    emulator = emulator_factory()
    proxy = proxy_factory(emulator.url)
    authorize = httpx.get(proxy.url + "/restapi/oauth/authorize?response_type=code", timeout=10)
    assert authorize.status_code == 302
    assert authorize.headers["location"] == (emulator.url +
                                             "/restapi/oauth/authorize?response_type=code")
    response = httpx.post(proxy.url + "/restapi/oauth/introspect", timeout=10)
    assert response.status_code == 403
    assert response.json()["errorCode"] == "TPX-OAUTH-MANAGED"
    # wstoken is answered by the proxy (issue 18), to identified apps only
    response = httpx.post(proxy.url + "/restapi/oauth/wstoken", timeout=10)
    assert response.status_code == 401
    assert response.json()["errorCode"] == "TPX-CLIENT-UNKNOWN"
    assert emulator.counters()["token_calls"] == 0


def test_secrets_are_not_logged(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory("--access-ttl", "1", "--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    with proxy.http() as client:
        for _ in range(3):
            assert client.get(EXT).status_code == 200
            time.sleep(0.6)
        emulator.revoke_all()
        assert client.get(EXT).status_code == 200
    proxy.stop()
    logs = proxy.logs()
    for secret in ("demo-client-secret", "demo-jwt-credential", APP_KEY):
        assert secret not in logs


@pytest.mark.compression_variants  # replay/renewal: also against a compressing front end
def test_dead_refresh_token_logs_in_again(emulator_factory, proxy_factory) -> None:
    """Access and refresh token both expired (the two-weeks-idle case): one new login."""
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    with proxy.http() as client:
        assert client.get(EXT).status_code == 200
        emulator.expire_now(refresh=True)
        before = emulator.counters()
        assert client.get(EXT).status_code == 200
    after = emulator.counters()
    assert after["logins"] == before["logins"] + 1
    assert after["token_calls"] - before["token_calls"] <= 2  # failed refresh + login


def test_password_grant_account(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    account = {"name": "pw", "client_id": "demo-client-id",
               "client_secret": "demo-client-secret", "grant": "password",
               "username": "+15550100001", "extension": "101", "password": "demo-password"}
    proxy = proxy_factory(emulator.url, accounts=[account],
                          clients=[{"name": "app", "account": "pw", "key": APP_KEY}])
    with proxy.http() as client:
        response = client.get(EXT)
    assert response.status_code == 200
    assert emulator.counters()["token_calls_by_grant"]["password"] == 1


def test_wrong_secret_gets_clear_503_without_retry_storm(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    account = {"name": "main", "client_id": "demo-client-id", "client_secret": "wrong-secret",
               "grant": "jwt", "jwt": "demo-jwt-credential"}
    proxy = proxy_factory(emulator.url, accounts=[account])
    with proxy.http() as client:
        answers = [client.get(EXT) for _ in range(20)]
    assert {a.status_code for a in answers} == {503}
    body = answers[0].json()
    assert body["errorCode"] == "TPX-ACCOUNT-MISCONFIGURED"
    assert "OAU-153" in body["message"]
    assert "Retry-After" in answers[0].headers
    assert emulator.counters()["token_calls"] == 1  # backing off, not retrying per request
    proxy.stop()
    assert "OAU-153" in proxy.logs() and "wrong-secret" not in proxy.logs()
