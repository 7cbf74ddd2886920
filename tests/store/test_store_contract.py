"""Every store backend keeps the same contract: generations fenced by compare-and-set, a lock
per account with a lease and an owner, key checks, clear errors on unreadable values, no token
in clear at rest. Redis runs as a real redis-server (with a password and TLS in one variant)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from proxy_addon.store import CorruptRecord, StoreError, StoreKeyMismatch, TokenStore
from proxy_addon.store.base import RecordCodec
from proxy_addon.store.crypto import TokenCipher
from proxy_addon.store.memory import MemoryStore
from proxy_addon.store.redis import RedisStore
from proxy_addon.store.sqlite import SQLiteStore
from proxy_addon.tokens.token_set import TokenSet
from tests.support.proxy import STORE_KEY
from tests.support.redis_server import RedisServer

BACKENDS = ["memory", "sqlite", "redis", "redis-tls-password"]


def tokens(n: int = 1) -> TokenSet:
    return TokenSet(f"access-{n}-secretvalue", 2e9, f"refresh-{n}-secretvalue", 2e9, 1.0,
                    "100001", f"s{n}")


def codec(key: str | None = STORE_KEY) -> RecordCodec:
    return RecordCodec(TokenCipher([key.encode()] if key else None))


class Backend:
    """Makes stores of one backend that share state, and writes raw values into it."""

    def __init__(self, kind: str, tmp_path: Path, redis: RedisServer | None) -> None:
        self.kind, self.tmp_path, self.redis = kind, tmp_path, redis
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        self.memory: MemoryStore | None = None

    def make(self, key: str | None = STORE_KEY) -> TokenStore:
        if self.kind == "memory":
            if self.memory is None:
                self.memory = MemoryStore(codec(key))
            return self.memory
        if self.kind == "sqlite":
            return SQLiteStore(codec(key), self.tmp_path / "t.db")
        assert self.redis is not None
        return RedisStore(codec(key), self.redis.url, self.prefix,
                          tls_ca_file=str(self.redis.tls_ca) if self.redis.tls_ca else None)

    def write_raw(self, account: str, value: bytes) -> None:
        if self.kind == "memory":
            assert self.memory is not None
            generation = self.memory._records[account][0]
            self.memory._records[account] = (generation, value)
        elif self.kind == "sqlite":
            with sqlite3.connect(self.tmp_path / "t.db") as db:
                db.execute("UPDATE tokens SET value = ? WHERE account = ?", (value, account))
        else:
            assert self.redis is not None
            self.redis.client().hset(f"{self.prefix}:tokens:{{{account}}}", "value", value)

    def raw_bytes(self) -> bytes:
        if self.kind == "sqlite":
            return b"".join(p.read_bytes() for p in self.tmp_path.glob("t.db*"))
        assert self.redis is not None
        return self.redis.raw_dump()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    redis = None
    if request.param == "redis":
        redis = request.getfixturevalue("redis_server")
    elif request.param == "redis-tls-password":
        redis = request.getfixturevalue("redis_factory")(password="pw-" + uuid.uuid4().hex,
                                                          tls=True)
    return Backend(request.param.split("-")[0], tmp_path, redis)


@asynccontextmanager
async def opened(store: TokenStore) -> AsyncIterator[TokenStore]:
    await store.open()
    try:
        yield store
    finally:
        if not isinstance(store, MemoryStore):
            await store.close()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def test_compare_and_set_fences_generations(backend: Backend) -> None:
    async def scenario() -> None:
        async with opened(backend.make()) as a, opened(backend.make()) as b:
            assert await a.load("main") is None and await a.generation("main") == 0
            assert await a.compare_and_set("main", 0, tokens(1))
            assert not await b.compare_and_set("main", 0, tokens(2))  # stale writer loses
            assert await b.compare_and_set("main", 1, tokens(2))
            record = await a.load("main")
            assert record is not None and (record.generation, record.tokens) == (2, tokens(2))
            assert await a.load("other") is None  # accounts are apart

    run(scenario)


def test_concurrent_writers_one_wins(backend: Backend) -> None:
    async def scenario() -> None:
        stores = [backend.make() for _ in range(4)]
        for store in stores:
            await store.open()
        try:
            won = await asyncio.gather(*(s.compare_and_set("main", 0, tokens(i))
                                         for i, s in enumerate(stores)))
            assert sum(won) == 1
            assert await stores[0].generation("main") == 1
        finally:
            for store in stores:
                if not isinstance(store, MemoryStore):
                    await store.close()

    run(scenario)


def test_lock_has_an_owner_and_a_lease(backend: Backend) -> None:
    async def scenario() -> None:
        async with opened(backend.make()) as a, opened(backend.make()) as b:
            assert await a.acquire_lock("main", "owner-a", 0.6)
            assert not await b.acquire_lock("main", "owner-b", 0.6)
            assert await a.acquire_lock("main", "owner-a", 0.6)  # the owner extends it
            await b.release_lock("main", "owner-b")  # not the owner: no effect
            assert not await b.acquire_lock("main", "owner-b", 0.6)
            assert await b.acquire_lock("other", "owner-b", 0.6)  # per account
            await asyncio.sleep(0.8)  # the lease runs out (a crashed holder)
            assert await b.acquire_lock("main", "owner-b", 5)
            await a.release_lock("main", "owner-a")  # a lost it: cannot release b's
            assert not await a.acquire_lock("main", "owner-a", 5)
            await b.release_lock("main", "owner-b")
            assert await a.acquire_lock("main", "owner-a", 5)

    run(scenario)


def test_wrong_or_missing_key_is_refused(backend: Backend) -> None:
    if backend.kind == "memory":
        pytest.skip("a memory store lives and dies with its key")

    async def scenario() -> None:
        async with opened(backend.make()) as store:
            await store.compare_and_set("main", 0, tokens())
        with pytest.raises(StoreKeyMismatch, match="does not match"):
            await backend.make(Fernet.generate_key().decode()).open()
        with pytest.raises(StoreKeyMismatch, match="no store key"):
            await backend.make(None).open()

    run(scenario)


FOREIGN = b"fernet:" + Fernet(Fernet.generate_key()).encrypt(tokens().to_json())


@pytest.mark.parametrize("garbage", [b"", b"fernet:truncated", FOREIGN[:-7], FOREIGN,
                                     b"plain:{not json", b"plain:[1,2]", b"\x00\xff" * 10],
                         ids=["empty", "not-base64", "truncated", "other-key", "garbage-json",
                              "foreign-json", "binary"])
def test_unreadable_value_is_a_clear_error(backend: Backend, garbage: bytes) -> None:
    async def scenario() -> None:
        async with opened(backend.make()) as store:
            await store.compare_and_set("main", 0, tokens())
            backend.write_raw("main", garbage)
            with pytest.raises(CorruptRecord, match="account 'main'") as info:
                await store.load("main")
            assert "secretvalue" not in str(info.value)
            assert await store.generation("main") == 1  # still fenced: the next CAS repairs
            assert await store.compare_and_set("main", 1, tokens(2))
            assert (await store.load("main")).tokens == tokens(2)

    run(scenario)


def test_no_token_in_clear_at_rest(backend: Backend) -> None:
    if backend.kind == "memory":
        pytest.skip("nothing at rest")

    async def scenario() -> None:
        async with opened(backend.make()) as store:
            for n in range(1, 4):
                await store.compare_and_set("main", n - 1, tokens(n))

    run(scenario)
    raw = backend.raw_bytes()
    assert b"fernet:" in raw  # the records are there, sealed
    assert b"secretvalue" not in raw


def test_redis_notifies_other_replicas(redis_server: RedisServer) -> None:
    backend = Backend("redis", Path("."), redis_server)

    async def scenario() -> None:
        async with opened(backend.make()) as writer, opened(backend.make()) as reader:
            seen: list[tuple[str, int]] = []
            await reader.watch(lambda account, generation: seen.append((account, generation)))
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.02)
            assert seen == [("", 0)]  # subscribed: "re-read everything"
            # foreign messages on the channel are ignored
            redis_server.client().publish(f"{backend.prefix}:rotations", b"not json")
            await writer.compare_and_set("main", 0, tokens(1))
            await writer.compare_and_set("main", 1, tokens(2))
            for _ in range(100):
                if len(seen) >= 3:
                    break
                await asyncio.sleep(0.02)
            assert seen == [("", 0), ("main", 1), ("main", 2)]

    run(scenario)


def test_redis_unreachable_is_a_store_error_quickly(tmp_path: Path) -> None:
    from tests.support.redis_server import free_port

    async def scenario() -> None:
        store = RedisStore(codec(), f"redis://:hunter2-password@127.0.0.1:{free_port()}/0")
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StoreError) as info:
            await store.generation("main")
        assert loop.time() - started < 5
        assert "hunter2" not in str(info.value) and "***" in str(info.value)
        await store.close()

    run(scenario)


def test_redis_wrong_password_is_a_clear_error(redis_factory) -> None:
    server = redis_factory(password="right-password")

    async def scenario() -> None:
        url = server.url.replace("right-password", "wrong-password")
        store = RedisStore(codec(), url)
        with pytest.raises(StoreError, match="redis store") as info:
            await store.open()
        assert "wrong-password" not in str(info.value)
        await store.close()

    run(scenario)


def test_key_rotation_reseals_everything_so_the_old_key_can_go(backend: Backend) -> None:
    """Run with "new,old" once, then "new" alone: the key check, the token pairs and the
    virtual-token records all open with the new key; nothing needs a fresh login."""
    if backend.kind == "memory":
        pytest.skip("nothing outlives a memory store's process")
    old, new = STORE_KEY, Fernet.generate_key().decode()

    def with_keys(*keys: str) -> TokenStore:
        store = backend.make()
        store.codec = RecordCodec(TokenCipher([k.encode() for k in keys]))
        return store

    async def scenario() -> None:
        async with opened(with_keys(old)) as store:
            assert await store.compare_and_set("main", 0, tokens(1))
            await store.put_virtual("d" * 64, store.codec.cipher.seal(b"grant"), 2e9)
        with pytest.raises(StoreKeyMismatch):
            async with opened(with_keys(new)):
                pass
        async with opened(with_keys(new, old)) as store:  # the rotation starts
            record = await store.load("main")
            assert record is not None and record.tokens == tokens(1)
        async with opened(with_keys(new)) as store:  # the old key dropped
            record = await store.load("main")
            assert record is not None and (record.generation, record.tokens) == (1, tokens(1))
            raw = await store.get_virtual("d" * 64)
            assert raw is not None and store.codec.cipher.open(raw) == b"grant"

    run(scenario)


def test_consume_virtual_is_atomic_exactly_one_wins(backend: Backend) -> None:
    """Concurrent consumes of one virtual record, from separate store objects (separate
    connections): exactly one gets the live record, the others what the one before left in
    its place; a missing record is never created by a consume."""
    async def scenario() -> None:
        stores = [backend.make() for _ in range(4)]
        for store in stores:
            await store.open()
        try:
            await stores[0].put_virtual("c" * 64, b"live-record", 2e9)
            taken = await asyncio.gather(*(s.consume_virtual("c" * 64, b"spent-" + bytes([i]),
                                                             2e9)
                                           for i, s in enumerate(stores)))
            # each consume took what the one before left (the live record exactly once)
            assert taken.count(b"live-record") == 1, taken
            left = {b"spent-" + bytes([i]) for i in range(4)}
            assert len(set(taken)) == 4 and set(taken) - {b"live-record"} < left, taken
            last = (left - set(taken)).pop()
            assert await stores[1].get_virtual("c" * 64) == last
            assert await stores[2].consume_virtual("absent", b"x", 2e9) is None
            assert await stores[2].get_virtual("absent") is None
            assert await stores[3].consume_virtual("c" * 64, None, 2e9) is not None
            assert await stores[3].get_virtual("c" * 64) is None  # None: consumed and gone
        finally:
            for store in stores:
                if not isinstance(store, MemoryStore):
                    await store.close()

    run(scenario)


def test_virtual_grant_index_counts_caps_and_lists(backend: Backend) -> None:
    """The per-account index of virtual grants: members move (not duplicate), expired ones
    drop, beyond the cap those expiring first are removed and returned — exactly once even
    when several store objects add at once — and other indexes are untouched."""
    async def scenario() -> None:
        stores = [backend.make() for _ in range(4)]
        for store in stores:
            await store.open()
        try:
            first = stores[0]
            assert await first.index_virtual("acct", "m1", 2e9 + 1, 0) == []
            assert await first.index_virtual("acct", "m1", 2e9 + 5, 0) == []  # moved
            assert await first.index_virtual("acct", "lapsed", 1.0, 0) == []  # expired
            assert await first.index_virtual("other", "x", 2e9, 1) == []
            assert await first.list_index("acct") == [("m1", 2e9 + 5)]
            added = await asyncio.gather(*(s.index_virtual("acct", f"n{i}", 2e9 + 10 + i, 3)
                                           for i, s in enumerate(stores)))
            removed = [m for batch in added for m in batch]
            listed = [m for m, _ in await stores[1].list_index("acct")]
            assert len(listed) == 3 and len(removed) == len(set(removed)) == 2, (added, listed)
            assert sorted(removed + listed) == ["m1", "n0", "n1", "n2", "n3"]
            assert "m1" in removed  # the one expiring first went
            await stores[2].unindex_virtual("acct", [listed[0], "absent"])
            assert [m for m, _ in await stores[3].list_index("acct")] == listed[1:]
            assert await stores[3].list_index("other") == [("x", 2e9)]
            assert await stores[3].list_index("nothing") == []
        finally:
            for store in stores:
                if not isinstance(store, MemoryStore):
                    await store.close()

    run(scenario)


def test_members_announcements_and_acknowledgements(backend: Backend) -> None:
    """The cluster-wide drain's primitives (issue 15.2): members heartbeat and lapse, a
    rotation is announced to the other process's watcher, acknowledgements are per
    generation."""
    if backend.kind == "memory":
        pytest.skip("one process: nobody else to drain (the base class's no-ops)")

    async def scenario() -> None:
        async with opened(backend.make()) as a, opened(backend.make()) as b:
            heard: list[tuple[str, int, str]] = []
            written: list[tuple[str, int]] = []
            await b.watch(lambda acc, gen: written.append((acc, gen)),
                          lambda acc, gen, owner: heard.append((acc, gen, owner)),
                          lambda: True)
            await asyncio.sleep(0.3)  # subscribed / first poll done
            await a.heartbeat("proc-a", 6.0)
            await b.heartbeat("proc-b", 0.3)
            assert await a.members() == {"proc-a", "proc-b"}
            await asyncio.sleep(0.5)
            assert await a.members() == {"proc-a"}  # b's heartbeat lapsed
            await b.heartbeat("proc-b", 6.0)
            await a.announce_rotation("main", 4, "proc-a", 2.0)
            assert await a.compare_and_set("main", 0, tokens(1))
            for _ in range(100):  # bounded: up to 5 s
                if heard and ("main", 1) in written:
                    break
                await asyncio.sleep(0.05)
            assert ("main", 4, "proc-a") in heard
            assert ("main", 1) in written
            assert await a.rotation_acks("main", 4) == set()
            await b.ack_rotation("main", 4, "proc-b")
            assert await a.rotation_acks("main", 4) == {"proc-b"}
            assert await a.rotation_acks("main", 5) == set()  # per generation
            await b.leave("proc-b")
            assert await a.members() == {"proc-a"}

    run(scenario)
