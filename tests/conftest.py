"""Fixtures that start real processes (emulator, proxy, redis-server) and always stop them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.emulator import Emulator, start_emulator
from tests.support.proxy import Proxy, start_proxy
from tests.support.redis_server import RedisServer, start_redis


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., Emulator]]:
    started: list[Emulator] = []

    def start(*args: str) -> Emulator:
        emulator = start_emulator(*args)
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture
def proxy_factory(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []

    def start(upstream: str, **kwargs: Any) -> Proxy:
        proxy = start_proxy(tmp_path, upstream, **kwargs)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server per test process; tests keep apart by key prefix."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """A redis-server of the test's own (to stop, pause or give a password and TLS)."""
    started: list[RedisServer] = []

    def start(**kwargs: Any) -> RedisServer:
        server = start_redis(tmp_path / f"redis-{len(started)}", **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
