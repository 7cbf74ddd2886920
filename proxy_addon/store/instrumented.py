"""A store that counts: wraps any backend and reports each operation's outcome to the metrics
(``tokenproxy_store_operations_total``) and the backend's reachability (``tokenproxy_store_up``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..ops.metrics import Metrics
from ..tokens.token_set import TokenSet
from .base import StoredTokens, StoreError, TokenStore

T = TypeVar("T")


class InstrumentedStore(TokenStore):
    def __init__(self, inner: TokenStore, metrics: Metrics) -> None:
        super().__init__(inner.codec)
        self.inner = inner
        self.backend = inner.backend
        self._metrics = metrics
        self.last_error: str | None = None
        self.last_checked = 0.0
        if hasattr(inner, "on_unreplicated"):  # Redis with [store] min_replicas_ack
            counter = metrics.store_unreplicated.labels(inner.backend)
            inner.on_unreplicated = lambda account: counter.inc()

    async def _counted(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            result = await call()
        except StoreError as exc:
            self._metrics.store_ops.labels(self.backend, operation, "error").inc()
            self._reachable(False, str(exc))
            raise
        self._metrics.store_ops.labels(self.backend, operation, "ok").inc()
        self._reachable(True, None)
        return result

    def _reachable(self, up: bool, error: str | None) -> None:
        self._metrics.store_up.labels(self.backend).set(1 if up else 0)
        self.last_error = error
        self.last_checked = time.time()

    async def open(self) -> None:
        await self.inner.open()

    async def load(self, account: str) -> StoredTokens | None:
        return await self._counted("load", lambda: self.inner.load(account))

    async def generation(self, account: str) -> int:
        return await self._counted("generation", lambda: self.inner.generation(account))

    async def compare_and_set(self, account: str, expected: int, tokens: TokenSet) -> bool:
        return await self._counted(
            "compare_and_set", lambda: self.inner.compare_and_set(account, expected, tokens))

    async def acquire_lock(self, account: str, owner: str, lease: float) -> bool:
        return await self._counted(
            "acquire_lock", lambda: self.inner.acquire_lock(account, owner, lease))

    async def release_lock(self, account: str, owner: str) -> None:
        await self._counted("release_lock", lambda: self.inner.release_lock(account, owner))

    async def put_virtual(self, digest: str, record: bytes, expires_at: float) -> None:
        await self._counted("put_virtual",
                            lambda: self.inner.put_virtual(digest, record, expires_at))

    async def get_virtual(self, digest: str) -> bytes | None:
        return await self._counted("get_virtual", lambda: self.inner.get_virtual(digest))

    async def delete_virtual(self, digests: list[str]) -> None:
        await self._counted("delete_virtual", lambda: self.inner.delete_virtual(digests))

    async def consume_virtual(self, digest: str, replacement: bytes | None,
                              expires_at: float) -> bytes | None:
        return await self._counted("consume_virtual", lambda: self.inner.consume_virtual(
            digest, replacement, expires_at))

    async def index_virtual(self, index: str, member: str, expires_at: float,
                            cap: int) -> list[str]:
        return await self._counted("index_virtual", lambda: self.inner.index_virtual(
            index, member, expires_at, cap))

    async def unindex_virtual(self, index: str, members: list[str]) -> None:
        await self._counted("unindex_virtual",
                            lambda: self.inner.unindex_virtual(index, members))

    async def list_index(self, index: str) -> list[tuple[str, float]]:
        return await self._counted("list_index", lambda: self.inner.list_index(index))

    async def watch(self, listener: Callable[[str, int], None],
                    announcements: Callable[[str, int, str], None] | None = None,
                    hot: Callable[[], bool] | None = None) -> None:
        await self.inner.watch(listener, announcements, hot)

    async def heartbeat(self, member: str, ttl: float) -> None:
        await self._counted("heartbeat", lambda: self.inner.heartbeat(member, ttl))

    async def leave(self, member: str) -> None:
        await self._counted("leave", lambda: self.inner.leave(member))

    async def members(self) -> set[str]:
        return await self._counted("members", self.inner.members)

    async def announce_rotation(self, account: str, generation: int, owner: str,
                                ttl: float) -> None:
        await self._counted("announce_rotation", lambda: self.inner.announce_rotation(
            account, generation, owner, ttl))

    async def ack_rotation(self, account: str, generation: int, member: str) -> None:
        await self._counted("ack_rotation",
                            lambda: self.inner.ack_rotation(account, generation, member))

    async def rotation_acks(self, account: str, generation: int) -> set[str]:
        return await self._counted("rotation_acks",
                                   lambda: self.inner.rotation_acks(account, generation))

    @property
    def shares_process_reports(self) -> bool:  # type: ignore[override]
        return self.inner.shares_process_reports

    async def put_process_report(self, process: str, report: bytes, ttl: float) -> None:
        await self._counted("put_process_report",
                            lambda: self.inner.put_process_report(process, report, ttl))

    async def process_reports(self) -> dict[str, bytes]:
        return await self._counted("process_reports", self.inner.process_reports)

    async def delete_process_report(self, process: str) -> None:
        await self._counted("delete_process_report",
                            lambda: self.inner.delete_process_report(process))

    @property
    def shares_rate_limits(self) -> bool:  # type: ignore[override]
        return self.inner.shares_rate_limits

    # rate-limit windows: one call per admitted API request, passed through uncounted (the
    # governor falls back to per-process budgets while they fail, see ratelimit.shared)

    async def rate_reserve(self, key: str, limit: int, span: float, member: str
                           ) -> tuple[float, int]:
        return await self.inner.rate_reserve(key, limit, span, member)

    async def rate_restamp(self, key: str, member: str) -> None:
        await self.inner.rate_restamp(key, member)

    async def rate_penalize(self, key: str, seconds: float) -> None:
        await self.inner.rate_penalize(key, seconds)

    async def close(self) -> None:
        await self.inner.close()
