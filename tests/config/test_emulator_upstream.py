"""[emulator] is a demo convenience that never changes where the product sends requests: the
upstream is always named in [proxy] (issue 14: enabling the emulator used to replace a missing
upstream with the emulator's address, silently)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy_addon.config import ConfigError, load_config
from tests.config.test_config import ENV, GOOD, write

WITHOUT_UPSTREAM = GOOD.replace('upstream = "http://127.0.0.1:9000"\n', "")


def test_enabling_the_emulator_without_an_upstream_is_refused(tmp_path: Path) -> None:
    text = WITHOUT_UPSTREAM + '\n[emulator]\nenabled = true\nlisten = "127.0.0.1:9100"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), ENV)
    assert str(info.value) == (
        f"{tmp_path / 'c.toml'}: proxy.upstream: required while [emulator] is enabled: name "
        'the emulator explicitly (upstream = "http://127.0.0.1:9100")')


def test_the_emulator_leaves_an_explicit_upstream_alone(tmp_path: Path) -> None:
    text = GOOD + '\n[emulator]\nenabled = true\nlisten = "127.0.0.1:9100"\n'
    config = load_config(write(tmp_path, text), ENV)
    assert config.emulator.enabled
    assert config.proxy.upstream == "http://127.0.0.1:9000"


def test_without_the_emulator_the_default_upstream_is_the_platform(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, WITHOUT_UPSTREAM), ENV)
    assert not config.emulator.enabled
    assert config.proxy.upstream == "https://platform.ringcentral.com"


def test_the_demo_config_names_its_emulator() -> None:
    demo = load_config(Path(__file__).resolve().parents[2] / "config" / "demo.toml", {})
    assert demo.emulator.enabled
    assert demo.proxy.upstream == f"http://{demo.emulator.listen}"
