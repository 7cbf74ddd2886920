"""In-process tests of the identify addon (proxy_addon/gateway/identify.py): configured client
keys, virtual tokens and the throttle of guessing addresses."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

from proxy_addon.gateway import errors as proxy_errors
from proxy_addon.gateway.flow_context import attach, context_of
from proxy_addon.gateway.identify import Identify
from proxy_addon.gateway.throttle import BadKeyThrottle
from proxy_addon.store import StoreError
from tests.gateway.fakes import (
    APP_KEY,
    CLIENT,
    REQUEST_HEADERS,
    Account,
    FakeAccount,
    Pool,
    drive,
    flow,
    with_key,
)

VIRTUAL = "TPXA" + "v" * 43


class Virtual:
    def __init__(self, account: str | None = "main", code: str = "OAU-213",
                 fail: bool = False) -> None:
        self.account, self.code, self.fail = account, code, fail
        self.asked: list[str] = []

    async def resolve_access(self, token: str):  # type: ignore[no-untyped-def]
        self.asked.append(token)
        if self.fail:
            raise StoreError("down")
        if self.account is None:
            return None, self.code
        return SimpleNamespace(account=self.account), ""


def identify(pool: Pool | None = None, limit: int = 0,
             virtual: Virtual | None = None) -> Identify:
    pool = pool or Pool()
    accounts = [a.account for a in pool.accounts.values()]
    return Identify([CLIENT], accounts, pool, BadKeyThrottle(limit), virtual)  # type: ignore[arg-type]


def error_code(f) -> str:  # type: ignore[no-untyped-def]
    body = json.loads(f.response.content)
    return body["errors"][0]["errorCode"]


def test_configured_key_is_identified_with_its_account() -> None:
    pool = Pool()
    f = with_key()
    drive(identify(pool), f, REQUEST_HEADERS)
    context = context_of(f)
    assert f.response is None
    assert context is not None and context.client == CLIENT
    assert context.account is pool["main"]


def test_bearer_scheme_is_case_insensitive_and_repeated_keys_match() -> None:
    addon = identify()
    for _ in range(2):  # the second time from the matched-key cache
        f = flow(headers=[("Authorization", f"bearer  {APP_KEY} ")])
        drive(addon, f, REQUEST_HEADERS)
        assert context_of(f) is not None and context_of(f).client == CLIENT  # type: ignore[union-attr]


def test_unknown_key_is_answered_401_and_not_passed_on() -> None:
    f = with_key("not-a-configured-key")
    drive(identify(), f, REQUEST_HEADERS)
    assert f.response is not None and f.response.status_code == 401
    assert error_code(f) == proxy_errors.CLIENT_UNKNOWN
    assert context_of(f) is None  # nothing for inject: no token, no upstream


def test_missing_key_is_answered_401() -> None:
    f = flow()
    drive(identify(), f, REQUEST_HEADERS)
    assert f.response.status_code == 401
    assert "No client key was sent" in json.loads(f.response.content)["message"]


def test_virtual_token_is_resolved_to_its_account() -> None:
    other = FakeAccount(Account("other"))
    pool = Pool(FakeAccount(), other)
    virtual = Virtual("other")
    f = with_key(VIRTUAL)
    drive(identify(pool, virtual=virtual), f, REQUEST_HEADERS)
    context = context_of(f)
    assert virtual.asked == [VIRTUAL] and f.response is None
    assert context is not None and context.account is other
    assert context.client is not None and context.client.name == "other-login"


def test_unknown_or_expired_virtual_token_gets_the_platforms_401() -> None:
    f = with_key(VIRTUAL)
    drive(identify(virtual=Virtual(None, "OAU-213")), f, REQUEST_HEADERS)
    assert f.response.status_code == 401 and error_code(f) == "OAU-213"
    expired = with_key(VIRTUAL)
    drive(identify(virtual=Virtual(None, "OAU-210")), expired, REQUEST_HEADERS)
    assert error_code(expired) == "OAU-210" and context_of(expired) is None


def test_virtual_token_of_an_unconfigured_account_is_not_found() -> None:
    f = with_key(VIRTUAL)
    drive(identify(virtual=Virtual("gone")), f, REQUEST_HEADERS)
    assert error_code(f) == "OAU-213" and context_of(f) is None


def test_store_down_while_resolving_is_503() -> None:
    f = with_key(VIRTUAL)
    drive(identify(virtual=Virtual(fail=True)), f, REQUEST_HEADERS)
    assert f.response.status_code == 503


def test_without_logins_a_virtual_looking_token_is_just_an_unknown_key() -> None:
    f = with_key(VIRTUAL)
    drive(identify(virtual=None), f, REQUEST_HEADERS)
    assert error_code(f) == proxy_errors.CLIENT_UNKNOWN


class RecordingThrottle(BadKeyThrottle):
    """The real throttle, noting each delay it decides (the test reads decisions, not timings
    of a loaded machine)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.decided: list[tuple[str, float]] = []

    def delay(self, address: str, client_id: str | None = None) -> float:
        seconds = super().delay(address, client_id)
        self.decided.append((address, seconds))
        return seconds


def test_throttle_delays_a_guessing_address_only() -> None:
    throttle = RecordingThrottle(limit=2)
    pool = Pool()
    accounts = [a.account for a in pool.accounts.values()]
    addon = Identify([CLIENT], accounts, pool, throttle, None)  # type: ignore[arg-type]
    for _ in range(2):
        drive(addon, with_key("guess", address="10.0.0.9"), REQUEST_HEADERS)
    started = time.monotonic()
    for _ in range(3):  # beyond the limit: each refusal waits longer (50, 100, 150 ms)
        f = with_key("guess", address="10.0.0.9")
        drive(addon, f, REQUEST_HEADERS)
        assert f.response.status_code == 401
    assert time.monotonic() - started >= 0.3  # the refusals did wait (a lower bound only)
    drive(addon, with_key("guess", address="10.0.0.10"), REQUEST_HEADERS)
    good = with_key(address="10.0.0.9")
    drive(addon, good, REQUEST_HEADERS)
    assert good.response is None  # a right key from the guessing address passes, unthrottled
    assert [(a, round(s, 3)) for a, s in throttle.decided] == [
        ("10.0.0.9", 0.0), ("10.0.0.9", 0.0),
        ("10.0.0.9", 0.05), ("10.0.0.9", 0.1), ("10.0.0.9", 0.15),
        ("10.0.0.10", 0.0)]  # another address starts from nothing; the right key is no failure


def test_throttled_refusal_with_a_body_leaves_at_once() -> None:
    addon = identify(limit=1)
    drive(addon, with_key("guess"), REQUEST_HEADERS)
    started = time.monotonic()
    for _ in range(5):
        f = with_key("guess", method="POST", body=b"payload")
        drive(addon, f, REQUEST_HEADERS)
        assert f.response.status_code == 401
    assert time.monotonic() - started < 0.2


def test_flows_refused_or_marked_for_login_are_skipped() -> None:
    refused = with_key()
    refused.response = proxy_errors.error_response(400, proxy_errors.BAD_TARGET, "no")
    drive(identify(), refused, REQUEST_HEADERS)
    assert refused.response.status_code == 400 and context_of(refused) is None
    login = flow("/restapi/oauth/token", method="POST")
    attach(login).login = True
    drive(identify(), login, REQUEST_HEADERS)
    assert login.response is None and context_of(login).client is None  # type: ignore[union-attr]
