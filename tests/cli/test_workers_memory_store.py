"""`tokenproxy run --workers N` with `[store] backend = "memory"` is refused at start-up: each
worker would hold its own in-process store (N platform sessions for one account, a virtual token
valid on one worker only). Exit code 2, like every config error, and the message names the key
and the fix. A real `tokenproxy` process; nothing mocked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.proxy import STORE_KEY, jwt_account, render_config


def _config(tmp_path: Path, backend: str) -> Path:
    path = tmp_path / "proxy.toml"
    store = {"backend": backend} if backend == "memory" else {
        "backend": backend, "path": str(tmp_path / "t.db")}
    # the upstream is never contacted: the run must end before anything starts
    path.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0",
         "upstream": "http://127.0.0.1:9"},
        [jwt_account()], [{"name": "app", "account": "main", "key": "k" * 24}], store))
    return path


def _run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # its own process group: on the old code the supervisor starts workers, which must not
    # outlive the test
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy_addon", "run", "--config", str(config), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={"TOKENPROXY_STORE_KEY": STORE_KEY, "PATH": "/usr/bin:/bin"})
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:  # the old behaviour: N workers start and serve
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"`run {' '.join(args)}` with a memory store did not stop at start-up")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("workers", ["2", "3"])
def test_workers_with_a_memory_store_are_refused(tmp_path: Path, workers: str) -> None:
    done = _run(_config(tmp_path, "memory"), "--workers", workers)
    assert done.returncode == 2, done.stderr
    message = done.stderr
    assert "store.backend" in message and "memory" in message, message
    assert "--workers" in message and "sqlite" in message and "redis" in message, message
    assert str(tmp_path / "proxy.toml") in message, message  # the file, as config errors say
    assert "Traceback" not in message


def test_a_worker_process_with_a_memory_store_is_refused_too(tmp_path: Path) -> None:
    """The supervisor's workers are `run --worker I`: one started by hand (or by a future
    supervisor) with a memory store must not serve either."""
    done = _run(_config(tmp_path, "memory"), "--worker", "0", "--listen-port", "0")
    assert done.returncode == 2, done.stderr
    assert "store.backend" in done.stderr, done.stderr
