"""Redis store: the scale-out backend that several proxy replicas share.

Layout under ``[store] prefix`` (default ``tokenproxy``); every per-account key carries the
account as a hash tag (``{ACCOUNT}``, braces literal), so that on Redis Cluster all of one
account's keys live in one slot and the Lua scripts (one key each, plus PUBLISH) run there:

- ``PREFIX:tokens:{ACCOUNT}`` hash ``generation``, ``value`` (sealed token set), ``updated_at``,
  ``write_id`` (the id of the write that made this generation: a re-sent write recognises
  itself);
- ``PREFIX:lock:{ACCOUNT}`` the renewal lock: the owner's token, with a lease (PX);
- ``PREFIX:meta:key_check`` proves every replica uses the same encryption key;
  ``PREFIX:meta:layout`` is ``2`` once keys of the untagged layout (``PREFIX:tokens:ACCOUNT``,
  before issue 15) were moved to the tagged names (on ``open``);
- ``PREFIX:virtual:DIGEST`` a sealed virtual-token record (PX until it lapses);
- ``PREFIX:vindex:{ACCOUNT}`` sorted set of the account's virtual grants, scored by expiry;
- channel ``PREFIX:rotations`` carries ``{"account", "generation"}`` after every write, so
  other replicas adopt a new pair at once instead of meeting a 401 with the old one;
- ``PREFIX:ratewin:{ACCOUNT/GROUP}`` sorted set of API calls sent in the group's window
  (scored by the server's TIME), ``PREFIX:ratepen:{…}`` the end of its penalty (issue 17);
- ``PREFIX:reports:{processes}`` hash of every process's status report (field: the process,
  value: its JSON, not sealed: no secret in it) and ``PREFIX:reportexp:{processes}`` sorted set
  of their expiries on the server's clock; one hash tag, so the scripts that write, prune and
  read them run in one slot (issue 19.7). Both keys expire with the latest report.

Compare-and-set, lock take/extend and release are Lua scripts: atomic on the server, fenced by
generation and owner. Durability is the server's: run Redis with ``appendonly yes`` (and
``appendfsync always`` where a crash of Redis itself must not lose the newest pair), and with
replicas ``[store] min_replicas_ack``: after a compare-and-set the store waits (``WAIT``, at most
``min(1 s, timeout)``) until that many replicas hold the write; a shortfall is logged, counted
(``unreplicated_writes``, ``on_unreplicated``) and the write still counts.

Three deployments (docs/redis.md): one server (``url``); Sentinel (``sentinels`` +
``sentinel_service``: the client asks the sentinels for the primary and asks again after a
connection error or a READONLY answer, so a promotion is followed without a restart); Cluster
(``cluster = true``, ``url`` names any node).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from ..tokens.token_set import TokenSet
from .base import RecordCodec, StoredTokens, StoreError, TokenStore

log = logging.getLogger("tokenproxy.store")

# ARGV: expected generation, value, updated_at, channel, account, write id. A call that
# redis-py re-sends (its answer was lost to a timeout) meets its own write: the generation is
# already expected + 1 with our write id. That is a success, not another writer's win; the
# write id is written again so that a WAIT on the re-sending connection waits for the record.
CAS_SCRIPT = """
local expected = tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'generation') or '0')
if current ~= expected then
  if current == expected + 1 and redis.call('HGET', KEYS[1], 'write_id') == ARGV[6] then
    redis.call('HSET', KEYS[1], 'write_id', ARGV[6])
    return 1
  end
  return 0
end
local generation = current + 1
redis.call('HSET', KEYS[1], 'generation', generation, 'value', ARGV[2], 'updated_at', ARGV[3],
           'write_id', ARGV[6])
redis.call('PUBLISH', ARGV[4], cjson.encode({account = ARGV[5], generation = generation}))
return 1
"""

# Key rotation: replace a value only if nobody changed it since we read it (TTL kept).
RESEAL_HASH_SCRIPT = """
if redis.call('HGET', KEYS[1], 'value') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'value', ARGV[2])
return 1
"""
RESEAL_STRING_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"""
RESEAL_SCAN_LIMIT = 100_000  # keys looked at per kind and start: bounded

