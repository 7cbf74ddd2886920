"""Redis with Sentinel (issue 15): a primary, a replica and three ``redis-sentinel`` processes
on loopback (the primary counts as down after 1 s).

- ``min_replicas_ack``: a rotated pair is confirmed by the replica (``WAIT``); while the replica
  is frozen the write still counts, and the shortfall is counted.
- Failover: traffic through 2 proxies, ``kill -9`` of the primary right after a rotation. The
  proxies follow the promotion by themselves; the account keeps its one session (no new login)
  and the platform never sees a refresh with a spent or dead refresh token (the newest pair
  survived on the promoted replica, and every later rotation started from it); client-visible
  failures stay inside the failover window, whose length is printed (``figures sentinel``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis

from proxy_addon.store.base import RecordCodec
from proxy_addon.store.crypto import TokenCipher
from proxy_addon.tokens.token_set import TokenSet
from tests.support.proxy import STORE_KEY, jwt_account, render_config, start_proxy_with_config
from tests.support.redis_server import SentinelGroup, start_sentinel_group

EXT = "/restapi/v1.0/account/~/extension/~"
KEY = "sentinel-app-key-0123456789"
ACCESS_TTL = 6  # s: a rotation every few seconds
CLIENTS = 20
WARM_UP, AFTER_KILL = 4.0, 24.0  # s of traffic before waiting for the rotation, and after
WINDOW_LIMIT = 15.0  # s after the kill by which every client-visible failure has happened


@pytest.fixture
def sentinel_group(tmp_path: Path):
    group = start_sentinel_group(tmp_path / "sentinel")
    try:
        yield group
    finally:
        group.stop()


def tokens(tag: str) -> TokenSet:
    now = time.time()
    return TokenSet(access_token=f"A-{tag}", access_expires_at=now + 3600,
                    refresh_token=f"R-{tag}", refresh_expires_at=now + 86400, issued_at=now)


def test_min_replicas_ack_counts_writes_the_replica_did_not_confirm(
        sentinel_group: SentinelGroup) -> None:
    from proxy_addon.ops.metrics import Metrics
    from proxy_addon.store.base import StoreError
    from proxy_addon.store.instrumented import InstrumentedStore
    from proxy_addon.store.redis import RedisStore

    metrics = Metrics()

    async def scenario() -> tuple[int, int]:
        store = RedisStore(RecordCodec(TokenCipher(None)), None, f"w{uuid.uuid4().hex[:8]}",
                           sentinels=[("127.0.0.1", p) for p in sentinel_group.sentinel_ports],
                           sentinel_service=sentinel_group.service, min_replicas_ack=1)
        counted = InstrumentedStore(store, metrics)  # as `tokenproxy run` wraps it
        await counted.open()
        try:
            assert await counted.compare_and_set("main", 0, tokens("1"))
            confirmed = store.unreplicated_writes
            sentinel_group.replica.pause()  # the replica stops acknowledging
            try:
                assert await counted.compare_and_set("main", 1, tokens("2"))  # still counts
            finally:
                sentinel_group.replica.resume()
            assert await store.generation("main") == 2
            # a primary refusing writes (min-replicas-to-write) is a store error that names
            # the server's reason, not the command (which carries the stored value)
            sentinel_group.primary.client().config_set("min-replicas-to-write", 2)
            try:
                with pytest.raises(StoreError) as refused:
                    await store.compare_and_set("main", 2, tokens("secret-3"))
            finally:
                sentinel_group.primary.client().config_set("min-replicas-to-write", 0)
            assert "NOREPLICAS" in str(refused.value), refused.value
            assert "secret-3" not in str(refused.value) and "EVALSHA" not in str(refused.value)
            return confirmed, store.unreplicated_writes
        finally:
            await store.close()

    confirmed, unconfirmed = asyncio.run(scenario())
    assert confirmed == 0  # the replica confirmed the first write
    assert unconfirmed == 1
    assert metrics.registry.get_sample_value("tokenproxy_store_unreplicated_writes_total",
                                             {"backend": "redis"}) == 1


def test_store_and_watcher_follow_a_manual_failover(sentinel_group: SentinelGroup) -> None:
    """SENTINEL FAILOVER leaves the old primary up as a replica: the store learns it from a
    READONLY answer (or the dropped connection) and asks the sentinels again."""
    from proxy_addon.store.base import StoreError
    from proxy_addon.store.redis import RedisStore

    prefix = f"m{uuid.uuid4().hex[:8]}"
    heard: list[tuple[str, int]] = []

    def make() -> RedisStore:
        return RedisStore(RecordCodec(TokenCipher(None)), None, prefix,
                          sentinels=[("127.0.0.1", p) for p in sentinel_group.sentinel_ports],
                          sentinel_service=sentinel_group.service, min_replicas_ack=1)

    async def until(check, seconds: float) -> bool:
        for _ in range(int(seconds / 0.05)):  # bounded
            if await check():
                return True
            await asyncio.sleep(0.05)
        return False

    async def scenario() -> tuple[int, int]:
        writer, watcher = make(), make()
        await writer.open()
        await watcher.open()
        try:
            await watcher.watch(lambda account, generation: heard.append((account, generation)))

            async def subscribed() -> bool:
                return ("", 0) in heard

            assert await until(subscribed, 5)
            assert await writer.compare_and_set("main", 0, tokens("1"))
            sentinel_group.sentinel_client().execute_command(
                "SENTINEL", "FAILOVER", sentinel_group.service)
            promoted = ("127.0.0.1", sentinel_group.replica.port)

            async def switched() -> bool:
                return await asyncio.to_thread(sentinel_group.master_address) == promoted

            assert await until(switched, 20), "the sentinels did not promote the replica"
            errors = 0
            for _ in range(100):  # bounded: the old primary may still take a moment to yield
                try:
                    if await writer.compare_and_set("main", 1, tokens("2")):
                        break
                except StoreError:
                    errors += 1
                await asyncio.sleep(0.1)

            new = redis.Redis(host="127.0.0.1", port=sentinel_group.replica.port,
                              socket_timeout=2)

            async def watcher_moved() -> bool:
                counts = await asyncio.to_thread(new.pubsub_numsub, watcher.channel)
                return bool(counts and counts[0][1] >= 1)

            # the watcher subscribes on the new primary within its 5 s idle check
            assert await until(watcher_moved, 15), heard
            return await writer.generation("main"), errors
        finally:
            await writer.close()
            await watcher.close()

    generation, errors = asyncio.run(scenario())
    assert generation == 2
    on_new = redis.Redis(host="127.0.0.1", port=sentinel_group.replica.port, socket_timeout=2)
    assert int(on_new.hget(f"{prefix}:tokens:{{main}}", "generation")) == 2
    print(f"figures sentinel manual failover: store errors while switching={errors}")


async def drive(urls: list[str], end: float, log: list[tuple[float, int, str]]) -> None:
    """CLIENTS clients spread over the proxies, a request every ~0.2 s each; ``log`` gets
    (monotonic time, status or 0 for a transport error, detail) per request."""
    sessions = [httpx.AsyncClient(base_url=u, headers={"Authorization": f"Bearer {KEY}"},
                                  timeout=20) for u in urls]

    async def client(index: int) -> None:
        session = sessions[index % len(sessions)]
        for _ in range(10_000):  # bounded
            if time.monotonic() >= end:
                return
            try:
                response = await session.get(EXT)
                detail = "" if response.status_code == 200 else response.text[:160]
                log.append((time.monotonic(), response.status_code, detail))
            except httpx.HTTPError as exc:
                log.append((time.monotonic(), 0, f"{type(exc).__name__}: {exc}"))
            await asyncio.sleep(random.uniform(0.1, 0.3))

    try:
        await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    finally:
        for session in sessions:
            await session.aclose()


def test_failover_after_a_rotation_loses_nothing(tmp_path: Path, emulator_factory,
                                                 sentinel_group: SentinelGroup) -> None:
    emulator = emulator_factory("--access-ttl", str(ACCESS_TTL), "--auth-rate", "0",
                                "--refresh-grace", "0")
    prefix = f"s{uuid.uuid4().hex[:8]}"
    config = tmp_path / "sentinel.toml"
    config.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "upstream": emulator.url,
         "auth_budget_calls": 0, "token_wait_timeout": 20},
        [jwt_account()], [{"name": "app", "account": "main", "key": KEY}],
        {"backend": "redis", "sentinels": sentinel_group.addresses,
         "sentinel_service": sentinel_group.service, "prefix": prefix}))  # min_replicas_ack 1
    proxies = [start_proxy_with_config(config, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
               for _ in range(2)]
    primary = sentinel_group.primary
    record_key = f"{prefix}:tokens:{{main}}"
    log: list[tuple[float, int, str]] = []
    killed: dict[str, float] = {}

    def generation_on_primary() -> int:
        raw = redis.Redis(host="127.0.0.1", port=primary.port, socket_timeout=2)
        try:
            return int(raw.hget(record_key, "generation") or 0)
        finally:
            raw.close()

    async def kill_after_a_rotation() -> None:
        await asyncio.sleep(WARM_UP)
        seen = await asyncio.to_thread(generation_on_primary)
        for _ in range(int(ACCESS_TTL * 3 / 0.02)):  # bounded: a rotation comes within a TTL
            now = await asyncio.to_thread(generation_on_primary)
            if now > seen:
                assert primary.proc is not None
                primary.proc.kill()  # kill -9, right after the rotation
                killed["at"], killed["generation"] = time.monotonic(), now
                return
            await asyncio.sleep(0.02)
        raise AssertionError("no rotation within three access-token lifetimes")

    def generation_on_replica() -> int:
        raw = redis.Redis(host="127.0.0.1", port=sentinel_group.replica.port, socket_timeout=2)
        try:
            return int(raw.hget(record_key, "generation") or 0)
        finally:
            raw.close()

    async def watch_the_failover() -> None:
        """When the sentinels name the replica, and when a proxy first wrote there."""
        promoted = ("127.0.0.1", sentinel_group.replica.port)
        for _ in range(int(AFTER_KILL / 0.05)):  # bounded
            await asyncio.sleep(0.05)
            if "at" not in killed:
                continue
            if "promoted" not in killed and \
                    await asyncio.to_thread(sentinel_group.master_address) == promoted:
                killed["promoted"] = time.monotonic()
            if "promoted" in killed and \
                    await asyncio.to_thread(generation_on_replica) > killed["generation"]:
                killed["first_write"] = time.monotonic()
                return

    async def scenario() -> None:
        watcher = asyncio.create_task(watch_the_failover())
        killer = asyncio.create_task(kill_after_a_rotation())
        end = time.monotonic() + WARM_UP + ACCESS_TTL * 3 + AFTER_KILL
        traffic = asyncio.create_task(drive([p.url for p in proxies], end, log))
        await killer
        # traffic goes on for AFTER_KILL s after the kill (several rotations on the new primary)
        traffic_end = killed["at"] + AFTER_KILL
        await asyncio.sleep(max(0.0, traffic_end - time.monotonic()))
        traffic.cancel()
        with pytest.raises(asyncio.CancelledError):
            await traffic
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    try:
        asyncio.run(scenario())
        # afterwards every proxy serves again
        with proxies[0].http(KEY) as one, proxies[1].http(KEY) as two:
            after = [one.get(EXT).status_code, two.get(EXT).status_code]
        states = [p.account_status()["state"] for p in proxies]
        logs = "".join(p.logs() for p in proxies)
    finally:
        for proxy in proxies:
            proxy.stop()

    new_primary = sentinel_group.master_address()
    counters = emulator.counters()
    at, generation_at_kill = killed["at"], killed["generation"]
    failures = [(t - at, status, detail) for t, status, detail in log if status != 200]
    statuses = Counter(status for _, status, _ in log)
    window = max((t for t, _, _ in failures), default=0.0) - min(
        (t for t, _, _ in failures), default=0.0)
    promoted = redis.Redis(host="127.0.0.1", port=sentinel_group.replica.port, socket_timeout=2)
    stored_generation = int(promoted.hget(record_key, "generation") or 0)
    promoted_after = killed.get("promoted", float("nan")) - at
    written_after = killed.get("first_write", float("nan")) - at
    print(f"figures sentinel: promotion {promoted_after:.2f}s after the kill, first write on "
          f"the new primary {written_after:.2f}s after it; "
          f"requests={len(log)} statuses={dict(statuses)} "
          f"failures={len(failures)} failure_window={window:.2f}s "
          f"(first {min((t for t, _, _ in failures), default=0.0):+.2f}s, "
          f"last {max((t for t, _, _ in failures), default=0.0):+.2f}s after the kill) "
          f"generation_at_kill={generation_at_kill} stored_after={stored_generation} "
          f"token_calls={counters['token_calls']} ({dict(counters['token_calls_by_grant'])}) "
          f"token_errors={dict(counters['token_errors_by_code'])} logins={counters['logins']} "
          f"new_primary={new_primary} states={states} "
          f"failure_kinds={sorted({d[:120] for _, _, d in failures})[:3]}")
    # the sentinels promoted the replica, and the proxies followed by themselves
    assert new_primary == ("127.0.0.1", sentinel_group.replica.port)
    assert "first_write" in killed, "no proxy wrote to the promoted replica"
    assert after == [200, 200] and states == ["healthy", "healthy"], (after, states, logs[-3000:])
    # the newest pair survived: later rotations built on it, and the platform never saw a
    # spent or dead refresh token, nor a second login
    assert stored_generation > generation_at_kill
    assert sum(counters["token_errors_by_code"].values()) == 0, counters["token_errors_by_code"]
    assert counters["logins"] == 1
    assert counters["token_calls_by_grant"]["refresh_token"] >= 2
    # client-visible failures only inside the failover window: from the kill until shortly
    # after the sentinels named the new primary (a proxy that had not adopted the pair
    # rotated just before the kill cannot read it meanwhile: 503 TPX-STORE-UNAVAILABLE)
    assert all(0 <= t <= min(WINDOW_LIMIT, promoted_after + 5.0) for t, _, _ in failures), \
        failures[:10]


def test_sentinel_config_defaults_and_secrets(tmp_path: Path) -> None:
    """min_replicas_ack is 1 with sentinels, 0 otherwise; the passwords are secrets (redacted
    from logs) and the store names the service and sentinels, never a password."""
    from proxy_addon.config import parse_config
    from proxy_addon.store.factory import open_store

    base = {"proxy": {"upstream": "http://127.0.0.1:9"},
            "accounts": [{"name": "main", "client_id": "id", "client_secret": "s",
                          "grant": "jwt", "jwt": "j"}]}
    sentinel = parse_config({**base, "store": {
        "backend": "redis", "sentinels": ["127.0.0.1:26379", "[::1]:26380"],
        "sentinel_service": "tpx", "url": "rediss://:data-pw-123@/2",
        "sentinel_password": "sentinel-pw-456", "allow_plaintext": True}}, "c.toml", {})
    assert sentinel.store.min_replicas_ack == 1
    assert [str(s) for s in sentinel.store.sentinels] == ["127.0.0.1:26379", "[::1]:26380"]
    assert {"rediss://:data-pw-123@/2", "sentinel-pw-456"} <= set(sentinel.secret_values())
    store = open_store(sentinel.store, {})
    assert "pw" not in store.where and "tpx" in store.where  # type: ignore[attr-defined]
    plain = parse_config({**base, "store": {"backend": "redis", "url": "redis://h:1/0"}},
                         "c.toml", {})
    assert plain.store.min_replicas_ack == 0
    zero = parse_config({**base, "store": {
        "backend": "redis", "sentinels": ["127.0.0.1:26379"], "sentinel_service": "tpx",
        "min_replicas_ack": 0}}, "c.toml", {})
    assert zero.store.min_replicas_ack == 0


def test_passwords_of_the_primary_and_of_the_sentinels(tmp_path: Path) -> None:
    """The primary's password comes from `url` (no host), the sentinels' own from
    `sentinel_password`; through the config and the factory, as `tokenproxy run` opens it. A
    wrong one is a store error naming neither password."""
    from proxy_addon.config import parse_config
    from proxy_addon.store.base import StoreError
    from proxy_addon.store.factory import open_store

    group = start_sentinel_group(tmp_path / "auth", password="data-pw-1234",
                                 sentinel_password="sent-pw-5678")
    try:
        def opened(url: str, sentinel_password: str) -> tuple[bool, int] | str:
            config = parse_config({
                "proxy": {"upstream": "http://127.0.0.1:9"},
                "accounts": [{"name": "main", "client_id": "id", "client_secret": "s",
                              "grant": "jwt", "jwt": "j"}],
                "store": {"backend": "redis", "sentinels": group.addresses,
                          "sentinel_service": group.service, "url": url,
                          "sentinel_password": sentinel_password,
                          "prefix": f"p{uuid.uuid4().hex[:8]}"}}, "c.toml", {})

            async def run() -> tuple[bool, int] | str:
                store = open_store(config.store, {"TOKENPROXY_STORE_KEY": STORE_KEY})
                try:
                    await store.open()
                    done = await store.compare_and_set("main", 0, tokens("1"))
                    return done, store.unreplicated_writes  # type: ignore[attr-defined]
                except StoreError as exc:
                    return str(exc)
                finally:
                    await store.close()

            return asyncio.run(run())

        assert opened("redis://:data-pw-1234@/0", "sent-pw-5678") == (True, 0)
        for url, sentinel_password in (("redis://:wrong-data-pw@/0", "sent-pw-5678"),
                                       ("redis://:data-pw-1234@/0", "wrong-sent-pw")):
            message = opened(url, sentinel_password)
            assert isinstance(message, str) and message.startswith("redis store sentinel "), \
                message
            for secret in ("data-pw-1234", "sent-pw-5678", "wrong-data-pw", "wrong-sent-pw"):
                assert secret not in message, message
            print(f"figures sentinel auth: {message}")
    finally:
        group.stop()
