"""The store interface and the record codec shared by every backend."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

from ..tokens.token_set import TokenSet
from .crypto import TokenCipher, UnreadableRecord

KEY_CHECK_PLAINTEXT = b"tokenproxy-key-check-v1"


class StoreError(Exception):
    """The store cannot be used right now (I/O error, server down)."""


class StoreKeyMismatch(Exception):
    """The store was written with another encryption key (or none): refuse to start."""


class CorruptRecord(Exception):
    """One account's stored value is unreadable; the message says why (never the value)."""

    def __init__(self, account: str, reason: str) -> None:
        super().__init__(f"stored tokens of account {account!r} are unreadable: {reason}")
        self.account = account


@dataclass(frozen=True)
class StoredTokens:
    generation: int
    tokens: TokenSet


class RecordCodec:
    """Token set <-> stored bytes (sealed by the cipher)."""

    def __init__(self, cipher: TokenCipher) -> None:
        self.cipher = cipher

    def encode(self, tokens: TokenSet) -> bytes:
        return self.cipher.seal(tokens.to_json())

    def decode(self, account: str, blob: bytes) -> TokenSet:
        try:
            return TokenSet.from_json(self.cipher.open(blob))
        except UnreadableRecord as exc:
            raise CorruptRecord(account, str(exc)) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptRecord(account, f"not a token set ({type(exc).__name__})") from None

    def check_key(self, stored_check: bytes | None) -> bytes | None:
        """Verify the key against the store's key-check value; returns a value to write when
        the store has none yet (or only a plaintext one while a key is now configured)."""
        if stored_check is None:
            return self.cipher.seal(KEY_CHECK_PLAINTEXT)
        try:
            opened = self.cipher.open(stored_check)
        except UnreadableRecord as exc:
            if not self.cipher.encrypts:
                raise StoreKeyMismatch(
                    "the store is encrypted but no store key is configured (set the "
                    "environment variable named by [store] key_env)") from None
            raise StoreKeyMismatch(f"the store key does not match the store: {exc}") from None
        if opened != KEY_CHECK_PLAINTEXT:
            raise StoreKeyMismatch("the store's key check value is foreign data")
        if self.cipher.encrypts and not stored_check.startswith(b"fernet:"):
            return self.cipher.seal(KEY_CHECK_PLAINTEXT)  # upgrade a plaintext store
        if self.cipher.stale(stored_check):
            return self.cipher.seal(KEY_CHECK_PLAINTEXT)  # key rotation: now the new key's
        return None

    def resealed(self, blob: bytes) -> bytes | None:
        """During a key rotation: ``blob`` sealed with the first key when an older key sealed
        it; None when it needs nothing or cannot be opened (left for the reader to report)."""
        if not self.cipher.stale(blob):
            return None
        try:
            return self.cipher.reseal(blob)
        except UnreadableRecord:
            return None


