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
from collections import Counter
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


# ------------------------------------------------------------- drain and chaos helpers
def free_ports(count: int, attempts: int = 50) -> int:
    """The first of ``count`` consecutive free loopback ports (``tokenproxy run --workers N``
    gives worker i the metrics port ``metrics_listen`` + i)."""
    for _ in range(attempts):
        base = free_port()
        if base + count > 65535:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no {count} consecutive free loopback ports after {attempts} tries")


def kill9(proc: subprocess.Popen) -> None:
    """``kill -9`` (no clean shutdown), then reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def metric_series(admin_url: str, name: str, timeout: float = 5.0) -> dict[str, float]:
    """Every series of one metric on a tokenproxy's ``/metrics``: label text -> value."""
    text = httpx.get(admin_url + "/metrics", timeout=timeout).text
    series: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            series[labels[len(name):]] = series.get(labels[len(name):], 0.0) + float(value)
    return series


@dataclass
class LoadProcess:
    """A running ``python -m bench.load`` (see :mod:`bench.load`)."""

    proc: subprocess.Popen
    out: Path
    duration: float

    def finish(self, stop: bool = True) -> dict:
        """Stop it (SIGTERM: the requests in flight end first) and read its result."""
        if stop and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=90 if stop else self.duration + 90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise RuntimeError("the load process did not end in time") from None
        if self.proc.returncode != 0 or not self.out.exists():
            raise RuntimeError(f"the load process failed ({self.proc.returncode})")
        return json.loads(self.out.read_text())


def start_load(workdir: Path, targets: list[str], keys: list[str], clients: int,
               interval: float, duration: float, failover: bool = False,
               max_requests: int = 100_000, per_connection: int = 0) -> LoadProcess:
    """The load generator in its own process; its stderr goes to ``workdir/load.log``."""
    out = workdir / f"load-{time.monotonic_ns()}.json"
    command = [sys.executable, "-m", "bench.load", "--clients", str(clients),
               "--interval", str(interval), "--duration", str(duration),
               "--max-requests", str(max_requests), "--out", str(out),
               "--requests-per-connection", str(per_connection)]
    command += [a for t in targets for a in ("--target", t)]
    command += [a for k in keys for a in ("--key", k)]
    if failover:
        command.append("--failover")
    with (workdir / "load.log").open("a") as log:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log,
                                cwd=Path(__file__).resolve().parent.parent)
    return LoadProcess(proc, out, duration)


# ------------------------------------------------------------------- Redis with Sentinel
REDIS_SERVER_BIN = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_SENTINEL_BIN = shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel"


def redis_command(port: int, *args: str, timeout: float = 2.0) -> list | str | int | None:
    """One command to a loopback Redis or Sentinel; None when it does not answer."""
    import redis  # the store's own client library (installed with tokenproxy)

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=timeout,
                         socket_connect_timeout=timeout, decode_responses=True)
    try:
        return client.execute_command(*args)
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


@dataclass
class RedisNode:
    port: int
    directory: Path
    proc: subprocess.Popen | None = None

    def start(self, replica_of: int | None = None) -> None:
        args = [REDIS_SERVER_BIN, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--appendonly", "yes",
                "--appendfsync", "always", "--save", "", "--daemonize", "no",
                "--logfile", str(self.directory / "redis.log")]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"redis-server :{self.port} exited: {log}")
            if redis_command(self.port, "PING", timeout=0.5) in (True, "PONG"):
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server :{self.port} did not answer within 15 s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class SentinelSet:
    """A Redis primary, its replica and three Sentinels, all on loopback."""

    service: str
    nodes: list[RedisNode]
    sentinel_ports: list[int]
    sentinels: list[subprocess.Popen]

    @property
    def sentinel_addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.sentinel_ports]

    def primary_port(self) -> int | None:
        """The primary's port as the Sentinels' majority reports it (None: no answer)."""
        votes: Counter[int] = Counter()
        for port in self.sentinel_ports:
            answer = redis_command(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service,
                                   timeout=0.5)
            if isinstance(answer, list) and len(answer) == 2:
                votes[int(answer[1])] += 1
        return votes.most_common(1)[0][0] if votes else None

    def node(self, port: int) -> RedisNode:
        return next(n for n in self.nodes if n.port == port)

    def wait_replicas_synced(self, timeout: float = 30.0) -> bool:
        """True once the primary reports every other live node as an online replica."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            primary = self.primary_port()
            if primary is not None:
                info = redis_command(primary, "INFO", "replication")
                wanted = sum(1 for n in self.nodes if n.port != primary and n.alive())
                if isinstance(info, dict) and int(info.get("connected_slaves", 0)) >= wanted:
                    return True
            time.sleep(0.2)
        return False


_SENTINEL_CONF = """\
port {port}
bind 127.0.0.1
daemonize no
dir {dir}
logfile {dir}/sentinel.log
sentinel resolve-hostnames no
sentinel monitor {service} 127.0.0.1 {primary} 2
sentinel down-after-milliseconds {service} {down_after_ms}
sentinel failover-timeout {service} {failover_timeout_ms}
sentinel parallel-syncs {service} 1
"""


@contextlib.contextmanager
def redis_sentinel_set(workdir: Path, service: str = "tokenproxy",
                       down_after_ms: int = 1000,
                       failover_timeout_ms: int = 10000) -> Iterator[SentinelSet]:
    """``redis-server`` primary + replica (append-only, fsync always) and three
    ``redis-sentinel`` processes (quorum 2) on free loopback ports; all stopped at the end."""
    require_tools("redis-server", "redis-sentinel")
    base = workdir / "redis-ha"
    nodes = []
    for name in ("a", "b"):
        (base / name).mkdir(parents=True, exist_ok=True)
        nodes.append(RedisNode(free_port(), base / name))
    ha = SentinelSet(service, nodes, [], [])
    try:
        nodes[0].start()
        nodes[1].start(replica_of=nodes[0].port)
        for i in range(3):
            port = free_port()
            directory = base / f"sentinel-{i}"
            directory.mkdir(parents=True, exist_ok=True)
            conf = directory / "sentinel.conf"
            conf.write_text(_SENTINEL_CONF.format(
                port=port, dir=directory, service=service, primary=nodes[0].port,
                down_after_ms=down_after_ms, failover_timeout_ms=failover_timeout_ms))
            ha.sentinels.append(subprocess.Popen([REDIS_SENTINEL_BIN, str(conf)],
                                                 stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL))
            ha.sentinel_ports.append(port)
            wait_listening(port, proc=ha.sentinels[-1])
        deadline = time.monotonic() + 30
        while ha.primary_port() != nodes[0].port and time.monotonic() < deadline:
            time.sleep(0.1)
        if not ha.wait_replicas_synced():
            raise RuntimeError("the Redis replica did not sync with the primary in 30 s")
        yield ha
    finally:
        for proc in ha.sentinels:
            stop_process(proc, 5)
        for node in nodes:
            if node.proc is not None:
                stop_process(node.proc, 5)
