"""Virtual tokens on the hot path do not hang on the store: grants are cached, one store read
serves every concurrent lookup of a digest, a known grant keeps being served while Redis is
away (for at most ``stale_max``, never past its own expiry), and an unknown token gets its
store-unavailable error within the read deadline instead of the store client's timeouts.

A real redis-server (``redis_factory``) frozen with SIGSTOP; the only wrapper is a read counter
around the real store object's ``get_virtual``."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from proxy_addon.store import StoreError
from proxy_addon.store.base import RecordCodec
from proxy_addon.store.crypto import TokenCipher
from proxy_addon.store.redis import RedisStore
from proxy_addon.virtual.grants import VirtualTokens, digest
from tests.support.proxy import STORE_KEY
from tests.support.redis_server import RedisServer


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def redis_store(server: RedisServer) -> RedisStore:
    return RedisStore(RecordCodec(TokenCipher.from_key_material(STORE_KEY)), server.url,
                      f"g{uuid.uuid4().hex[:8]}")


def count_reads(store: RedisStore) -> Counter[str]:
    """Wrap the real store object's read: every call is counted, then goes to Redis."""
    reads: Counter[str] = Counter()
    real = store.get_virtual

    async def counted(key: str) -> bytes | None:
        reads[key] += 1
        return await real(key)

    store.get_virtual = counted  # type: ignore[method-assign]
    return reads


def unknown_token() -> str:
    return "TPXA" + secrets.token_urlsafe(32)


async def timed(coro: Awaitable[object]) -> tuple[object, float]:
    started = time.monotonic()
    try:
        result: object = await coro
    except StoreError as exc:
        result = exc
    return result, time.monotonic() - started


def test_concurrent_lookups_of_one_digest_share_one_store_read(redis_factory) -> None:
    server = redis_factory()

    async def scenario() -> None:
        store = redis_store(server)
        await store.open()
        pair = await VirtualTokens(store).issue("main", "client-a")
        virtual = VirtualTokens(store)  # nothing cached
        reads = count_reads(store)
        results = await asyncio.gather(*(virtual.resolve_access(pair.access_token)
                                         for _ in range(50)))
        assert all(grant is not None and grant.account == "main" for grant, _ in results)
        access = digest(pair.access_token)
        assert reads[access] == 1, reads  # the old code: one read per lookup (50)
        assert sum(reads.values()) <= 3, reads  # the access record, its lineage, the account
        # within the refresh interval: no read at all
        await asyncio.gather(*(virtual.resolve_access(pair.access_token) for _ in range(50)))
        assert reads[access] == 1
        # past it: one read again for all of them
        virtual.refresh_every = 0.05
        await asyncio.sleep(0.1)
        await asyncio.gather(*(virtual.resolve_access(pair.access_token) for _ in range(50)))
        assert reads[access] == 2, reads
        # unknown tokens: single-flight too
        stranger = unknown_token()
        results = await asyncio.gather(*(virtual.resolve_access(stranger) for _ in range(20)))
        assert all(r == (None, "OAU-213") for r in results)
        assert reads[digest(stranger)] == 1, reads
        await store.close()

    run(scenario)


def test_a_known_grant_is_served_through_a_redis_outage_an_unknown_one_fails_fast(
        redis_factory) -> None:
    server = redis_factory()

    async def scenario() -> None:
        store = redis_store(server)
        await store.open()
        virtual = VirtualTokens(store)
        pair = await virtual.issue("main", "client-a")
        grant, _ = await virtual.resolve_access(pair.access_token)
        assert grant is not None
        server.pause()
        try:
            await asyncio.sleep(5.3)  # past the refresh interval: the entry is due for a read
            took = []
            for _ in range(5):
                (result, elapsed) = await timed(virtual.resolve_access(pair.access_token))
                assert isinstance(result, tuple) and result[0] is not None, (
                    f"a known grant was not served during the outage: {result!r}")
                took.append(elapsed)
                await asyncio.sleep(0.1)
            # at most the first lookup waits for the read deadline; none waits for Redis
            assert max(took) < 2.0 and sorted(took)[-2] < 0.3, took
            # an unknown token: the store's word is needed and missing -> the error, fast
            result, elapsed = await timed(virtual.resolve_access(unknown_token()))
            assert isinstance(result, StoreError), result
            assert elapsed < 2.0, f"unknown virtual token waited {elapsed:.2f} s"
            # staleness is bounded: beyond stale_max the cached grant is not served
            virtual.stale_max = 1.0
            await asyncio.sleep(1.2)
            result, elapsed = await timed(virtual.resolve_access(pair.access_token))
            assert isinstance(result, StoreError), result
            assert elapsed < 2.0, elapsed
        finally:
            server.resume()
        # the store answers again: served from a fresh read
        for _ in range(100):  # bounded
            try:
                grant, _ = await virtual.resolve_access(pair.access_token)
                break
            except StoreError:
                await asyncio.sleep(0.1)
        assert grant is not None
        await store.close()

    run(scenario)


