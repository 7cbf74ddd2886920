"""``tokenproxy revoke ACCOUNT``: a clean logout of the session the proxies hold for an account.

Reads the account's stored pair, revokes it on the platform (``POST /restapi/oauth/revoke``,
which kills the whole session), then replaces it in the shared store so that no proxy process
uses or restores it.

The store has no delete operation, on purpose: generations only grow, and every writer is
fenced by compare-and-set on the generation. So the pair is not deleted but *superseded*: a
**tombstone** (a token set without a usable token) is written as generation ``g + 1`` with
``compare_and_set(account, g, …)``, under the account's renewal lock:

* the lock makes the revocation wait for a renewal under way in another process, and keeps
  renewals out while it runs, so the pair revoked is the newest one;
* a replica's write based on generation ``g`` (a renewal it started earlier) now fails its
  compare-and-set instead of silently restoring the revoked pair; Redis publishes the new
  generation to every replica at once;
* a proxy that (re)starts reads the tombstone instead of nothing: it does not fall back to
  the config's one-time ``refresh_token`` or ``auth_code``;
* a deleted row would reset the generation to 0 and let any stale write recreate it.

Running proxies still hold the revoked token in memory: their next request meets OAU-213 and
they renew as for any revoked session — ``jwt``/``password`` accounts log in again by
themselves, ``refresh_token``/``authorization_code`` accounts enter ``reauth_required`` until
``tokenproxy authorize ACCOUNT``. The account's virtual grants (apps that logged in through
the proxy) end too: a record in the store says that grants made until now are dead
(:meth:`VirtualTokens.end_account`). No token value is ever printed.

``tokenproxy revoke --virtual ACCOUNT|CLIENT_ID`` leaves the account's own session alone and
lists the virtual grants (one per login through the proxy, with its refreshes) of the account,
or of every account of that client id, from the store's per-account index; then ends them
(``--list``: only lists). A grant is shown by a short digest of its lineage id, never a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator

import httpx

from ..config import AccountConfig, Config
from ..ops.logs import SECRETS, remember
from ..store import CorruptRecord, StoredTokens, StoreError, StoreKeyMismatch, TokenStore
from ..store.factory import StoreConfigError, open_store
from ..tokens.token_set import TokenSet
from ..upstream.platform_errors import DEAD_REFRESH_CODES, TokenEndpointError
from ..upstream.token_endpoint import TokenEndpoint, UpstreamUnreachable
from ..virtual.grants import VirtualTokens
from .status import format_duration

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

# The tombstone's "token": shorter than 6 characters, so log redaction never learns it as a
# secret, and never a token the platform could issue. A record must hold some token to be
# readable (TokenSet.from_json), and the tombstone must read as "no session", not as corrupt.
TOMBSTONE_TOKEN = "-"


class RevokeError(Exception):
    """The revocation failed; the message says what happened and what to do."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def tombstone(now: float) -> TokenSet:
    """What a revoked account's store record becomes: no usable token, already expired, no
    refresh token (so proxies never schedule a keep-alive for it)."""
    return TokenSet(TOMBSTONE_TOKEN, now, None, None, issued_at=now)


def is_tombstone(tokens: TokenSet) -> bool:
    return tokens.access_token == TOMBSTONE_TOKEN and tokens.refresh_token is None


def describe(record: StoredTokens, now: float) -> str:
    """A stored pair in words, without any token value."""
    tokens = record.tokens
    parts = [f"generation {record.generation}"]
    if tokens.session_id:
        parts.append(f"session id {tokens.session_id}")
    if tokens.owner_id:
        parts.append(f"owner id {tokens.owner_id}")
    parts.append("access token " + (_valid_for(tokens.access_expires_at - now)
                                    if tokens.access_alive(now) else "expired"))
    if tokens.refresh_token:
        if tokens.refresh_expires_at is None:
            parts.append("refresh token without expiry")
        else:
            parts.append("refresh token " + (_valid_for(tokens.refresh_expires_at - now)
                                             if tokens.refresh_alive(now) else "expired"))
    else:
        parts.append("no refresh token")
    return ", ".join(parts)


def _valid_for(seconds: float) -> str:
    return "valid " + format_duration(max(0.0, seconds))


def aftermath(account: AccountConfig) -> str:
    """What running proxies do next, for the output and the help text."""
    if account.can_login:
        return (f"Running proxies still hold the revoked token in memory: their next request "
                f"for {account.name} gets OAU-213 from the platform and they log in again with "
                f"the {account.grant} grant (a new session), invisibly to apps. Stop them first "
                "if no new session may be made.")
    return (f"Running proxies will answer 503 TPX-REAUTH-REQUIRED for {account.name} from its "
            f"next request until a person runs `tokenproxy authorize {account.name}`: the "
            f"{account.grant} grant cannot start a session by itself.")


