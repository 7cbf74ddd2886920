"""A real Prometheus (Debian package) scraping tokenproxy every second, for tests.

Started with its own config and data directory on a free loopback port, the project's alert
rules loaded, scrape and evaluation every 1 s; queried through its HTTP API. With
``credentials_file`` the ``tokenproxy`` job sends that file's bearer token (the proxy's
``[proxy] admin_token_env``), as deploy/compose/prometheus.yml does; ``unauthenticated_job``
adds a job scraping the same targets without it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.processes import stop_process
from tests.support.redis_server import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    directory: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant query's result; raises with Prometheus' error text on failure."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]

    def alerts(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/api/v1/alerts", timeout=30).json()["data"]["alerts"]

    def targets_up(self) -> bool:
        data = httpx.get(f"{self.url}/api/v1/targets", timeout=30).json()["data"]
        active = data.get("activeTargets", [])
        return bool(active) and all(t.get("health") == "up" for t in active)

    def target_health(self) -> dict[str, tuple[str, str]]:
        """{job: (health, lastError)} of the active targets (one target per job here)."""
        data = httpx.get(f"{self.url}/api/v1/targets", timeout=30).json()["data"]
        return {t["labels"]["job"]: (t.get("health", ""), t.get("lastError", ""))
                for t in data.get("activeTargets", [])}

    def log(self) -> str:
        path = self.directory / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc, 15)


def start_prometheus(directory: Path, targets: list[str], rule_files: list[Path], *,
                     credentials_file: Path | None = None,
                     unauthenticated_job: bool = False) -> Prometheus:
    """``targets``: host:port of each proxy's metrics listener."""
    if not Path(PROMETHEUS).exists():
        raise RuntimeError("prometheus is not installed: `make test` installs it "
                           "(Debian package prometheus)")
    directory.mkdir(parents=True, exist_ok=True)
    rules = "\n".join(f"  - {path.resolve()}" for path in rule_files)
    target_list = ", ".join(f"'{t}'" for t in targets)
    config = directory / "prometheus.yml"
    auth = ("" if credentials_file is None else "    authorization:\n      type: Bearer\n"
            f"      credentials_file: {credentials_file.resolve()}\n")
    jobs = [("tokenproxy", auth)] + ([("tokenproxy-unauthenticated", "")]
                                     if unauthenticated_job else [])
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n{rules}\n"
        "scrape_configs:\n" + "".join(
            f"  - job_name: {job}\n    metrics_path: /metrics\n{job_auth}"
            f"    static_configs:\n      - targets: [{target_list}]\n"
            for job, job_auth in jobs))
    port = free_port()
    log = (directory / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
         "--storage.tsdb.retention.time=1h"],
        stdout=log, stderr=subprocess.STDOUT)
    server = Prometheus(f"http://127.0.0.1:{port}", proc, directory)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited {proc.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"prometheus not ready within 30 s:\n{server.log()[-3000:]}")