def test_staleness_never_outlives_the_grant_and_revocations_here_are_at_once(
        redis_factory) -> None:
    server = redis_factory()

    async def scenario() -> None:
        store = redis_store(server)
        await store.open()
        virtual = VirtualTokens(store, access_ttl=1)
        virtual.refresh_every = 0.1
        short = await virtual.issue("main", "client-a")
        other = await virtual.issue("main", "client-a")
        assert (await virtual.resolve_access(short.access_token))[0] is not None
        assert (await virtual.resolve_access(other.access_token))[0] is not None
        # a revocation made through this process: gone at once, no re-read needed
        assert await virtual.revoke(other.access_token)
        assert await virtual.resolve_access(other.access_token) == (None, "OAU-213")
        server.pause()
        try:
            await asyncio.sleep(1.1)  # the access token's own expiry passes in the outage
            result, _ = await timed(virtual.resolve_access(short.access_token))
            assert result == (None, "OAU-210"), result  # expired, never served stale
            result, _ = await timed(virtual.resolve_access(other.access_token))
            assert result == (None, "OAU-213"), result  # still revoked
        finally:
            server.resume()
        await store.close()

    run(scenario)


@pytest.mark.parametrize("pause_ms", [1500])
def test_a_slow_store_costs_a_lookup_at_most_the_read_deadline(redis_factory,
                                                                pause_ms: int) -> None:
    """Redis slow rather than gone (``CLIENT PAUSE``: every command waits; ``DEBUG SLEEP`` is
    disabled in Redis 7 by default): an unknown token is answered within the deadline, and the
    cached grant is served without waiting for Redis."""
    server = redis_factory()

    async def scenario() -> None:
        store = redis_store(server)
        await store.open()
        virtual = VirtualTokens(store)
        virtual.refresh_every = 0.05
        pair = await virtual.issue("main", "client-a")
        assert (await virtual.resolve_access(pair.access_token))[0] is not None
        await asyncio.sleep(0.1)
        server.client().execute_command("CLIENT", "PAUSE", str(pause_ms), "ALL")
        paused_at = time.monotonic()
        result, elapsed = await timed(virtual.resolve_access(pair.access_token))
        assert isinstance(result, tuple) and result[0] is not None, result
        assert elapsed < 1.0, elapsed
        result, elapsed = await timed(virtual.resolve_access(unknown_token()))
        assert isinstance(result, StoreError) and elapsed < 1.0, (result, elapsed)
        assert time.monotonic() - paused_at < pause_ms / 1000, "the pause ended too early"
        await asyncio.sleep(pause_ms / 1000)
        await store.close()

    run(scenario)


def test_account_fingerprints_are_computed_at_first_use_only() -> None:
    """Each fingerprint is a PBKDF2 (~25 ms): 10,000 accounts computed up front held the
    proxy's start-up for minutes (bench scale). Now: none at start, one per account used."""
    from proxy_addon.config import parse_config
    from proxy_addon.store.memory import MemoryStore
    from proxy_addon.virtual.grants import fingerprint

    config = parse_config({
        "proxy": {"upstream": "http://127.0.0.1:9"},
        "accounts": [{"name": f"a{i}", "client_id": f"id{i}", "client_secret": "s",
                      "grant": "jwt", "jwt": f"j{i}"} for i in range(200)],
        "clients": []}, "c.toml", {})
    virtual = VirtualTokens(MemoryStore(RecordCodec(TokenCipher(None))))
    virtual.use_accounts(config.accounts)
    assert virtual._fingerprints == {}  # nothing computed at start-up

    async def scenario() -> None:
        pair = await virtual.issue("a7", "id7")
        grant, _ = await virtual.resolve_access(pair.access_token)
        assert grant is not None and grant.account == "a7"

    run(scenario)
    assert virtual._fingerprints == {"a7": fingerprint(config.account("a7"))}
    assert virtual.fingerprint_of("nobody") is None
