"""Measure the issue-16 prototype (bench/proto_pool.py) against bare mitmdump, both in front of
an HTTPS nginx on loopback (a throwaway CA made here with openssl). Research aid for
docs/design/upstream-pool.md, not part of `make bench`.

    .venv/bin/python -m bench.proto_pool_bench [TARGET ...]      # default: all targets

Per target: ``hey -disable-keepalive -c 16 -n 3000`` and ``wrk -t1 -c16 -d10s --latency`` on
the API path, upstream connections per 1,000 requests from nginx's ``stub_status``
(accepts/requests deltas), and a 200 MB download through the proxy (sha256 checked, the
proxy's peak RSS growth). Every step is bounded (≤ 60 s). Results: stdout and
docs/design/proto_pool_results.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.parts import API_PATH, extension_answer, free_port, wait_listening
from tests.support.processes import stop_process

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BIG_MB = int(os.environ.get("BIG_MB", "200"))

NGINX_CONF = """\
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
  http2_max_requests 10000000;
  server {{
    listen 127.0.0.1:{port} ssl http2 reuseport backlog=4096;
    ssl_certificate {dir}/server.pem;
    ssl_certificate_key {dir}/server.key;
    ssl_session_cache shared:SSL:10m;
    location = {api_path} {{ default_type application/json; alias {dir}/extension.json; }}
    location = /big.bin {{ default_type application/octet-stream; alias {dir}/big.bin; }}
  }}
  server {{
    listen 127.0.0.1:{status_port};
    location = /status {{ stub_status; }}
  }}
}}
"""


def openssl_ca(tmp: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True, timeout=30)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=proto-pool test CA",
        # Python 3.13's default context verifies strictly (VERIFY_X509_STRICT): a CA needs these
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (tmp / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")


@contextlib.contextmanager
def https_nginx() -> Iterator[tuple[str, str, Path]]:
    """(upstream URL, stub_status URL, CA file)."""
    port, status_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="proto-pool-nginx-") as name:
        tmp = Path(name)
        os.chmod(tmp, 0o755)
        openssl_ca(tmp)
        url = f"https://127.0.0.1:{port}"
        (tmp / "extension.json").write_bytes(extension_answer(url))
        with open(tmp / "big.bin", "wb") as big:
            block = os.urandom(1 << 20)
            for _ in range(BIG_MB):
                big.write(block)
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(
            dir=tmp, port=port, status_port=status_port, api_path=API_PATH,
            user="user root;" if os.geteuid() == 0 else ""))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        proc = subprocess.Popen([nginx, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_listening(port, proc=proc)
            yield url, f"http://127.0.0.1:{status_port}/status", tmp / "ca.pem"
        finally:
            stop_process(proc)


def stub_status(url: str) -> tuple[int, int]:
    """(accepted connections, requests) so far, less this status request itself."""
    text = httpx.get(url, timeout=5).text
    accepts, _handled, requests = map(int, text.splitlines()[2].split())
    return accepts - 1, requests - 1


TARGETS = {
    "bare": {},
    "bare-resume": {},  # bare mitmdump + bench/proto_tls_resume.py
    "proto": {"POOL_HTTP2": "0"},
    "proto-h2": {"POOL_HTTP2": "1"},
    "proto-uvloop": {"POOL_HTTP2": "0", "PYTHONPATH": os.environ.get("UVLOOP_PATH", "")},
    "proto-aiohttp": {"POOL_HTTP2": "0", "POOL_CLIENT": "aiohttp"},
    "proto-aiohttp-uvloop": {"POOL_HTTP2": "0", "POOL_CLIENT": "aiohttp",
                             "PYTHONPATH": os.environ.get("UVLOOP_PATH", "")},
    "loophop": {},  # option 1c: bench/proto_loophop.py
}


@contextlib.contextmanager
def mitmdump(upstream: str, ca: Path, target: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    launcher = ([sys.executable, str(ROOT / "bench/proto_uvloop_mitmdump.py")]
                if target.endswith("uvloop") else [str(BIN / "mitmdump")])
    hop = free_port()
    mode = f"reverse:http://127.0.0.1:{hop}" if target == "loophop" else f"reverse:{upstream}"
    command = [*launcher, "--mode", mode,
               "--listen-host", "127.0.0.1", "--listen-port", str(port),
               "--set", f"ssl_verify_upstream_trusted_ca={ca}",
               "--set", "stream_large_bodies=1m"]
    env = dict(os.environ)
    if target == "bare-resume":
        command += ["-s", str(ROOT / "bench/proto_tls_resume.py")]
    elif target == "loophop":
        command += ["-s", str(ROOT / "bench/proto_loophop.py")]
        env.update(POOL_UPSTREAM=upstream, POOL_HOP_PORT=str(hop), POOL_CA=str(ca))
    elif target != "bare":
        command += ["--set", "connection_strategy=lazy", "-s", str(ROOT / "bench/proto_pool.py")]
        env.update(TARGETS[target], POOL_CA=str(ca))
    logfile = Path(tempfile.gettempdir()) / f"proto-pool-{target}.log"
    with open(logfile, "w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # no probe connection before start-up is over: mitmdump exits on any error logged
        # during start-up (errorcheck), and an early connection makes addons log one
        ready = ("proto_pool: forwarding" if target.startswith(("proto", "loophop"))
                 else "listening at")
        deadline = time.monotonic() + 20
        while ready not in logfile.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mitmdump ({target}) did not start: {logfile.read_text()}")
            time.sleep(0.1)
        time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        stop_process(proc)


def per_thousand(status_url: str, before: tuple[int, int]) -> tuple[float, int]:
    accepts, requests = stub_status(status_url)
    conns, reqs = accepts - before[0], requests - before[1]
    return round(1000 * conns / max(1, reqs), 1), reqs


def requests_per_second(out: str) -> float:
    return float(re.search(r"Requests/sec:\s*([\d.]+)", out)[1])


def hey(url: str, status_url: str) -> dict:
    command = ["hey", "-disable-keepalive", "-c", "16", "-n", "3000", "-t", "20", url + API_PATH]
    before = stub_status(status_url)
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout
    except subprocess.TimeoutExpired:  # the 60 s bound: under 50 req/s
        return {"command": " ".join(command), "rps": None, "p50_ms": None,
                "timed_out_after_s": 60, "upstream_conns_per_1000": None}
    conns, reqs = per_thousand(status_url, before)
    statuses = dict(re.findall(r"^\s*\[(\d{3})\]\s+(\d+) responses", out, re.MULTILINE))
    return {"command": " ".join(command), "rps": requests_per_second(out),
            "p50_ms": round(float(re.search(r"50% in ([\d.]+) secs", out)[1]) * 1000, 2),
            "statuses": statuses, "upstream_conns_per_1000": conns, "upstream_requests": reqs}


def wrk(url: str, status_url: str) -> dict:
    command = ["wrk", "-t1", "-c16", "-d10s", "--latency", url + API_PATH]
    before = stub_status(status_url)
    out = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout
    conns, reqs = per_thousand(status_url, before)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1, "s": 1000}[p50[2]]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"command": " ".join(command), "rps": requests_per_second(out),
            "p50_ms": round(float(p50[1]) * scale, 2), "non_2xx": int(errors[1]) if errors else 0,
            "upstream_conns_per_1000": conns, "upstream_requests": reqs}


def vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return 0


def download(url: str, pid: int, expected: str) -> dict:
    before = vm(pid, "VmHWM")
    digest, size, started = hashlib.sha256(), 0, time.monotonic()
    with httpx.stream("GET", url + "/big.bin", timeout=60) as answer:
        for chunk in answer.iter_raw():
            digest.update(chunk)
            size += len(chunk)
    return {"mb": size >> 20, "sha256_ok": digest.hexdigest() == expected,
            "seconds": round(time.monotonic() - started, 2),
            "peak_rss_mb_before": before, "peak_rss_mb_after": vm(pid, "VmHWM")}


def stall(url: str, pid: int) -> dict:
    """Back-pressure: read 1 MiB of the 200 MB answer, stop reading for 3 s, hang up. Without
    back-pressure the proxy would buffer what the upstream sends meanwhile."""
    with httpx.stream("GET", url + "/big.bin", timeout=30) as answer:
        stream = answer.iter_raw()
        got = 0
        while got < (1 << 20):
            got += len(next(stream))
        before = vm(pid, "VmRSS")
        time.sleep(3)
        after = vm(pid, "VmRSS")
    time.sleep(0.5)
    return {"rss_mb_at_stall_start": before, "rss_mb_after_3s_stall": after,
            "rss_mb_after_hangup": vm(pid, "VmRSS")}


def main(targets: list[str]) -> None:
    results: dict = {"nproc": os.cpu_count(),
                     "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with https_nginx() as (upstream, status_url, ca):
        expected = hashlib.sha256((ca.parent / "big.bin").read_bytes()).hexdigest()
        for target in targets:
            with mitmdump(upstream, ca, target) as (url, pid):
                for _ in range(50):  # warm-up
                    httpx.get(url + API_PATH, timeout=10).raise_for_status()
                if os.environ.get("SMOKE"):  # a functional check only, no load
                    row = {"download": download(url, pid, expected), "stall": stall(url, pid)}
                else:
                    row = {"hey": hey(url, status_url), "wrk": wrk(url, status_url),
                           "download": download(url, pid, expected),
                           "stall": stall(url, pid), "rss_mb_end": vm(pid, "VmRSS")}
            log = (Path(tempfile.gettempdir()) / f"proto-pool-{target}.log").read_text()
            counts = re.findall(r"offered (\d+), resumed (\d+)", log)  # bare-resume's count
            row["log"] = {"mitmproxy_server_connects": log.count("server connect"),
                          "crashes": log.count("has crashed"),
                          "addon_errors": log.count("Addon error"),
                          "event_loop": re.findall(r"event loop (\S+)", log)[-1:]}
            if counts:
                row["tls_sessions_offered_resumed"] = [int(n) for n in counts[-1]]
            print(target, json.dumps(row), flush=True)
            if not os.environ.get("SMOKE"):
                results[target + os.environ.get("RUN_TAG", "")] = row
    out = ROOT / "docs/design/proto_pool_results.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    previous.update(results)
    out.write_text(json.dumps(previous, indent=1) + "\n")


def table(results: dict) -> str:
    """The markdown table of docs/design/upstream-pool.md §4."""
    lines = ["| target | hey -disable-keepalive req/s | p50 ms | upstream conns / 1,000 | "
             "wrk -c16 req/s | p50 ms | upstream conns / 1,000 | 200 MB s | peak RSS +MB | "
             "RSS +MB in 3 s stall |", "|---|" + "---:|" * 9]
    for target, row in results.items():
        if not isinstance(row, dict) or "hey" not in row:
            continue
        h, w, d, st = row["hey"], row["wrk"], row.get("download"), row.get("stall")
        hey_rps = f"{h['rps']:,.0f}" if h["rps"] is not None else "> 60 s, not finished"
        big = (f"{d['seconds']}{'' if d['sha256_ok'] else ' (BAD sha256)'} | "
               f"{d['peak_rss_mb_after'] - d['peak_rss_mb_before']} | "
               f"{st['rss_mb_after_3s_stall'] - st['rss_mb_at_stall_start']}"
               if d and st else "n/a | n/a | n/a")
        lines.append(
            f"| {target} | {hey_rps} | {h['p50_ms']} | {h['upstream_conns_per_1000']} | "
            f"{w['rps']:,.0f} | {w['p50_ms']} | {w['upstream_conns_per_1000']} | {big} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["--table"]:
        print(table(json.loads((ROOT / "docs/design/proto_pool_results.json").read_text())))
        sys.exit(0)
    main(sys.argv[1:] or list(TARGETS))
