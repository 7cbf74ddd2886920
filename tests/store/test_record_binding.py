"""Store records are bound to their account and kind: someone who can write the store but has
no key cannot swap account A's sealed record with B's, move a virtual-grant record into a token
record, or plant a ``plain:`` record while a key is configured. Records sealed the old way
(before the binding) stay readable and are re-sealed in the bound form when the store opens;
from then on an unbound record is refused. A real SQLite file and a real redis-server; the
"attacker" writes with sqlite3 / redis-cli-level commands, nothing of ours is mocked."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from proxy_addon.store import CorruptRecord, StoreKeyMismatch, TokenStore
from proxy_addon.store.base import RecordCodec
from proxy_addon.store.crypto import TokenCipher
from proxy_addon.store.redis import RedisStore
from proxy_addon.store.sqlite import SQLiteStore
from proxy_addon.tokens.token_set import TokenSet
from proxy_addon.virtual.grants import VirtualTokens, digest
from tests.support.proxy import STORE_KEY
from tests.support.redis_server import RedisServer


def tokens(who: str) -> TokenSet:
    return TokenSet(f"access-{who}-secretvalue", 2e9, f"refresh-{who}-secretvalue", 2e9, 1.0,
                    f"owner-{who}", f"s-{who}")


def legacy(payload: bytes, key: str = STORE_KEY) -> bytes:
    """A value sealed the way every release before the binding sealed it."""
    return b"fernet:" + Fernet(key.encode()).encrypt(payload)


class Raw:
    """One store's backend, and the raw access someone with write access has."""

    def __init__(self, kind: str, tmp_path: Path, redis: RedisServer | None) -> None:
        self.kind, self.path, self.redis = kind, tmp_path / "t.db", redis
        self.prefix = f"b{uuid.uuid4().hex[:10]}"

    def make(self, keys: str = STORE_KEY) -> TokenStore:
        codec = RecordCodec(TokenCipher.from_key_material(keys))
        if self.kind == "sqlite":
            return SQLiteStore(codec, self.path)
        assert self.redis is not None
        return RedisStore(codec, self.redis.url, self.prefix)

    def get(self, account: str) -> bytes:
        if self.kind == "sqlite":
            with sqlite3.connect(self.path) as db:
                return bytes(db.execute("SELECT value FROM tokens WHERE account = ?",
                                        (account,)).fetchone()[0])
        assert self.redis is not None
        return bytes(self.redis.client().hget(f"{self.prefix}:tokens:{{{account}}}", "value"))

    def put(self, account: str, value: bytes) -> None:
        if self.kind == "sqlite":
            with sqlite3.connect(self.path) as db:
                db.execute("UPDATE tokens SET value = ? WHERE account = ?", (value, account))
        else:
            assert self.redis is not None
            self.redis.client().hset(f"{self.prefix}:tokens:{{{account}}}", "value", value)

    def get_virtual(self, name: str) -> bytes:
        if self.kind == "sqlite":
            with sqlite3.connect(self.path) as db:
                return bytes(db.execute("SELECT record FROM virtual_tokens WHERE digest = ?",
                                        (name,)).fetchone()[0])
        assert self.redis is not None
        return bytes(self.redis.client().get(f"{self.prefix}:virtual:{name}"))

    def put_virtual(self, name: str, value: bytes) -> None:
        if self.kind == "sqlite":
            with sqlite3.connect(self.path) as db:
                db.execute("UPDATE virtual_tokens SET record = ? WHERE digest = ?",
                           (value, name))
        else:
            assert self.redis is not None
            self.redis.client().set(f"{self.prefix}:virtual:{name}", value, keepttl=True)

    def put_key_check(self, value: bytes) -> None:
        if self.kind == "sqlite":
            with sqlite3.connect(self.path) as db:
                db.execute("UPDATE meta SET value = ? WHERE name = 'key_check'", (value,))
        else:
            assert self.redis is not None
            self.redis.client().set(f"{self.prefix}:meta:key_check", value)


@pytest.fixture(params=["sqlite", "redis"])
def raw(request: pytest.FixtureRequest, tmp_path: Path) -> Raw:
    # a redis-server of its own: the planted plaintext must not reach the shared server's
    # append-only file, which other tests search for tokens in clear
    redis = request.getfixturevalue("redis_factory")() if request.param == "redis" else None
    return Raw(request.param, tmp_path, redis)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


async def two_accounts(raw: Raw) -> TokenStore:
    store = raw.make()
    await store.open()
    assert await store.compare_and_set("alice", 0, tokens("alice"))
    assert await store.compare_and_set("bob", 0, tokens("bob"))
    return store


def test_swapped_records_are_refused_naming_the_account(raw: Raw) -> None:
    async def scenario() -> None:
        store = await two_accounts(raw)
        a, b = raw.get("alice"), raw.get("bob")
        raw.put("alice", b)
        raw.put("bob", a)
        for account, other in (("alice", "bob"), ("bob", "alice")):
            with pytest.raises(CorruptRecord, match=f"account '{account}'") as info:
                got = await store.load(account)
                pytest.fail(f"{account} got {other}'s record: {got!r}")  # the old behaviour
            message = str(info.value)
            assert repr(other) in message and "secretvalue" not in message, message
            assert info.value.account == account
        # still fenced by generation: the next rotation repairs each record
        assert await store.compare_and_set("alice", 1, tokens("alice2"))
        assert (await store.load("alice")).tokens == tokens("alice2")
        await store.close()

    run(scenario)


