"""Virtual-token records in the store are sealed with the store key and bound to their digest:
write access to the store without the key must not let anyone plant a grant or move one under
a token of their choosing (a real SQLite store; nothing mocked)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from cryptography.fernet import Fernet

from proxy_addon.store.base import RecordCodec
from proxy_addon.store.crypto import TokenCipher
from proxy_addon.store.sqlite import SQLiteStore
from proxy_addon.virtual.grants import VirtualTokens, digest
from tests.support.proxy import STORE_KEY


def store(path: Path, key: str = STORE_KEY) -> SQLiteStore:
    return SQLiteStore(RecordCodec(TokenCipher.from_key_material(key)), path)


def test_records_are_sealed_bound_to_their_digest_and_refused_when_planted(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        db = store(tmp_path / "t.db")
        await db.open()
        virtual = VirtualTokens(db)
        pair = await virtual.issue("main", "demo-client-id")
        grant = await virtual.resolve(pair.access_token, "access")
        assert grant is not None and grant.account == "main"
        raw = await db.get_virtual(digest(pair.access_token))
        assert raw is not None and raw.startswith(b"fernet:") and b"main" not in raw

        # planted in clear by someone with store write access but no key
        planted = "TPXA" + "p" * 43
        forged = {"digest": digest(planted), "account": "main", "client_id": "x",
                  "kind": "access", "expires_at": time.time() + 3600, "pair": ["a", "b"]}
        await db.put_virtual(digest(planted), b"plain:" + json.dumps(forged).encode(),
                             time.time() + 3600)
        # a genuine sealed record copied under the digest of a token the attacker chose
        moved = "TPXA" + "m" * 43
        await db.put_virtual(digest(moved), raw, time.time() + 3600)
        # sealed with another key
        other = store(tmp_path / "t.db", Fernet.generate_key().decode())
        foreign = "TPXA" + "f" * 43
        await db.put_virtual(digest(foreign), other.codec.cipher.seal(json.dumps(
            {**forged, "digest": digest(foreign)}).encode()), time.time() + 3600)

        fresh = VirtualTokens(db)  # no cache
        assert await fresh.resolve(pair.access_token, "access") is not None
        for token in (planted, moved, foreign):
            assert await fresh.resolve(token, "access") is None, token
        await db.close()

    asyncio.run(scenario())
