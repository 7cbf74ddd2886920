"""The pool in-process against the real emulator over HTTP: per-request wait bounds (with the
token endpoint slowed by a fault option), the token-call budget shared per (user, client id), and
the store re-read after a refused refresh."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from proxy_addon.config import parse_config
from proxy_addon.gateway.errors import token_unavailable_code
from proxy_addon.store.base import RecordCodec
from proxy_addon.store.crypto import TokenCipher
from proxy_addon.store.memory import MemoryStore
from proxy_addon.tokens.pool import (
    AccountTokens,
    PoolSettings,
    TokenPool,
    TokenUnavailable,
)
from proxy_addon.tokens.ports import NullObserver
from proxy_addon.tokens.renewal import Superseded
from proxy_addon.upstream.token_endpoint import TokenEndpoint


def _account(name: str, jwt: str) -> dict[str, str]:
    return {"name": name, "client_id": "demo-client-id", "client_secret": "demo-client-secret",
            "grant": "jwt", "jwt": jwt}


def _pool(url: str, http: httpx.AsyncClient, wait: float, budget: int = 0) -> TokenPool:
    config = parse_config({
        "proxy": {"upstream": url},
        "accounts": [_account("main", "demo-jwt-credential"),
                     _account("other", "demo-jwt-credential-2")],
    }, "test", {})
    settings = PoolSettings(token_wait_timeout=wait, auth_budget_calls=budget)
    return TokenPool.build(config, TokenEndpoint(url, http),
                           MemoryStore(RecordCodec(TokenCipher(None))), observer=NullObserver(),
                           settings=settings)


def test_wait_is_bounded_from_arrival_across_the_replay(emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            account = _pool(emulator.url, http, wait=1.0)["main"]
            _, generation = await account.lease()  # fast token endpoint: fine
            emulator.set_policy(token_delay=3.0)  # now every renewal takes 3 s
            arrived = time.time()
            await asyncio.sleep(0.6)  # the request spent 0.6 s upstream, then got a 401
            with pytest.raises(TokenUnavailable) as info:
                await account.rejected(generation, "OAU-213", account.deadline(arrived))
            waited = time.time() - arrived
            assert token_unavailable_code(info.value) == "TPX-TOKEN-TIMEOUT"
            assert 0.9 <= waited < 1.3, waited  # the 1 s budget counts from arrival
            # a second request waits on the same renewal, for its own 1 s only
            started = time.time()
            with pytest.raises(TokenUnavailable):
                await account.lease()
            assert time.time() - started < 1.3
            account.close()

    asyncio.run(scenario())
    assert emulator.counters()["token_calls"] == 2  # first login + one (slow) renewal


def test_budget_is_per_user_not_per_client_id(emulator_factory) -> None:
    """Issue 17: two users under one client id do not share the token-call budget."""
    emulator = emulator_factory("--auth-rate", "0")

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            pool = _pool(emulator.url, http, wait=1.0, budget=2)
            _, generation = await pool["main"].lease()  # call 1 of main's user
            await pool["other"].lease()  # another user: its own budget
            emulator.revoke_all()
            _, generation = await pool["main"].rejected(generation, "OAU-213")  # call 2
            emulator.revoke_all()
            with pytest.raises(TokenUnavailable) as info:
                await pool["main"].rejected(generation, "OAU-213")
            assert token_unavailable_code(info.value) == "TPX-AUTH-RATE-LIMITED"
            assert info.value.retry_after and info.value.retry_after > 50
            pool.close()

    asyncio.run(scenario())
    assert emulator.counters()["token_calls"] == 3


def test_refused_refresh_rereads_the_store_before_logging_in(emulator_factory) -> None:
    """A refresh refused with invalid_grant may only mean another process rotated the token
    (its lock ran out while it was paused): the pool re-reads the store and adopts that pair
    instead of concluding the session is dead and logging in anew."""
    emulator = emulator_factory("--auth-rate", "0")

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            config = parse_config({"proxy": {"upstream": emulator.url},
                                   "accounts": [_account("main", "demo-jwt-credential")]},
                                  "test", {})
            store = MemoryStore(RecordCodec(TokenCipher(None)))
            endpoint = TokenEndpoint(emulator.url, http)
            a, b = (AccountTokens(config.accounts[0], endpoint, PoolSettings(), store,
                                  owner=owner) for owner in ("a", "b"))
            _, generation = await a.lease()  # a logs in: generation 1 in the store
            a.release(generation)
            _, generation_b = await b.lease()  # b adopts it: no token call
            b.release(generation_b)
            assert (generation, generation_b) == (1, 1)
            await a.rejected(1, "OAU-210")  # a refreshes: generation 2; b's pair is rotated
            with pytest.raises(Superseded) as info:  # b's refresh is refused ...
                await b._obtain("expired")
            assert info.value.record.generation == 2  # ... and b takes a's pair from the store
            a.close()
            b.close()

    asyncio.run(scenario())
    counters = emulator.counters()
    assert counters["logins"] == 1 and counters["token_calls"] == 3, counters
