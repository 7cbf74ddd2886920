"""In-process store: for tests and single-process use (lost on restart)."""

from __future__ import annotations

import time

from ..tokens.token_set import TokenSet
from .base import RecordCodec, StoredTokens, TokenStore


class MemoryStore(TokenStore):
    backend = "memory"

    def __init__(self, codec: RecordCodec) -> None:
        super().__init__(codec)
        self._records: dict[str, tuple[int, bytes]] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._virtual: dict[str, tuple[bytes, float]] = {}
        self._indexes: dict[str, dict[str, float]] = {}
        self._reports: dict[str, tuple[bytes, float]] = {}  # process -> report, expiry

    async def open(self) -> None:
        return None

    async def load(self, account: str) -> StoredTokens | None:
        record = self._records.get(account)
        if record is None:
            return None
        return StoredTokens(record[0], self.codec.decode(account, record[1]))

    async def generation(self, account: str) -> int:
        record = self._records.get(account)
        return record[0] if record else 0

    async def compare_and_set(self, account: str, expected: int, tokens: TokenSet) -> bool:
        if await self.generation(account) != expected:
            return False
        self._records[account] = (expected + 1, self.codec.encode(account, tokens))
        return True

    async def acquire_lock(self, account: str, owner: str, lease: float) -> bool:
        holder = self._locks.get(account)
        now = time.monotonic()
        if holder is not None and holder[0] != owner and holder[1] > now:
            return False
        self._locks[account] = (owner, now + lease)
        return True

    async def release_lock(self, account: str, owner: str) -> None:
        holder = self._locks.get(account)
        if holder is not None and holder[0] == owner:
            del self._locks[account]

    async def put_virtual(self, digest: str, record: bytes, expires_at: float) -> None:
        self._virtual[digest] = (record, expires_at)

    async def get_virtual(self, digest: str) -> bytes | None:
        entry = self._virtual.get(digest)
        if entry is None or entry[1] <= time.time():
            self._virtual.pop(digest, None)
            return None
        return entry[0]

    async def delete_virtual(self, digests: list[str]) -> None:
        for digest in digests:
            self._virtual.pop(digest, None)

    async def consume_virtual(self, digest: str, replacement: bytes | None,
                              expires_at: float) -> bytes | None:
        taken = await self.get_virtual(digest)  # no await point after this: atomic
        if taken is not None:
            self._virtual.pop(digest, None)
            if replacement is not None:
                self._virtual[digest] = (replacement, expires_at)
        return taken

    async def index_virtual(self, index: str, member: str, expires_at: float,
                            cap: int) -> list[str]:
        now = time.time()  # no await point in here: atomic
        members = {m: t for m, t in self._indexes.get(index, {}).items() if t > now}
        members[member] = expires_at
        removed: list[str] = []
        if cap > 0 and len(members) > cap:
            removed = sorted(members, key=lambda m: (members[m], m))[:len(members) - cap]
            for gone in removed:
                del members[gone]
        self._indexes[index] = members
        return removed

    async def unindex_virtual(self, index: str, members: list[str]) -> None:
        for member in members:
            self._indexes.get(index, {}).pop(member, None)

    async def list_index(self, index: str) -> list[tuple[str, float]]:
        now = time.time()
        return sorted(((m, t) for m, t in self._indexes.get(index, {}).items() if t > now),
                      key=lambda item: (item[1], item[0]))

    # process reports: only this process writes them, so /status shows this process alone

    shares_process_reports = False

    async def put_process_report(self, process: str, report: bytes, ttl: float) -> None:
        now = time.monotonic()
        self._reports = {p: r for p, r in self._reports.items() if r[1] > now}
        self._reports[process] = (report, now + ttl)

    async def process_reports(self) -> dict[str, bytes]:
        now = time.monotonic()
        self._reports = {p: r for p, r in self._reports.items() if r[1] > now}
        return {p: r[0] for p, r in self._reports.items()}

    async def delete_process_report(self, process: str) -> None:
        self._reports.pop(process, None)

    async def close(self) -> None:
        return None
