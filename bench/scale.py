"""Scenario ``scale``: how tokenproxy's cost grows with the number of accounts (issue 16).

Integrators run one account per customer. For each account count N (1, 100, 1,000, 10,000;
``--quick``: up to 1,000) a fresh platform emulator is seeded with N generated users, each with
an app of its own (``--seed-generated N``: one client id per account), with the platform's
default policy: access tokens live 1 h, refresh tokens 7 days, 5 token calls per 60 s per
client id. One tokenproxy process gets a generated config of N JWT accounts and N client keys
(one per account), the SQLite store and the default auth budget (5 calls / 60 s per client id).
Measured, per N:

* start-up: process launch → listening (config parsing, store, pool), then one request per
  account through the proxy (a pool of client threads), each of which logs its account in:
  launch → every account served once; the config parse alone is timed apart, in this process;
* RSS (``/proc/PID/status``) when listening and once every account holds a session;
* idle CPU: utime+stime (``/proc/PID/stat``) over a window without requests, where only the
  timers (refresh-ahead, keep-alive, the store's membership heartbeat and watcher) run;
* ``/metrics``: time of a GET (median of 3) and its size;
* store operations (``tokenproxy_store_operations_total``) during start-up and per minute in
  the idle window;
* a restart on the same store: launch → listening, and one request per account again (the
  sessions are adopted from the store: no token calls).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import secrets
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import parts
from bench.report import table
from bench.scenario import RunOptions, Scenario
from tests.support.emulator import Emulator, start_emulator
from tests.support.processes import stop_process
from tests.support.proxy import STORE_KEY, Proxy, render_config, start_proxy_with_config

COUNTS = (1, 100, 1_000, 10_000)
QUICK_COUNTS = (1, 100, 1_000)
IDLE_SECONDS = 60.0
QUICK_IDLE_SECONDS = 20.0
DRIVERS = 16  # client threads sending the first request of each account
API_PATH = parts.API_PATH
HTTP_TIMEOUT = 30.0
SCRAPES = 3
STORE_OPS = "tokenproxy_store_operations_total"
# targets (issue 16)
RSS_PER_ACCOUNT_TARGET = 50 * 1024  # bytes
IDLE_CPU_TARGET = 2.0  # % of a core, at 10,000 accounts
SCRAPE_TARGET = 1.0  # s
# the platform's auth limit (docs/design, shared/platform.md): 5 token calls / 60 s per app
AUTH_CALLS, AUTH_WINDOW = 5, 60.0
MIB = 1024 * 1024


def counts(options: RunOptions) -> tuple[int, ...]:
    """The account counts to measure; ``BENCH_SCALE_COUNTS=1,100`` overrides (development)."""
    raw = os.environ.get("BENCH_SCALE_COUNTS", "")
    if raw:
        chosen = tuple(int(x) for x in raw.split(",") if x.strip())
        if not chosen or any(not 1 <= n <= 20_000 for n in chosen):
            raise ValueError("BENCH_SCALE_COUNTS: account counts between 1 and 20,000")
        return chosen
    return QUICK_COUNTS if options.quick else COUNTS


# ------------------------------------------------------------------------------ config
def account_name(i: int) -> str:
    return f"acct-{i}"


def write_config(workdir: Path, n: int, upstream: str,
                 metrics_per_account: str = "full") -> tuple[Path, list[str]]:
    """A config of ``n`` JWT accounts (the emulator's generated users, one app each) and one
    client key per account; returns its path and the keys (key i → account i+1)."""
    path = workdir / f"scale-{n}-{metrics_per_account}.toml"
    proxy = {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "upstream": upstream,
             "auth_budget_calls": AUTH_CALLS, "auth_budget_window": AUTH_WINDOW,
             "metrics_per_account": metrics_per_account}
    accounts = [{"name": account_name(i), "client_id": f"gen-client-{i}",
                 "client_secret": f"gen-secret-{i}", "grant": "jwt", "jwt": f"gen-jwt-{i}"}
                for i in range(1, n + 1)]
    keys = [f"scale-{i}-{secrets.token_hex(12)}" for i in range(1, n + 1)]
    clients = [{"name": f"app-{i}", "account": account_name(i), "key": keys[i - 1]}
               for i in range(1, n + 1)]
    store = {"backend": "sqlite", "path": str(workdir / f"scale-{n}.db")}
    path.write_text(render_config(proxy, accounts, clients, store), encoding="utf-8")
    return path, keys


def config_parse_seconds(path: Path) -> float:
    """How long loading the config takes (parsing and validation), in a child process so the
    bench's own memory and imports stay out of it."""
    code = ("import sys, time; from proxy_addon.config import load_config; "
            "t = time.perf_counter(); load_config(sys.argv[1]); "
            "print(time.perf_counter() - t)")
    import sys

    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=900, env=dict(os.environ))
    if done.returncode != 0:
        raise RuntimeError(f"loading {path} failed: {done.stderr.strip()[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- metrics
@dataclass
class Scrape:
    seconds: float  # median time of a GET /metrics
    size: int  # bytes
    samples: int  # sample lines
    store_ops: Counter[str]  # operation → count (outcome ok and error)


_STORE_LINE = re.compile(r'^tokenproxy_store_operations_total\{([^}]*)\} (\S+)$')
_OPERATION = re.compile(r'operation="([^"]*)"')


def scrape(admin_url: str, times: int = 1, timeout: float = 120.0) -> Scrape:
    durations: list[float] = []
    body = b""
    with httpx.Client(timeout=timeout, trust_env=False) as http:
        for _ in range(times):
            started = time.perf_counter()
            answer = http.get(admin_url + "/metrics")
            durations.append(time.perf_counter() - started)
            answer.raise_for_status()
            body = answer.content
    ops: Counter[str] = Counter()
    samples = 0
    for line in body.decode("utf-8", "replace").splitlines():
        if not line or line.startswith("#"):
            continue
        samples += 1
        match = _STORE_LINE.match(line)
        if match:
            operation = _OPERATION.search(match.group(1))
            if operation:
                ops[operation.group(1)] += int(float(match.group(2)))
    return Scrape(statistics.median(durations), len(body), samples, ops)


# ----------------------------------------------------------------------------- driving
@dataclass
class Pass:
    seconds: float
    ok: int
    failures: Counter[str] = field(default_factory=Counter)


def one_request_each(url: str, keys: Sequence[str], deadline: float) -> Pass:
    """One GET per key (so one per account), ``DRIVERS`` at a time; a key whose request fails
    is tried again once at the end (bounded by ``deadline``, monotonic)."""
    lock = threading.Lock()
    failures: Counter[str] = Counter()
    failed: list[str] = []
    ok = 0
    local = threading.local()

    def client() -> httpx.Client:
        http = getattr(local, "http", None)
        if http is None:
            http = local.http = httpx.Client(base_url=url, timeout=HTTP_TIMEOUT,
                                             trust_env=False)
            with lock:
                opened.append(http)
        return http

    def send(key: str, last: bool) -> None:
        nonlocal ok
        if time.monotonic() >= deadline:
            label = "not sent (time bound)"
        else:
            try:
                answer = client().get(API_PATH, headers={"Authorization": f"Bearer {key}"})
                label = "" if answer.status_code == 200 else (
                    f"{answer.status_code} {answer.headers.get('X-Tokenproxy-Error', '')}"
                    .strip())
            except httpx.HTTPError as exc:
                label = type(exc).__name__
        with lock:
            if not label:
                ok += 1
            elif last:
                failures[label] += 1
            else:
                failed.append(key)

    opened: list[httpx.Client] = []
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(DRIVERS, thread_name_prefix="scale-driver") as pool:
            list(pool.map(lambda k: send(k, False), keys))
        if failed:
            with ThreadPoolExecutor(DRIVERS, thread_name_prefix="scale-driver") as pool:
                list(pool.map(lambda k: send(k, True), list(failed)))
    finally:
        for http in opened:
            http.close()
    return Pass(time.monotonic() - started, ok, failures)


def launch(config: Path, timeout: float) -> tuple[Proxy, float]:
    started = time.monotonic()
    proxy = start_proxy_with_config(config, timeout=timeout,
                                    env={"TOKENPROXY_STORE_KEY": STORE_KEY})
    return proxy, time.monotonic() - started


# ------------------------------------------------------------------------------- point
@dataclass
class Point:
    n: int
    config_seconds: float = 0.0
    listen_seconds: float = 0.0
    serve: Pass | None = None
    rss_listening: int = 0
    rss_serving: int = 0
    token_calls: int = 0
    rate_limited: int = 0
    startup_ops: Counter[str] = field(default_factory=Counter)
    startup_cpu: float = 0.0
    idle_seconds: float = 0.0
    idle_cpu: float = 0.0  # seconds of CPU in the idle window
    idle_ops: Counter[str] = field(default_factory=Counter)
    metrics: Scrape | None = None
    folded: Scrape | None = None  # restarted with [proxy] metrics_per_account = "folded"
    stop_seconds: float = 0.0
    restart_listen_seconds: float = 0.0
    restart: Pass | None = None
    restart_token_calls: int = 0
    rss_restarted: int = 0
    rss_scraped: int = 0  # after the /metrics scrapes (the page is built whole in memory)

    @property
    def serving_seconds(self) -> float:
        return self.listen_seconds + (self.serve.seconds if self.serve else 0.0)

    @property
    def idle_cpu_percent(self) -> float:
        return 100.0 * self.idle_cpu / self.idle_seconds if self.idle_seconds else 0.0

    @property
    def idle_ops_per_minute(self) -> float:
        total = sum(self.idle_ops.values())
        return total * 60.0 / self.idle_seconds if self.idle_seconds else 0.0


def measure(n: int, workdir: Path, idle: float, logs: Path | None,
            progress: Callable[[str], None]) -> Point:
    point = Point(n)
    # bounded: a generous allowance per account for each phase
    start_timeout = 60.0 + 0.06 * n
    serve_bound = 60.0 + 0.2 * n
    emulator: Emulator = start_emulator("--seed-generated", str(n), "--log-level", "warning",
                                        timeout=60.0)
    proxy: Proxy | None = None
    try:
        config, keys = write_config(workdir, n, emulator.url)
        point.config_seconds = config_parse_seconds(config)
        progress(f"N={n}: config parsed in {point.config_seconds:.2f} s")
        proxy, point.listen_seconds = launch(config, start_timeout)
        assert proxy.admin_url is not None
        pid = proxy.proc.pid
        point.rss_listening = parts.rss_bytes(pid)
        before = scrape(proxy.admin_url)
        cpu0 = parts.cpu_seconds(pid)
        progress(f"N={n}: listening after {point.listen_seconds:.2f} s, RSS "
                 f"{point.rss_listening / MIB:.1f} MiB; one request per account ...")
        point.serve = one_request_each(proxy.url, keys, time.monotonic() + serve_bound)
        point.startup_cpu = parts.cpu_seconds(pid) - cpu0
        counters = emulator.counters()
        point.token_calls = int(counters.get("token_calls", 0))
        point.rate_limited = int(counters.get("rate_limited", 0))
        time.sleep(2.0)  # let the last saves land
        point.rss_serving = parts.rss_bytes(pid)
        after = scrape(proxy.admin_url)
        point.startup_ops = after.store_ops - before.store_ops
        progress(f"N={n}: {point.serve.ok}/{n} served in {point.serve.seconds:.2f} s "
                 f"({point.token_calls} token calls, {point.rate_limited} 429s), RSS "
                 f"{point.rss_serving / MIB:.1f} MiB; idle {idle:g} s ...")
        # idle: no requests, no scrapes inside the window
        ops0 = scrape(proxy.admin_url).store_ops
        cpu0, t0 = parts.cpu_seconds(pid), time.monotonic()
        time.sleep(idle)
        point.idle_cpu, point.idle_seconds = parts.cpu_seconds(pid) - cpu0, time.monotonic() - t0
        # the scrape before the window counted itself; this one reads the window's operations
        point.metrics = scrape(proxy.admin_url, SCRAPES)
        point.idle_ops = point.metrics.store_ops - ops0
        point.rss_scraped = parts.rss_bytes(pid)
        progress(f"N={n}: idle CPU {point.idle_cpu_percent:.2f} % of a core, "
                 f"{point.idle_ops_per_minute:.0f} store ops/min; /metrics "
                 f"{point.metrics.seconds * 1000:.0f} ms, {point.metrics.size / 1024:.0f} KiB")
        stopping = time.monotonic()
        proxy.stop()
        point.stop_seconds = time.monotonic() - stopping
        _save_log(logs, f"scale-{n}-proxy.log", proxy)
        # restart on the same store: the sessions are adopted, no logins; with the folded
        # per-account metrics, whose scrape is measured after the pass
        emulator.reset_counters()
        folded_config = config.with_name(config.name.replace("-full", "-folded"))
        folded_config.write_text(config.read_text(encoding="utf-8").replace(
            'metrics_per_account = "full"', 'metrics_per_account = "folded"'), encoding="utf-8")
        proxy, point.restart_listen_seconds = launch(folded_config, start_timeout)
        point.restart = one_request_each(proxy.url, keys, time.monotonic() + serve_bound)
        assert proxy.admin_url is not None
        point.folded = scrape(proxy.admin_url, SCRAPES)
        point.restart_token_calls = int(emulator.counters().get("token_calls", 0))
        point.rss_restarted = parts.rss_bytes(proxy.proc.pid)
        progress(f"N={n}: restart listening after {point.restart_listen_seconds:.2f} s, "
                 f"{point.restart.ok}/{n} served in {point.restart.seconds:.2f} s with "
                 f"{point.restart_token_calls} token calls")
    finally:
        if proxy is not None:
            stop_process(proxy.proc, 30)
            _save_log(logs, f"scale-{n}-proxy-restarted.log", proxy)
        emulator.stop()
    return point


def _save_log(logs: Path | None, name: str, proxy: Proxy) -> None:
    if logs is not None:
        (logs / name).write_text(proxy.logs(), encoding="utf-8")


# ------------------------------------------------------------------------------ report
def per_account(points: Sequence[Point], value: Callable[[Point], float]) -> list[str]:
    """The cost of one more account between consecutive counts (the slope), per row."""
    out = ["-"]
    for prev, cur in itertools.pairwise(points):
        out.append(f"{(value(cur) - value(prev)) / (cur.n - prev.n):.3g}")
    return out


def _s(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _ops(ops: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1]) if v) \
        or "none"


