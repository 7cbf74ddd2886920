"""``tokenproxy check-config``: is this config ready to run, here and now, against its platform?

Role: the pre-flight check an operator runs before (or beside) ``tokenproxy run`` (the local
checks, ports and store, are in :mod:`.check_local`). The file
itself is validated by :mod:`proxy_addon.config` (exit 2 with file, key and reason, in cli.py);
this module then checks what the file cannot tell by itself and prints one line per check:
``OK`` or ``FAIL`` with a hint (``WARN`` and ``SKIP`` lines do not fail the run).

* **store**: the key in ``[store] key_env`` is usable, the backend opens, the key matches
  (StoreKeyMismatch). A SQLite file that does not exist yet is not created.
* **listen**, **metrics_listen**: free to bind, or held by a running tokenproxy (identified by
  its answers), or held by something else.
* **upstream** (not with ``--offline``): every platform of the config (the proxy's, and any
  account's own: sandbox beside production) reachable, TLS certificate verified.
* **accounts** (token calls only without ``--offline``):

  - ``jwt``/``password``: one login with the account's grant; the new session is revoked at
    once, so the check leaves the platform's 5-session cap as it found it;
  - ``refresh_token``/``authorization_code``: the single-use refresh token or code is never
    spent. The client id/secret are probed with a refresh grant carrying a deliberately invalid
    token: the platform authenticates the client first (``invalid_client``, OAU-153) and only
    then refuses the token (``invalid_grant``); no session is created or used;
  - on OAU-153 (invalid client), the same probe on the other environment (production <->
    sandbox) and the config's other platforms tells whether the credentials belong there;
  - every account: the stored session's state (none / live / expired / revoked: needs
    ``tokenproxy authorize``) and, while its access token lives, one read-only API call
    showing whether the platform still knows the session.

Nothing printed carries a secret: every line passes through the log redaction
(:data:`proxy_addon.ops.logs.SECRETS`), which knows the config's credentials and every token seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from dataclasses import replace
from urllib.parse import urlsplit

import httpx

from ..config import AccountConfig, Config, HostPort
from ..ops.admin import admin_token
from ..ops.logs import remember
from ..store import CorruptRecord, StoreError, TokenStore
from ..tokens.budget import budget_key
from ..tokens.token_set import TokenSet
from ..upstream.platform_errors import TokenEndpointError, error_codes
from ..upstream.token_endpoint import TokenEndpoint, UpstreamUnreachable
from .check_local import FAIL, OK, SKIP, WARN, Result, check_port, check_store, close_store
from .revoke import describe, is_tombstone

EXIT_OK, EXIT_FAILED = 0, 1

REACHABILITY_PATH = "/restapi"  # lists the API versions; answers without credentials
API_PROBE_PATH = "/restapi/v1.0/account/~/extension/~"  # read-only, any session may call it
# Sent as a refresh token to test client credentials: no platform can have issued it.
PROBE_REFRESH_TOKEN = "tokenproxy-check-config-probe-not-a-token"
UPSTREAM_CHECK_TIMEOUT = 15.0  # s at most for the reachability check


# -- hints ----------------------------------------------------------------------------------


def endpoint_hint(exc: TokenEndpointError, account: AccountConfig) -> str:
    """What the operator should do about a token-endpoint refusal."""
    if exc.rate_limited:
        wait = f"{exc.retry_after:g} s" if exc.retry_after is not None else "a minute"
        return (f"rate limited (CMN-301): wait Retry-After ({wait}) before checking again; "
                "every call meanwhile restarts the platform's penalty for this app")
    if exc.code == "OAU-153" or exc.error == "invalid_client":
        return "client_id/client_secret wrong for this server (sandbox vs production?)"
    if exc.code == "OAU-251" or exc.error == "unauthorized_client":
        return (f"the app does not allow the {account.grant} grant: enable it in the app's "
                "settings in the developer console")
    if exc.code == "OAU-140" or exc.error == "invalid_grant":
        if account.grant == "jwt":
            return "JWT expired or revoked, or issued for another app"
        if account.grant == "password":
            return ("username/extension/password wrong (the sandbox account's credentials, not "
                    "the developer-portal login)")
    if exc.status >= 500:
        return "the platform's token endpoint failed: try again later"
    return exc.hint


def transport_hint(exc: Exception, config: Config) -> str:
    text = str(exc)
    upstream = config.proxy.upstream
    if isinstance(exc, httpx.TimeoutException) or "timed out" in text:
        return f"upstream did not answer in time: check [proxy] upstream ({upstream}), " \
               "firewalls and HTTPS_PROXY"
    if "CERTIFICATE" in text.upper() or "SSL" in text.upper() or "TLS" in text.upper():
        return ("TLS failed: the upstream's certificate is not trusted here (a TLS-inspecting "
                "proxy? point SSL_CERT_FILE at its CA bundle), or the port does not speak TLS "
                "(http vs https in [proxy] upstream)")
    if "Name or service not known" in text or "nodename" in text or "getaddrinfo" in text \
            or "Temporary failure in name resolution" in text:
        return f"cannot resolve the upstream's host name: check [proxy] upstream ({upstream})"
    if config.emulator.enabled:
        return ("upstream unreachable: it is the bundled emulator ([emulator] enabled), which "
                "only runs inside `tokenproxy run`; start that, or use --offline")
    return f"upstream unreachable: check [proxy] upstream ({upstream})"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__




# -- upstream -------------------------------------------------------------------------------


def platforms_of(config: Config) -> list[str]:
    """Every platform the config's accounts live on, the proxy's first."""
    found = [config.proxy.upstream]
    for account in config.accounts:
        if account.upstream and account.upstream not in found:
            found.append(account.upstream)
    return found


async def check_upstream(config: Config, http: httpx.AsyncClient,
                         upstream: str | None = None) -> Result:
    """One platform (default the proxy's) reachable, its certificate verified."""
    name = "upstream" if upstream in (None, config.proxy.upstream) else f"upstream {upstream}"
    upstream = upstream or config.proxy.upstream
    parts = urlsplit(upstream)
    started = time.monotonic()
    try:
        response = await http.get(upstream + REACHABILITY_PATH,
                                  timeout=min(config.proxy.upstream_timeout,
                                              UPSTREAM_CHECK_TIMEOUT))
    except httpx.HTTPError as exc:
        return Result(FAIL, name, f"cannot reach {upstream}: {_reason(exc)}",
                      transport_hint(exc, config))
    elapsed = (time.monotonic() - started) * 1000
    if parts.scheme == "https":
        tls = ("TLS certificate verified" if config.proxy.verify_upstream_tls
               else "TLS verification OFF (tests only)")
    else:
        tls = "plain HTTP"
    detail = f"{upstream} answered (HTTP {response.status_code}, {elapsed:.0f} ms, {tls})"
    host = parts.hostname or ""
    if parts.scheme == "http" and not HostPort(host, 0).is_loopback:
        return Result(WARN, name, detail,
                      "plain HTTP beyond this host: credentials and tokens travel in clear")
    return Result(OK, name, detail)


# -- accounts -------------------------------------------------------------------------------


async def check_login(account: AccountConfig, endpoint: TokenEndpoint,
                      elsewhere: tuple[str, ...] = ()) -> Result:
    """jwt/password: log in, then revoke the new session at once. On OAU-153 the client
    credentials are tried on the platforms in ``elsewhere`` (sandbox vs production)."""
    name = f"account {account.name}"
    try:
        tokens = await endpoint.login(account)
    except TokenEndpointError as exc:
        return Result(FAIL, name, f"{account.grant} grant refused: {exc}",
                      await _hint_elsewhere(exc, account, endpoint, elsewhere))
    except UpstreamUnreachable as exc:
        return Result(FAIL, name, str(exc), f"upstream unreachable: check [proxy] upstream "
                                            f"({endpoint.origin_of(account)})")
    remember(tokens.access_token, tokens.refresh_token)
    try:
        await endpoint.revoke(account, tokens.refresh_token or tokens.access_token)
    except (TokenEndpointError, UpstreamUnreachable) as exc:
        return Result(FAIL, name, f"{account.grant} grant accepted, but revoking the test "
                                  f"session failed: {exc}",
                      "the test session holds one of the user+app's 5 sessions until it "
                      "expires")
    return Result(OK, name, f"{account.grant} grant accepted by the platform (owner id "
                            f"{tokens.owner_id or '?'}); the test session was revoked at once")


async def check_client(account: AccountConfig, endpoint: TokenEndpoint,
                       elsewhere: tuple[str, ...] = ()) -> Result:
    """refresh_token/authorization_code: client credentials, without spending anything."""
    name = f"account {account.name} client"
    how = ("probe: a refresh grant with a deliberately invalid token, never the account's "
           "own; no session created or used")
    try:
        tokens = await endpoint.refresh(account, PROBE_REFRESH_TOKEN)
    except UpstreamUnreachable as exc:
        return Result(FAIL, name, str(exc), f"upstream unreachable: check [proxy] upstream "
                                            f"({endpoint.origin_of(account)})")
    except TokenEndpointError as exc:
        if exc.rate_limited or exc.status >= 500 or exc.code == "OAU-153" \
                or exc.error in ("invalid_client", "unauthorized_client"):
            if exc.error == "unauthorized_client" or exc.code == "OAU-251":
                return Result(FAIL, name, f"client accepted, but the app may not use the "
                                          f"refresh_token grant: {exc}",
                              "enable Refresh Token for the app in the developer console: "
                              "without it the proxy cannot keep the session alive")
            return Result(FAIL, name, f"{exc} ({how})",
                          await _hint_elsewhere(exc, account, endpoint, elsewhere))
        if exc.error == "invalid_grant":
            return Result(OK, name, f"client_id/client_secret accepted: the platform "
                                    f"authenticated the client, then refused the token ({how})")
        return Result(WARN, name, f"cannot tell whether the client credentials are right: "
                                  f"{exc} ({how})",
                      "no other call checks them without a session; they are checked for "
                      f"real at the next `tokenproxy authorize {account.name}` or refresh")
    remember(tokens.access_token, tokens.refresh_token)  # cannot happen; do not leak a session
    with contextlib.suppress(TokenEndpointError, UpstreamUnreachable):
        await endpoint.revoke(account, tokens.refresh_token or tokens.access_token)
    return Result(WARN, name, "the platform accepted an invalid refresh token (session "
                              "revoked at once)", "is [proxy] upstream really the platform?")


# The platform's two environments: credentials of one are refused by the other with OAU-153
# (../shared/platform.md; ringcentral-api-docs docs/getting-started: sandbox and production
# have their own server URL and app credentials)
ENVIRONMENTS = {
    "https://platform.ringcentral.com": "production",
    "https://platform.devtest.ringcentral.com": "sandbox",
}


def other_platforms(config: Config, account: AccountConfig) -> tuple[str, ...]:
    """Where to try an account's client credentials the platform called invalid: the other
    environment of a RingCentral platform, and every other platform of the config."""
    own = account.upstream or config.proxy.upstream
    others = [url for url in ENVIRONMENTS if own in ENVIRONMENTS and url != own]
    others += [url for url in platforms_of(config) if url != own and url not in others]
    return tuple(others)


async def _hint_elsewhere(exc: TokenEndpointError, account: AccountConfig,
                          endpoint: TokenEndpoint, elsewhere: tuple[str, ...]) -> str:
    """The hint for a refusal; for OAU-153 (invalid client), whether the same client
    credentials work on another platform (the forum threads' most common mistake: sandbox
    credentials against production, or the reverse). Probed with a deliberately invalid
    refresh token: the platform authenticates the client first, and no session is made."""
    hint = endpoint_hint(exc, account)
    if not elsewhere or not (exc.code == "OAU-153" or exc.error == "invalid_client"):
        return hint
    own = endpoint.origin_of(account)
    unreachable = []
    for other in elsewhere:
        try:
            await endpoint.refresh(replace(account, upstream=other), PROBE_REFRESH_TOKEN)
        except UpstreamUnreachable:
            unreachable.append(other)
            continue
        except TokenEndpointError as probe:
            if probe.error != "invalid_grant":
                continue
        label = f" ({ENVIRONMENTS[other]})" if other in ENVIRONMENTS else ""
        return (f"these client credentials are refused by {own} but accepted by {other}"
                f"{label}: the app belongs to that environment. Set upstream = \"{other}\" in "
                f"this [[accounts]] table, or use the app's credentials for {own}")
    tried = [o for o in elsewhere if o not in unreachable]
    return hint + (f"; not accepted by {', '.join(tried)} either" if tried else "") + \
        (f"; {', '.join(unreachable)} could not be asked" if unreachable else "")


async def check_session(account: AccountConfig, store: TokenStore | None, store_ok: bool,
                        http: httpx.AsyncClient | None, upstream: str) -> Result:
    """The stored session's state; while its access token lives, ask the platform."""
    name = f"account {account.name} session"
    login = account.can_login
    authorize = f"run `tokenproxy authorize {account.name}`"
    if store is None:
        if store_ok:  # a SQLite file not created yet
            return _no_session(account, name)
        return Result(SKIP, name, "the store is not usable (see above)")
    try:
        record = await store.load(account.name)
    except CorruptRecord as exc:
        return Result(WARN if login else FAIL, name, str(exc),
                      "the proxy logs in again and overwrites it" if login else authorize)
    except StoreError as exc:
        return Result(FAIL, name, f"reading the store: {exc}")
    if record is None:
        return _no_session(account, name)
    if is_tombstone(record.tokens):
        detail = f"revoked by `tokenproxy revoke` (generation {record.generation})"
        if login:
            return Result(OK, name, detail + ": the proxy logs in again on first use")
        return Result(FAIL, name, detail, authorize)
    now = time.time()
    tokens = record.tokens
    remember(tokens.access_token, tokens.refresh_token)
    detail = f"stored, {describe(record, now)}"
    if not (tokens.access_alive(now) or tokens.refresh_alive(now)):
        if login:
            return Result(OK, name, detail + ": the proxy logs in again on first use")
        return Result(FAIL, name, detail + ": the session has expired", authorize)
    if http is None or not tokens.access_alive(now):
        note = "" if http is None else (
            " (not asked on the platform: that would spend the single-use refresh token; "
            "the proxy refreshes it on first use)")
        return Result(OK, name, detail + note)
    return await _ask_platform(account, name, detail, tokens, http, upstream)


def _no_session(account: AccountConfig, name: str) -> Result:
    if account.can_login:
        return Result(OK, name, "none stored: the proxy logs in on first use")
    if account.grant == "refresh_token":
        return Result(WARN, name, "none stored: the proxy redeems the config's refresh_token on "
                                  "first use (single-use: it cannot be checked without "
                                  "spending it)",
                      f"if it was used elsewhere already, run `tokenproxy authorize "
                      f"{account.name}`")
    return Result(WARN, name, "none stored: the proxy tries the config's auth_code once on "
                              "first use (codes work once and live 60 s)",
                  f"most likely you need `tokenproxy authorize {account.name}`")


async def _ask_platform(account: AccountConfig, name: str, detail: str, tokens: TokenSet,
                        http: httpx.AsyncClient, upstream: str) -> Result:
    try:
        response = await http.get(upstream + API_PROBE_PATH,
                                  headers={"Authorization": f"Bearer {tokens.access_token}"})
    except httpx.HTTPError as exc:
        return Result(WARN, name, f"{detail}; could not ask the platform: {_reason(exc)}")
    if response.status_code != 401:
        return Result(OK, name, f"{detail}; the platform accepts it "
                                f"(HTTP {response.status_code})")
    codes = [c for c in error_codes(response.content) if c != "TokenInvalid"]
    code = codes[0] if codes else "401"
    if code in ("OAU-210", "OAU-128"):
        return Result(WARN, name, f"{detail}; the platform says it expired ({code})",
                      "clocks disagree? the proxy renews it on first use")
    dead = f"{detail}; the platform no longer knows the session ({code}: revoked or evicted)"
    if account.can_login:
        return Result(OK, name, dead + ": the proxy logs in again on first use")
    return Result(FAIL, name, dead, f"run `tokenproxy authorize {account.name}`")


# -- the run --------------------------------------------------------------------------------


async def run_checks(config: Config, offline: bool) -> list[Result]:
    """Every check, printed as it completes; returns the results."""
    results: list[Result] = []

    def emit(result: Result) -> None:
        results.append(result)
        print(result.line(), flush=True)

    proxy = config.proxy
    emit(Result(OK, "config", f"{config.source} ({len(config.accounts)} account(s), "
                              f"{len(config.clients)} client(s), upstream {proxy.upstream})"))
    for client in config.clients:
        if client.allow is None:
            emit(Result(WARN, f"client {client.name}", "no allow list: it may call the whole "
                        f"API of account {client.account}",
                        'list what it calls: allow = ["GET /restapi/v1.0/account/~/extension/'
                        '~/call-log", "POST /restapi/v1.0/account/~/extension/~/sms"]'))
    store_result, store = await check_store(config)
    emit(store_result)
    emit(check_port("listen", proxy.listen, "proxy"))
    if proxy.metrics_listen is not None:
        emit(check_port("metrics_listen", proxy.metrics_listen, "status", admin_token(proxy)))
    else:
        emit(Result(OK, "metrics_listen", "off (no /metrics, /status, /readyz)"))
    try:
        if offline:
            emit(Result(SKIP, "upstream", "--offline: no call to the platform"))
            for account in config.accounts:
                emit(Result(SKIP, f"account {account.name}", "--offline: credentials not tried"))
                emit(await check_session(account, store, store_result.status == OK, None,
                                         account.upstream or proxy.upstream))
            return results
        async with httpx.AsyncClient(timeout=proxy.upstream_timeout,
                                     verify=proxy.verify_upstream_tls,
                                     follow_redirects=False) as http:
            reachable: dict[str, bool] = {}
            for platform in platforms_of(config):
                result = await check_upstream(config, http, platform)
                reachable[platform] = result.status != FAIL
                emit(result)
            endpoint = TokenEndpoint(proxy.upstream, http)
            calls: Counter[tuple[str, str]] = Counter()
            # leave one call of the app's budget to running proxies (0 = no budget)
            allowed = max(1, proxy.auth_budget_calls - 1) if proxy.auth_budget_calls else 0
            for account in config.accounts:
                label = f"account {account.name}" + ("" if account.can_login else " client")
                platform = endpoint.origin_of(account)
                if not reachable.get(platform, True):
                    emit(Result(SKIP, label, f"upstream unreachable ({platform})"))
                elif allowed and calls[budget_key(account)] >= allowed:
                    emit(Result(SKIP, label, f"not tried: {allowed} token call(s) for this user "
                                             f"of client id {account.client_id} already made "
                                             f"by this check",
                                f"the platform allows about 5 a minute per user and app "
                                f"([proxy] auth_budget_calls = {proxy.auth_budget_calls})"))
                else:
                    calls[budget_key(account)] += 1
                    elsewhere = other_platforms(config, account)
                    emit(await (check_login(account, endpoint, elsewhere) if account.can_login
                                else check_client(account, endpoint, elsewhere)))
                emit(await check_session(account, store, store_result.status == OK,
                                         http if reachable.get(platform, True) else None,
                                         platform))
    finally:
        if store is not None:
            await close_store(store)
    return results


def main(config: Config, offline: bool) -> int:
    try:
        results = asyncio.run(run_checks(config, offline))
    except KeyboardInterrupt:
        return EXIT_FAILED
    failed = [r for r in results if r.status == FAIL]
    if failed:
        print(f"{len(failed)} check(s) failed: "
              f"{', '.join(r.name for r in failed)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
