"""Fixtures that start real processes (emulator, proxy, redis-server) and always stop them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.emulator import Emulator, start_emulator
from tests.support.proxy import Proxy, start_proxy
from tests.support.redis_server import RedisServer, start_redis

COMPRESSION_VARIANTS = ("off", "any")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "compression_variants: run once against the emulator answering uncompressed "
        "and once with --compress any (as a compressing front end, error bodies included)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("compression_variants") is not None \
            and "emulator_compression" in metafunc.fixturenames:
        metafunc.parametrize("emulator_compression", COMPRESSION_VARIANTS,
                             ids=[f"compress-{c}" for c in COMPRESSION_VARIANTS])


@pytest.fixture
def emulator_compression() -> str:
    """The emulator's ``--compress`` for ``emulator_factory``: "off", or what
    ``TOKENPROXY_TEST_COMPRESS`` says (to run any test against a compressing emulator);
    tests marked ``compression_variants`` run with "off" and with "any"."""
    return os.environ.get("TOKENPROXY_TEST_COMPRESS", "off")


@pytest.fixture
def emulator_factory(emulator_compression: str) -> Iterator[Callable[..., Emulator]]:
    started: list[Emulator] = []

    def start(*args: str) -> Emulator:
        emulator = start_emulator(*args, compress=emulator_compression)
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
