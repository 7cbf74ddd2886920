"""Config loading: every bad input names the file, the key and the reason (exit 2 via the CLI)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from proxy_addon.config import ConfigError, Secret, load_config, parse_config

GOOD = """
[proxy]
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:9000"

[[accounts]]
name = "main"
client_id = "${RC_CLIENT_ID}"
client_secret = "${RC_CLIENT_SECRET}"
grant = "jwt"
jwt = "${RC_JWT}"

[[clients]]
name = "recordings-downloader"
account = "main"
key = "${LEGACY_APP_KEY}"
"""
ENV = {"RC_CLIENT_ID": "id", "RC_CLIENT_SECRET": "shh-secret", "RC_JWT": "jwt-value",
       "LEGACY_APP_KEY": "legacy-key-0123456789"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), ENV if env is None else env)
    return info.value


def test_good_config_interpolates_env(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), ENV)
    account = config.account("main")
    assert account.client_id == "id"
    assert account.jwt == Secret("jwt-value")
    assert config.clients[0].key.reveal() == "legacy-key-0123456789"
    assert config.proxy.upstream == "http://127.0.0.1:9000"
    assert account.max_live_tokens == 1


def test_secrets_never_in_repr(tmp_path: Path) -> None:
    store = '[store]\nbackend = "redis"\nurl = "rediss://:${REDIS_PW}@127.0.0.1:6380/0"\n'
    config = load_config(write(tmp_path, GOOD + store), {**ENV, "REDIS_PW": "redis-pw-value"})
    text = repr(config) + str(config)
    for secret in ("shh-secret", "jwt-value", "legacy-key-0123456789", "redis-pw-value"):
        assert secret not in text
    assert config.store.url is not None and "redis-pw-value" in config.store.url.reveal()


@pytest.mark.parametrize(("text", "key", "reason"), [
    (GOOD.replace('grant = "jwt"', 'grant = "magic"'), "accounts[0].grant", "unknown grant"),
    (GOOD.replace('name = "main"', 'name = "main"\nnmae = "x"'), "accounts[0].nmae",
     "unknown key"),
    (GOOD.replace("[proxy]", "[proxy]\nlisten_port = 1"), "proxy.listen_port", "unknown key"),
    (GOOD.replace('upstream = "http://127.0.0.1:9000"', 'upstream = "ftp://x"'),
     "proxy.upstream", "http(s) URL"),
    (GOOD.replace('listen = "127.0.0.1:8080"', 'listen = "nowhere"'), "proxy.listen",
     "HOST:PORT"),
    (GOOD.replace('account = "main"', 'account = "other"'), "clients[0].account",
     "no [[accounts]] named"),
    (GOOD.replace('grant = "jwt"', 'grant = "jwt"\nmax_live_tokens = 6'),
     "accounts[0].max_live_tokens", "at most 5"),
    (GOOD.replace('jwt = "${RC_JWT}"', ""), "accounts[0].jwt", "required for grant"),
    (GOOD.replace('key = "${LEGACY_APP_KEY}"', 'key = "short"'), "clients[0].key", "too short"),
    (GOOD + '[store]\nbackend = "redis"\n', "store.url", "required key is missing"),
    (GOOD.replace('upstream = "http://127.0.0.1:9000"',
                  'upstream = "https://platform.ringcentral.com"\nverify_upstream_tls = false'),
     "proxy.verify_upstream_tls", "always verified"),
    (GOOD.replace('listen = "127.0.0.1:8080"', 'listen = "0.0.0.0:8080"'), "proxy.listen",
     "allow_plaintext_listen"),
    (GOOD + '[store]\nbackend = "redis"\nurl = "http://127.0.0.1:6379"\n', "store.url",
     "redis://"),
    (GOOD + '[store]\nbackend = "etcd"\n', "store.backend", "sqlite, redis, memory"),
    (GOOD + '[store]\nprefix = "a b"\n', "store.prefix", "letters"),
    (GOOD + '[store]\nlock_lease = 0.1\n', "store.lock_lease", "between"),
])
def test_bad_values_name_key_and_reason(tmp_path: Path, text: str, key: str,
                                        reason: str) -> None:
    error = error_of(tmp_path, text)
    assert error.key == key
    assert reason in error.reason
    assert str(tmp_path / "c.toml") in str(error)


def test_missing_env_var(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != "RC_JWT"}
    error = error_of(tmp_path, GOOD, env)
    assert error.key == "accounts[0].jwt"
    assert "RC_JWT is not set" in error.reason


def test_env_default(tmp_path: Path) -> None:
    text = GOOD.replace("${RC_JWT}", "${RC_JWT_MISSING:-fallback-jwt}")
    assert load_config(write(tmp_path, text), ENV).account("main").jwt == Secret("fallback-jwt")


def test_malformed_toml(tmp_path: Path) -> None:
    error = error_of(tmp_path, GOOD + "\n[[accounts]\n")
    assert "invalid TOML" in error.reason


def test_duplicate_client_key(tmp_path: Path) -> None:
    text = GOOD + '\n[[clients]]\nname = "twin"\naccount = "main"\nkey = "${LEGACY_APP_KEY}"\n'
    error = error_of(tmp_path, text)
    assert error.key == "clients[1].key"


@pytest.mark.parametrize(("mutation", "expected"), [
    (lambda t: t + "\n[[accounts]\n", "invalid TOML"),
    (lambda t: t.replace('name = "main"', 'name = "main"\nbogus = 1'), "accounts[0].bogus"),
    (lambda t: t.replace("${RC_JWT}", "${NOT_SET_ANYWHERE}"), "NOT_SET_ANYWHERE is not set"),
    (lambda t: t.replace('grant = "jwt"', 'grant = "saml"'), "unknown grant 'saml'"),
])
def test_cli_exits_2_with_message(tmp_path: Path, mutation, expected: str) -> None:
    path = write(tmp_path, mutation(GOOD))
    result = subprocess.run([sys.executable, "-m", "proxy_addon", "run", "--config", str(path)],
                            capture_output=True, text=True, timeout=60, env={**ENV, "PATH": ""})
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_missing_file(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "proxy_addon", "check-config", "--config",
                             str(tmp_path / "absent.toml")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "cannot read file" in result.stderr


def test_shipped_configs_are_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    assert load_config(root / "config" / "demo.toml", {}).emulator.enabled
    load_config(root / "config" / "example.toml", ENV)


def test_each_account_names_its_platform_or_gets_the_proxys() -> None:
    """Sandbox beside production (issue 19, item 6): an account's own ``upstream`` and
    ``media_upstream``; one without gets the proxy's, media host included; one on another
    platform gets no media host unless it names one (the proxy's is another platform's)."""
    text = GOOD.replace('upstream = "http://127.0.0.1:9000"',
                        'upstream = "https://platform.ringcentral.com"\n'
                        'media_upstream = "https://media.ringcentral.com"') + """
[[accounts]]
name = "sandbox"
client_id = "sandbox-id"
client_secret = "sandbox-secret"
grant = "jwt"
jwt = "sandbox-jwt"
upstream = "https://platform.devtest.ringcentral.com/"

[[accounts]]
name = "sandbox-media"
client_id = "sandbox-id"
client_secret = "sandbox-secret"
grant = "jwt"
jwt = "sandbox-jwt-2"
upstream = "https://platform.devtest.ringcentral.com"
media_upstream = "https://media.devtest.ringcentral.com"
"""
    config = parse_config(tomllib.loads(text), "c.toml", ENV)
    main, sandbox, media = config.accounts
    assert (main.upstream, main.media_upstream) == ("https://platform.ringcentral.com",
                                                    "https://media.ringcentral.com")
    assert (sandbox.upstream, sandbox.media_upstream) == (
        "https://platform.devtest.ringcentral.com", None)
    assert media.media_upstream == "https://media.devtest.ringcentral.com"