class TokenStore(abc.ABC):
    """Async interface of every backend. Generations only grow: ``compare_and_set`` writes
    generation ``expected + 1`` only while the stored generation is still ``expected``."""

    backend: str = "?"

    def __init__(self, codec: RecordCodec) -> None:
        self.codec = codec

    @abc.abstractmethod
    async def open(self) -> None:
        """Create what is missing and check the encryption key (StoreKeyMismatch)."""

    @abc.abstractmethod
    async def load(self, account: str) -> StoredTokens | None:
        """The account's record, None if absent; CorruptRecord if unreadable."""

    @abc.abstractmethod
    async def generation(self, account: str) -> int:
        """The stored generation (0 when absent), even if the value is unreadable."""

    @abc.abstractmethod
    async def compare_and_set(self, account: str, expected: int, tokens: TokenSet) -> bool:
        """Write ``tokens`` as generation ``expected + 1`` iff the stored generation is
        ``expected`` (0 = absent). Durable when it returns True."""

    @abc.abstractmethod
    async def acquire_lock(self, account: str, owner: str, lease: float) -> bool:
        """Take the account's renewal lock for ``lease`` seconds (True), unless another owner
        holds an unexpired one (False). Re-acquiring one's own lock extends it."""

    @abc.abstractmethod
    async def release_lock(self, account: str, owner: str) -> None:
        """Release the lock if (and only if) ``owner`` holds it."""

    # -- virtual tokens (issued by the proxy to apps that log in through it) --------------
    # Keyed by the token's SHA-256 (the token itself is never stored); the record is the
    # grant's metadata (account, client id, expiry), not a secret.

    @abc.abstractmethod
    async def put_virtual(self, digest: str, record: bytes, expires_at: float) -> None:
        """Keep ``record`` under ``digest`` until ``expires_at`` (Unix time)."""

    @abc.abstractmethod
    async def get_virtual(self, digest: str) -> bytes | None:
        """The unexpired record, or None."""

    @abc.abstractmethod
    async def delete_virtual(self, digests: list[str]) -> None:
        """Forget these (revocation, rotation)."""

    @abc.abstractmethod
    async def consume_virtual(self, digest: str, replacement: bytes | None,
                              expires_at: float) -> bytes | None:
        """Atomically take the unexpired record under ``digest`` and leave ``replacement``
        there instead (until ``expires_at``; nothing when None). Returns the record taken, or
        None when there was none: of concurrent consumers, exactly one gets the record (a
        refresh token is spent once). A missing record is never created."""

    # A per-account index of virtual grants (their lineage ids), so that they can be counted,
    # capped and listed without a scan. Members only, no secret: a lineage id names a login,
    # it opens nothing.

    @abc.abstractmethod
    async def index_virtual(self, index: str, member: str, expires_at: float,
                            cap: int) -> list[str]:
        """Atomically: keep ``member`` in the set ``index`` until ``expires_at`` (insert, or
        move its expiry), drop the members that have expired, then, while more than ``cap``
        remain (0: no cap), remove those that expire first. Returns the members removed for
        the cap, so that the caller can end them."""

    @abc.abstractmethod
    async def unindex_virtual(self, index: str, members: list[str]) -> None:
        """Remove these members from ``index`` (missing ones are ignored)."""

    @abc.abstractmethod
    async def list_index(self, index: str) -> list[tuple[str, float]]:
        """The unexpired members of ``index`` with their expiry, soonest first."""

    async def watch(self, listener: Callable[[str, int], None],
                    announcements: Callable[[str, int, str], None] | None = None,
                    hot: Callable[[], bool] | None = None) -> None:
        """Call ``listener(account, generation)`` when another process writes (backends that
        can notify); ``listener("", 0)`` means "re-read everything". ``announcements(account,
        generation, owner)`` when a process announces a rotation (:meth:`announce_rotation`).
        ``hot()`` says whether a rotation is near, for backends that poll (poll faster then).
        Default: no notifications, other processes' writes are found on the next renewal or
        401."""
        return None

    # -- cluster-wide drain (issue 15.2) ---------------------------------------------------
    # Before a refresh kills the current access token, its renewer announces the rotation;
    # every other live process stops leasing that generation, lets its requests on it finish
    # and acknowledges; then the refresh is sent. Members are the processes sharing the store
    # (each heartbeats); only their acknowledgements are waited for. A single-process backend
    # has no other members, and these defaults make the drain a local one.

    async def heartbeat(self, member: str, ttl: float) -> None:
        """``member`` (a process) is alive for ``ttl`` seconds more."""
        return None

    async def leave(self, member: str) -> None:
        """``member`` stops (shutdown): nobody waits for it any more."""
        return None

    async def members(self) -> set[str]:
        """The processes whose heartbeat has not run out."""
        return set()

    async def announce_rotation(self, account: str, generation: int, owner: str,
                                ttl: float) -> None:
        """``owner`` is about to rotate ``account`` away from ``generation`` (for ``ttl``
        seconds at most): tell every other process."""
        return None

    async def ack_rotation(self, account: str, generation: int, member: str) -> None:
        """``member`` no longer uses ``generation`` of ``account``."""
        return None

    async def rotation_acks(self, account: str, generation: int) -> set[str]:
        """The members that acknowledged the rotation of ``generation``."""
        return set()

    @abc.abstractmethod
    async def close(self) -> None: ...
