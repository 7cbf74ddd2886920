"""Redis store: the scale-out backend that several proxy replicas share.

Layout under ``[store] prefix`` (default ``tokenproxy``):

- ``{prefix}:tokens:{account}`` hash ``generation``, ``value`` (sealed token set), ``updated_at``;
- ``{prefix}:lock:{account}`` the renewal lock: the owner's token, with a lease (PX);
- ``{prefix}:meta:key_check`` proves every replica uses the same encryption key;
- ``{prefix}:virtual:{digest}`` a sealed virtual-token record (PX until it lapses);
- ``{prefix}:vindex:{account}`` sorted set of the account's virtual grants, scored by expiry;
- channel ``{prefix}:rotations`` carries ``{"account", "generation"}`` after every write, so
  other replicas adopt a new pair at once instead of meeting a 401 with the old one.

Compare-and-set, lock take/extend and release are Lua scripts: atomic on the server, fenced by
generation and owner. Durability is the server's: run Redis with ``appendonly yes`` (and
``appendfsync always`` where a crash of Redis itself must not lose the newest pair).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from ..tokens.token_set import TokenSet
from .base import RecordCodec, StoredTokens, StoreError, TokenStore

log = logging.getLogger("tokenproxy.store")

CAS_SCRIPT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'generation') or '0')
if current ~= tonumber(ARGV[1]) then return 0 end
local generation = current + 1
redis.call('HSET', KEYS[1], 'generation', generation, 'value', ARGV[2], 'updated_at', ARGV[3])
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


class RedisStore(TokenStore):
    backend = "redis"

    def __init__(self, codec: RecordCodec, url: str, prefix: str = "tokenproxy",
                 timeout: float = 2.0, tls_ca_file: str | None = None) -> None:
        super().__init__(codec)
        self.prefix = prefix
        tls: dict[str, str] = {}
        if tls_ca_file and url.startswith("rediss://"):
            tls["ssl_ca_certs"] = tls_ca_file
        # Short timeouts: while Redis is away, renewals must learn it fast (the hot path
        # never waits for the store).
        self._client = aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout,
            # one retry (a dropped connection after a Redis restart, a slow moment): a renewal
            # learns within 2 x `timeout` that the store is away
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError, RedisTimeout)),
            health_check_interval=0, decode_responses=False, **tls)
        self._cas = self._client.register_script(CAS_SCRIPT)
        self._acquire = self._client.register_script(ACQUIRE_SCRIPT)
        self._release = self._client.register_script(RELEASE_SCRIPT)
        self._reseal_hash = self._client.register_script(RESEAL_HASH_SCRIPT)
        self._reseal_string = self._client.register_script(RESEAL_STRING_SCRIPT)
        self._consume = self._client.register_script(CONSUME_SCRIPT)
        self._index = self._client.register_script(INDEX_SCRIPT)
        self._watcher: asyncio.Task[None] | None = None
        self.where = _redacted(url)

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:rotations"

    def _error(self, exc: Exception) -> StoreError:
        reason = str(exc) or type(exc).__name__
        return StoreError(f"redis store {self.where}: {reason}")

    async def open(self) -> None:
        try:
            key = self._key("meta", "key_check")
            replacement = self.codec.check_key(await self._client.get(key))
            if replacement is not None:
                await self._client.set(key, replacement)
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
                name = key.decode()[len(self._key(kind, "")):]  # the account, the digest
                new = self.codec.resealed(value, kind, name) if value is not None else None
                if new is not None:
                    await script(keys=[key], args=[value, new])

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
        try:
            done = await self._cas(keys=[self._key("tokens", account)],
                                   args=[expected, self.codec.encode(account, tokens), time.time(),
                                         self.channel, account])
        except RedisError as exc:
            raise self._error(exc) from None
        return bool(done)

    async def acquire_lock(self, account: str, owner: str, lease: float) -> bool:
        try:
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

    async def watch(self, listener: Listener) -> None:
        """Call ``listener(account, generation)`` for every write any replica makes; after a
        lost connection, ``listener("", 0)`` asks for a re-read of everything."""
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(
                self._listen(listener), name="tokenproxy-redis-watch")

    async def _listen(self, listener: Listener) -> None:
        delay = 0.2
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                listener("", 0)  # (re)subscribed: what was missed meanwhile is in the store
                delay = 0.2
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is None:
                        await pubsub.ping()  # notices a dead connection within the timeout
                        continue
                    account, generation = _notification(message.get("data"))
                    if account:
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

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()


def _generation(account: str, raw: bytes | str) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise StoreError(f"stored generation of account {account!r} is not a number") from None


def _notification(data: object) -> tuple[str, int]:
    """A rotation message, or ("", 0) for anything foreign on the channel."""
    try:
        body = json.loads(data)  # type: ignore[arg-type]
        account, generation = body["account"], int(body["generation"])
    except (TypeError, ValueError, KeyError):
        return "", 0
    return (account, generation) if isinstance(account, str) else ("", 0)


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user + ':' if user else ''}***@{host}"
