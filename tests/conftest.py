"""Fixtures that start real processes (emulator, proxy) and always stop them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.emulator import Emulator, start_emulator
from tests.support.proxy import Proxy, start_proxy


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
