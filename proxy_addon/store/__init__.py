"""Durable token store: where every proxy process keeps, and finds, each account's tokens.

The pool writes a new token set here *before* using it (refresh tokens are single-use: a lost
pair locks the account out) and reads it at start-up, so a restarted proxy reuses its session.
Backends: ``memory`` (tests, single process), ``sqlite`` (the embedded default, shared by
processes on one host) and ``redis`` (replicas on several hosts). Values are encrypted by
:mod:`proxy_addon.store.crypto`.
"""

from .base import CorruptRecord, StoredTokens, StoreError, StoreKeyMismatch, TokenStore

# the backends (memory, sqlite, redis) and open_store live in .factory: importing the port
# types above never loads a backend
__all__ = ["CorruptRecord", "StoreError", "StoreKeyMismatch", "StoredTokens", "TokenStore"]