def test_plain_record_in_a_keyed_store_is_refused(raw: Raw) -> None:
    async def scenario() -> None:
        store = await two_accounts(raw)
        raw.put("alice", b"plain:" + tokens("mallory").to_json())
        with pytest.raises(CorruptRecord, match="account 'alice'") as info:
            got = await store.load("alice")
            pytest.fail(f"a planted plaintext record was accepted: {got!r}")
        message = str(info.value)
        assert "clear" in message and "key" in message, message
        assert "secretvalue" not in message and "mallory" not in message
        await store.close()

    run(scenario)


def test_records_are_bound_to_their_kind(raw: Raw) -> None:
    """A sealed virtual-grant record moved into a token record, and a sealed token record moved
    under a virtual token's digest, are both refused."""
    async def scenario() -> None:
        store = await two_accounts(raw)
        virtual = VirtualTokens(store)
        pair = await virtual.issue("alice", "client-a")
        access = digest(pair.access_token)
        grant_record, token_record = raw.get_virtual(access), raw.get("bob")
        raw.put("bob", grant_record)
        with pytest.raises(CorruptRecord, match="account 'bob'") as info:
            await store.load("bob")
        assert "virtual" in str(info.value)
        raw.put_virtual(access, token_record)
        assert await VirtualTokens(store).resolve(pair.access_token, "access") is None
        await store.close()

    run(scenario)


def test_old_format_records_are_read_then_resealed_bound(raw: Raw) -> None:
    """A store written before the binding (key check, token records and virtual records sealed
    without it) opens, its token records are readable and re-sealed bound on open; an unbound
    record planted after that migration is refused."""
    async def scenario() -> None:
        store = await two_accounts(raw)
        virtual = VirtualTokens(store)
        pair = await virtual.issue("alice", "client-a")
        await store.close()
        # what an older release left behind
        raw.put_key_check(legacy(b"tokenproxy-key-check-v1"))
        old_alice, old_bob = legacy(tokens("alice").to_json()), legacy(tokens("bob").to_json())
        raw.put("alice", old_alice)
        raw.put("bob", old_bob)
        access = digest(pair.access_token)
        grant = VirtualTokens(store)._open(raw.get_virtual(access), access)
        assert grant is not None
        raw.put_virtual(access, legacy(grant.to_json(access)))

        store = raw.make()
        await store.open()  # migrates
        assert (await store.load("alice")).tokens == tokens("alice")
        assert (await store.load("bob")).tokens == tokens("bob")
        assert raw.get("alice") != old_alice and raw.get("bob") != old_bob  # re-sealed
        assert await VirtualTokens(store).resolve(pair.access_token, "access") is not None
        # the migrated records are bound: a swap is refused now
        a, b = raw.get("alice"), raw.get("bob")
        raw.put("alice", b)
        with pytest.raises(CorruptRecord, match="account 'alice'"):
            await store.load("alice")
        raw.put("alice", a)
        # an old-format record planted after the migration (a copy from an old backup) is not
        raw.put("bob", old_alice)
        with pytest.raises(CorruptRecord, match="account 'bob'"):
            await store.load("bob")
        await store.close()
        # a new process agrees (the store itself says it was migrated)
        store = raw.make()
        await store.open()
        assert (await store.load("alice")).tokens == tokens("alice")
        with pytest.raises(CorruptRecord, match="account 'bob'"):
            await store.load("bob")
        await store.close()

    run(scenario)


def test_key_check_and_rotation_keep_working_with_bound_records(raw: Raw) -> None:
    new = Fernet.generate_key().decode()

    async def scenario() -> None:
        store = await two_accounts(raw)
        await store.close()
        with pytest.raises(StoreKeyMismatch, match="does not match"):
            await raw.make(Fernet.generate_key().decode()).open()
        rotating = raw.make(f"{new},{STORE_KEY}")
        await rotating.open()  # re-seals everything with the new key
        assert (await rotating.load("alice")).tokens == tokens("alice")
        await rotating.close()
        store = raw.make(new)  # the old key dropped
        await store.open()
        assert (await store.load("bob")).tokens == tokens("bob")
        a, b = raw.get("alice"), raw.get("bob")
        raw.put("alice", b)
        raw.put("bob", a)
        with pytest.raises(CorruptRecord, match="account 'alice'"):
            await store.load("alice")
        await store.close()

    run(scenario)


def test_an_old_plaintext_store_given_a_key_is_sealed_bound_on_open(raw: Raw) -> None:
    """allow_plaintext first, a key later: the plaintext records are sealed (bound) when the
    store opens with the key, and a plain record planted afterwards is refused."""
    async def scenario() -> None:
        store = raw.make.__func__(raw)  # type: ignore[attr-defined]
        store.codec = RecordCodec(TokenCipher(None))
        await store.open()
        assert await store.compare_and_set("alice", 0, tokens("alice"))
        assert await store.compare_and_set("bob", 0, tokens("bob"))
        await store.close()
        assert raw.get("alice").startswith(b"plain:")
        store = raw.make()
        await store.open()
        assert (await store.load("alice")).tokens == tokens("alice")
        assert raw.get("alice").startswith(b"fernet:")
        raw.put("bob", b"plain:" + tokens("mallory").to_json())
        with pytest.raises(CorruptRecord, match="account 'bob'"):
            await store.load("bob")
        await store.close()

    run(scenario)
