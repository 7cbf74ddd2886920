"""The proxy on a real redis-server: restart reuse, wrong key, foreign values written while it
runs, and no token in clear in Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from cryptography.fernet import Fernet

from proxy_addon.store.base import RecordCodec
from proxy_addon.store.crypto import TokenCipher
from proxy_addon.store.redis import RedisStore
from tests.support.proxy import STORE_KEY, jwt_account, render_config, start_proxy_with_config
from tests.support.redis_server import RedisServer

EXT = "/restapi/v1.0/account/~/extension/~"
KEY = "redis-app-key-0123456789"


def write_config(tmp_path: Path, upstream: str, redis: RedisServer, prefix: str) -> Path:
    config = tmp_path / f"redis-{uuid.uuid4().hex[:6]}.toml"
    config.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "upstream": upstream,
         "auth_budget_calls": 0},
        [jwt_account()], [{"name": "app", "account": "main", "key": KEY}],
        {"backend": "redis", "url": redis.url, "prefix": prefix}))
    return config


def stored(redis: RedisServer, prefix: str):
    async def load():
        store = RedisStore(RecordCodec(TokenCipher([STORE_KEY.encode()])), redis.url, prefix)
        try:
            return await store.load("main")
        finally:
            await store.close()

    return asyncio.run(load())


def test_restart_reuses_the_session_and_nothing_is_in_clear(
        tmp_path: Path, emulator_factory, redis_server: RedisServer) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    prefix = f"e{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path, emulator.url, redis_server, prefix)
    for _ in range(3):
        proxy = start_proxy_with_config(config, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
        try:
            with proxy.http(KEY) as client:
                assert client.get(EXT).status_code == 200
        finally:
            proxy.stop()
    assert emulator.counters()["logins"] == 1  # no new session after the restarts
    record = stored(redis_server, prefix)
    raw = redis_server.raw_dump()
    assert record.tokens.access_token.encode() not in raw
    assert record.tokens.refresh_token.encode() not in raw

    # another key: refuses to start, saying why; the store is left as it was
    result = subprocess.run(
        [sys.executable, "-m", "proxy_addon", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "TOKENPROXY_STORE_KEY": Fernet.generate_key().decode()})
    assert result.returncode == 2
    assert "store key does not match" in result.stderr
    assert stored(redis_server, prefix).generation == record.generation


def test_foreign_value_written_while_running(tmp_path: Path, emulator_factory,
                                             redis_server: RedisServer) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    prefix = f"f{uuid.uuid4().hex[:8]}"
    proxy = start_proxy_with_config(write_config(tmp_path, emulator.url, redis_server, prefix),
                                    env={"TOKENPROXY_STORE_KEY": STORE_KEY})
    try:
        with proxy.http(KEY) as client:
            assert client.get(EXT).status_code == 200
            generation = stored(redis_server, prefix).generation
            raw = redis_server.client()
            raw.hset(f"{prefix}:tokens:{{main}}", mapping={"generation": generation + 1,
                                                       "value": b"fernet:not-ours"})
            raw.publish(f"{prefix}:rotations",
                        json.dumps({"account": "main", "generation": generation + 1}))
            for _ in range(100):  # the notification makes the proxy read it
                if proxy.account_status()["last_error"]:
                    break
                time.sleep(0.05)
            status = proxy.account_status()
            assert status["last_error"] == "stored tokens unreadable"
            assert "account 'main'" in status["hint"] and status["state"] == "healthy"
            assert client.get(EXT).status_code == 200  # the held token keeps serving
            emulator.expire_now()  # the next request needs a renewal: it repairs the store
            assert client.get(EXT).status_code == 200
            record = stored(redis_server, prefix)
            assert record.generation == generation + 2
            assert proxy.account_status()["state"] == "healthy"
    finally:
        proxy.stop()
    assert "unreadable" in proxy.logs() and "not-ours" not in proxy.logs()
    assert emulator.counters()["logins"] == 1  # repaired by a refresh, no new session


def test_password_and_tls_url(tmp_path: Path, emulator_factory, redis_factory) -> None:
    """rediss:// with a password, the server's CA from [store] tls_ca_file; the password is in
    the environment, never in a log."""
    password = f"pw-{uuid.uuid4().hex}"
    redis = redis_factory(password=password, tls=True)
    emulator = emulator_factory("--auth-rate", "0")
    config = tmp_path / "tls.toml"
    config.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "upstream": emulator.url,
         "auth_budget_calls": 0},
        [jwt_account()], [{"name": "app", "account": "main", "key": KEY}],
        {"backend": "redis", "url": f"rediss://:${{REDIS_PASSWORD}}@127.0.0.1:{redis.port}/0",
         "tls_ca_file": str(redis.tls_ca)}))
    env = {"TOKENPROXY_STORE_KEY": STORE_KEY, "REDIS_PASSWORD": password}
    proxy = start_proxy_with_config(config, env=env)
    try:
        with proxy.http(KEY) as client:
            assert client.get(EXT).status_code == 200
        assert httpx.get(proxy.admin_url + "/readyz", timeout=10).json()["store"]["ok"]
    finally:
        proxy.stop()
    keys = [k.decode() for k in redis.client().scan_iter()]
    assert "tokenproxy:tokens:{main}" in keys
    # a wrong password: refuses to start, naming the store but not the password
    env["REDIS_PASSWORD"] = "wrong-password"
    result = subprocess.run(
        [sys.executable, "-m", "proxy_addon", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert result.returncode == 2, result.stderr
    assert "redis store rediss://***@127.0.0.1" in result.stderr
    assert "wrong-password" not in result.stderr and password not in proxy.logs()
