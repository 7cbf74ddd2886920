"""The store's process reports (issue 19.7) on every backend: a report is kept per process,
replaced by its next one, read back by another store object on the same store, gone after its
lifetime (and pruned) or when the process leaves; the bytes come back as they were written,
garbage included (the reader judges them, ``ops/processes.py``). Redis: the keys carry the
store's prefix and one hash tag, live no longer than the latest report, and a key of the wrong
type is a StoreError, not a crash."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from proxy_addon.store import StoreError, TokenStore
from proxy_addon.store.memory import MemoryStore
from tests.store.test_store_contract import Backend, opened, run


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    redis = request.getfixturevalue("redis_server") if request.param == "redis" else None
    return Backend(request.param, tmp_path, redis)


def test_reports_are_kept_replaced_shared_and_removed(backend: Backend) -> None:
    async def scenario() -> None:
        async with opened(backend.make()) as a, opened(backend.make()) as b:
            assert await a.process_reports() == {}
            await a.put_process_report("host:1:aa", b'{"n": 1}', 30)
            await b.put_process_report("host:2:bb", b'{"n": 2}', 30)
            await a.put_process_report("host:1:aa", b'{"n": 3}', 30)  # replaces its last one
            for store in (a, b):  # both see both (one object for the memory store)
                assert await store.process_reports() == {"host:1:aa": b'{"n": 3}',
                                                         "host:2:bb": b'{"n": 2}'}
            await b.delete_process_report("host:1:aa")  # a clean stop
            await b.delete_process_report("never-there")  # nothing to do
            assert await a.process_reports() == {"host:2:bb": b'{"n": 2}'}

    run(scenario)


def test_a_report_runs_out_after_its_lifetime_and_is_pruned(backend: Backend) -> None:
    async def scenario() -> None:
        async with opened(backend.make()) as store:
            await store.put_process_report("crashed", b"{}", 0.4)
            await store.put_process_report("alive", b"{}", 30)
            assert set(await store.process_reports()) == {"crashed", "alive"}
            await asyncio.sleep(0.7)
            assert set(await store.process_reports()) == {"alive"}
            await store.put_process_report("alive", b"{}", 30)
        assert raw_processes(backend) in (None, {"alive"})  # pruned, not only hidden

    run(scenario)


def raw_processes(backend: Backend) -> set[str] | None:
    """The processes that still have a report in the store as stored (None: memory)."""
    if backend.kind == "sqlite":
        with sqlite3.connect(backend.tmp_path / "t.db") as db:
            return {row[0] for row in db.execute("SELECT process FROM process_reports")}
    if backend.kind == "redis":
        assert backend.redis is not None
        client = backend.redis.client()
        fields = {f.decode() for f in client.hkeys(f"{backend.prefix}:reports:{{processes}}")}
        scored = {m.decode() for m in client.zrange(f"{backend.prefix}:reportexp:{{processes}}",
                                                    0, -1)}
        assert fields == scored
        return fields
    return None


def test_garbage_comes_back_as_bytes_for_the_reader_to_judge(backend: Backend) -> None:
    async def scenario() -> None:
        async with opened(backend.make()) as store:
            await store.put_process_report("binary", b"\x00\xff\xfe", 30)
            if backend.kind == "sqlite":  # SQLite columns take any type a foreign writer gives
                with sqlite3.connect(backend.tmp_path / "t.db") as db:
                    db.execute("INSERT INTO process_reports VALUES ('text', 'hello', ?)",
                               (time.time() + 30,))
                    db.execute("INSERT INTO process_reports VALUES ('number', 42, ?)",
                               (time.time() + 30,))
            reports = await store.process_reports()
            assert reports["binary"] == b"\x00\xff\xfe"
            assert all(isinstance(v, bytes) for v in reports.values())
            if backend.kind == "sqlite":
                assert (reports["text"], reports["number"]) == (b"hello", b"42")

    run(scenario)


def test_only_a_store_shared_by_processes_shares_reports(backend: Backend) -> None:
    store = backend.make()
    assert store.shares_process_reports is (not isinstance(store, MemoryStore))


def test_sqlite_file_of_an_older_release_gains_the_table(tmp_path: Path) -> None:
    """A store file from before issue 19.7 (no process_reports table) opens and reports."""
    backend = Backend("sqlite", tmp_path, None)

    async def make_old() -> None:
        async with opened(backend.make()):
            pass

    run(make_old)
    with sqlite3.connect(tmp_path / "t.db") as db:
        db.execute("DROP TABLE process_reports")

    async def scenario() -> None:
        async with opened(backend.make()) as store:
            await store.put_process_report("p", b"{}", 30)
            assert await store.process_reports() == {"p": b"{}"}

    run(scenario)


def test_redis_keys_carry_the_prefix_one_hash_tag_and_a_lifetime(redis_server) -> None:
    backend = Backend("redis", Path("."), redis_server)
    client = redis_server.client()
    hash_key = f"{backend.prefix}:reports:{{processes}}"
    zset_key = f"{backend.prefix}:reportexp:{{processes}}"

    async def scenario(store: TokenStore) -> None:
        await store.put_process_report("p", b"{}", 5)
        assert client.type(hash_key) == b"hash" and client.type(zset_key) == b"zset"
        for key in (hash_key, zset_key):  # gone with the latest report, whatever happens
            assert 5000 < client.pttl(key) <= 6000, client.pttl(key)
        # another deployment's prefix is another set of reports
        other = Backend("redis", Path("."), redis_server).make()
        await other.open()
        try:
            assert await other.process_reports() == {}
        finally:
            await other.close()
        # a key of another type where the reports live: a StoreError (``/status`` says so)
        client.delete(hash_key)
        client.set(hash_key, "not a hash")
        with pytest.raises(StoreError, match="WRONGTYPE"):
            await store.process_reports()
        with pytest.raises(StoreError):
            await store.put_process_report("p", b"{}", 5)

    async def main() -> None:
        async with opened(backend.make()) as store:
            await scenario(store)

    run(main)

