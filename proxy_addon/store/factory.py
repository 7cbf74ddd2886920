"""Build the configured store backend with its cipher."""

from __future__ import annotations

import logging
import os

from ..config import StoreConfig
from .base import RecordCodec, TokenStore
from .crypto import TokenCipher
from .memory import MemoryStore
from .sqlite import SQLiteStore

log = logging.getLogger("tokenproxy.store")


class StoreConfigError(Exception):
    """The store cannot be configured as asked (missing key, bad key)."""


def make_cipher(config: StoreConfig, environ: dict[str, str] | None = None) -> TokenCipher:
    env = os.environ if environ is None else environ
    material = env.get(config.key_env, "")
    if not material:
        if not config.allow_plaintext:
            raise StoreConfigError(
                f"no store encryption key: set the environment variable {config.key_env} "
                "(make one with `tokenproxy keygen`), or set [store] allow_plaintext = true "
                "to keep tokens unencrypted at rest")
        log.warning("store: tokens are kept UNENCRYPTED at rest ([store] allow_plaintext)")
        return TokenCipher(None)
    try:
        return TokenCipher.from_key_material(material)
    except ValueError as exc:
        raise StoreConfigError(f"{config.key_env}: {exc}") from None


def open_store(config: StoreConfig, environ: dict[str, str] | None = None) -> TokenStore:
    """The backend object (not yet opened: call ``await store.open()``)."""
    codec = RecordCodec(make_cipher(config, environ))
    if config.backend == "memory":
        return MemoryStore(codec)
    if config.backend == "sqlite":
        return SQLiteStore(codec, config.path)
    if config.backend == "redis":
        from .redis import RedisStore  # redis-py is only imported when used

        if config.url is None and not config.sentinels:
            raise StoreConfigError("[store] backend = \"redis\" needs [store] url (or "
                                   "sentinels)")
        if config.sentinels and not config.sentinel_service:
            raise StoreConfigError("[store] sentinels need [store] sentinel_service")
        return RedisStore(
            codec, config.url.reveal() if config.url else None, config.prefix,
            tls_ca_file=config.tls_ca_file,
            sentinels=[(s.host, s.port) for s in config.sentinels],
            sentinel_service=config.sentinel_service,
            sentinel_password=(config.sentinel_password.reveal()
                               if config.sentinel_password else None),
            cluster=config.cluster, min_replicas_ack=config.min_replicas_ack)
    raise StoreConfigError(f"unknown store backend {config.backend!r}")
