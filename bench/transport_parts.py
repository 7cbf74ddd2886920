"""The processes of the ``transport`` scenario (issue 16): an HTTPS nginx upstream with a
throwaway CA and ``stub_status``, nginx as a header-injecting reverse proxy with an upstream
keep-alive pool, bare ``mitmdump`` verifying the upstream, tokenproxy (one process or
``--workers 2``) trusting the bench CA, the delaying relay, and the ``hey`` / ``wrk`` runs
with their upstream-connection counts.

Everything listens on loopback; every process is stopped by its context manager; every wait
and every load run is bounded in time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import certifi
import httpx

from bench import parts
from bench.proto_pool_bench import openssl_ca
from tests.support.processes import stop_process
from tests.support.proxy import APP_KEY, STORE_KEY, Proxy, jwt_account, start_proxy

ROOT = Path(__file__).resolve().parent.parent
INJECTED_TOKEN = "bench-static-access-token"  # what the nginx anchor injects upstream

_TEMP_PATHS = """\
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
"""

_UPSTREAM_CONF = """\
daemon off;
master_process off;
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
{temp_paths}
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  ssl_session_cache shared:SSL:10m;
  upstream platform_emulator {{ server {emulator}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{port} ssl http2 reuseport backlog=4096;
    ssl_certificate {dir}/server.pem;
    ssl_certificate_key {dir}/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location = {api_path} {{ default_type application/json; alias {dir}/extension.json; }}
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
  server {{
    listen 127.0.0.1:{status_port};
    location = /status {{ stub_status; }}
  }}
}}
"""

_ANCHOR_CONF = """\
daemon off;
master_process off;
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
{temp_paths}
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  upstream platform {{
    server 127.0.0.1:{upstream_port};
    keepalive 64;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
  }}
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{
      proxy_pass https://platform;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host 127.0.0.1:{upstream_port};
      proxy_set_header Authorization "Bearer {token}";
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {ca};
      proxy_ssl_name localhost;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }}
  }}
}}
"""

# Run by every tokenproxy process the bench starts (PYTHONPATH): the bench CA is trusted the
# way a private CA is trusted on a host (certifi's bundle, which mitmproxy and httpx read,
# and SSL_CERT_FILE, which the ssl module's default context reads), and the process notes
# where its proxy_addon package comes from so the bench can check it runs this worktree.
_SITECUSTOMIZE = """\
import importlib.util, os
_bundle = os.environ.get("TPX_BENCH_CA_BUNDLE")
if _bundle:
    import certifi
    certifi.where = lambda: _bundle
    _spec = importlib.util.find_spec("proxy_addon")
    with open(os.path.join(os.path.dirname(__file__), f"origin-{os.getpid()}"), "w") as _f:
        _f.write(_spec.origin if _spec and _spec.origin else "?")
