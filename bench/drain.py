"""Scenario ``drain``: steady traffic across token rotations, through several proxy processes.

Issue 15, defect 2: a refresh-ahead drains only the process that makes it. With
``tokenproxy run --workers 3`` on SQLite, or 3 replicas on one Redis, every rotation made by one
process leaves the others sending the old access token until they learn of the new one, and
the platform answers those requests 401 (the proxy replays them, but a body it cannot replay
reaches the app as that 401). Target: **0 token 401s from the platform** over at least
``ROTATIONS`` rotations, as a single process already achieves.

Each set-up gets a fresh platform emulator with short access tokens (``ACCESS_TTL`` s, so the
proxies' refresh-ahead rotates every few seconds; no token-endpoint rate limit) as the
upstream. ``CLIENTS`` keep-alive clients (:mod:`bench.load`, in its own process) each send
``GET /restapi/v1.0/account/~/extension/~`` every ``INTERVAL`` s, spread evenly over the
processes, until the emulator has issued ``ROTATIONS`` new token pairs (or a deadline passes).

Figures: rotations, token calls, 401s by code and live sessions from the emulator's counters
(``/_emulator/counters``: what the platform answered); replays and token errors from the
proxies' ``/metrics`` (summed over the processes); requests, failures and latency as the
clients saw them.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import parts, stats
from bench.load import failures_by_kind
from bench.report import table
from bench.scenario import RunOptions, Scenario
from tests.support.emulator import Emulator, start_emulator
from tests.support.processes import stop_process
from tests.support.proxy import APP_KEY, STORE_KEY, client, jwt_account, render_config, start_proxy
from tests.support.redis_server import start_redis

CLIENTS = 300
INTERVAL = 2.0  # s between one client's requests: 150 requests/s in all on 2 shared cores
PROCESSES = 3
ACCESS_TTL = 10  # s: the proxies renew ahead of expiry (0.4 s before), a rotation every ~10 s
# s the token endpoint takes to answer: the emulator has rotated the pair (the old access token
# answers OAU-129) while the answer is on its way. The platform's ~0.3 s (scenario storm) would
# not fit in the 0.4 s refresh-ahead margin of these short tokens once queueing adds to it
TOKEN_DELAY = 0.1
REFRESH_TTL = 86_400
ROTATIONS = 16  # at least 15 (issue 15)
QUICK_ROTATIONS = 4
PAIR = "demo-client-id/100001"  # the emulator's (client id, owner id) key of the demo user
TOKEN_401_CODES = ("OAU-210", "OAU-128", "OAU-129", "OAU-213")
POLL = 1.0  # s between looks at the emulator's counters
WORKERS, REPLICAS = "workers", "replicas"
LABELS = {WORKERS: f"`--workers {PROCESSES}`, SQLite",
          REPLICAS: f"{PROCESSES} replicas, one Redis"}


@dataclass
class SetUp:
    """The processes of one set-up: where clients go, where metrics are read."""

    targets: list[str]
    admin_urls: list[str]


@dataclass
class Outcome:
    seconds: float
    load: dict
    counters: dict
    metrics: dict[str, Counter[str]]  # metric -> label value -> delta over the run


# ------------------------------------------------------------------------- set-ups
def _proxy_options() -> dict[str, object]:
    return {"token_wait_timeout": 10}


@contextlib.contextmanager
def workers_setup(workdir: Path, upstream: str) -> Iterator[SetUp]:
    """``tokenproxy run --workers 3`` on one SQLite store; metrics on consecutive ports."""
    port = parts.free_port()
    metrics = parts.free_ports(PROCESSES)
    config = workdir / "workers.toml"
    proxy = {"listen": f"127.0.0.1:{port}", "metrics_listen": f"127.0.0.1:{metrics}",
             "upstream": upstream, "auth_budget_calls": 0, **_proxy_options()}
    store = {"backend": "sqlite", "path": str(workdir / "workers.db")}
    config.write_text(render_config(proxy, [jwt_account()], [client()], store))
    log = (workdir / "workers.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "proxy_addon", "run", "--config", str(config),
                             "--workers", str(PROCESSES)],
                            stdout=subprocess.DEVNULL, stderr=log,
                            env={**os.environ, "TOKENPROXY_STORE_KEY": STORE_KEY},
                            start_new_session=True)
    try:
        parts.wait_listening(port, timeout=30, proc=proc)
        for i in range(PROCESSES):
            parts.wait_listening(metrics + i, timeout=30, proc=proc)
        url = f"http://127.0.0.1:{port}"
        parts.warm_up(url, requests=30)
        yield SetUp([url], [f"http://127.0.0.1:{metrics + i}" for i in range(PROCESSES)])
    finally:
        stop_process(proc, timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@contextlib.contextmanager
def replicas_setup(workdir: Path, upstream: str) -> Iterator[SetUp]:
    """3 ``tokenproxy run`` processes sharing one ``redis-server``."""
    parts.require_tools("redis-server")
    server = start_redis(workdir / "redis")
    proxies = []
    try:
        for _ in range(PROCESSES):
            proxies.append(start_proxy(workdir, upstream,
                                       store={"backend": "redis", "url": server.url},
                                       **_proxy_options()))
        for p in proxies:
            parts.warm_up(p.url, requests=10)
        yield SetUp([p.url for p in proxies], [p.admin_url or "" for p in proxies])
    finally:
        for p in proxies:
            p.stop()
        server.stop()


# ------------------------------------------------------------------------ measuring
_LABEL_RE = re.compile(r'(\w+)="([^"]*)"')


def by_label(series: dict[str, float], label: str) -> Counter[str]:
    """Sum of the series of one metric by the value of ``label``."""
    out: Counter[str] = Counter()
    for labels, value in series.items():
        found = dict(_LABEL_RE.findall(labels))
        out[found.get(label, "")] += value
    return out


METRICS = {  # metric -> the label its figures are split by
    "tokenproxy_replays_total": "outcome",
    "tokenproxy_upstream_token_errors_total": "code",
    "tokenproxy_refreshes_total": "outcome",
}


def read_metrics(admin_urls: list[str]) -> dict[str, Counter[str]]:
    totals: dict[str, Counter[str]] = {m: Counter() for m in METRICS}
    for url in admin_urls:
        for metric, label in METRICS.items():
            totals[metric].update(by_label(parts.metric_series(url, metric), label))
    return totals


def measure(setup: SetUp, emulator: Emulator, workdir: Path, rotations: int,
            deadline_s: float, clients: int) -> Outcome:
    before = read_metrics(setup.admin_urls)
    emulator.reset_counters()
    started = time.monotonic()
    load = parts.start_load(workdir, setup.targets, [APP_KEY], clients, INTERVAL, deadline_s)
    try:
        while time.monotonic() - started < deadline_s:
            time.sleep(POLL)
            counters = emulator.counters()
            made = counters["refreshes"] + counters["logins"]
            if made >= rotations or load.proc.poll() is not None:
                break
            print(f"drain: {time.monotonic() - started:5.0f} s, {made} rotations, "
                  f"token 401s {sum(counters['api_401_by_code'].values())}", flush=True)
    finally:
        result = load.finish()
    seconds = time.monotonic() - started
    counters = emulator.counters()
    after = read_metrics(setup.admin_urls)
    metrics = {m: Counter({k: after[m][k] - before[m].get(k, 0) for k in after[m]})
               for m in METRICS}
    return Outcome(seconds, result, counters, metrics)


# ------------------------------------------------------------------------ rendering
def token_401s(counters: dict) -> int:
    return sum(v for k, v in counters["api_401_by_code"].items() if k in TOKEN_401_CODES)


def _401s(o: Outcome, *codes: str) -> int:
    return sum(o.counters["api_401_by_code"].get(c, 0) for c in codes)


def _codes(values: dict[str, float]) -> str:
    shown = [f"{k}: {v:,.0f}" for k, v in sorted(values.items()) if v]
    return ", ".join(shown) or "none"


def render(outcomes: dict[str, Outcome], rotations: int, clients: int) -> str:
    names = list(outcomes)

    def row(label: str, fn) -> tuple:  # type: ignore[no-untyped-def]
        return (label, *(fn(outcomes[n]) for n in names))

    def failures(o: Outcome) -> int:
        return sum(failures_by_kind(o.load["outcomes"]).values())

    rows = [
        row("run length s", lambda o: f"{o.seconds:.0f}"),
        row("rotations (new token pairs: refreshes + logins)",
            lambda o: f"{o.counters['refreshes'] + o.counters['logins']} "
                      f"({o.counters['refreshes']} + {o.counters['logins']})"),
        row("token-endpoint calls", lambda o: o.counters["token_calls"]),
        row("requests (clients)", lambda o: f"{o.load['requests']:,}"),
        row("client-visible failures", lambda o: f"{failures(o):,}"),
        row("**token 401s the platform answered**", lambda o: f"**{token_401s(o.counters):,}**"),
        row("… OAU-129: a token another process had rotated",
            lambda o: f"{_401s(o, 'OAU-129'):,}"),
        row("… OAU-210/128: expired on the way (later than the refresh-ahead margin)",
            lambda o: f"{_401s(o, 'OAU-210', 'OAU-128'):,}"),
        row("… OAU-213: a token not found", lambda o: f"{_401s(o, 'OAU-213'):,}"),
        row("transparent replays (success / failed)",
            lambda o: f"{o.metrics['tokenproxy_replays_total']['success']:,.0f} / "
                      f"{o.metrics['tokenproxy_replays_total']['failed']:,.0f}"),
        row("max live sessions (user, client id)",
            lambda o: o.counters["max_live_sessions"].get(PAIR, 0)),
        row("latency p50 / p99 ms", lambda o: f"{stats.fmt_ms(o.load['p50_ms'])} / "
                                              f"{stats.fmt_ms(o.load['p99_ms'])}"),
    ]
    lines = [
        f"{clients} keep-alive clients (`bench/load.py`, one process, raw HTTP/1.1) each send "
        f"`GET /restapi/v1.0/account/~/extension/~` every {INTERVAL:g} s "
        f"(≈{clients / INTERVAL:,.0f} requests/s in all), spread evenly over {PROCESSES} "
        f"proxy processes, until the platform emulator has issued {rotations} new token pairs. "
        f"Each set-up has its own emulator as the upstream: access tokens live {ACCESS_TTL} s "
        "(`--access-ttl`; the proxies' refresh-ahead renews them shortly before expiry), its "
        f"token endpoint answers {TOKEN_DELAY:g} s after it rotated the pair (`--token-delay`; "
        "the old access token is dead from the rotation on; the platform's ≈0.3 s would not "
        f"fit in the {ACCESS_TTL * 0.04:g} s refresh-ahead margin of these short tokens once "
        "queueing adds to it), no token-endpoint rate limit.",
        "",
        f"- **{LABELS[WORKERS]}**: `tokenproxy run --workers {PROCESSES}` (one port, "
        "SO_REUSEPORT), one SQLite store.",
        f"- **{LABELS[REPLICAS]}**: {PROCESSES} `tokenproxy run` processes on their own ports, "
        "one `redis-server` store; the clients are spread round-robin over them.",
        "",
        table(("", *(LABELS[n] for n in names)), rows),
        "",
        "- How close the processes' refresh-ahead instants fall decides how long the others "
        "keep sending a rotated token: each process renews 4 % of the token's lifetime before "
        "expiry (at most `refresh_ahead`, 60 s), stretched by its own jitter of up to 20 %: "
        f"with these {ACCESS_TTL} s tokens the three fall within "
        f"≈{ACCESS_TTL * 0.04 * 0.2 * 1000:.0f} ms of each other, with the platform's 1-hour "
        "tokens within up to 12 s. The OAU-129s per rotation here are therefore a lower bound "
        "of what the same traffic meets in production. An OAU-210 here means a request spent "
        f"longer between the proxy and the platform than the {ACCESS_TTL * 0.04 * 1000:.0f} ms "
        "refresh-ahead margin of these short tokens (CPU contention); with 1-hour tokens the "
        "margin is 60 s.",
        "- Load generator, emulator, proxies (and Redis) share this machine's 2 cores with "
        "other work: the latencies show that contention (the clients fall behind their "
        f"{clients / INTERVAL:,.0f} requests/s when the proxies are saturated), not the "
        "proxy's cost per request (scenario `throughput`).",
        "",
    ]
    for n in names:
        o = outcomes[n]
        lines.append(
            f"- {LABELS[n]}: failures by kind: {_codes(failures_by_kind(o.load['outcomes']))}; "
            f"platform 401s by code: {_codes(o.counters['api_401_by_code'])}; the proxies' "
            "`upstream_token_errors_total` by code: "
            f"{_codes(dict(o.metrics['tokenproxy_upstream_token_errors_total']))}; renewals by "
            f"outcome: {_codes(dict(o.metrics['tokenproxy_refreshes_total']))}.")
    lines.append("")
    for n in names:
        o = outcomes[n]
        made = o.counters["refreshes"] + o.counters["logins"]
        got = token_401s(o.counters)
        ok = got == 0 and made >= 15
        note = "" if ok else (
            " If this commit predates the cluster-wide drain (issue 15, defect 2), this is the "
            "\"before\" figure: to be re-run after the drain lands.")
        lines.append(f"- Target (issue 15): 0 platform token 401s over ≥ 15 rotations, "
                     f"{LABELS[n]}: {got:,} over {made} rotations — {stats.verdict(ok)}.{note}")
    return "\n".join(lines)


def run(options: RunOptions) -> str:
    rotations = QUICK_ROTATIONS if options.quick else ROTATIONS
    deadline_s = options.duration or (ACCESS_TTL * (rotations + 4) + 60)
    outcomes: dict[str, Outcome] = {}
    for name, setup_fn in ((WORKERS, workers_setup), (REPLICAS, replicas_setup)):
        workdir = options.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            emulator = stack.enter_context(start_emulator(
                "--auth-rate", "0", "--access-ttl", str(ACCESS_TTL),
                "--refresh-ttl", str(REFRESH_TTL), "--token-delay", str(TOKEN_DELAY)))
            setup = stack.enter_context(setup_fn(workdir, emulator.url))
            print(f"drain: {LABELS[name]}: {CLIENTS} clients until {rotations} rotations "
                  f"(at most {deadline_s:.0f} s)", flush=True)
            outcomes[name] = measure(setup, emulator, workdir, rotations, deadline_s, CLIENTS)
            o = outcomes[name]
            print(f"drain: {LABELS[name]}: {o.load['requests']} requests, "
                  f"failures {failures_by_kind(o.load['outcomes'])}, token 401s "
                  f"{token_401s(o.counters)}, replays "
                  f"{dict(o.metrics['tokenproxy_replays_total'])}", flush=True)
            if options.logs is not None:
                for log in workdir.glob("*.log"):
                    (options.logs / f"drain-{name}-{log.name}").write_bytes(log.read_bytes())
    return render(outcomes, rotations, CLIENTS)


SCENARIO = Scenario(
    name="drain",
    title="Cluster-wide drain: steady traffic over token rotations, 3 workers and 3 replicas",
    summary="300 clients through --workers 3 (SQLite) and 3 replicas (Redis) over ≥15 "
            "rotations: platform token 401s",
    run=run,
)
