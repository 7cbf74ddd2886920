"""Defect 1 of issue 15: a compare-and-set that redis-py re-sends is not counted as lost.

redis-py retries a command once after a socket timeout (``Retry(NoBackoff(), 1, …)``). When the
script ran but its answer came late, the retry used to meet its own write (generation already
``expected + 1``), answer 0, and the pool took its own pair for another process's win. A relay
in front of a real redis-server holds back the answer to the EVALSHA past the client's socket
timeout; the write must still report success, and move the generation by exactly one.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from proxy_addon.store.base import RecordCodec
from proxy_addon.store.crypto import TokenCipher
from proxy_addon.tokens.token_set import TokenSet
from tests.support.redis_server import RedisServer, ReplyDelayer

TIMEOUT = 0.5


def tokens(tag: str) -> TokenSet:
    now = time.time()
    return TokenSet(access_token=f"A-{tag}", access_expires_at=now + 3600,
                    refresh_token=f"R-{tag}", refresh_expires_at=now + 86400, issued_at=now)


def test_a_retried_compare_and_set_reports_its_own_write(redis_server: RedisServer) -> None:
    from proxy_addon.store.redis import RedisStore

    async def scenario() -> tuple[bool, int, int, int]:
        relay = ReplyDelayer(redis_server.port)
        await relay.start()
        store = RedisStore(RecordCodec(TokenCipher(None)), f"redis://127.0.0.1:{relay.port}/0",
                           f"idem{uuid.uuid4().hex[:8]}", timeout=TIMEOUT)
        try:
            await store.open()
            assert await store.compare_and_set("main", 0, tokens("1"))  # script now cached
            before = await store.generation("main")
            relay.arm(b"EVALSHA", TIMEOUT * 3)  # the answer comes after the socket timeout
            done = await store.compare_and_set("main", before, tokens("2"))
            after = await store.generation("main")
            return done, before, after, relay.delayed
        finally:
            await store.close()
            await relay.stop()

    done, before, after, delayed = asyncio.run(scenario())
    assert delayed == 1  # the answer was really held back, so redis-py did re-send
    assert after == before + 1, (before, after)
    assert done, "the retried compare-and-set reported its own write as another's"
