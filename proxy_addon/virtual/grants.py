"""Virtual tokens: what an app that logs in *through* the proxy gets instead of a platform session.

A virtual pair (access + refresh) maps the app to one configured account. The tokens are random
(``TPXA…``/``TPXR…``), kept in the shared store only as SHA-256 digests with their metadata, so
every replica honours them and they survive restarts. Each record is sealed with the store key
(authenticated encryption) and names its own digest: someone who can write to the store but
has no key can neither plant a grant nor move one under a token of their choosing. An
in-process cache keeps the hot path off the store: one read per record every 5 s, shared by
every concurrent lookup, at most 0.5 s of waiting, and a grant read lately is still served
while the store is away (``[proxy] virtual_grant_stale_max``). Refreshing a virtual refresh
token rotates the pair like the platform does; revoking either token of a pair revokes that
pair only. No platform session is created: a hundred apps logging in every minute cost the
account nothing.

Every pair descends from one login: its **lineage**, a store record of its own (under
``lineage-<id>``) that every token record names; a token whose lineage record is gone is dead.
A refresh token is spent atomically (:meth:`TokenStore.consume_virtual`): of two concurrent
refreshes exactly one wins, and a spent refresh token leaves a *spent* marker behind. Presenting
a spent one again (a reuse: the token was copied, or two apps share it) ends the lineage —
every pair descended from that login, the winner's new one included (the OAuth 2.0 security
BCP's refresh-token reuse detection).

Each account's lineages are also kept in a store index scored by expiry
(:meth:`TokenStore.index_virtual`): it caps the outstanding grants per account (``[proxy]
virtual_grants_per_account``; beyond it the grant refreshed least recently ends, as the platform
evicts its oldest session) and lets ``tokenproxy revoke --virtual`` list and end them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass

from ..config import AccountConfig
from ..store import StoreError, TokenStore
from ..store.crypto import UnreadableRecord

ACCESS_PREFIX, REFRESH_PREFIX = "TPXA", "TPXR"
ACCESS_TTL, REFRESH_TTL = 3600, 7 * 86400
log = logging.getLogger("tokenproxy.virtual")

CACHE_SECONDS = 5.0  # a revocation on another replica is honoured here within this time
READ_DEADLINE = 0.5  # a lookup waits this long for the store, then serves stale or fails
STALE_MAX = 300.0  # a cached grant is served this long without the store's word
CACHE_ENTRIES = 50_000  # bounded


@dataclass(frozen=True)
class VirtualGrant:
    account: str
    client_id: str
    kind: str  # "access" | "refresh" | "spent" (a refresh token used up) | "lineage"
    expires_at: float
    pair: tuple[str, str]  # digests of the pair's access and refresh tokens
    lineage: str = ""  # the login this pair descends from
    # lineage records: the account's credential fingerprint and the login's time
    fingerprint: str = ""
    created_at: float = 0.0

    def to_json(self, token_digest: str) -> bytes:
        return json.dumps({"digest": token_digest, "account": self.account,
                           "client_id": self.client_id, "kind": self.kind,
                           "expires_at": self.expires_at, "pair": list(self.pair),
                           "lineage": self.lineage, "fingerprint": self.fingerprint,
                           "created_at": self.created_at}).encode()

    @classmethod
    def from_json(cls, raw: bytes, token_digest: str) -> VirtualGrant | None:
        """The grant stored under ``token_digest``; None for a record written for another
        digest, or foreign or damaged data (as if unknown)."""
        try:
            data = json.loads(raw)
            if data["digest"] != token_digest:
                return None
            return cls(str(data["account"]), str(data["client_id"]), str(data["kind"]),
                       float(data["expires_at"]), (str(data["pair"][0]), str(data["pair"][1])),
                       str(data.get("lineage", "")), str(data.get("fingerprint", "")),
                       float(data.get("created_at", 0.0)))
        except (ValueError, KeyError, TypeError, IndexError):
            return None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def looks_virtual(token: str) -> bool:
    return token.startswith((ACCESS_PREFIX, REFRESH_PREFIX)) and 40 <= len(token) <= 80


@dataclass(frozen=True)
class IssuedPair:
    access_token: str
    refresh_token: str
    access_expires_in: int
    refresh_expires_in: int


def lineage_key(lineage: str) -> str:
    return "lineage-" + lineage


def account_key(account: str) -> str:
    """The record of when the account's grants were last ended (``tokenproxy revoke``)."""
    return "account-" + hashlib.sha256(account.encode()).hexdigest()


