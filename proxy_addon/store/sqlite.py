"""SQLite store: the embedded default. WAL mode, one file (mode 0600) that several proxy
processes on one host share; compare-and-set runs in an IMMEDIATE transaction, so the
database's own lock serialises writers across processes.

The schema only grows: every table is created when missing (``CREATE TABLE IF NOT EXISTS`` on
each connection), so a file written by an older release gains the newer tables (such as
``process_reports``, issue 19.7) when a newer one opens it, and older releases ignore them.

sqlite3 is blocking: every call runs on one dedicated thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..tokens.token_set import TokenSet
from .base import RecordCodec, StoredTokens, StoreError, TokenStore

log = logging.getLogger("tokenproxy.store")

POLL_HOT = 0.05  # seconds between polls while a rotation is near
POLL_IDLE = 1.0  # ... otherwise
POLL_OVERLAP = 2.0  # re-read writes this far back (a write committed during the last poll)
ACK_TTL = 30.0  # seconds an acknowledgement is kept

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    account TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    value BLOB NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS locks (
    account TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS virtual_tokens (
    digest TEXT PRIMARY KEY,
    record BLOB NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS members (member TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rotations (
    account TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rotation_acks (
    account TEXT NOT NULL,
    generation INTEGER NOT NULL,
    member TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (account, generation, member)
);
CREATE INDEX IF NOT EXISTS tokens_updated ON tokens (updated_at);
CREATE TABLE IF NOT EXISTS virtual_index (
    name TEXT NOT NULL,
    member TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (name, member)
);
CREATE TABLE IF NOT EXISTS rate_slots (
    key TEXT NOT NULL,
    member TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (key, member)
);
CREATE INDEX IF NOT EXISTS rate_slots_at ON rate_slots (key, at);
CREATE TABLE IF NOT EXISTS rate_penalties (key TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS process_reports (
    process TEXT PRIMARY KEY,
    report BLOB NOT NULL,
    expires_at REAL NOT NULL
);
"""