def render(points: Sequence[Point], idle: float) -> str:
    rows = []
    rss_slope = per_account(points, lambda p: p.rss_serving)
    start_slope = per_account(points, lambda p: p.serving_seconds)
    for p in points:
        assert p.serve is not None and p.metrics is not None and p.restart is not None
        rows.append([
            f"{p.n:,}", _s(p.config_seconds), _s(p.listen_seconds),
            _s(p.serving_seconds) + ("" if p.serve.ok == p.n else f" ({p.serve.ok:,} ok)"),
            f"{p.n / p.serve.seconds:.0f}", f"{p.rss_listening / MIB:.1f}",
            f"{p.rss_serving / MIB:.1f}", f"{p.idle_cpu_percent:.2f}",
            f"{p.metrics.seconds * 1000:.0f}", f"{p.metrics.size / 1024:,.0f}",
            f"{p.metrics.samples:,}", f"{p.idle_ops_per_minute:.0f}",
            _s(p.restart_listen_seconds),
        ])
    cost_rows = []
    for i, p in enumerate(points):
        assert p.metrics is not None
        cost_rows.append([
            f"{p.n:,}", start_slope[i] if i else "-",
            f"{float(rss_slope[i]) / 1024:.1f}" if i else "-",
            per_account(points, lambda q: q.metrics.size if q.metrics else 0)[i],
            per_account(points, lambda q: q.idle_cpu_percent * 1000)[i],
            per_account(points, lambda q: q.config_seconds)[i],
            f"{sum(p.startup_ops.values()) / max(1, p.n):.1f}",
        ])
    big = points[-1]
    assert big.metrics is not None and big.serve is not None
    base = points[0]
    rss_per = ((big.rss_serving - base.rss_serving) / (big.n - base.n)
               if big.n > base.n else 0.0)
    verdicts = [
        ("≤ 50 KB RSS per account", f"{rss_per / 1024:.1f} KiB (1 → {big.n:,} accounts)",
         rss_per <= RSS_PER_ACCOUNT_TARGET),
        (f"idle CPU ≤ {IDLE_CPU_TARGET:g} % of a core at {big.n:,} accounts",
         f"{big.idle_cpu_percent:.2f} %", big.idle_cpu_percent <= IDLE_CPU_TARGET),
        (f"a scrape ≤ {SCRAPE_TARGET:g} s at {big.n:,} accounts",
         f"{big.metrics.seconds:.2f} s ({big.metrics.size / MIB:.1f} MiB); with "
         "`metrics_per_account = \"folded\"`: " + (
             f"{big.folded.seconds:.2f} s ({big.folded.size / 1024:.0f} KiB)"
             if big.folded else "not measured"),
         big.metrics.seconds <= SCRAPE_TARGET
         or (big.folded is not None and big.folded.seconds <= SCRAPE_TARGET)),
    ]
    # start-up bound by the platform: one login per account, 5 calls / 60 s per client id,
    # and each account has a client id of its own: the platform allows them all at once
    platform_bound = "every login at once (one client id per account, 1 of its 5 calls)"
    lines = [
        f"Per account count N: a fresh emulator `--seed-generated N` (N users, one app each; "
        "default policy: access tokens 1 h, refresh tokens 7 days, 5 token calls / 60 s per "
        "client id with a 60 s penalty) and one tokenproxy process with N JWT accounts, N "
        f"client keys, the SQLite store, auth budget {AUTH_CALLS} calls / {AUTH_WINDOW:g} s "
        f"per client id. Start-up: launch → listening, then one request per account "
        f"({DRIVERS} client threads on the same 2 cores), each logging its account in. "
        f"Idle: {idle:g} s without requests or scrapes. RSS from `/proc/PID/status`, CPU from "
        "`/proc/PID/stat`.",
        "",
        table(["accounts", "config parse s", "launch → listening s",
               "launch → all serving s", "first requests / s", "RSS listening MiB",
               "RSS serving MiB", "idle CPU % core", "/metrics ms", "/metrics KiB",
               "/metrics samples", "store ops / min idle", "restart → listening s"], rows),
        "",
        "Cost of one more account (slope between consecutive rows):",
        "",
        table(["accounts", "start-up s", "RSS KiB", "/metrics bytes",
               "idle CPU % core per 1,000 accounts", "config parse s",
               "store ops per account at start-up"], cost_rows),
        "",
        table(["target", f"at {big.n:,} accounts", "verdict"],
              [(t, v, "pass" if ok else "**FAIL**") for t, v, ok in verdicts]),
        "",
    ]
    for p in points:
        assert p.serve is not None and p.restart is not None
        extra = []
        if p.serve.failures:
            extra.append(f"failed first requests: {dict(p.serve.failures)}")
        if p.restart.failures:
            extra.append(f"failed after restart: {dict(p.restart.failures)}")
        lines.append(
            f"- N={p.n:,}: {p.token_calls:,} token calls, {p.rate_limited} 429s; store ops "
            f"at start-up: {_ops(p.startup_ops)}; in the idle window: {_ops(p.idle_ops)}; "
            f"CPU during the first requests {p.startup_cpu:.1f} s; stop (SIGTERM → exit) "
            f"{p.stop_seconds:.1f} s; after a restart every account served again in "
            f"{p.restart.seconds:.2f} s with {p.restart_token_calls} token calls (RSS "
            f"{p.rss_restarted / MIB:.1f} MiB)" + ("; " + "; ".join(extra) if extra else "")
            + ".")
    per_login = big.startup_cpu / big.n
    lines += [
        "",
        f"Start-up against the platform's limits: each account has a client id of its own, so "
        f"the platform's {AUTH_CALLS} calls / {AUTH_WINDOW:g} s per app allow {platform_bound};"
        f" the proxy's own pace was {big.n / big.serve.seconds:.0f} logins/s at "
        f"{big.n:,} accounts ({per_login * 1000:.1f} ms of proxy CPU per first request, its "
        "login included), and launch → listening took "
        f"{big.listen_seconds:.0f} s before any login: the start-up is bounded by the proxy, "
        "not by the platform.",
        "",
        f"Token upkeep (derived): accounts in use renew once per access-token lifetime (1 h, "
        f"refresh-ahead), {big.n / 60:.0f} renewals a minute at {big.n:,} accounts; at the CPU "
        f"a login cost above that is about {100 * big.n / 3600 * per_login:.1f} % of a core, "
        f"and {big.n / 60 * _ops_per_login(big):.0f} store operations a minute "
        f"({_ops_per_login(big):.0f} per renewal).",
        "",
        *growth(points),
    ]
    return "\n".join(lines)


