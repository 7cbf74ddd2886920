"""Command-line tests of the emulator: bad input exits 2, seed files, signals."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.emulator.emu_client import client, jwt_login, token
from tests.support.emulator import Emulator, start_emulator

Make = Callable[..., Emulator]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rc_emulator", *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--access-ttl", "-1"], "--access-ttl"),
        (["--refresh-ttl", "0"], "--refresh-ttl"),
        (["--access-ttl", "abc"], "--access-ttl"),
        (["--auth-rate", "-2"], "--auth-rate"),
        (["--session-cap", "0"], "--session-cap"),
        (["--session-cap-policy", "maybe"], "--session-cap-policy"),
        (["--expired-envelope", "xml"], "--expired-envelope"),
        (["--expired-code", "OAU-1"], "--expired-code"),
        (["--token-delay", "-0.5"], "--token-delay"),
        (["--listen", "nonsense"], "--listen"),
        (["--listen", "127.0.0.1:99999"], "--listen"),
        (["--listen", "127.0.0.1:http"], "--listen"),
        (["--public-url", "ftp://x"], "--public-url"),
        (["--media-url", "not a url"], "--media-url"),
        (["--seed-file", "/nonexistent/seed.json"], "/nonexistent/seed.json"),
        (["--no-such-option"], "--no-such-option"),
    ],
)
def test_bad_cli_input_exits_2(args: list[str], needle: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize(
    "name,text,needle",
    [
        ("bad.json", "{not json", "malformed"),
        ("bad.toml", "apps = [", "malformed"),
        ("empty.json", "{}", "apps"),
        (
            "key.json",
            json.dumps({"apps": [{"client_id": "x", "grants": ["jwt"]}], "users": []}),
            "apps[0].client_secret",
        ),
        (
            "grant.json",
            json.dumps(
                {"apps": [{"client_id": "x", "public": True, "grants": ["magic"]}], "users": []}
            ),
            "apps[0].grants",
        ),
        (
            "user.json",
            json.dumps(
                {
                    "apps": [{"client_id": "x", "public": True, "grants": ["jwt"]}],
                    "users": [{"owner_id": "1"}],
                }
            ),
            "users[0]",
        ),
        ("extra.json", json.dumps({"apps": [], "users": [], "other": 1}), "other"),
    ],
)
def test_bad_seed_file_exits_2(tmp_path: Path, name: str, text: str, needle: str) -> None:
    path = _write(tmp_path / name, text)
    result = run_cli("--seed-file", path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert path in lines[0] and needle in lines[0]


def test_port_in_use_exits_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_cli("--listen", f"127.0.0.1:{port}")
    assert result.returncode == 2
    assert "--listen" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_toml_seed_file(make_emulator: Make, tmp_path: Path) -> None:
    seed = _write(
        tmp_path / "seed.toml",
        """
[[apps]]
client_id = "acme"
client_secret = "acme-secret"
grants = ["urn:ietf:params:oauth:grant-type:jwt-bearer", "refresh_token"]

[[users]]
owner_id = "42"
username = "+15551234567"
extension = "7"
password = "pw"
jwt = "acme-jwt"
""",
    )
    emu = make_emulator("--seed-file", seed)
    with client(emu) as c:
        body = token(
            c,
            {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": "acme-jwt"},
            ("acme", "acme-secret"),
        ).json()
        assert body["owner_id"] == "42"
        gone = token(
            c,
            {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": "x"},
            ("demo-client-id", "demo-client-secret"),
        )
        assert gone.json()["errors"][0]["errorCode"] == "OAU-153"


def test_json_seed_file(make_emulator: Make, tmp_path: Path) -> None:
    seed = {
        "apps": [{"client_id": "a", "client_secret": "s", "grants": ["password"]}],
        "users": [{"owner_id": 7, "username": "u", "extension": "1", "password": "p", "jwt": "j"}],
    }
    emu = make_emulator("--seed-file", _write(tmp_path / "seed.json", json.dumps(seed)))
    with client(emu) as c:
        form = {"grant_type": "password", "username": "u", "password": "p"}
        assert token(c, form, ("a", "s")).json()["owner_id"] == "7"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_cleanly(sig: signal.Signals) -> None:
    emu = start_emulator()
    try:
        with client(emu) as c:
            jwt_login(c)
        emu.proc.send_signal(sig)
        assert emu.proc.wait(timeout=10) == 0
        log = emu.stderr()
        assert "shutting down" in log
        assert "Traceback" not in log
    finally:
        emu.stop()


def test_logs_never_contain_secrets(make_emulator: Make) -> None:
    emu = make_emulator("--log-level", "debug")
    with client(emu) as c:
        body = jwt_login(c)
        c.get("/restapi/v1.0/echo?access_token=" + body["access_token"])
        token(
            c, {"grant_type": "password", "username": "+15550100001", "password": "demo-password"}
        )
        token(c, {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]})
    log = emu.stderr()
    assert "/restapi/oauth/token" in log  # the debug access log is on
    for secret in (
        body["access_token"],
        body["refresh_token"],
        "demo-password",
        "demo-jwt-credential",
        "demo-client-secret",
    ):
        assert secret not in log


def test_listening_line_with_fixed_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    emu = start_emulator("--listen", f"127.0.0.1:{port}")
    try:
        assert emu.url == f"http://127.0.0.1:{port}"
    finally:
        emu.stop()


def test_server_main_is_importable() -> None:
    from rc_emulator import server

    assert server.main(["--access-ttl", "-1"]) == 2