class SQLiteStore(TokenStore):
    backend = "sqlite"

    def __init__(self, codec: RecordCodec, path: str | os.PathLike[str]) -> None:
        super().__init__(codec)
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tokenproxy-sqlite")
        self._rates_executor = ThreadPoolExecutor(1, thread_name_prefix="tokenproxy-sqlite-rates")
        self._rates: sqlite3.Connection | None = None
        self._db: sqlite3.Connection | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def _run(self, fn: Any, *args: Any, executor: ThreadPoolExecutor | None = None
                   ) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor or self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}") from None

    # -- blocking part, on the store thread -----------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)  # never world-readable
            os.close(fd)
            os.chmod(self.path, 0o600)
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a committed rotation survives power loss
            db.execute("PRAGMA busy_timeout=10000")
            db.executescript(SCHEMA)
            self._db = db
        return self._db

    def _open(self) -> None:
        db = self._connect()
        row = db.execute("SELECT value FROM meta WHERE name = 'key_check'").fetchone()
        replacement = self.codec.check_key(row[0] if row else None)
        if replacement is not None:
            db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('key_check', ?)",
                       (replacement,))
        if self.codec.needs_reseal:
            self._reseal(db)
            migrated = self.codec.finish_reseal()
            if migrated is not None:  # every record is bound now: say so in the store
                db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('key_check', ?)",
                           (migrated,))

    def _reseal(self, db: sqlite3.Connection) -> None:
        """Key rotation: values sealed with an older key are sealed again with the first, in
        place (same generation; skipped if a writer changed the value meanwhile); a store
        written before records were bound to their account has them bound."""
        for account, value in db.execute("SELECT account, value FROM tokens").fetchall():
            new = self.codec.resealed(value, "tokens", account)
            if new is not None:
                db.execute("UPDATE tokens SET value = ? WHERE account = ? AND value = ?",
                           (new, account, value))
        for digest, record in db.execute(
                "SELECT digest, record FROM virtual_tokens").fetchall():
            new = self.codec.resealed(record, "virtual", digest)
            if new is not None:
                db.execute("UPDATE virtual_tokens SET record = ? WHERE digest = ? AND record = ?",
                           (new, digest, record))

    def _load(self, account: str) -> tuple[int, bytes] | None:
        row = self._connect().execute(
            "SELECT generation, value FROM tokens WHERE account = ?", (account,)).fetchone()
        return (int(row[0]), bytes(row[1])) if row else None

    def _cas(self, account: str, expected: int, value: bytes) -> bool:
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT generation FROM tokens WHERE account = ?",
                             (account,)).fetchone()
            current = int(row[0]) if row else 0
            if current != expected:
                db.execute("ROLLBACK")
                return False
            db.execute("INSERT OR REPLACE INTO tokens (account, generation, value, updated_at) "
                       "VALUES (?, ?, ?, ?)", (account, expected + 1, value, time.time()))
            db.execute("COMMIT")
            return True
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _acquire(self, account: str, owner: str, lease: float) -> bool:
        db = self._connect()
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT owner, expires_at FROM locks WHERE account = ?",
                             (account,)).fetchone()
            if row is not None and row[0] != owner and row[1] > now:
                db.execute("ROLLBACK")
                return False
            db.execute("INSERT OR REPLACE INTO locks (account, owner, expires_at) "
                       "VALUES (?, ?, ?)", (account, owner, now + lease))
            db.execute("COMMIT")
            return True
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _release(self, account: str, owner: str) -> None:
        self._connect().execute("DELETE FROM locks WHERE account = ? AND owner = ?",
                                (account, owner))

    def _put_virtual(self, digest: str, record: bytes, expires_at: float) -> None:
        db = self._connect()
        db.execute("INSERT OR REPLACE INTO virtual_tokens (digest, record, expires_at) "
                    "VALUES (?, ?, ?)", (digest, record, expires_at))
        db.execute("DELETE FROM virtual_tokens WHERE expires_at < ?", (time.time(),))

    def _get_virtual(self, digest: str) -> bytes | None:
        row = self._connect().execute(
            "SELECT record FROM virtual_tokens WHERE digest = ? AND expires_at > ?",
            (digest, time.time())).fetchone()
        return bytes(row[0]) if row else None

    def _delete_virtual(self, digests: list[str]) -> None:
        self._connect().executemany("DELETE FROM virtual_tokens WHERE digest = ?",
                                    [(d,) for d in digests])

    def _consume_virtual(self, digest: str, replacement: bytes | None,
                         expires_at: float) -> bytes | None:
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")  # one writer at a time, across processes
        try:
            row = db.execute("DELETE FROM virtual_tokens WHERE digest = ? AND expires_at > ? "
                             "RETURNING record", (digest, time.time())).fetchone()
            if row is not None and replacement is not None:
                db.execute("INSERT INTO virtual_tokens (digest, record, expires_at) "
                           "VALUES (?, ?, ?)", (digest, replacement, expires_at))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return bytes(row[0]) if row else None

    def _index_virtual(self, index: str, member: str, expires_at: float,
                       cap: int) -> list[str]:
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT OR REPLACE INTO virtual_index (name, member, expires_at) "
                       "VALUES (?, ?, ?)", (index, member, expires_at))
            db.execute("DELETE FROM virtual_index WHERE name = ? AND expires_at <= ?",
                       (index, time.time()))
            removed: list[str] = []
            if cap > 0:
                (count,) = db.execute("SELECT COUNT(*) FROM virtual_index WHERE name = ?",
                                      (index,)).fetchone()
                if count > cap:
                    removed = [row[0] for row in db.execute(
                        "SELECT member FROM virtual_index WHERE name = ? "
                        "ORDER BY expires_at, member LIMIT ?", (index, count - cap))]
                    db.executemany("DELETE FROM virtual_index WHERE name = ? AND member = ?",
                                   [(index, m) for m in removed])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return removed

    def _unindex_virtual(self, index: str, members: list[str]) -> None:
        self._connect().executemany("DELETE FROM virtual_index WHERE name = ? AND member = ?",
                                    [(index, m) for m in members])

    def _list_index(self, index: str) -> list[tuple[str, float]]:
        return [(str(m), float(t)) for m, t in self._connect().execute(
            "SELECT member, expires_at FROM virtual_index WHERE name = ? AND expires_at > ? "
            "ORDER BY expires_at, member", (index, time.time()))]

    # -- cluster-wide drain: members, announcements, acknowledgements (issue 15.2) -------

    def _heartbeat(self, member: str, ttl: float) -> None:
        db = self._connect()
        now = time.time()
        db.execute("INSERT OR REPLACE INTO members (member, expires_at) VALUES (?, ?)",
                   (member, now + ttl))
        db.execute("DELETE FROM members WHERE expires_at < ?", (now,))
        db.execute("DELETE FROM rotations WHERE expires_at < ?", (now,))
        db.execute("DELETE FROM rotation_acks WHERE expires_at < ?", (now,))

    # -- API rate-limit windows (issue 17): the workers of one host share them ---------------
    # Their own connection (synchronous=OFF: a slot lost in a power cut costs nothing) and
    # thread, so a burst of admissions never queues behind a token rotation's write.

    shares_rate_limits = True

    def _rates_db(self) -> sqlite3.Connection:
        if self._rates is None:  # the file exists: open() made it
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA synchronous=OFF")
            db.execute("PRAGMA busy_timeout=10000")
            db.executescript(SCHEMA)
            self._rates = db
        return self._rates

    def _rate_reserve(self, key: str, limit: int, span: float, member: str
                      ) -> tuple[float, int]:
        db = self._rates_db()
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM rate_slots WHERE key = ? AND at <= ?", (key, now - span))
            row = db.execute("SELECT until FROM rate_penalties WHERE key = ?", (key,)).fetchone()
            count, oldest = db.execute("SELECT COUNT(*), MIN(at) FROM rate_slots WHERE key = ?",
                                       (key,)).fetchone()
            if row is not None and row[0] > now:
                result = (float(row[0]) - now, int(count))
            elif count < limit:
                db.execute("INSERT OR REPLACE INTO rate_slots (key, member, at) VALUES (?, ?, ?)",
                           (key, member, now))
                result = (0.0, int(count) + 1)
            else:
                result = (max(0.001, float(oldest) + span - now), int(count))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return result

    def _close_rates(self) -> None:
        if self._rates is not None:
            self._rates.close()
            self._rates = None

    def _rate_restamp(self, key: str, member: str) -> None:
        self._rates_db().execute("UPDATE rate_slots SET at = ? WHERE key = ? AND member = ?",
                                 (time.time(), key, member))

    def _rate_penalize(self, key: str, seconds: float) -> None:
        self._rates_db().execute(
            "INSERT INTO rate_penalties (key, until) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
            "SET until = MAX(until, excluded.until)", (key, time.time() + seconds))

    async def _rate_run(self, fn: Any, *args: Any) -> Any:
        return await self._run(fn, *args, executor=self._rates_executor)

    async def rate_reserve(self, key: str, limit: int, span: float, member: str
                           ) -> tuple[float, int]:
        result: tuple[float, int] = await self._rate_run(self._rate_reserve, key, limit, span,
                                                         member)
        return result

    async def rate_restamp(self, key: str, member: str) -> None:
        await self._rate_run(self._rate_restamp, key, member)

    async def rate_penalize(self, key: str, seconds: float) -> None:
        await self._rate_run(self._rate_penalize, key, seconds)

    def _leave(self, member: str) -> None:
        self._connect().execute("DELETE FROM members WHERE member = ?", (member,))

    def _members(self) -> set[str]:
        return {str(row[0]) for row in self._connect().execute(
            "SELECT member FROM members WHERE expires_at > ?", (time.time(),))}

    def _announce(self, account: str, generation: int, owner: str, ttl: float) -> None:
        self._connect().execute(
            "INSERT OR REPLACE INTO rotations (account, generation, owner, expires_at) "
            "VALUES (?, ?, ?, ?)", (account, generation, owner, time.time() + ttl))

    def _ack(self, account: str, generation: int, member: str) -> None:
        self._connect().execute(
            "INSERT OR REPLACE INTO rotation_acks (account, generation, member, expires_at) "
            "VALUES (?, ?, ?, ?)", (account, generation, member, time.time() + ACK_TTL))

    def _acks(self, account: str, generation: int) -> set[str]:
        return {str(row[0]) for row in self._connect().execute(
            "SELECT member FROM rotation_acks WHERE account = ? AND generation = ?",
            (account, generation))}

    def _changes(self, since: float) -> tuple[list[tuple[str, int]], list[tuple[str, int, str]]]:
        """Token records written since ``since`` (Unix time) and the live announcements."""
        db = self._connect()
        written = [(str(a), int(g)) for a, g in db.execute(
            "SELECT account, generation FROM tokens WHERE updated_at >= ?", (since,))]
        announced = [(str(a), int(g), str(o)) for a, g, o in db.execute(
            "SELECT account, generation, owner FROM rotations WHERE expires_at > ?",
            (time.time(),))]
        return written, announced

    # -- status across processes (issue 19.7): one row per process, pruned when read -------

    def _put_report(self, process: str, report: bytes, ttl: float) -> None:
        db = self._connect()
        now = time.time()
        db.execute("INSERT OR REPLACE INTO process_reports (process, report, expires_at) "
                   "VALUES (?, ?, ?)", (process, report, now + ttl))
        db.execute("DELETE FROM process_reports WHERE expires_at <= ?", (now,))

    def _reports(self) -> dict[str, bytes]:
        db = self._connect()
        now = time.time()
        db.execute("DELETE FROM process_reports WHERE expires_at <= ?", (now,))
        return {str(process): _blob(report) for process, report in db.execute(
            "SELECT process, report FROM process_reports WHERE expires_at > ?", (now,))}

    def _delete_report(self, process: str) -> None:
        self._connect().execute("DELETE FROM process_reports WHERE process = ?", (process,))

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- async interface ------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)

    async def load(self, account: str) -> StoredTokens | None:
        row = await self._run(self._load, account)
        if row is None:
            return None
        return StoredTokens(row[0], self.codec.decode(account, row[1]))

    async def generation(self, account: str) -> int:
        row = await self._run(self._load, account)
        return row[0] if row else 0

    async def compare_and_set(self, account: str, expected: int, tokens: TokenSet) -> bool:
        value = self.codec.encode(account, tokens)
        return bool(await self._run(self._cas, account, expected, value))

    async def acquire_lock(self, account: str, owner: str, lease: float) -> bool:
        return bool(await self._run(self._acquire, account, owner, lease))

    async def release_lock(self, account: str, owner: str) -> None:
        await self._run(self._release, account, owner)

    async def put_virtual(self, digest: str, record: bytes, expires_at: float) -> None:
        await self._run(self._put_virtual, digest, record, expires_at)

    async def get_virtual(self, digest: str) -> bytes | None:
        result: bytes | None = await self._run(self._get_virtual, digest)
        return result

    async def delete_virtual(self, digests: list[str]) -> None:
        await self._run(self._delete_virtual, digests)

    async def consume_virtual(self, digest: str, replacement: bytes | None,
                              expires_at: float) -> bytes | None:
        result: bytes | None = await self._run(self._consume_virtual, digest, replacement,
                                               expires_at)
        return result

    async def index_virtual(self, index: str, member: str, expires_at: float,
                            cap: int) -> list[str]:
        result: list[str] = await self._run(self._index_virtual, index, member, expires_at,
                                            cap)
        return result

    async def unindex_virtual(self, index: str, members: list[str]) -> None:
        await self._run(self._unindex_virtual, index, members)

    async def list_index(self, index: str) -> list[tuple[str, float]]:
        result: list[tuple[str, float]] = await self._run(self._list_index, index)
        return result

    async def heartbeat(self, member: str, ttl: float) -> None:
        await self._run(self._heartbeat, member, ttl)

    async def leave(self, member: str) -> None:
        await self._run(self._leave, member)

    async def members(self) -> set[str]:
        result: set[str] = await self._run(self._members)
        return result

    async def announce_rotation(self, account: str, generation: int, owner: str,
                                ttl: float) -> None:
        await self._run(self._announce, account, generation, owner, ttl)

    async def ack_rotation(self, account: str, generation: int, member: str) -> None:
        await self._run(self._ack, account, generation, member)

    async def rotation_acks(self, account: str, generation: int) -> set[str]:
        result: set[str] = await self._run(self._acks, account, generation)
        return result

    async def put_process_report(self, process: str, report: bytes, ttl: float) -> None:
        await self._run(self._put_report, process, report, ttl)

    async def process_reports(self) -> dict[str, bytes]:
        result: dict[str, bytes] = await self._run(self._reports)
        return result

    async def delete_process_report(self, process: str) -> None:
        await self._run(self._delete_report, process)

    async def watch(self, listener: Callable[[str, int], None],
                    announcements: Callable[[str, int, str], None] | None = None,
                    hot: Callable[[], bool] | None = None) -> None:
        """SQLite cannot notify: poll the records written since the last look and the live
        rotation announcements — every ``POLL_HOT`` s while a rotation is near (``hot()``),
        else every ``POLL_IDLE`` s. Each poll is two indexed reads of small tables."""
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(
                self._poll(listener, announcements, hot), name="tokenproxy-sqlite-watch")

    async def _poll(self, listener: Callable[[str, int], None],
                    announcements: Callable[[str, int, str], None] | None,
                    hot: Callable[[], bool] | None) -> None:
        seen: dict[str, int] = {}
        heard: set[tuple[str, int, str]] = set()
        since = time.time()
        while True:
            await asyncio.sleep(POLL_HOT if hot is not None and hot() else POLL_IDLE)
            started = time.time()
            try:
                written, announced = await self._run(self._changes, since - POLL_OVERLAP)
            except StoreError as exc:
                log.warning("store: polling for other processes' writes: %s", exc)
                continue
            since = started
            for account, generation in written:
                if seen.get(account) != generation:
                    seen[account] = generation
                    listener(account, generation)
            live = set(announced)
            if announcements is not None:
                for account, generation, owner in live - heard:
                    announcements(account, generation, owner)
            heard = live

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
        await self._run(self._close)
        self._executor.shutdown(wait=False)
        await asyncio.get_running_loop().run_in_executor(self._rates_executor, self._close_rates)
        self._rates_executor.shutdown(wait=False)


def _blob(value: object) -> bytes:
    """A column's value as bytes, whatever type a foreign writer gave it (SQLite's columns
    take any type): the reader of the bytes decides whether they make sense."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8", "replace")
