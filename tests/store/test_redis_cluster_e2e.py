"""Redis Cluster (issue 15): every key of one account carries the account as its hash tag, so
the Lua scripts (one key each, plus PUBLISH) run on whichever primary owns the slot. Three
primaries on loopback (``redis-cli --cluster create``); accounts chosen so that their keys land
on different primaries: compare-and-set, the lock, virtual records and their index, and
notifications work for each. And: keys of the layout before hash tags move on ``open``."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster as SyncCluster

from proxy_addon.store.base import RecordCodec
from proxy_addon.store.crypto import TokenCipher
from proxy_addon.tokens.token_set import TokenSet
from tests.support.proxy import STORE_KEY
from tests.support.redis_server import ClusterGroup, RedisServer, start_cluster


def tokens(tag: str) -> TokenSet:
    now = time.time()
    return TokenSet(access_token=f"A-{tag}", access_expires_at=now + 3600,
                    refresh_token=f"R-{tag}", refresh_expires_at=now + 86400, issued_at=now)


def codec() -> RecordCodec:
    return RecordCodec(TokenCipher([STORE_KEY.encode()]))


@pytest.fixture
def cluster(tmp_path: Path):
    group = start_cluster(tmp_path / "cluster")
    try:
        yield group
    finally:
        group.stop()


def accounts_on_every_primary(group: ClusterGroup, prefix: str) -> dict[str, int]:
    """account -> port of the primary owning its keys, one account per primary."""
    inspector = SyncCluster(host="127.0.0.1", port=group.nodes[0].port)
    try:
        chosen: dict[int, str] = {}
        for index in range(200):  # bounded: 3 primaries are found within a few names
            account = f"acct{index}"
            port = inspector.get_node_from_key(f"{prefix}:tokens:{{{account}}}").port
            chosen.setdefault(port, account)
            if len(chosen) == len(group.nodes):
                break
        return {account: port for port, account in chosen.items()}
    finally:
        inspector.close()


def test_one_account_one_slot_everything_works_on_three_primaries(cluster: ClusterGroup) -> None:
    from proxy_addon.store.redis import RedisStore

    prefix = f"c{uuid.uuid4().hex[:8]}"
    accounts = accounts_on_every_primary(cluster, prefix)
    assert len(set(accounts.values())) == 3, accounts

    async def scenario() -> None:
        writer = RedisStore(codec(), cluster.url, prefix, cluster=True)
        watcher = RedisStore(codec(), cluster.url, prefix, cluster=True)
        heard: list[tuple[str, int]] = []
        await writer.open()
        await watcher.open()
        try:
            await watcher.watch(lambda account, generation: heard.append((account, generation)))
            for _ in range(100):  # bounded: subscribed once the "re-read all" call came
                if ("", 0) in heard:
                    break
                await asyncio.sleep(0.05)
            assert ("", 0) in heard
            for account in accounts:
                # compare-and-set, fenced by generation
                assert await writer.compare_and_set(account, 0, tokens(f"{account}-1"))
                assert not await writer.compare_and_set(account, 0, tokens(f"{account}-x"))
                assert await watcher.compare_and_set(account, 1, tokens(f"{account}-2"))
                stored = await writer.load(account)
                assert stored is not None and stored.generation == 2
                assert stored.tokens.access_token == f"A-{account}-2"
                assert await writer.generation(account) == 2
                # the renewal lock
                assert await writer.acquire_lock(account, "one", 5)
                assert not await watcher.acquire_lock(account, "two", 5)
                await writer.release_lock(account, "one")
                assert await watcher.acquire_lock(account, "two", 5)
                await watcher.release_lock(account, "two")
                # virtual records and the account's index
                digest = f"d-{account}"
                await writer.put_virtual(digest, b"record", time.time() + 60)
                assert await watcher.get_virtual(digest) == b"record"
                assert await watcher.consume_virtual(digest, b"next", time.time() + 60) \
                    == b"record"
                assert await writer.get_virtual(digest) == b"next"
                await writer.delete_virtual([digest])
                assert await writer.get_virtual(digest) is None
                assert await writer.index_virtual(account, "g1", time.time() + 60, 1) == []
                assert await writer.index_virtual(account, "g2", time.time() + 120, 1) == ["g1"]
                assert [m for m, _ in await watcher.list_index(account)] == ["g2"]
                await watcher.unindex_virtual(account, ["g2"])
                assert await writer.list_index(account) == []
            # the processes' status reports: two keys, one hash tag, one slot (issue 19.7)
            await writer.put_process_report("w", b"{}", 30)
            await watcher.put_process_report("v", b"[]", 30)
            assert await writer.process_reports() == {"w": b"{}", "v": b"[]"}
            await watcher.delete_process_report("w")
            assert await writer.process_reports() == {"v": b"[]"}
            for _ in range(100):  # bounded: notifications arrive within moments
                if all((a, 2) in heard for a in accounts):
                    break
                await asyncio.sleep(0.05)
            assert all((a, 1) in heard and (a, 2) in heard for a in accounts), heard
        finally:
            await writer.close()
            await watcher.close()

    asyncio.run(scenario())
    # every key of an account is on the primary the account was chosen for
    for account, port in accounts.items():
        node = redis.Redis(host="127.0.0.1", port=port)
        assert node.exists(f"{prefix}:tokens:{{{account}}}")


def test_keys_of_the_untagged_layout_move_on_open(redis_server: RedisServer) -> None:
    from proxy_addon.store.redis import RedisStore

    prefix = f"m{uuid.uuid4().hex[:8]}"
    raw = redis_server.client()

    async def seed_old_layout() -> None:
        store = RedisStore(codec(), redis_server.url, prefix)
        await store.open()  # writes the key check, finds nothing to move
        await store.close()

    asyncio.run(seed_old_layout())
    raw.delete(f"{prefix}:meta:layout")  # as before the upgrade
    value = codec().encode("main", tokens("old"))  # sealed bound to its account
    raw.hset(f"{prefix}:tokens:main", mapping={"generation": 7, "value": value,
                                                "updated_at": time.time()})
    raw.zadd(f"{prefix}:vindex:main", {"lineage": time.time() + 60})
    raw.pexpire(f"{prefix}:vindex:main", 60_000)
    # an account present under both names keeps the new (tagged) one
    both_value = codec().encode("both", tokens("old"))
    raw.hset(f"{prefix}:tokens:both", mapping={"generation": 1, "value": both_value})
    raw.hset(f"{prefix}:tokens:{{both}}", mapping={"generation": 3, "value": both_value})

    async def upgraded() -> tuple[int | None, int | None, list[tuple[str, float]]]:
        store = RedisStore(codec(), redis_server.url, prefix)
        await store.open()
        try:
            main, both = await store.load("main"), await store.load("both")
            return (main.generation if main else None, both.generation if both else None,
                    await store.list_index("main"))
        finally:
            await store.close()

    main, both, index = asyncio.run(upgraded())
    assert main == 7 and both == 3
    assert [m for m, _ in index] == ["lineage"]
    assert not raw.exists(f"{prefix}:tokens:main")
    assert raw.exists(f"{prefix}:tokens:both")  # left for an operator, with a warning
    assert raw.pttl(f"{prefix}:vindex:{{main}}") > 0  # the TTL moved with the key
    assert raw.get(f"{prefix}:meta:layout") == b"2"


def test_the_proxy_runs_on_a_cluster(tmp_path: Path, emulator_factory,
                                     cluster: ClusterGroup) -> None:
    """`tokenproxy run` with [store] cluster = true: serves, stores under the tagged key,
    and a second proxy adopts the stored session instead of logging in again."""
    from tests.support.proxy import jwt_account, render_config, start_proxy_with_config

    emulator = emulator_factory("--auth-rate", "0")
    prefix = f"p{uuid.uuid4().hex[:8]}"
    key = "cluster-app-key-0123456789"
    config = tmp_path / "cluster.toml"
    config.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "upstream": emulator.url,
         "auth_budget_calls": 0},
        [jwt_account()], [{"name": "app", "account": "main", "key": key}],
        {"backend": "redis", "cluster": True, "url": cluster.url, "prefix": prefix}))
    for _ in range(2):
        proxy = start_proxy_with_config(config, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
        try:
            with proxy.http(key) as client:
                assert client.get("/restapi/v1.0/account/~/extension/~").status_code == 200
            assert proxy.account_status()["state"] == "healthy"
        finally:
            proxy.stop()
    assert emulator.counters()["logins"] == 1
    inspector = SyncCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        assert inspector.hget(f"{prefix}:tokens:{{main}}", "generation") == b"1"
    finally:
        inspector.close()
