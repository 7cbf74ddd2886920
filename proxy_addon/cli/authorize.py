"""``tokenproxy authorize ACCOUNT``: a person re-authorizes an account by logging in.

For accounts that cannot log in by themselves (``refresh_token`` and ``authorization_code``
grants) once their session is dead. Runs the authorization-code flow with PKCE: a local
callback listener, the URL to open printed on stdout, the code exchanged for tokens, and the
new session written to the shared store — where running proxies pick it up within seconds.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import sys
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
from aiohttp import web

from ..config import Config
from ..store import StoreError, StoreKeyMismatch
from ..store.factory import StoreConfigError, open_store
from ..upstream.platform_errors import TokenEndpointError
from ..upstream.token_endpoint import TokenEndpoint, UpstreamUnreachable

AUTHORIZE_PATH = "/restapi/oauth/authorize"


class AuthorizeError(Exception):
    """The flow failed; the message says why and what to do."""


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


async def authorize(config: Config, account_name: str, redirect_uri: str | None,
                    wait_seconds: float, login_hint: str | None = None) -> str:
    """Run the flow; returns a one-line summary. Raises AuthorizeError."""
    try:
        account = config.account(account_name)
    except KeyError:
        names = ", ".join(a.name for a in config.accounts)
        raise AuthorizeError(f"no account {account_name!r} in {config.source} "
                             f"(accounts: {names})") from None
    redirect = redirect_uri or account.redirect_uri or "http://127.0.0.1:0/callback"
    parts = urlsplit(redirect)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise AuthorizeError(f"redirect URI {redirect!r} must be http on loopback, so that "
                             "this command can receive the code (pass --redirect-uri)")
    try:
        store = open_store(config.store)
        await store.open()
    except (StoreConfigError, StoreKeyMismatch, StoreError) as exc:
        raise AuthorizeError(f"store: {exc}") from None

    received: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()

    async def callback(request: web.Request) -> web.Response:
        if "error" in request.query:
            if not received.done():
                received.set_exception(AuthorizeError(
                    f"the platform refused: {request.query.get('error')} "
                    f"{request.query.get('error_description', '')}".strip()))
            return web.Response(text="Authorization failed; see the terminal.\n", status=400)
        code, state = request.query.get("code", ""), request.query.get("state", "")
        if not code:
            return web.Response(text="No code in this request.\n", status=400)
        if not received.done():
            received.set_result((code, state))
        return web.Response(text="tokenproxy: account authorized. You can close this tab.\n")

    app = web.Application()
    app.router.add_get(parts.path or "/", callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, parts.hostname, parts.port or 80)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        redirect = urlunsplit(("http", f"{parts.hostname}:{port}", parts.path or "/", "", ""))
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(16)
        query = {"response_type": "code", "client_id": account.client_id,
                 "redirect_uri": redirect, "state": state, "code_challenge": challenge,
                 "code_challenge_method": "S256"}
        if login_hint:
            query["login_hint"] = login_hint
        url = f"{account.upstream or config.proxy.upstream}{AUTHORIZE_PATH}?{urlencode(query)}"
        print(f"Open this URL in a browser and log in as the account's user:\n  {url}",
              flush=True)
        try:
            code, got_state = await asyncio.wait_for(received, wait_seconds)
        except TimeoutError:
            raise AuthorizeError(f"no authorization arrived within {wait_seconds:g} s") from None
        if not secrets.compare_digest(got_state, state):
            raise AuthorizeError("the callback's state does not match: ignored (possible CSRF)")
    finally:
        await runner.cleanup()

    async with httpx.AsyncClient(timeout=config.proxy.upstream_timeout,
                                 verify=config.proxy.verify_upstream_tls) as http_client:
        endpoint = TokenEndpoint(config.proxy.upstream, http_client)
        try:
            tokens = await endpoint.exchange_code(account, code, redirect, verifier)
        except TokenEndpointError as exc:
            raise AuthorizeError(f"code exchange failed: {exc} — hint: {exc.hint}") from None
        except UpstreamUnreachable as exc:
            raise AuthorizeError(str(exc)) from None
    try:
        for _ in range(5):
            current = await store.generation(account.name)
            if await store.compare_and_set(account.name, current, tokens):
                break
        else:
            raise AuthorizeError("the store kept changing; try again")
    except StoreError as exc:
        raise AuthorizeError(f"could not save the new session: {exc}") from None
    finally:
        await store.close()
    return (f"account {account.name} authorized (generation {current + 1}); running proxies "
            "pick up the new session within a few seconds")


def main(config: Config, account: str, redirect_uri: str | None, timeout: float,
         login_hint: str | None) -> int:
    try:
        summary = asyncio.run(authorize(config, account, redirect_uri, timeout, login_hint))
    except AuthorizeError as exc:
        print(f"tokenproxy authorize: {exc}", file=sys.stderr)
        return 1
    print(summary, flush=True)
    return 0
