"""Start a real tokenproxy process (``python -m proxy_addon run``) for tests.

The config is written to a temporary TOML file with ``listen = 127.0.0.1:0``; the proxy prints
``tokenproxy listening on URL`` when it serves, which gives the port. stderr goes to a log file
the test can read (e.g. to check that no secret was logged).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet

from tests.support.processes import stop_process

DEMO_CLIENT_ID = "demo-client-id"
DEMO_CLIENT_SECRET = "demo-client-secret"
DEMO_JWT = "demo-jwt-credential"
APP_KEY = "test-app-key-0123456789"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string here
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def render_config(proxy: dict[str, Any], accounts: list[dict[str, Any]],
                  clients: list[dict[str, Any]], store: dict[str, Any] | None = None,
                  rate_limits: dict[str, Any] | None = None,
                  events: dict[str, Any] | None = None) -> str:
    """A config file's text; ``[rate_limits]`` observes unless given (see :func:`start_proxy`)."""
    rate_limits = rate_limits or {"mode": "observe"}
    lines = ["[proxy]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in proxy.items()]
    if store:
        lines += ["", "[store]"] + [f"{k} = {toml_value(v)}" for k, v in store.items()]
    if rate_limits:
        lines += ["", "[rate_limits]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in rate_limits.items()]
    if events:
        lines += ["", "[events]"] + [f"{k} = {toml_value(v)}" for k, v in events.items()]
    for account in accounts:
        lines += ["", "[[accounts]]"] + [f"{k} = {toml_value(v)}" for k, v in account.items()]
    for client in clients:
        lines += ["", "[[clients]]"] + [f"{k} = {toml_value(v)}" for k, v in client.items()]
    return "\n".join(lines) + "\n"


def jwt_account(name: str = "main", **extra: Any) -> dict[str, Any]:
    return {"name": name, "client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET,
            "grant": "jwt", "jwt": DEMO_JWT, **extra}


def client(name: str = "app", account: str = "main", key: str = APP_KEY) -> dict[str, Any]:
    return {"name": name, "account": account, "key": key}


@dataclass
class Proxy:
    url: str
    proc: subprocess.Popen[str]
    config_path: Path
    log_path: Path
    admin_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    stdout: list[str] = field(default_factory=list)  # what it printed (addresses it bound)

    def status(self) -> dict[str, Any]:
        assert self.admin_url, "the proxy runs without metrics_listen"
        return httpx.get(self.admin_url + "/status", timeout=10).json()

    def account_status(self, name: str = "main") -> dict[str, Any]:
        return next(a for a in self.status()["accounts"] if a["account"] == name)

    def http(self, key: str = APP_KEY, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, 10)


STORE_KEY = Fernet.generate_key().decode()  # per test process; never a real secret


def start_proxy(tmp_path: Path, upstream: str, *, accounts: list[dict[str, Any]] | None = None,
                clients: list[dict[str, Any]] | None = None, timeout: float = 20.0,
                env: dict[str, str] | None = None, store: dict[str, Any] | None = None,
                rate_limits: dict[str, Any] | None = None, events: dict[str, Any] | None = None,
                **proxy_options: Any) -> Proxy:
    """Start a proxy; by default with its own encrypted SQLite store in ``tmp_path``.

    ``[rate_limits]`` is ``mode = "observe"`` unless given: the emulator reports the
    platform's API limits without enforcing them (unless started with ``--api-rate enforce``)
    and most tests send far more than 50 requests a minute on purpose; observing still runs
    the governor's learning on every answer."""
    config_path = tmp_path / f"proxy-{time.monotonic_ns()}.toml"
    # Tests use tokens of 1-3 s, far beyond the platform's 5 token calls a minute: the
    # per-app budget is off unless a test sets auth_budget_calls itself.
    proxy = {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "upstream": upstream,
             "auth_budget_calls": 0, **proxy_options}
    if store is None:
        store = {"backend": "sqlite", "path": str(config_path.with_suffix(".db"))}
    config_path.write_text(render_config(proxy, accounts or [jwt_account()],
                                         clients if clients is not None else [client()],
                                         store, rate_limits, events))
    return start_proxy_with_config(config_path, timeout=timeout,
                                   env={"TOKENPROXY_STORE_KEY": STORE_KEY, **(env or {})})


def start_proxy_with_config(config_path: Path, *, timeout: float = 20.0,
                            env: dict[str, str] | None = None,
                            args: tuple[str, ...] = ()) -> Proxy:
    log_path = config_path.with_suffix(".log")
    log_file = log_path.open("a")  # a restarted proxy adds to its predecessor's log
    if "--workers" not in args:  # one process unless the test asks (auto: one per core)
        args = (*args, "--workers", "1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy_addon", "run", "--config", str(config_path), *args],
        stdout=subprocess.PIPE, stderr=log_file, text=True,
        env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    url = admin_url = None
    printed: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        printed.append(line)
        if line.startswith("tokenproxy metrics on "):
            admin_url = line.split()[-1]
        if line.startswith("tokenproxy listening on "):
            url = line.split()[-1]
            break
        if not line and proc.poll() is not None:
            break
    if url is None:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        raise RuntimeError(f"tokenproxy did not start (exit {proc.returncode}):\n"
                           f"{log_path.read_text(errors='replace')}")
    # keep draining stdout so the child never blocks on a full pipe
    import threading

    threading.Thread(target=_drain, args=(proc, printed), daemon=True).start()
    return Proxy(url=url, proc=proc, config_path=config_path, log_path=log_path,
                 admin_url=admin_url, env=env or {}, stdout=printed)


def _drain(proc: subprocess.Popen[str], printed: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if len(printed) < 10_000:  # bounded: a test reads the first lines (bound addresses)
            printed.append(line)