"""


def _nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def _user_line() -> str:
    return "user root;" if os.geteuid() == 0 else ""


@dataclass
class Pki:
    """The throwaway CA, the server certificate and what makes tokenproxy trust the CA."""

    dir: Path
    ca: Path
    bundle: Path  # certifi's roots + the bench CA
    trust_dir: Path  # holds sitecustomize.py (prepended to tokenproxy's PYTHONPATH)

    def tokenproxy_env(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(self.trust_dir), str(ROOT),
                                           os.environ.get("PYTHONPATH", "")) if p)
        return {"PYTHONPATH": path, "SSL_CERT_FILE": str(self.bundle),
                "TPX_BENCH_CA_BUNDLE": str(self.bundle)}

    def origins(self) -> dict[int, str]:
        """pid -> the proxy_addon/__init__.py each tokenproxy process imported."""
        found = {}
        for path in self.trust_dir.glob("origin-*"):
            found[int(path.name.split("-", 1)[1])] = path.read_text()
        return found

    def check_origins(self) -> list[str]:
        """The distinct proxy_addon origins seen; raises unless all are this worktree's."""
        seen = sorted(set(self.origins().values()))
        wrong = [o for o in seen if not o.startswith(str(ROOT / "proxy_addon"))]
        if not seen or wrong:
            raise RuntimeError(f"tokenproxy processes did not run this tree's proxy_addon "
                               f"({ROOT}): {seen}; run with PYTHONPATH={ROOT}")
        return seen

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@contextlib.contextmanager
def pki() -> Iterator[Pki]:
    parts.require_tools("openssl")
    with tempfile.TemporaryDirectory(prefix="bench-transport-pki-") as name:
        tmp = Path(name)
        os.chmod(tmp, 0o755)  # nginx workers may run as another user
        openssl_ca(tmp)
        bundle = tmp / "bundle.pem"
        roots = Path(certifi.where()).read_bytes()
        bundle.write_bytes(roots + b"\n" + (tmp / "ca.pem").read_bytes())
        trust = tmp / "trust"
        trust.mkdir()
        (trust / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        yield Pki(dir=tmp, ca=tmp / "ca.pem", bundle=bundle, trust_dir=trust)


@dataclass
class Upstream:
    url: str  # https://127.0.0.1:PORT
    port: int
    status_url: str
    proc: subprocess.Popen

    def counters(self) -> tuple[int, int]:
        """(accepted connections, requests) so far, this status request included."""
        text = httpx.get(self.status_url, timeout=5).text
        accepts, _handled, requests = map(int, text.splitlines()[2].split())
        return accepts, requests


@contextlib.contextmanager
def https_upstream(keys: Pki, emulator_url: str) -> Iterator[Upstream]:
    """nginx (1 worker) on TLS: the static extension answer; the token endpoint proxied to
    the emulator; ``stub_status`` on a plain port of its own."""
    port, status_port = parts.free_port(), parts.free_port()
    with tempfile.TemporaryDirectory(prefix="bench-transport-up-") as name:
        tmp = Path(name)
        os.chmod(tmp, 0o755)
        for file in ("server.pem", "server.key"):
            shutil.copy(keys.dir / file, tmp / file)
        url = f"https://127.0.0.1:{port}"
        (tmp / "extension.json").write_bytes(parts.extension_answer(url))
        (tmp / "nginx.conf").write_text(_UPSTREAM_CONF.format(
            dir=tmp, temp_paths=_TEMP_PATHS.format(dir=tmp), port=port,
            status_port=status_port, api_path=parts.API_PATH, user=_user_line(),
            emulator=emulator_url.removeprefix("http://")))
        proc = subprocess.Popen([_nginx_binary(), "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            parts.wait_listening(port, proc=proc)
            parts.wait_listening(status_port, proc=proc)
            answer = httpx.get(url + parts.API_PATH, verify=keys.ssl_context(), timeout=5)
            if answer.status_code != 200:
                raise RuntimeError(f"the HTTPS upstream answers {answer.status_code}")
            yield Upstream(url, port, f"http://127.0.0.1:{status_port}/status", proc)
        finally:
            stop_process(proc)


@contextlib.contextmanager
def nginx_anchor(keys: Pki, upstream_port: int) -> Iterator[parts.Target]:
    """nginx (1 worker) as the reverse proxy users would pick: sets the Authorization header,
    keeps up to 64 idle TLS connections to the upstream, verifies it against the bench CA."""
    port = parts.free_port()
    with tempfile.TemporaryDirectory(prefix="bench-transport-anchor-") as name:
        tmp = Path(name)
        os.chmod(tmp, 0o755)
        (tmp / "nginx.conf").write_text(_ANCHOR_CONF.format(
            dir=tmp, temp_paths=_TEMP_PATHS.format(dir=tmp), port=port,
            upstream_port=upstream_port, token=INJECTED_TOKEN, ca=keys.ca, user=_user_line()))
        proc = subprocess.Popen([_nginx_binary(), "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            parts.wait_listening(port, proc=proc)
            url = f"http://127.0.0.1:{port}"
            parts.warm_up(url)
            yield parts.Target("nginx proxy", url, (proc.pid,))
        finally:
            stop_process(proc)


@contextlib.contextmanager
def bare_mitmdump(keys: Pki, upstream: str) -> Iterator[parts.Target]:
    """``mitmdump --mode reverse:UPSTREAM`` with every default addon, verifying the upstream
    against the bench CA."""
    port = parts.free_port()
    command = [str(parts.BIN / "mitmdump"), "--mode", f"reverse:{upstream}",
               "--listen-host", "127.0.0.1", "--listen-port", str(port),
               "--set", f"ssl_verify_upstream_trusted_ca={keys.ca}"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parts.wait_listening(port, proc=proc)
        url = f"http://127.0.0.1:{port}"
        parts.warm_up(url)
        yield parts.Target("bare mitmdump", url, (proc.pid,))
    finally:
        stop_process(proc)


@contextlib.contextmanager
def tokenproxy(keys: Pki, workdir: Path, upstream: str,
               **proxy_options: object) -> Iterator[tuple[parts.Target, Proxy]]:
    """One ``tokenproxy run`` (verifying the upstream: the bench CA is trusted), token
    acquired."""
    proxy = start_proxy(workdir, upstream, accounts=[jwt_account()], env=keys.tokenproxy_env(),
                        **proxy_options)
    try:
        parts.warm_up(proxy.url)
        yield parts.Target("tokenproxy", proxy.url, (proxy.proc.pid,), proxy.admin_url), proxy
    finally:
        proxy.stop()


class WorkersBroken(RuntimeError):
    """``tokenproxy run --workers N`` started, but not every worker keeps serving."""


@contextlib.contextmanager
def tokenproxy_workers(keys: Pki, workdir: Path, upstream: str,
                       workers: int) -> Iterator[parts.Target]:
    """``tokenproxy run --workers N`` on one port, SQLite file store shared by the workers."""
    port = parts.free_port()
    config = parts.tokenproxy_config(workdir, upstream, listen=f"127.0.0.1:{port}",
                                     metrics_listen="")
    log = (workdir / f"transport-workers-{workers}.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "proxy_addon", "run", "--config", str(config),
                             "--workers", str(workers)],
                            stdout=subprocess.DEVNULL, stderr=log,
                            env={**os.environ, "TOKENPROXY_STORE_KEY": STORE_KEY,
                                 **keys.tokenproxy_env()},
                            start_new_session=True)
    try:
        parts.wait_listening(port, timeout=30, proc=proc)
        url = f"http://127.0.0.1:{port}"
        parts.warm_up(url, requests=40)
        time.sleep(3)  # a worker that cannot serve exits within this (and is restarted)
        log.flush()
        text = (workdir / f"transport-workers-{workers}.log").read_text(errors="replace")
        if "exited (" in text or proc.poll() is not None:
            errors = [line for line in text.splitlines() if "ERROR" in line or "exited" in line]
            raise WorkersBroken(f"`tokenproxy run --workers {workers}` does not keep "
                                f"{workers} workers serving: {' / '.join(errors[:2])}")
        yield parts.Target(f"tokenproxy --workers {workers}", url, (proc.pid,))
    finally:
        stop_process(proc, timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@contextlib.contextmanager
def delay_relay(target_port: int, rtt: float) -> Iterator[int]:
    """``bench.transport_relay`` in front of ``127.0.0.1:target_port``; yields its port."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.transport_relay", "--target",
                             f"127.0.0.1:{target_port}", "--rtt", str(rtt)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the relay prints its port at once
        match = re.fullmatch(r"relay listening on (\d+)\s*", line)
        if match is None:
            raise RuntimeError(f"the delaying relay did not start: {line!r}")
        yield int(match.group(1))
    finally:
        stop_process(proc)


def netem_available() -> bool:
    """Whether ``tc qdisc … netem`` works here (in a throwaway network namespace)."""
    ip, tc = shutil.which("ip") or "/usr/sbin/ip", shutil.which("tc") or "/usr/sbin/tc"
    if os.geteuid() != 0 or not (Path(ip).exists() and Path(tc).exists()):
        return False
    name = f"tpx-bench-probe-{os.getpid()}"
    try:
        if subprocess.run([ip, "netns", "add", name], capture_output=True, timeout=10).returncode:
            return False
        done = subprocess.run([ip, "netns", "exec", name, tc, "qdisc", "add", "dev", "lo",
                               "root", "netem", "delay", "1ms"], capture_output=True, timeout=10)
        return done.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        subprocess.run([ip, "netns", "del", name], capture_output=True, timeout=10, check=False)


# ------------------------------------------------------------------------------ load
@dataclass(frozen=True)
class Sample:
    """One load run against one target."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors, timeouts and non-2xx answers
    upstream_connections: int  # new connections the upstream nginx accepted meanwhile
    upstream_requests: int  # requests it served meanwhile

    @property
    def per_thousand(self) -> float:
        return 1000 * self.upstream_connections / max(1, self.upstream_requests)


def hey_new_connections(url: str, concurrency: int, duration: float) -> tuple[float, float, float,
                                                                               int]:
    """``hey -disable-keepalive``: every request on a new connection, for ``duration``
    seconds; (requests/s, p50 ms, p99 ms, failed)."""
    command = ["hey", "-disable-keepalive", "-c", str(concurrency), "-z", f"{duration:g}s",
               "-t", "20", "-H", f"Authorization: Bearer {APP_KEY}", url + parts.API_PATH]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"hey failed ({done.returncode}): {done.stderr.strip()}")
    out = done.stdout
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    p50 = re.search(r"^\s*50% in ([\d.]+) secs", out, re.MULTILINE)
    slowest = re.search(r"^\s*Slowest:\s*([\d.]+) secs", out, re.MULTILINE)
    if rps is None or p50 is None or slowest is None:
        raise RuntimeError(f"unreadable hey output:\n{out}")
    # hey leaves the 99% line out under 100 answers: then the 99th percentile is the slowest
    p99 = re.search(r"^\s*99% in ([\d.]+) secs", out, re.MULTILINE) or slowest
    statuses = re.findall(r"^\s*\[(\d{3})\]\s+(\d+) responses", out, re.MULTILINE)
    failed = sum(int(n) for code, n in statuses if int(code) >= 400)
    failed += sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]\s+(?!\d+ responses)", out,
                                             re.MULTILINE))
    return (float(rps.group(1)), float(p50.group(1)) * 1000, float(p99.group(1)) * 1000,
            failed)


def run_load(upstream: Upstream, url: str, kind: str, connections: int,
             duration: float) -> Sample:
    """One ``wrk`` (kind ``keep-alive``) or ``hey -disable-keepalive`` (kind ``new``) run,
    with the upstream's connection and request counts around it."""
    accepts0, requests0 = upstream.counters()
    if kind == "keep-alive":
        w = parts.wrk(url, connections, duration)
        rps, p50, p99, errors = w.rps, w.p50_ms, w.p99_ms, w.errors
    else:
        rps, p50, p99, errors = hey_new_connections(url, connections, duration)
    accepts1, requests1 = upstream.counters()
    # the first status request is in both counts; the second one only in its own
    return Sample(rps, p50, p99, errors, accepts1 - accepts0 - 1, requests1 - requests0 - 1)


def token_endpoint_latency(upstream: Upstream, keys: Pki, calls: int) -> list[float]:
    """Seconds of ``calls`` sequential refresh-token grants straight to the upstream's token
    endpoint (one kept-alive TLS connection, as tokenproxy's control client keeps one)."""
    from tests.support.proxy import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_JWT

    auth = (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)
    times = []
    with httpx.Client(base_url=upstream.url, verify=keys.ssl_context(), timeout=30) as http:
        answer = http.post("/restapi/oauth/token", auth=auth, data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": DEMO_JWT})
        answer.raise_for_status()
        refresh = answer.json()["refresh_token"]
        for _ in range(calls):
            started = time.monotonic()
            answer = http.post("/restapi/oauth/token", auth=auth, data={
                "grant_type": "refresh_token", "refresh_token": refresh})
            times.append(time.monotonic() - started)
            answer.raise_for_status()
            refresh = answer.json()["refresh_token"]
    return times


def proxy_addon_origin_here() -> str:
    spec = importlib.util.find_spec("proxy_addon")
    return spec.origin if spec is not None and spec.origin else "?"
