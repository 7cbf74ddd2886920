"""The real processes the performance scenarios measure: an nginx upstream, a bare ``mitmdump``
reverse proxy, tokenproxy (one process or ``--workers N``) and the ``wrk`` load generator.

The upstream is nginx serving a static copy of the platform's extension answer (with its
absolute ``uri`` links, as the platform sends them), with the token endpoint routed to the
bundled emulator: nginx answers in microseconds, so the proxy in front is the bottleneck.
Everything listens on loopback ports picked here; every process is stopped by its context
manager, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.processes import stop_process
from tests.support.proxy import APP_KEY, Proxy, client, jwt_account, render_config, start_proxy
from tests.support.proxy import STORE_KEY as _STORE_KEY

API_PATH = "/restapi/v1.0/account/~/extension/~"
BIN = Path(sys.executable).parent
REQUIRED_COMMANDS = ("nginx", "wrk", "hey")


class MissingTool(RuntimeError):
    """A program the benchmark needs is not installed (the message says which and how)."""


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None and not Path(f"/usr/sbin/{n}").exists()]
    if missing:
        raise MissingTool(f"missing {', '.join(missing)}: run `make bench` (installs the Debian "
                          f"packages) or apt-get install {' '.join(missing)}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` now (``/proc/PID/status`` VmRSS)."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# ------------------------------------------------------------------------------ upstream
def extension_answer(public_url: str) -> bytes:
    """The platform's answer to ``GET /restapi/v1.0/account/~/extension/~``, as the emulator
    gives it, with links on ``public_url``."""
    return json.dumps({
        "uri": f"{public_url}/restapi/v1.0/account/37439510/extension/100001",
        "id": 100001,
        "extensionNumber": "101",
        "name": "Demo User 101",
        "type": "User",
        "status": "Enabled",
        "contact": {"firstName": "Demo", "lastName": "User 101",
                    "email": "demo.user@example.com", "businessPhone": "+16505550101"},
        "regionalSettings": {"timezone": {"id": "58", "name": "US/Pacific"},
                             "language": {"id": "1033", "localeCode": "en-US"}},
        "serviceFeatures": [{"featureName": n, "enabled": True}
                            for n in ("SMS", "Fax", "VoIP Calling", "CallRecording")],
        "account": {"id": "37439510",
                    "uri": f"{public_url}/restapi/v1.0/account/37439510"},
    }, separators=(",", ":")).encode()


@dataclass
class Nginx:
    url: str
    proc: subprocess.Popen


_NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  upstream platform_emulator {{ server {emulator}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location = {api_path} {{
      default_type application/json;
      alias {dir}/extension.json;
    }}
    location /restapi/v1.0/account/~/recording/ {{
      proxy_pass http://platform_emulator;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
    location /restapi/oauth/ {{
      proxy_pass http://platform_emulator;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
    location / {{
      default_type application/json;
      return 404 '{{"errorCode":"CMN-102","message":"Resource not found"}}';
    }}
  }}
}}
"""


@contextlib.contextmanager
def nginx_upstream(emulator_url: str) -> Iterator[Nginx]:
    """nginx on a free loopback port: the static extension answer; token calls and
    recordings (streamed, unbuffered) to the emulator."""
    require_tools("nginx")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as tmp:
        os.chmod(tmp, 0o755)  # nginx workers may run as another user
        url = f"http://127.0.0.1:{port}"
        (Path(tmp) / "extension.json").write_bytes(extension_answer(url))
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(
            dir=tmp, port=port, api_path=API_PATH,
            emulator=emulator_url.removeprefix("http://"),
            user="user root;" if os.geteuid() == 0 else ""))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", tmp],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_listening(port, proc=proc)
            answer = httpx.get(url + API_PATH, timeout=5)
            if answer.status_code != 200:
                raise RuntimeError(f"nginx upstream answers {answer.status_code}")
            yield Nginx(url=url, proc=proc)
        finally:
            stop_process(proc)


# ------------------------------------------------------------------------ proxies under test
@dataclass
class Target:
    """Something wrk can load: a URL, the pids whose CPU and memory count, a label."""

    label: str
    url: str
    pids: tuple[int, ...]
    admin_url: str | None = None  # tokenproxy's metrics listener, when it has one


@contextlib.contextmanager
def bare_mitmdump(upstream: str) -> Iterator[Target]:
    """``mitmdump --mode reverse:UPSTREAM`` as shipped: every default addon loaded."""
    port = free_port()
    command = [str(BIN / "mitmdump"), "--mode", f"reverse:{upstream}",
               "--listen-host", "127.0.0.1", "--listen-port", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc=proc)
        yield Target("bare mitmdump", f"http://127.0.0.1:{port}", (proc.pid,))
    finally:
        stop_process(proc)


def tokenproxy_config(workdir: Path, upstream: str, **proxy_options: object) -> Path:
    """A tokenproxy config: one JWT account, one client key, SQLite store in ``workdir``."""
    path = workdir / f"tokenproxy-{time.monotonic_ns()}.toml"
    proxy = {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "upstream": upstream,
             "auth_budget_calls": 0, **proxy_options}
    store = {"backend": "sqlite", "path": str(path.with_suffix(".db"))}
    path.write_text(render_config(proxy, [jwt_account()], [client()], store))
    return path