# Moving a key of the untagged layout (PREFIX:tokens:ACCOUNT) to its tagged name: only when the
# tagged one does not exist yet (a newer replica's record is never overwritten). RENAME keeps
# the TTL. 1 moved, 0 nothing to move, -1 both exist (the old one is left for an operator).
MIGRATE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
redis.call('RENAME', KEYS[1], KEYS[2])
return 1
"""
LAYOUT = b"2"  # PREFIX:meta:layout once the per-account keys carry their hash tag
TAGGED_KINDS = ("tokens", "lock", "vindex", "rotating", "drained")  # keys named by an account

# API rate-limit windows (issue 17), on the server's clock (TIME) so replicas' clocks do not
# matter. KEYS: the window (sorted set of slots scored by time), the penalty (a time).
# ARGV: limit, span (s), member. Returns {wait seconds ("0": taken), slots taken}.
RATE_RESERVE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local span = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
local count = redis.call('ZCARD', KEYS[1])
local penalty = tonumber(redis.call('GET', KEYS[2]) or '0')
if penalty > now then return {tostring(penalty - now), count} end
if count < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(span * 1000) + 1000)
  return {'0', count + 1}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {tostring(math.max(0.001, tonumber(oldest[2]) + span - now)), count}
"""
RATE_RESTAMP_SCRIPT = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], 'XX', tonumber(t[1]) + tonumber(t[2]) / 1000000, ARGV[1])
return 1
"""
RATE_PENALIZE_SCRIPT = """
local t = redis.call('TIME')
local untill = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if untill > current then
  redis.call('SET', KEYS[1], tostring(untill), 'PX', math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
end
return 1
"""

# Status reports of the processes (issue 19.7). KEYS: the reports (hash), their expiries (sorted
# set, the server's TIME). Put — ARGV: process, report, ttl (s): write it, prune the expired,
# keep both keys as long as the latest report.
REPORT_PUT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('HDEL', KEYS[1], gone)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local latest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local keep = math.ceil((tonumber(latest[2]) - now) * 1000) + 1000
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
return 1
"""
# Read: {process, report, ...} of the unexpired reports; the rest is pruned (a field without a
# live expiry, however it got there, is dropped).
REPORT_READ_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local out = {}
for _, process in ipairs(redis.call('HKEYS', KEYS[1])) do
  if redis.call('ZSCORE', KEYS[2], process) then
    table.insert(out, process)
    table.insert(out, redis.call('HGET', KEYS[1], process))
  else
    redis.call('HDEL', KEYS[1], process)
  end
end
return out
"""

ACQUIRE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Spend a virtual record once: take it and leave the replacement (or nothing) in its place.
CONSUME_SCRIPT = """
local taken = redis.call('GETDEL', KEYS[1])
if taken and ARGV[1] == '1' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return taken
"""

# A per-account index of virtual grants: a sorted set scored by expiry (Unix time). Add or move
# the member, drop the expired, remove (and return) those expiring first beyond the cap; the
# set itself lives as long as its latest member.
INDEX_SCRIPT = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local removed = {}
local cap = tonumber(ARGV[4])
if cap > 0 then
  local excess = redis.call('ZCARD', KEYS[1]) - cap
  if excess > 0 then
    removed = redis.call('ZRANGE', KEYS[1], 0, excess - 1)
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, excess - 1)
  end
end
local latest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if latest[2] then
  redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(latest[2]) * 1000))
end
return removed
"""

Listener = Callable[[str, int], None]
Announcements = Callable[[str, int, str], None]


class RedisStore(TokenStore):
    backend = "redis"

    def __init__(self, codec: RecordCodec, url: str | None = None, prefix: str = "tokenproxy",
                 timeout: float = 2.0, tls_ca_file: str | None = None, *,
                 sentinels: Sequence[tuple[str, int]] = (), sentinel_service: str | None = None,
                 sentinel_password: str | None = None, cluster: bool = False,
                 min_replicas_ack: int = 0,
                 on_unreplicated: Callable[[str], None] | None = None) -> None:
        """``url``: the server (``redis://``, ``rediss://``, ``unix://``); with ``sentinels``
        it names no host and only gives scheme (TLS), credentials and DB; with ``cluster`` it
        names any node of the cluster."""
        super().__init__(codec)
        self.prefix = prefix
        self.cluster = cluster
        self.min_replicas_ack = min_replicas_ack
        self._timeout = timeout
        # WAIT's own limit stays under the socket timeout (its answer is read like any other)
        self._wait_ms = max(1, int(min(1.0, timeout / 2) * 1000))
        self.unreplicated_writes = 0  # writes fewer than min_replicas_ack replicas confirmed
        self.on_unreplicated = on_unreplicated  # called with the account on each of those
        # Short timeouts: while Redis is away, renewals must learn it fast (the hot path
        # never waits for the store).
        common: dict[str, Any] = {
            "socket_connect_timeout": timeout, "socket_timeout": timeout,
            # one retry (a dropped connection after a Redis restart or a failover, a slow
            # moment): a renewal learns within 2 x `timeout` that the store is away
            "retry": Retry(NoBackoff(), 1,
                           supported_errors=(RedisConnectionError, RedisTimeout)),
            "decode_responses": False,
        }
        self._sentinel: Sentinel | None = None
        self._service: str | None = None
        self._node_kwargs: dict[str, Any] = {}  # cluster: for a connection to one node
        self._client: Any
        if sentinels:
            if not sentinel_service:
                raise ValueError("sentinels need a sentinel_service")
            params = _url_params(url)
            if params.pop("ssl", False):
                common["ssl"] = True
                if tls_ca_file:
                    common["ssl_ca_certs"] = tls_ca_file
            sentinel_kwargs = {k: v for k, v in common.items()
                               if k.startswith(("socket_", "ssl"))}
            if sentinel_password:
                sentinel_kwargs["password"] = sentinel_password
            self._sentinel = Sentinel(list(sentinels), sentinel_kwargs=sentinel_kwargs,
                                      health_check_interval=0, **common, **params)
            self._client = self._sentinel.master_for(sentinel_service)
            self._service = sentinel_service
            hosts = ",".join(f"{h}:{p}" for h, p in sentinels)
            self.where = f"sentinel service {sentinel_service!r} via {hosts}"
        elif cluster:
            if min_replicas_ack:
                raise ValueError("min_replicas_ack is not supported with cluster")
            if url is None:
                raise ValueError("cluster needs a url naming one of its nodes")
            if tls_ca_file and url.startswith("rediss://"):
                common["ssl_ca_certs"] = tls_ca_file
            self._client = RedisCluster.from_url(url, **common)
            parsed = _url_params(url)
            self._node_kwargs = {**common, "ssl": bool(parsed.pop("ssl", False)),
                                 **{k: v for k, v in parsed.items() if k != "db"}}
            self.where = f"cluster {_redacted(url)}"
        else:
            if url is None:
                raise ValueError("a url or sentinels are needed")
            if tls_ca_file and url.startswith("rediss://"):
                common["ssl_ca_certs"] = tls_ca_file
            self._client = aioredis.Redis.from_url(url, health_check_interval=0, **common)
            self.where = _redacted(url)
        self._cas = self._client.register_script(CAS_SCRIPT)
        self._acquire = self._client.register_script(ACQUIRE_SCRIPT)
        self._release = self._client.register_script(RELEASE_SCRIPT)
        self._reseal_hash = self._client.register_script(RESEAL_HASH_SCRIPT)
        self._reseal_string = self._client.register_script(RESEAL_STRING_SCRIPT)
        self._consume = self._client.register_script(CONSUME_SCRIPT)
        self._index = self._client.register_script(INDEX_SCRIPT)
        self._migrate = self._client.register_script(MIGRATE_SCRIPT)
        self._rate_reserve = self._client.register_script(RATE_RESERVE_SCRIPT)
        self._rate_restamp = self._client.register_script(RATE_RESTAMP_SCRIPT)
        self._rate_penalize = self._client.register_script(RATE_PENALIZE_SCRIPT)
        self._report_put = self._client.register_script(REPORT_PUT_SCRIPT)
        self._report_read = self._client.register_script(REPORT_READ_SCRIPT)
        self._watcher: asyncio.Task[None] | None = None

    def _key(self, kind: str, name: str) -> str:
        """The one key builder. Keys named by an account carry it as the hash tag."""
        if kind in TAGGED_KINDS:
            return f"{self.prefix}:{kind}:{{{name}}}"
        return f"{self.prefix}:{kind}:{name}"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:rotations"

    def _error(self, exc: Exception) -> StoreError:
        return StoreError(f"redis store {self.where}: {_reason(exc)}")

    async def open(self) -> None:
        try:
            key = self._key("meta", "key_check")
            replacement = self.codec.check_key(await self._client.get(key))
            if replacement is not None:
                await self._client.set(key, replacement)
            await self._migrate_layout()
            if self.codec.needs_reseal:  # key rotation, or records to bind to their account
                await self._reseal()
                if (migrated := self.codec.finish_reseal()) is not None:
                    await self._client.set(key, migrated)
            await self._warn_without_persistence()
        except RedisError as exc:
            raise self._error(exc) from None

    async def _reseal(self) -> None:
        """Key rotation: values sealed with an older key are sealed again with the first, in
        place (same generation; skipped if a writer changed the value meanwhile)."""
        for kind, script in (("tokens", self._reseal_hash), ("virtual", self._reseal_string)):
            seen = 0
            async for key in self._client.scan_iter(match=self._key(kind, "*"), count=500):
                seen += 1
                if seen > RESEAL_SCAN_LIMIT:
                    break
                if kind == "tokens":
                    value = await self._client.hget(key, "value")
                else:
                    value = await self._client.get(key)
                name = key.decode()[len(f"{self.prefix}:{kind}:"):]  # the account, the digest
                name = name[1:-1] if kind in TAGGED_KINDS else name  # {account}: its hash tag
                if self._key(kind, name) != key.decode():
                    continue  # not a name this store writes: left for the reader to report
                new = self.codec.resealed(value, kind, name) if value is not None else None
                if new is not None:
                    await script(keys=[key], args=[value, new])

    async def _migrate_layout(self) -> None:
        """Keys of the layout before hash tags (``PREFIX:tokens:ACCOUNT``) move to their tagged
        names, once per store (``PREFIX:meta:layout``), bounded like ``_reseal``. A cluster
        never held them (that layout could not run there). Upgrade every replica together:
        one of the old layout still running would keep writing the untagged names."""
        layout = self._key("meta", "layout")
        if self.cluster or await self._client.get(layout) == LAYOUT:
            return
        complete = True
        for kind in ("tokens", "vindex"):
            seen = 0
            start = f"{self.prefix}:{kind}:"
            async for raw in self._client.scan_iter(match=start + "*", count=500):
                seen += 1
                if seen > RESEAL_SCAN_LIMIT:
                    complete = False
                    break
                old = raw.decode() if isinstance(raw, bytes) else str(raw)
                name = old[len(start):]
                if name.startswith("{") and name.endswith("}"):
                    continue  # already tagged
                moved = await self._migrate(keys=[old, self._key(kind, name)])
                if moved == 1:
                    log.info("store: redis %s: moved %s to its hash-tagged name", self.where,
                             f"{kind} of account {name!r}")
                elif moved == -1:
                    log.warning("store: redis %s: %s exists under the old and the new "
                                "(hash-tagged) name; the new one is used, delete %r",
                                self.where, f"{kind} of account {name!r}", old)
        if complete:
            await self._client.set(layout, LAYOUT)

    async def _warn_without_persistence(self) -> None:
        try:
            config = await self._client.config_get("appendonly")
        except ResponseError:  # CONFIG is often disabled on managed Redis: nothing to say
            return
        if config.get(b"appendonly", config.get("appendonly")) not in (b"yes", "yes"):
            log.warning("store: redis %s runs without appendonly; a Redis crash can lose the "
                        "newest token pair (set appendonly yes)", self.where)

    async def load(self, account: str) -> StoredTokens | None:
        try:
            generation, value = await self._client.hmget(self._key("tokens", account),
                                                         ["generation", "value"])
        except RedisError as exc:
            raise self._error(exc) from None
        if generation is None or value is None:
            return None
        return StoredTokens(_generation(account, generation), self.codec.decode(account, value))

    async def generation(self, account: str) -> int:
        try:
            raw = await self._client.hget(self._key("tokens", account), "generation")
        except RedisError as exc:
            raise self._error(exc) from None
        return 0 if raw is None else _generation(account, raw)

    async def compare_and_set(self, account: str, expected: int, tokens: TokenSet) -> bool:
        # one id per call: redis-py's re-send of this call, and ours below, carry the same one
        write_id = secrets.token_hex(16)
        keys = [self._key("tokens", account)]
        args = [expected, self.codec.encode(account, tokens), time.time(), self.channel, account,
                write_id]
        try:
            # Sentinel: a promotion since the pool last connected means its idle connections
            # lead to the old primary, which may still take writes until it is demoted (and
            # then drops them): ask the sentinels first (rotations are rare, this is cheap)
            await self._follow_primary()
            for attempt in (1, 2):
                try:
                    done, acked = await self._cas_and_wait(keys, args)
                except ResponseError as exc:
                    # a primary refusing writes (min-replicas-to-write) may be a demoted one
                    if attempt == 1 and _reason(exc).startswith("NOREPLICAS") \
                            and await self._follow_primary():
                        continue
                    raise
                if done and acked is not None and acked < self.min_replicas_ack \
                        and attempt == 1 and await self._follow_primary():
                    # written to a primary the sentinels demoted meanwhile: the write dies
                    # with it; write again on the new one (same id: a repeat is recognised)
                    continue
                break
        except RedisError as exc:
            raise self._error(exc) from None
        if done and acked is not None and acked < self.min_replicas_ack:
            self._unreplicated(account, acked)
        return bool(done)

    async def _cas_and_wait(self, keys: list[str], args: list[Any]) -> tuple[int, int | None]:
        """The compare-and-set script's answer, and with min_replicas_ack the replicas that
        confirmed it (None without)."""
        if self.min_replicas_ack <= 0:
            return int(await self._cas(keys=keys, args=args)), None
        # WAIT counts the replicas holding this connection's writes: it must follow the
        # script on the same connection, hence one pipeline
        async with self._client.pipeline(transaction=False) as pipe:
            await self._cas(keys=keys, args=args, client=pipe)
            pipe.wait(self.min_replicas_ack, self._wait_ms)
            done, acked = await pipe.execute()
        return int(done), int(acked)

    async def _follow_primary(self) -> bool:
        """Sentinel: ask the sentinels for the primary now. True when it is not the one the
        pool last connected to (its idle connections are then closed, so the next command
        connects to the new one). Sentinels unreachable: False (the commands will tell)."""
        if self._sentinel is None:
            return False
        pool = self._client.connection_pool
        before = pool.master_address
        try:
            now = await asyncio.wait_for(pool.get_master_address(), self._timeout)
        except (RedisError, TimeoutError):
            return False
        return before is not None and tuple(now) != tuple(before)

    async def _subscribed_off_primary(self, pubsub: Any) -> bool:
        """Sentinel: the subscription's connection is not on the primary the sentinels name
        (a promotion that left the old primary up): the watcher moves."""
        connection = getattr(pubsub, "connection", None)
        if self._sentinel is None or connection is None:
            return False
        try:
            host, port = await asyncio.wait_for(
                self._sentinel.discover_master(self._service or ""), self._timeout)
        except (RedisError, TimeoutError):
            return False
        return (str(host), int(port)) != (str(connection.host), int(connection.port))

    def _unreplicated(self, account: str, acked: int) -> None:
        """The write stands (the primary has it), but fewer replicas than asked confirmed it
        within the wait: a failover now could lose it."""
        self.unreplicated_writes += 1
        log.warning("store: redis %s: the new tokens of account %r reached %d of the %d "
                    "replicas asked for ([store] min_replicas_ack) within %d ms; a failover "
                    "before they catch up would lose them", self.where, account, acked,
                    self.min_replicas_ack, self._wait_ms)
        if self.on_unreplicated is not None:
            with contextlib.suppress(Exception):
                self.on_unreplicated(account)

    async def acquire_lock(self, account: str, owner: str, lease: float) -> bool:
        try:
            # Sentinel: a lock taken on a demoted primary would let two renewals spend the
            # same refresh token; the sentinels are asked first, as for compare-and-set
            await self._follow_primary()
            return bool(await self._acquire(keys=[self._key("lock", account)],
                                            args=[owner, max(1, int(lease * 1000))]))
        except RedisError as exc:
            raise self._error(exc) from None

    async def release_lock(self, account: str, owner: str) -> None:
        try:
            await self._release(keys=[self._key("lock", account)], args=[owner])
        except RedisError as exc:
            raise self._error(exc) from None

    async def put_virtual(self, digest: str, record: bytes, expires_at: float) -> None:
        ttl_ms = max(1, int((expires_at - time.time()) * 1000))
        try:
            await self._client.set(self._key("virtual", digest), record, px=ttl_ms)
        except RedisError as exc:
            raise self._error(exc) from None

    async def get_virtual(self, digest: str) -> bytes | None:
        try:
            value: bytes | None = await self._client.get(self._key("virtual", digest))
        except RedisError as exc:
            raise self._error(exc) from None
        return value

    async def delete_virtual(self, digests: list[str]) -> None:
        if not digests:
            return
        try:
            await self._client.delete(*(self._key("virtual", d) for d in digests))
        except RedisError as exc:
            raise self._error(exc) from None

    async def consume_virtual(self, digest: str, replacement: bytes | None,
                              expires_at: float) -> bytes | None:
        ttl_ms = max(1, int((expires_at - time.time()) * 1000))
        try:
            taken = await self._consume(keys=[self._key("virtual", digest)],
                                        args=["0" if replacement is None else "1",
                                              replacement or b"", ttl_ms])
        except RedisError as exc:
            raise self._error(exc) from None
        return bytes(taken) if taken is not None else None

    async def index_virtual(self, index: str, member: str, expires_at: float,
                            cap: int) -> list[str]:
        try:
            removed = await self._index(keys=[self._key("vindex", index)],
                                        args=[member, repr(expires_at), repr(time.time()), cap])
        except RedisError as exc:
            raise self._error(exc) from None
        return [bytes(m).decode() for m in removed]

    async def unindex_virtual(self, index: str, members: list[str]) -> None:
        if not members:
            return
        try:
            await self._client.zrem(self._key("vindex", index), *members)
        except RedisError as exc:
            raise self._error(exc) from None

    async def list_index(self, index: str) -> list[tuple[str, float]]:
        try:
            rows = await self._client.zrangebyscore(self._key("vindex", index),
                                                    f"({time.time()!r}", "+inf",
                                                    withscores=True)
        except RedisError as exc:
            raise self._error(exc) from None
        return [(bytes(m).decode(), float(t)) for m, t in rows]

    async def watch(self, listener: Listener, announcements: Announcements | None = None,
                    hot: Callable[[], bool] | None = None) -> None:
        """Call ``listener(account, generation)`` for every write any replica makes, and
        ``announcements(account, generation, owner)`` for every announced rotation; after a
        lost connection, ``listener("", 0)`` asks for a re-read of everything."""
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(
                self._listen(listener, announcements), name="tokenproxy-redis-watch")

    async def _listen(self, listener: Listener,
                      announcements: Announcements | None = None) -> None:
        delay = 0.2
        while True:
            pubsub = self._pubsub()
            try:
                await pubsub.subscribe(self.channel)
                listener("", 0)  # (re)subscribed: what was missed meanwhile is in the store
                delay = 0.2
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is None:
                        await pubsub.ping()  # notices a dead connection within the timeout
                        if await self._subscribed_off_primary(pubsub):
                            raise RedisConnectionError("the primary moved (Sentinel)")
                        continue
                    account, generation, announcer = _notification(message.get("data"))
                    if account and announcer:
                        if announcements is not None:
                            announcements(account, generation, announcer)
                    elif account:
                        listener(account, generation)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("store: redis notifications interrupted (%s); retrying in %.1f s",
                            str(exc) or type(exc).__name__, delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # -- cluster-wide drain: members, announcements, acknowledgements (issue 15.2) -------
    # ``{prefix}:members`` sorted set of live processes scored by heartbeat expiry;
    # ``{prefix}:rotating:{account}`` the announced rotation (PX); ``…:drained:{account}:{g}``
    # the set of members that acknowledged it (PX). Announcements go out on the channel.

    async def heartbeat(self, member: str, ttl: float) -> None:
        now = time.time()
        key = f"{self.prefix}:members"
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.zadd(key, {member: now + ttl})
                pipe.zremrangebyscore(key, "-inf", now)
                await pipe.execute()
        except RedisError as exc:
            raise self._error(exc) from None

    async def leave(self, member: str) -> None:
        try:
            await self._client.zrem(f"{self.prefix}:members", member)
        except RedisError as exc:
            raise self._error(exc) from None

    # -- API rate-limit windows (issue 17): every replica sharing this Redis shares them -----

    shares_rate_limits = True

    def _rate_keys(self, key: str) -> tuple[str, str]:
        """The window and the penalty of ``key``, one hash tag (one Cluster slot)."""
        return f"{self.prefix}:ratewin:{{{key}}}", f"{self.prefix}:ratepen:{{{key}}}"

    async def rate_reserve(self, key: str, limit: int, span: float, member: str
                           ) -> tuple[float, int]:
        try:
            wait, count = await self._rate_reserve(keys=list(self._rate_keys(key)),
                                                   args=[limit, repr(span), member])
        except RedisError as exc:
            raise self._error(exc) from None
        return float(wait), int(count)

    async def rate_restamp(self, key: str, member: str) -> None:
        try:
            await self._rate_restamp(keys=[self._rate_keys(key)[0]], args=[member])
        except RedisError as exc:
            raise self._error(exc) from None

    async def rate_penalize(self, key: str, seconds: float) -> None:
        try:
            await self._rate_penalize(keys=[self._rate_keys(key)[1]], args=[repr(seconds)])
        except RedisError as exc:
            raise self._error(exc) from None

    # -- status across processes (issue 19.7) ----------------------------------------------

    def _report_keys(self) -> list[str]:
        """The reports and their expiries: one hash tag, one Cluster slot."""
        return [f"{self.prefix}:reports:{{processes}}", f"{self.prefix}:reportexp:{{processes}}"]

    async def put_process_report(self, process: str, report: bytes, ttl: float) -> None:
        try:
            await self._report_put(keys=self._report_keys(), args=[process, report, repr(ttl)])
        except RedisError as exc:
            raise self._error(exc) from None

    async def process_reports(self) -> dict[str, bytes]:
        try:
            flat = await self._report_read(keys=self._report_keys())
        except RedisError as exc:
            raise self._error(exc) from None
        pairs = zip(flat[::2], flat[1::2], strict=False)
        return {bytes(p).decode("utf-8", "replace"): bytes(r) for p, r in pairs
                if r is not None}

    async def delete_process_report(self, process: str) -> None:
        reports, expiries = self._report_keys()
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hdel(reports, process)
                pipe.zrem(expiries, process)
                await pipe.execute()
        except RedisError as exc:
            raise self._error(exc) from None

    async def members(self) -> set[str]:
        try:
            rows = await self._client.zrangebyscore(f"{self.prefix}:members",
                                                    f"({time.time()!r}", "+inf")
        except RedisError as exc:
            raise self._error(exc) from None
        return {bytes(m).decode() for m in rows}

    async def announce_rotation(self, account: str, generation: int, owner: str,
                                ttl: float) -> None:
        body = json.dumps({"account": account, "generation": generation, "announce": owner})
        try:
            await self._client.set(self._key("rotating", account), body,
                                   px=max(1, int(ttl * 1000)))
            await self._client.publish(self.channel, body)
        except RedisError as exc:
            raise self._error(exc) from None

    def _acks_key(self, account: str, generation: int) -> str:
        return f"{self._key('drained', account)}:{generation}"

    async def ack_rotation(self, account: str, generation: int, member: str) -> None:
        key = self._acks_key(account, generation)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.sadd(key, member)
                pipe.pexpire(key, 30_000)
                await pipe.execute()
        except RedisError as exc:
            raise self._error(exc) from None

    async def rotation_acks(self, account: str, generation: int) -> set[str]:
        try:
            rows = await self._client.smembers(self._acks_key(account, generation))
        except RedisError as exc:
            raise self._error(exc) from None
        return {bytes(m).decode() for m in rows}

    def _pubsub(self) -> Any:
        """A subscription. On a cluster: a plain connection to one node the client knows
        (PUBLISH reaches the subscribers of every node; redis-py's asyncio RedisCluster has
        pub/sub only in recent versions); after a lost connection, another random node."""
        if self.cluster:
            node = self._client.get_random_node()
            return aioredis.Redis(host=node.host, port=node.port,
                                  **self._node_kwargs).pubsub(ignore_subscribe_messages=True)
        return self._client.pubsub(ignore_subscribe_messages=True)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()
        if self._sentinel is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._sentinel.aclose()


def _generation(account: str, raw: bytes | str) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise StoreError(f"stored generation of account {account!r} is not a number") from None


def _notification(data: object) -> tuple[str, int, str]:
    """(account, generation, announcer): a write (announcer "") or an announced rotation;
    ("", 0, "") for anything foreign on the channel."""
    try:
        body = json.loads(data)  # type: ignore[arg-type]
        account, generation = body["account"], int(body["generation"])
        announcer = body.get("announce", "")
    except (TypeError, ValueError, KeyError, AttributeError):
        return "", 0, ""
    if not isinstance(account, str) or not isinstance(announcer, str):
        return "", 0, ""
    return account, generation, announcer


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user + ':' if user else ''}***@{host}"


def _reason(exc: Exception) -> str:
    """The server's or client's message, without the command text redis-py puts in front of
    an error inside a pipeline (it would carry the start of a stored value)."""
    reason = str(exc) or type(exc).__name__
    marker = " of pipeline caused error: "
    if reason.startswith("Command # ") and marker in reason:
        reason = reason.rpartition(marker)[2]
    # Sentinel's "No master found" names each sentinel by its client's whole repr
    return _SENTINEL_REPR.sub(r"sentinel \1:\2", reason)


_SENTINEL_REPR = re.compile(r"<redis\.asyncio\.client\.Redis\(.*?,host=([^,]+),port=(\d+),.*?"
                            r"\)>\)>\)>", re.S)


def _url_params(url: str | None) -> dict[str, Any]:
    """With Sentinel, ``url`` gives what the sentinels do not: TLS (``rediss://``), the
    primary's username/password and the DB (``redis://:PASSWORD@/DB``); its host, if any, is
    not used (the config loader refuses one)."""
    if not url:
        return {}
    parts = urlsplit(url)
    params: dict[str, Any] = {}
    if parts.scheme == "rediss":
        params["ssl"] = True
    if parts.username:
        params["username"] = unquote(parts.username)
    if parts.password:
        params["password"] = unquote(parts.password)
    db = parts.path.strip("/")
    if db:
        params["db"] = int(db)
    return params
