"""The token store: SQLite file on disk (real file, real processes) and its encryption."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from proxy_addon.config import StoreConfig
from proxy_addon.store import CorruptRecord, StoreKeyMismatch
from proxy_addon.store.base import RecordCodec
from proxy_addon.store.crypto import TokenCipher
from proxy_addon.store.factory import open_store
from proxy_addon.store.sqlite import SQLiteStore
from proxy_addon.tokens.token_set import TokenSet
from tests.support.proxy import STORE_KEY, jwt_account, render_config, start_proxy_with_config

EXT = "/restapi/v1.0/account/~/extension/~"


def tokens(n: int = 1) -> TokenSet:
    return TokenSet(f"access-{n}-secretvalue", 2e9, f"refresh-{n}-secretvalue", 2e9, 1.0,
                    "100001", f"s{n}")


def sqlite_store(path: Path, key: str | None = STORE_KEY) -> SQLiteStore:
    return SQLiteStore(RecordCodec(TokenCipher([key.encode()] if key else None)), path)


def test_sqlite_cas_generations_and_reopen(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = sqlite_store(tmp_path / "t.db")
        await store.open()
        assert await store.load("main") is None
        assert await store.compare_and_set("main", 0, tokens(1))
        assert not await store.compare_and_set("main", 0, tokens(2))  # stale writer loses
        assert await store.compare_and_set("main", 1, tokens(2))
        await store.close()
        again = sqlite_store(tmp_path / "t.db")
        await again.open()
        record = await again.load("main")
        assert record is not None and record.generation == 2
        assert record.tokens == tokens(2)
        await again.close()

    asyncio.run(scenario())
    mode = stat.S_IMODE(os.stat(tmp_path / "t.db").st_mode)
    assert mode == 0o600
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"secretvalue" not in raw  # never in plaintext in the db, WAL or SHM


def test_wrong_key_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = sqlite_store(tmp_path / "t.db")
        await store.open()
        await store.compare_and_set("main", 0, tokens())
        await store.close()
        with pytest.raises(StoreKeyMismatch, match="does not match"):
            await sqlite_store(tmp_path / "t.db", Fernet.generate_key().decode()).open()
        with pytest.raises(StoreKeyMismatch, match="no store key"):
            await sqlite_store(tmp_path / "t.db", None).open()
        # key rotation: new key first, old key listed after it
        rotated = SQLiteStore(RecordCodec(TokenCipher.from_key_material(
            f"{Fernet.generate_key().decode()},{STORE_KEY}")), tmp_path / "t.db")
        await rotated.open()
        assert (await rotated.load("main")).tokens == tokens()
        await rotated.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("garbage", [b"", b"fernet:truncated", b"plain:{not json",
                                     b"plain:[1,2]", b"\x00\xff" * 10])
def test_corrupt_record_is_a_clear_error(tmp_path: Path, garbage: bytes) -> None:
    async def scenario() -> None:
        store = sqlite_store(tmp_path / "t.db")
        await store.open()
        await store.compare_and_set("main", 0, tokens())
        with sqlite3.connect(tmp_path / "t.db") as db:
            db.execute("UPDATE tokens SET value = ? WHERE account = 'main'", (garbage,))
        with pytest.raises(CorruptRecord, match="account 'main'") as info:
            await store.load("main")
        assert "secretvalue" not in str(info.value)
        assert await store.generation("main") == 1
        await store.close()

    asyncio.run(scenario())


def test_missing_key_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(render_config({"listen": "127.0.0.1:0", "upstream": "http://127.0.0.1:9"},
                                    [jwt_account()], [], {"path": str(tmp_path / "t.db")}))
    env = {k: v for k, v in os.environ.items() if k != "TOKENPROXY_STORE_KEY"}
    result = subprocess.run([sys.executable, "-m", "proxy_addon", "run", "--config",
                             str(config)], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "TOKENPROXY_STORE_KEY" in result.stderr and "allow_plaintext" in result.stderr


def _config(tmp_path: Path, upstream: str) -> Path:
    config = tmp_path / "c.toml"
    config.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "upstream": upstream,
         "auth_budget_calls": 0},
        [jwt_account()], [{"name": "app", "account": "main", "key": "k" * 20}],
        {"path": str(tmp_path / "t.db")}))
    return config


def test_restart_reuses_the_stored_session(tmp_path: Path, emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    config = _config(tmp_path, emulator.url)
    env = {"TOKENPROXY_STORE_KEY": STORE_KEY}
    for _ in range(3):
        proxy = start_proxy_with_config(config, env=env)
        try:
            with proxy.http("k" * 20) as client:
                assert client.get(EXT).status_code == 200
        finally:
            proxy.stop()
    counters = emulator.counters()
    assert counters["logins"] == 1, counters  # no new session after the restarts
    # the stored file never holds a token in clear
    record = asyncio.run(_load(tmp_path / "t.db"))
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("t.db*"))
    assert record.tokens.access_token.encode() not in raw
    assert record.tokens.refresh_token.encode() not in raw


async def _load(path: Path):
    store = sqlite_store(path)
    await store.open()
    try:
        return await store.load("main")
    finally:
        await store.close()


def test_corrupt_record_at_startup_reauthenticates(tmp_path: Path, emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    config = _config(tmp_path, emulator.url)
    env = {"TOKENPROXY_STORE_KEY": STORE_KEY}
    proxy = start_proxy_with_config(config, env=env)
    with proxy.http("k" * 20) as client:
        assert client.get(EXT).status_code == 200
    proxy.stop()
    with sqlite3.connect(tmp_path / "t.db") as db:
        db.execute("UPDATE tokens SET value = ? WHERE account = 'main'", (b"fernet:garbage",))
    proxy = start_proxy_with_config(config, env=env)
    try:
        with proxy.http("k" * 20) as client:
            assert client.get(EXT).status_code == 200  # logged in anew, no crash
    finally:
        proxy.stop()
    assert "unreadable" in proxy.logs()
    assert emulator.counters()["logins"] == 2


def test_factory_respects_allow_plaintext() -> None:
    with pytest.raises(Exception, match="allow_plaintext"):
        open_store(StoreConfig(backend="memory"), environ={})
    assert open_store(StoreConfig(backend="memory", allow_plaintext=True), environ={})