@contextlib.contextmanager
def tokenproxy(workdir: Path, upstream: str, **proxy_options: object) -> Iterator[Target]:
    """One tokenproxy process (the full addon) in front of ``upstream``, token acquired."""
    proxy: Proxy = start_proxy(workdir, upstream, **proxy_options)
    try:
        warm_up(proxy.url)
        yield Target("tokenproxy", proxy.url, (proxy.proc.pid,), proxy.admin_url)
    finally:
        proxy.stop()


@contextlib.contextmanager
def tokenproxy_workers(workdir: Path, upstream: str, workers: int) -> Iterator[Target]:
    """``tokenproxy run --workers N`` on one port; pids = the workers (not the supervisor)."""
    port = free_port()
    config = tokenproxy_config(workdir, upstream, listen=f"127.0.0.1:{port}",
                               metrics_listen="")
    log = (workdir / f"workers-{workers}.log").open("w")
    args = ["run", "--config", str(config)]
    if workers > 1:
        args += ["--workers", str(workers)]
    proc = subprocess.Popen([sys.executable, "-m", "proxy_addon", *args],
                            stdout=subprocess.DEVNULL, stderr=log,
                            env={**os.environ, "TOKENPROXY_STORE_KEY": _STORE_KEY},
                            start_new_session=True)
    try:
        wait_listening(port, timeout=30, proc=proc)
        url = f"http://127.0.0.1:{port}"
        warm_up(url)
        pids = _children(proc.pid) if workers > 1 else (proc.pid,)
        deadline = time.monotonic() + 20
        while len(pids) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = _children(proc.pid)
        if len(pids) < workers:
            raise RuntimeError(f"expected {workers} workers, found {len(pids)}")
        yield Target(f"tokenproxy --workers {workers}", url, pids)
    finally:
        stop_process(proc, timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _children(pid: int) -> tuple[int, ...]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return tuple(int(p) for p in f.read().split())
    except OSError:
        return ()


def warm_up(url: str, requests: int = 20) -> None:
    """A few requests so the token exists and connections are open; fails loudly otherwise."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {APP_KEY}"},
                      timeout=30) as http:
        for _ in range(requests):
            answer = http.get(API_PATH)
            if answer.status_code != 200:
                raise RuntimeError(f"warm-up request answered {answer.status_code}: "
                                   f"{answer.text[:300]}")


# ------------------------------------------------------------------------------ load
@dataclass(frozen=True)
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors + non-2xx/3xx answers


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """The figures of ``wrk --latency`` output."""
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output lacks {pattern!r}:\n{output}")
        return match

    errors = 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                              r"timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    return WrkResult(
        requests=int(find(r"^\s*(\d+) requests in").group(1)),
        rps=float(find(r"^Requests/sec:\s*([\d.]+)").group(1)),
        p50_ms=_ms(find(r"^\s*50%\s+(\S+)").group(1)),
        p99_ms=_ms(find(r"^\s*99%\s+(\S+)").group(1)),
        errors=errors,
    )


def wrk(url: str, connections: int, duration: float, path: str = API_PATH) -> WrkResult:
    """``wrk`` with one thread (it leaves the most CPU to what is measured)."""
    require_tools("wrk")
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
               "--timeout", "10s", "-H", f"Authorization: Bearer {APP_KEY}", url + path]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse_wrk(done.stdout)


# ------------------------------------------------------------------------------ bursts
@dataclass(frozen=True)
class BurstResult:
    """``hey`` figures of one burst (every request sent at once)."""

    statuses: dict[int, int]
    errors: int  # requests that got no answer
    p50_ms: float
    p99_ms: float
    slowest_ms: float


def parse_hey(output: str) -> BurstResult:
    statuses = {int(code): int(count) for code, count in
                re.findall(r"^\s*\[(\d{3})\]\s+(\d+) responses", output, re.MULTILINE)}
    errors = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]\s+(?!\d+ responses)", output,
                                           re.MULTILINE))

    def seconds(pattern: str) -> float:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise ValueError(f"hey output lacks {pattern!r}:\n{output}")
        return float(match.group(1)) * 1000

    return BurstResult(statuses=statuses, errors=errors,
                       p50_ms=seconds(r"^\s*50% in ([\d.]+) secs"),
                       p99_ms=seconds(r"^\s*99% in ([\d.]+) secs"),
                       slowest_ms=seconds(r"^\s*Slowest:\s*([\d.]+) secs"))


def burst(url: str, requests: int, path: str = API_PATH, timeout: float = 30.0) -> BurstResult:
    """``requests`` requests at once, each on its own new connection (``hey -n N -c N``)."""
    require_tools("hey")
    command = ["hey", "-n", str(requests), "-c", str(requests), "-t", str(round(timeout)),
               "-H", f"Authorization: Bearer {APP_KEY}", url + path]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 60)
    if done.returncode != 0:
        raise RuntimeError(f"hey failed ({done.returncode}): {done.stderr.strip()}")
    return parse_hey(done.stdout)


def metric_total(admin_url: str, name: str) -> float:
    """Sum of every series of one metric on a tokenproxy's ``/metrics``."""
    text = httpx.get(admin_url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total