def _ops_per_login(p: Point) -> float:
    heartbeats = p.startup_ops.get("heartbeat", 0)
    return (sum(p.startup_ops.values()) - heartbeats) / max(1, p.n)


GROWTH_MARGIN = 1.3  # a cost growing more than 1.3 times the account ratio is worse than linear


def growth(points: Sequence[Point]) -> list[str]:
    """How each cost (above the one-account base) grew over the last step of account counts:
    proportional to the accounts is linear."""
    if len(points) < 3:
        return []
    base, mid, big = points[0], points[-2], points[-1]
    ratio = (big.n - base.n) / (mid.n - base.n)
    assert mid.metrics and big.metrics and base.metrics and mid.serve and big.serve
    costs: list[tuple[str, Callable[[Point], float]]] = [
        ("config parse", lambda p: p.config_seconds),
        ("launch → listening", lambda p: p.listen_seconds),
        ("first request of every account (wall)", lambda p: p.serve.seconds if p.serve else 0),
        ("CPU of the first requests", lambda p: p.startup_cpu),
        ("RSS serving", lambda p: p.rss_serving),
        ("idle CPU", lambda p: p.idle_cpu_percent),
        ("/metrics time", lambda p: p.metrics.seconds if p.metrics else 0),
        ("/metrics size", lambda p: p.metrics.size if p.metrics else 0),
        ("restart → listening", lambda p: p.restart_listen_seconds),
    ]
    rows = []
    for label, value in costs:
        below, above = value(mid) - value(base), value(big) - value(base)
        factor = above / below if below > 0 else float("nan")
        worse = below > 0 and factor > GROWTH_MARGIN * ratio
        rows.append([label, f"{factor:.1f} times" if below > 0 else "-",
                     "**worse than linear**" if worse else "linear or better"])
    return [
        f"Growth from {mid.n:,} to {big.n:,} accounts ({ratio:.1f} times the accounts above the "
        f"one-account base; worse than linear: more than {GROWTH_MARGIN * ratio:.1f} times):",
        "",
        table(["cost", "grew", "verdict"], rows),
    ]


