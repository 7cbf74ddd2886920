"""Fixtures for the emulator's own tests: a shared emulator subprocess and a factory."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # make `tests.support` importable however pytest was started
    sys.path.insert(0, _ROOT)

from tests.support.emulator import Emulator, start_emulator  # noqa: E402


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    """One emulator per test module: no auth rate limit, a large session cap."""
    emu = start_emulator("--auth-rate", "0", "--session-cap", "1000")
    yield emu
    emu.stop()


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., Emulator]]:
    """Start emulators with custom options; all are stopped at teardown."""
    started: list[Emulator] = []

    def make(*args: str) -> Emulator:
        emu = start_emulator(*args)
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.stop()