def _owner() -> str:
    return f"revoke:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _confirm(account: AccountConfig) -> bool:
    if not sys.stdin.isatty():
        raise RevokeError("refusing to revoke without confirmation: stdin is not a terminal; "
                          "pass --yes", EXIT_BAD_INPUT)
    answer = input(f"Revoke account {account.name}'s session on the platform and clear it "
                   f"from the store? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _confirm_grants(count: int) -> bool:
    if not sys.stdin.isatty():
        raise RevokeError("refusing to end grants without confirmation: stdin is not a "
                          "terminal; pass --yes", EXIT_BAD_INPUT)
    return input(f"End these {count} virtual grant(s)? [y/N] ").strip().lower() in ("y", "yes")


class _Lock:
    """The account's renewal lock, kept extended while held (a slow platform call must not
    let the lease run out under us)."""

    def __init__(self, store: TokenStore, account: str, lease: float) -> None:
        self.store, self.account, self.lease, self.owner = store, account, lease, _owner()
        self._beat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _Lock:
        give_up = time.monotonic() + self.lease + 1.0  # a crashed holder's lease runs out
        while not await self.store.acquire_lock(self.account, self.owner, self.lease):
            if time.monotonic() >= give_up:
                raise RevokeError(f"another proxy process holds account {self.account}'s "
                                  "renewal lock and has not released it; try again")
            await asyncio.sleep(0.05)
        self._beat = asyncio.get_running_loop().create_task(self._extend())
        return self

    async def _extend(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            with contextlib.suppress(StoreError):
                await self.store.acquire_lock(self.account, self.owner, self.lease)

    async def __aexit__(self, *exc: object) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
        with contextlib.suppress(StoreError):
            await self.store.release_lock(self.account, self.owner)


async def _load(store: TokenStore, name: str) -> StoredTokens | None:
    try:
        return await store.load(name)
    except CorruptRecord as exc:
        raise RevokeError(f"{exc}: there is no pair to revoke on the platform. Sessions it "
                          "held expire by themselves; the next renewal overwrites it") from None


async def _revoke_on_platform(config: Config, account: AccountConfig, tokens: TokenSet,
                              now: float) -> str:
    """Revoke the session; returns what happened. RevokeError when the session may live on."""
    token = (tokens.refresh_token if tokens.refresh_alive(now) else
             tokens.access_token if tokens.access_alive(now) else None)
    if token is None:
        return "the stored session had expired: nothing left to revoke on the platform"
    remember(tokens.access_token, tokens.refresh_token)
    async with httpx.AsyncClient(timeout=config.proxy.upstream_timeout,
                                 verify=config.proxy.verify_upstream_tls,
                                 follow_redirects=False) as http_client:
        endpoint = TokenEndpoint(config.proxy.upstream, http_client)
        try:
            await endpoint.revoke(account, token)
        except UpstreamUnreachable as exc:
            raise RevokeError(f"{exc}; nothing was changed (hint: upstream unreachable: check "
                              "[proxy] upstream)") from None
        except TokenEndpointError as exc:
            if exc.status < 500 and exc.status != 429 and (
                    exc.error == "invalid_grant" or exc.code in DEAD_REFRESH_CODES):
                return f"the platform says the session was already gone ({exc.code or exc.error})"
            raise RevokeError(f"the platform refused the revocation: {exc} — hint: {exc.hint}; "
                              "the session is still live and the store unchanged") from None
    return f"revoked on the platform ({endpoint.origin_of(account)})"


async def revoke(config: Config, account_name: str, assume_yes: bool) -> list[str]:
    """Revoke and clear the account's session; returns the lines to print."""
    try:
        account = config.account(account_name)
    except KeyError:
        names = ", ".join(a.name for a in config.accounts)
        raise RevokeError(f"no account {account_name!r} in {config.source} "
                          f"(accounts: {names})", EXIT_BAD_INPUT) from None
    async with _opened_store(config) as store:
        return await _revoke_with(config, account, store, assume_yes)


@contextlib.asynccontextmanager
async def _opened_store(config: Config) -> AsyncIterator[TokenStore]:
    """The configured store, open, closed on the way out; a store failure inside (or while
    opening) becomes a :class:`RevokeError` that says what to check."""
    try:
        store = open_store(config.store)
    except StoreConfigError as exc:
        raise RevokeError(f"store: {exc}", EXIT_BAD_INPUT) from None
    try:
        await store.open()
        yield store
    except StoreKeyMismatch as exc:
        raise RevokeError(f"store: {exc} (hint: set {config.store.key_env} to the key the "
                          "proxies use)") from None
    except StoreError as exc:
        raise RevokeError(f"store: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            await store.close()


async def _end_virtual(store: TokenStore, name: str) -> str:
    await VirtualTokens(store).end_account(name)
    return (f"  virtual grants of {name} ended: apps that logged in through the proxy must log "
            "in again (running proxies honour it within 5 s)")


async def revoke_session(config: Config, account: AccountConfig, store: TokenStore
                         ) -> list[str]:
    """Revoke and clear ``account``'s session without asking, through an open ``store`` (a
    reload removed the account: :mod:`.live_accounts`); the lines say what happened."""
    return await _revoke_with(config, account, store, assume_yes=True)


async def _revoke_with(config: Config, account: AccountConfig, store: TokenStore,
                       assume_yes: bool) -> list[str]:
    name = account.name
    record = await _load(store, name)
    if record is None or is_tombstone(record.tokens):
        return [f"nothing to revoke: account {name} has no stored session"
                + (" (revoked earlier)" if record is not None else "") + ".",
                await _end_virtual(store, name),
                "A proxy that holds a session the store never saw (store down at the time) "
                "keeps it until restarted."]
    if not assume_yes:
        print(f"account {name} ({account.grant} grant): stored session "
              f"{describe(record, time.time())}", flush=True)
        if not _confirm(account):
            raise RevokeError("not confirmed: nothing was changed", EXIT_BAD_INPUT)
    async with _Lock(store, name, config.store.lock_lease):
        record = await _load(store, name)  # the newest pair, now that no renewal runs
        if record is None or is_tombstone(record.tokens):
            return [f"nothing to revoke: account {name}'s session was cleared meanwhile."]
        now = time.time()
        revoked = await _revoke_on_platform(config, account, record.tokens, now)
        lines = [f"account {name} ({account.grant} grant): session "
                 f"{describe(record, now)}", f"  {revoked}", await _end_virtual(store, name)]
        for _ in range(3):
            if await store.compare_and_set(name, record.generation, tombstone(time.time())):
                lines.append(f"  cleared from the store: generation {record.generation} "
                             f"replaced by an empty generation {record.generation + 1} "
                             "(replicas cannot write the old pair back)")
                lines.append(aftermath(account))
                return lines
            newer = await _load(store, name)  # someone wrote despite the lock
            if newer is None or is_tombstone(newer.tokens):
                lines.append("  the store was cleared by another process meanwhile")
                return lines
            if newer.tokens.session_id and newer.tokens.session_id != \
                    record.tokens.session_id:
                lines.append(f"  a proxy stored a new session meanwhile (generation "
                             f"{newer.generation}, session id {newer.tokens.session_id}); "
                             "it was left alone: run revoke again to end it too")
                return lines
            record = newer  # the same (now dead) session, rotated: clear that generation
        raise RevokeError(f"the store's generation for {name} keeps changing; the session is "
                          "revoked on the platform but the store still holds it: run the "
                          "command again")


async def revoke_virtual(config: Config, target: str, assume_yes: bool,
                         list_only: bool) -> list[str]:
    """List (and end, unless ``list_only``) the virtual grants of the account named
    ``target``, or of the accounts of client id ``target``; returns the lines to print."""
    names = {a.name for a in config.accounts}
    if target in names:
        accounts, client_id = [config.account(target)], None
    else:
        accounts = [a for a in config.accounts if a.client_id == target]
        client_id = target
        if not accounts:
            raise RevokeError(f"{target!r} is neither an account nor a client id in "
                              f"{config.source} (accounts: {', '.join(sorted(names))})",
                              EXIT_BAD_INPUT)
    async with _opened_store(config) as store:
        virtual = VirtualTokens(store)
        virtual.use_accounts(config.accounts)  # grants of changed credentials are dead
        found = [(a.name, g) for a in accounts for g in await virtual.grants(a.name)
                 if client_id is None or g.client_id == client_id]
        now = time.time()
        lines = [f"{len(found)} virtual grant(s) of " + (f"account {target}" if client_id is None
                                                          else f"client id {target}")
                 + (":" if found else ".")]
        lines += [f"  grant {hashlib.sha256(g.lineage.encode()).hexdigest()[:12]}  account "
                  f"{name}  client {g.client_id}  logged in {format_duration(now - g.created_at)}"
                  f" ago  refresh token lapses in {format_duration(g.expires_at - now)}"
                  for name, g in found]
        if list_only or not found:
            return lines
        if not assume_yes:
            print("\n".join(lines), flush=True)
            if not _confirm_grants(len(found)):
                raise RevokeError("not confirmed: nothing was changed", EXIT_BAD_INPUT)
            lines = []
        ended = 0
        for account in accounts:
            ended += len(await virtual.end_grants(account.name, client_id))
        lines.append(f"ended {ended} virtual grant(s): those apps must log in again (running "
                     "proxies honour it within 5 s)")
        return lines


def main(config: Config, account: str, assume_yes: bool, virtual: bool = False,
         list_only: bool = False) -> int:
    try:
        lines = asyncio.run(revoke_virtual(config, account, assume_yes, list_only) if virtual
                            else revoke(config, account, assume_yes))
    except RevokeError as exc:
        print(SECRETS.redact(f"tokenproxy revoke: {exc}"), file=sys.stderr)
        return exc.exit_code
    print(SECRETS.redact("\n".join(lines)), flush=True)
    return EXIT_OK