def dump(points: Sequence[Point], idle: float, path: Path) -> None:
    """The raw figures, so the section can be rendered again without a rerun."""
    def plain(value: object) -> object:  # asdict would rebuild a Counter from its pairs
        if isinstance(value, Counter):
            return dict(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return value

    path.write_text(json.dumps({"idle": idle, "points": [plain(p) for p in points]}, indent=1))


def load(path: Path) -> tuple[list[Point], float]:
    raw = json.loads(path.read_text())
    points = []
    for item in raw["points"]:
        for name in ("serve", "restart"):
            if item.get(name) is not None:
                item[name] = Pass(item[name]["seconds"], item[name]["ok"],
                                  Counter(item[name]["failures"]))
        for name in ("metrics", "folded"):
            if item.get(name) is not None:
                m = item[name]
                item[name] = Scrape(m["seconds"], m["size"], m["samples"],
                                    Counter(m["store_ops"]))
        for name in ("startup_ops", "idle_ops"):
            item[name] = Counter(item[name])
        points.append(Point(**item))
    return points, float(raw["idle"])


def run(options: RunOptions) -> str:
    idle = options.duration or (QUICK_IDLE_SECONDS if options.quick else IDLE_SECONDS)
    points: list[Point] = []
    for n in counts(options):
        workdir = options.workdir / f"n{n}"
        workdir.mkdir(parents=True, exist_ok=True)
        points.append(measure(n, workdir, idle, options.logs,
                              lambda m: print(f"scale: {m}", flush=True)))
        if options.logs is not None:
            dump(points, idle, options.logs / "scale-points.json")
    return render(points, idle)


SCENARIO = Scenario(
    name="scale",
    title="Scale: 1 to 10,000 accounts (start-up, RSS, idle CPU, /metrics, store)",
    summary="cost per account: start-up, RSS, idle CPU, scrape, store ops (1 → 10,000)",
    run=run,
)
