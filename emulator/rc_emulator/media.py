"""Deterministic recording content, streamed without building the body in memory.

Byte ``i`` of recording ``rec_id`` is ``block(rec_id)[i % BLOCK_SIZE]``, where the 64 KiB block
is the concatenation of ``sha256(sha256(rec_id) || counter_be32)`` for counter = 0, 1, ...
:func:`content_sha256` computes the digest of a body of any size without a server.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from functools import lru_cache

BLOCK_SIZE = 64 * 1024
CHUNK_SIZE = BLOCK_SIZE
DEFAULT_SIZE = 1024 * 1024
MAX_SIZE = 2 * 1024 * 1024 * 1024


@lru_cache(maxsize=64)
def block(rec_id: str) -> bytes:
    """The 64 KiB block that recording ``rec_id``'s content repeats."""
    seed = hashlib.sha256(rec_id.encode("utf-8")).digest()
    parts = [hashlib.sha256(seed + n.to_bytes(4, "big")).digest() for n in range(BLOCK_SIZE // 32)]
    return b"".join(parts)


def chunks(rec_id: str, size: int) -> Iterator[bytes]:
    """The body of ``size`` bytes in CHUNK_SIZE pieces (each chunk is the block or a prefix)."""
    data = block(rec_id)
    full, rest = divmod(size, CHUNK_SIZE)
    for _ in range(full):
        yield data
    if rest:
        yield data[:rest]


def content_sha256(rec_id: str, size: int) -> str:
    """Hex sha256 of recording ``rec_id``'s content of ``size`` bytes."""
    digest = hashlib.sha256()
    for chunk in chunks(rec_id, size):
        digest.update(chunk)
    return digest.hexdigest()