def fingerprint(account: AccountConfig) -> str:
    """A slow keyed digest of the account's name, client id and credentials: a changed config
    ends the grants made with the old one at their next lookup, without a scan. Slow
    (PBKDF2) because a store kept without a key holds it in clear."""
    material = json.dumps([account.client_id, *(
        s.reveal() if s is not None else None for s in (account.client_secret, account.jwt,
                                                        account.password)),
        account.username, account.extension, account.grant]).encode("utf-8", "surrogateescape")
    return hashlib.pbkdf2_hmac("sha256", material, b"tokenproxy-grant:" + account.name.encode(),
                               50_000).hex()[:32]


class VirtualTokens:
    def __init__(self, store: TokenStore, access_ttl: int = ACCESS_TTL,
                 refresh_ttl: int = REFRESH_TTL) -> None:
        self._store = store
        self.access_ttl, self.refresh_ttl = access_ttl, refresh_ttl
        # digest -> (grant or None for "not there", monotonic time of the store read)
        self._cache: dict[str, tuple[VirtualGrant | None, float]] = {}
        self._reads: dict[str, asyncio.Task[VirtualGrant | None]] = {}  # one read per digest
        self._store_failing = False  # the last store read failed (or missed its deadline)
        self.refresh_every = CACHE_SECONDS  # re-read a cached record after this long
        self.read_deadline = READ_DEADLINE
        self.stale_max = STALE_MAX  # [proxy] virtual_grant_stale_max
        # the accounts whose credentials bind grants (None: not checked), and their
        # fingerprints, computed at an account's first virtual-token use: PBKDF2 costs ~25 ms,
        # so 10,000 accounts computed up front held start-up for minutes (bench scale)
        self._accounts: dict[str, AccountConfig] | None = None
        self._fingerprints: dict[str, str] = {}
        self.grants_per_account = 0  # outstanding lineages per account; 0: no cap

    def use_accounts(self, accounts: tuple[AccountConfig, ...] | list[AccountConfig]) -> None:
        """Bind grants to these accounts' current credentials (see :func:`fingerprint`)."""
        self._accounts = {a.name: a for a in accounts}
        self._fingerprints = {}

    def fingerprint_of(self, account: str) -> str | None:
        """The account's fingerprint (None: not checked, or an unknown account)."""
        if self._accounts is None or account not in self._accounts:
            return None
        found = self._fingerprints.get(account)
        if found is None:
            found = self._fingerprints[account] = fingerprint(self._accounts[account])
        return found

    async def _put(self, key: str, grant: VirtualGrant, keep_until: float) -> None:
        await self._store.put_virtual(key, self._seal(grant, key), keep_until)

    def _seal(self, grant: VirtualGrant, key: str) -> bytes:
        return self._store.codec.seal_virtual(key, grant.to_json(key))

    async def issue(self, account: str, client_id: str, lineage: str = "") -> IssuedPair:
        """A new pair; a new lineage (a login) unless ``lineage`` names the one it continues."""
        access = ACCESS_PREFIX + secrets.token_urlsafe(32)
        refresh = REFRESH_PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        pair = (digest(access), digest(refresh))
        refresh_until = now + self.refresh_ttl
        if not lineage:
            lineage = secrets.token_urlsafe(16)
            await self._put(lineage_key(lineage), VirtualGrant(
                account, client_id, "lineage", refresh_until, pair, lineage,
                self.fingerprint_of(account) or "", now), refresh_until)
            await self._index(account, lineage, refresh_until)
        # the access record outlives its token (until the pair's end): an expired token is
        # then told apart from an unknown one (OAU-210, as the platform answers)
        await self._put(pair[0], VirtualGrant(account, client_id, "access",
                                              now + self.access_ttl, pair, lineage),
                        max(refresh_until, now + self.access_ttl))
        await self._put(pair[1], VirtualGrant(account, client_id, "refresh", refresh_until,
                                              pair, lineage), refresh_until)
        return IssuedPair(access, refresh, self.access_ttl, self.refresh_ttl)

    async def _lookup(self, key: str, deadline: float | None = None) -> VirtualGrant | None:
        """The record under ``key`` (cached); a token's only while its lineage lives (looked
        up each time, cached too: a lineage ended here is honoured at once). ``deadline``
        (monotonic): how long to wait for the store before serving the cached record, within
        ``stale_max``, or StoreError; None: wait for the store's word."""
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[1] < self.refresh_every:
            grant = cached[0]
        else:
            grant = await self._refresh(key, cached, deadline)
        if grant is None:
            return None
        if grant.kind == "lineage" and grant.expires_at <= time.time():
            return None  # never served beyond its own end, cached or not
        if grant.kind in ("access", "refresh") and (
                not grant.lineage or
                await self._lookup(lineage_key(grant.lineage), deadline) is None):
            return None  # its lineage was ended
        if grant.kind == "lineage" and not await self._lineage_valid(grant, deadline):
            return None
        return grant

    async def _refresh(self, key: str, cached: tuple[VirtualGrant | None, float] | None,
                       deadline: float | None) -> VirtualGrant | None:
        """The store's word on ``key``: one read at a time per key, shared by every lookup
        that needs it; the cached record when the store does not answer in time."""
        read = self._reads.get(key)
        if read is None:
            read = asyncio.get_running_loop().create_task(self._read(key))
            # its failure may outlive every waiter's deadline: retrieved here, not logged
            read.add_done_callback(lambda task: task.cancelled() or task.exception())
            self._reads[key] = read
        if deadline is None:
            return await asyncio.shield(read)
        usable = cached is not None and time.monotonic() - cached[1] <= self.stale_max
        if usable and self._store_failing:
            assert cached is not None
            return cached[0]  # the store is away: do not wait for it again; the read retries
        try:
            return await asyncio.wait_for(asyncio.shield(read),
                                          max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self._store_failing = True
            if usable:
                assert cached is not None
                return cached[0]
            raise StoreError(f"the token store did not answer within {self.read_deadline:g} "
                             "s") from None
        except StoreError:
            if usable:
                assert cached is not None
                return cached[0]
            raise

    async def _read(self, key: str) -> VirtualGrant | None:
        """One store read of ``key``; its answer goes into the cache unless a newer word came
        meanwhile (a revocation here while the read was under way)."""
        started = time.monotonic()
        try:
            raw = await self._store.get_virtual(key)
        except StoreError:
            self._store_failing = True
            raise
        finally:
            self._reads.pop(key, None)
        self._store_failing = False
        grant = self._open(raw, key) if raw is not None else None
        current = self._cache.get(key)
        if current is not None and current[1] >= started:
            return current[0]  # written here after the read began: that is newer
        self._remember(key, grant, started)
        return grant

    def _remember(self, key: str, grant: VirtualGrant | None, at: float) -> None:
        if len(self._cache) >= CACHE_ENTRIES:  # bounded: the oldest words go first
            horizon = time.monotonic() - self.stale_max
            for old in [k for k, (_, t) in self._cache.items() if t < horizon]:
                del self._cache[old]
            if len(self._cache) >= CACHE_ENTRIES:
                for old in [k for k, (g, _) in self._cache.items() if g is None]:
                    del self._cache[old]
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
        self._cache[key] = (grant, at)

    def _deadline(self) -> float:
        return time.monotonic() + self.read_deadline

    async def _lineage_valid(self, lineage: VirtualGrant,
                             deadline: float | None = None) -> bool:
        """False when the account's credentials changed since the login, or its grants were
        ended after it (``tokenproxy revoke``)."""
        if self._accounts is not None and \
                self.fingerprint_of(lineage.account) != lineage.fingerprint:
            return False
        ended = await self._lookup(account_key(lineage.account), deadline)
        return ended is None or lineage.created_at > ended.created_at

    async def end_account(self, account: str) -> None:
        """End every grant of ``account`` made until now (kept as long as a grant can live)."""
        now = time.time()
        key = account_key(account)
        ended = VirtualGrant(account, "", "ended", now + self.refresh_ttl, ("", ""), "", "", now)
        await self._put(key, ended, now + self.refresh_ttl)
        self._remember(key, ended, time.monotonic())  # honoured here at once
        await self.grants(account)  # drops the ended ones from the account's index

    async def resolve_access(self, token: str) -> tuple[VirtualGrant | None, str]:
        """(grant, "") for a live virtual access token; (None, "OAU-210") when it has expired,
        (None, "OAU-213") when unknown, revoked or of another kind. StoreError propagates."""
        grant = await self._lookup(digest(token), self._deadline())
        if grant is None or grant.kind != "access":
            return None, "OAU-213"
        if grant.expires_at <= time.time():
            return None, "OAU-210"
        return grant, ""

    async def resolve(self, token: str, kind: str) -> VirtualGrant | None:
        """The live grant of a virtual token of ``kind``, or None (unknown, revoked, expired,
        or the other kind). StoreError propagates (the caller answers 503)."""
        grant = await self._lookup(digest(token), self._deadline())
        if grant is None or grant.kind != kind or grant.expires_at <= time.time():
            return None
        return grant

    def _open(self, raw: bytes, token_digest: str) -> VirtualGrant | None:
        try:  # refused: written in clear while we hold a key (planted), sealed for another
            plaintext = self._store.codec.open_virtual(token_digest, raw)  # record, or not
        except UnreadableRecord:  # with our key: foreign or damaged
            return None
        return VirtualGrant.from_json(plaintext, token_digest)

    def expired(self, token: str) -> bool:
        """True when the token was known here and has only expired (OAU-210, not OAU-213)."""
        cached = self._cache.get(digest(token))
        return bool(cached and cached[0] and cached[0].expires_at <= time.time())

    async def rotate(self, refresh_token: str, client_id: str) -> tuple[str, IssuedPair] | None:
        """A new pair for a live virtual refresh token of ``client_id`` (the old pair dies);
        None when the refresh token is not (or no longer) valid. The token is spent atomically:
        a reuse (a spent token, or a concurrent refresh that lost) ends the whole lineage."""
        key = digest(refresh_token)
        raw = await self._read_now(key)  # uncached: spending needs the store's word
        seen = self._open(raw, key) if raw is not None else None
        if seen is None or seen.client_id != client_id:
            return None
        if seen.kind == "spent":
            await self.end_lineage(seen.lineage, seen.account)  # reuse of a spent one
            return None
        if seen.kind != "refresh" or seen.expires_at <= time.time():
            return None
        lkey = lineage_key(seen.lineage)
        raw_lineage = await self._read_now(lkey) if seen.lineage else None
        current = self._open(raw_lineage, lkey) if raw_lineage is not None else None
        if current is None or not await self._lineage_valid(current, self._deadline()):
            return None  # its lineage was ended
        spent = VirtualGrant(seen.account, client_id, "spent", seen.expires_at, seen.pair,
                             seen.lineage)
        taken = await self._store.consume_virtual(key, self._seal(spent, key), seen.expires_at)
        won = self._open(taken, key) if taken is not None else None
        if won is None or won.kind != "refresh":
            await self.end_lineage(seen.lineage, seen.account)  # another refresh was first
            return None
        await self._forget([won.pair[0]])
        pair = await self.issue(won.account, client_id, won.lineage)
        # the lineage lives as long as its newest refresh token, unless it was ended meanwhile
        # (a consume never recreates it): then the new pair is born dead
        lineage = VirtualGrant(won.account, client_id, "lineage", time.time() + self.refresh_ttl,
                               won.pair, won.lineage, current.fingerprint, current.created_at)
        if await self._store.consume_virtual(lkey, self._seal(lineage, lkey),
                                             lineage.expires_at) is not None:
            await self._index(won.account, won.lineage, lineage.expires_at)
        return won.account, pair

    async def _read_now(self, key: str) -> bytes | None:
        """The store's current record (no cache), within the read deadline (StoreError)."""
        try:
            return await asyncio.wait_for(self._store.get_virtual(key), self.read_deadline)
        except TimeoutError:
            raise StoreError(f"the token store did not answer within {self.read_deadline:g} "
                             "s") from None

    async def _index(self, account: str, lineage: str, expires_at: float) -> None:
        """Count the lineage for its account until ``expires_at``; end those beyond the cap."""
        for evicted in await self._store.index_virtual(account, lineage, expires_at,
                                                       self.grants_per_account):
            log.info("virtual grant of account %s ended: more than %d outstanding", account,
                     self.grants_per_account, extra={"event": "virtual_grant_evicted"})
            await self._forget([lineage_key(evicted)])

    async def end_lineage(self, lineage: str, account: str = "") -> None:
        """Every pair descended from that login dies (its lineage record goes)."""
        if lineage:
            await self._forget([lineage_key(lineage)])
            if account:
                await self._store.unindex_virtual(account, [lineage])

    async def grants(self, account: str) -> list[VirtualGrant]:
        """The account's live grants (their lineage records), least recently refreshed first;
        index entries of grants that ended otherwise are dropped on the way."""
        live: list[VirtualGrant] = []
        dead: list[str] = []
        for lineage, _ in await self._store.list_index(account):
            self._cache.pop(lineage_key(lineage), None)  # the store's word, not the cache's
            grant = await self._lookup(lineage_key(lineage))
            (live.append(grant) if grant is not None and grant.account == account
             else dead.append(lineage))
        if dead:
            await self._store.unindex_virtual(account, dead)
        return live

    async def end_grants(self, account: str, client_id: str | None = None) -> list[VirtualGrant]:
        """End the account's live grants (only those of ``client_id`` if given); the ended."""
        ended = [g for g in await self.grants(account)
                 if client_id is None or g.client_id == client_id]
        for grant in ended:
            await self.end_lineage(grant.lineage, account)
        return ended

    async def revoke(self, token: str) -> bool:
        """Revoke the pair ``token`` belongs to; False if it is not a live virtual token."""
        grant = await self.resolve(token, "access") or await self.resolve(token, "refresh")
        if grant is None:
            return False
        await self.revoke_pair(grant)
        return True

    async def revoke_pair(self, grant: VirtualGrant) -> None:
        await self._forget([*grant.pair, *([lineage_key(grant.lineage)] if grant.lineage
                                           else [])])
        if grant.lineage:
            await self._store.unindex_virtual(grant.account, [grant.lineage])

    async def _forget(self, keys: list[str]) -> None:
        await self._store.delete_virtual(keys)
        for key in keys:  # honoured here at once, and newer than any read under way
            self._remember(key, None, time.monotonic())


__all__ = ["IssuedPair", "StoreError", "VirtualGrant", "VirtualTokens", "looks_virtual"]
