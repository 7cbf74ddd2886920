"""The store interface and the record codec shared by every backend."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

from ..tokens.token_set import TokenSet
from .crypto import PLAIN, SEALED, TokenCipher, UnreadableRecord, bind, unbind

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


TOKENS, VIRTUAL, META = "tokens", "virtual", "meta"  # what a record is (its binding)
KEY_CHECK_BOUND = b"tokenproxy-key-check-v2"  # the store's records are all bound


def _what(kind: str, name: str) -> str:
    """A record named for a message (an account's name; never a virtual digest)."""
    if kind == TOKENS:
        return f"account {name!r}"
    return {VIRTUAL: "a virtual-grant record", META: "the store's key check"}.get(
        kind, "another kind of record")


class RecordCodec:
    """Token set <-> stored bytes, sealed by the cipher and bound to the record's kind and name
    (:func:`~.crypto.bind`): a sealed record is refused anywhere but where it was written.

    Stores written before the binding (key check ``…-v1``) are migrated when they open: the
    stores' re-seal pass hands every token record to :meth:`resealed`, which seals it again
    bound to the account it is stored under, then :meth:`finish_reseal` gives the ``…-v2`` key
    check that marks the store as migrated. Until then an unbound sealed token record is read
    (it was written by an older release); from then on it is refused. Virtual-grant records of
    the old format name their own digest inside the sealed JSON
    (:meth:`~proxy_addon.virtual.grants.VirtualGrant.from_json` checks it), so they stay
    readable until they lapse; new ones are bound like the rest. A ``plain:`` record is refused
    whenever a key is configured, except that a store kept in clear before a key was set has
    its plaintext token records sealed (bound) by that migration."""

    def __init__(self, cipher: TokenCipher) -> None:
        self.cipher = cipher
        self.bound_only = True  # False while the store holds records from before the binding
        self._migrating = False  # the re-seal pass binds unbound token records
        self._was_plain = False  # ... and seals plaintext ones (the store had no key before)

    @property
    def needs_reseal(self) -> bool:
        """The stores' re-seal pass has work: a key rotation, or records to bind."""
        return self.cipher.rotating or self._migrating

    def seal(self, kind: str, name: str, payload: bytes) -> bytes:
        if not self.cipher.encrypts:
            return self.cipher.seal(payload)  # in clear: a binding would protect nothing
        return self.cipher.seal(bind(kind, name, payload))

    def open(self, kind: str, name: str, blob: bytes) -> bytes:
        """The payload of the record stored as ``kind``/``name``; UnreadableRecord (with the
        reason, never the value) when it belongs elsewhere or cannot be trusted."""
        if self.cipher.encrypts and blob.startswith(PLAIN):
            raise UnreadableRecord(
                "it is stored in clear although a store key is configured: refused (written "
                "without the key: planted, or left from before the store was encrypted)")
        plaintext = self.cipher.open(blob)
        if not self.cipher.encrypts:
            return plaintext
        bound = unbind(plaintext)
        if bound is None:
            if self.bound_only and kind != VIRTUAL:
                raise UnreadableRecord(
                    "it is sealed in the format from before records were bound to their "
                    "account, but this store was migrated: refused (an old copy put back, or "
                    "moved from another record)")
            return plaintext
        if (bound[0], bound[1]) != (kind, name):
            raise UnreadableRecord(f"it was sealed for {_what(bound[0], bound[1])}: refused "
                                   "(records were swapped or moved in the store)")
        return bound[2]

    def encode(self, account: str, tokens: TokenSet) -> bytes:
        return self.seal(TOKENS, account, tokens.to_json())

    def decode(self, account: str, blob: bytes) -> TokenSet:
        try:
            return TokenSet.from_json(self.open(TOKENS, account, blob))
        except UnreadableRecord as exc:
            raise CorruptRecord(account, str(exc)) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptRecord(account, f"not a token set ({type(exc).__name__})") from None

    def seal_virtual(self, digest: str, record: bytes) -> bytes:
        return self.seal(VIRTUAL, digest, record)

    def open_virtual(self, digest: str, blob: bytes) -> bytes:
        """UnreadableRecord for a record that is not this digest's (see :meth:`open`)."""
        return self.open(VIRTUAL, digest, blob)

    def check_key(self, stored_check: bytes | None) -> bytes | None:
        """Verify the key against the store's key-check value; returns a value to write now
        (a new store, a key rotation). Learns whether the store still holds records from
        before the binding (then :attr:`needs_reseal`, and :meth:`finish_reseal` after the
        stores' re-seal pass)."""
        self.bound_only, self._migrating, self._was_plain = True, False, False
        if stored_check is None:
            return self._key_check()
        try:
            opened = self.cipher.open(stored_check)
            bound = unbind(opened) if stored_check.startswith(SEALED) else None
        except UnreadableRecord as exc:
            if not self.cipher.encrypts:
                raise StoreKeyMismatch(
                    "the store is encrypted but no store key is configured (set the "
                    "environment variable named by [store] key_env)") from None
            raise StoreKeyMismatch(f"the store key does not match the store: {exc}") from None
        if bound is not None:
            if (bound[0], bound[1], bound[2]) != (META, "key_check", KEY_CHECK_BOUND):
                raise StoreKeyMismatch("the store's key check value is foreign data")
        elif opened not in (KEY_CHECK_PLAINTEXT, KEY_CHECK_BOUND):
            raise StoreKeyMismatch("the store's key check value is foreign data")
        if not self.cipher.encrypts:
            return None
        if bound is None:  # written before the binding (or in clear): migrate on this open
            self.bound_only = False
            self._migrating = True
            self._was_plain = not stored_check.startswith(SEALED)
            return None
        if self.cipher.stale(stored_check):
            return self._key_check()  # key rotation: now the new key's
        return None

    def _key_check(self) -> bytes:
        if not self.cipher.encrypts:
            return self.cipher.seal(KEY_CHECK_PLAINTEXT)
        return self.seal(META, "key_check", KEY_CHECK_BOUND)

    def finish_reseal(self) -> bytes | None:
        """After the stores' re-seal pass: the key check to write when that pass bound the
        store's records (from now on only bound records are read), else None."""
        if not self._migrating:
            return None
        self._migrating = self._was_plain = False
        self.bound_only = True
        return self._key_check()

    def resealed(self, blob: bytes, kind: str = VIRTUAL, name: str = "") -> bytes | None:
        """``blob``, stored as ``kind``/``name``, sealed again: with the first key during a key
        rotation, bound during the migration of an older store. None when it needs nothing or
        cannot be opened or belongs elsewhere (left for the reader to report)."""
        if not self.cipher.encrypts:
            return None
        if blob.startswith(PLAIN):
            if kind == TOKENS and self._migrating and self._was_plain:
                return self.seal(kind, name, blob[len(PLAIN):])
            return None
        try:
            plaintext = self.cipher.open(blob)
            bound = unbind(plaintext)
        except UnreadableRecord:
            return None
        if bound is None and kind == TOKENS and self._migrating:
            return self.seal(kind, name, plaintext)
        if bound is not None and (bound[0], bound[1]) != (kind, name):
            return None
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

    # -- API rate-limit windows shared by the processes (issue 17) -------------------------
    # A sliding window of send times per key (an account and a rate-limit group) and its
    # penalty, on the store's own clock, so N processes together keep to the platform's limit.
    # Backends that live inside one process leave ``shares_rate_limits`` False: each process
    # then keeps its budget itself (:mod:`proxy_addon.ratelimit.gate`).

    shares_rate_limits = False

    async def rate_reserve(self, key: str, limit: int, span: float, member: str
                           ) -> tuple[float, int]:
        """Take a slot for ``member`` if fewer than ``limit`` were taken in the last ``span``
        seconds and no penalty runs: ``(0.0, slots now taken)``; else ``(seconds until a slot
        may free, slots taken)`` and nothing is taken."""
        raise NotImplementedError

    async def rate_restamp(self, key: str, member: str) -> None:
        """``member``'s slot counts from now (its request leaves only now)."""
        raise NotImplementedError

    async def rate_penalize(self, key: str, seconds: float) -> None:
        """Nothing is reserved under ``key`` for ``seconds`` from now (a longer penalty already
        running stays)."""
        raise NotImplementedError

    # -- status across processes (issue 19.7) ----------------------------------------------
    # Every process keeps a small report of itself here (:mod:`proxy_addon.ops.processes`):
    # JSON with names, states and counts, never a secret, so it is stored as it is (not
    # sealed). The store only keeps the bytes and forgets them ``ttl`` seconds after the last
    # write, on its own clock; reading and checking them is the reader's job.

    shares_process_reports = True  # False: a store inside one process (nobody else reads)

    @abc.abstractmethod
    async def put_process_report(self, process: str, report: bytes, ttl: float) -> None:
        """Keep ``report`` as ``process``'s (replacing its last one) for ``ttl`` seconds; drop
        the reports whose time ran out."""

    @abc.abstractmethod
    async def process_reports(self) -> dict[str, bytes]:
        """{process: report} of every report whose time has not run out (the raw bytes as
        stored: they may be anything, the reader checks them)."""

    @abc.abstractmethod
    async def delete_process_report(self, process: str) -> None:
        """``process`` stops (a clean shutdown): forget its report."""

    @abc.abstractmethod
    async def close(self) -> None: ...
