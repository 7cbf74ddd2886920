"""Scenario ``transport`` (issue 16): how each proxy reaches an HTTPS upstream — upstream TLS
connections per 1,000 requests, throughput and latency for keep-alive and new-connection
clients, the same at 40 ms round trip to the upstream, ``--workers 2`` against one worker,
and a token renewal during a saturating load.

Upstream: nginx with TLS on loopback (a throwaway CA made with openssl), the token endpoint
routed to the emulator, ``stub_status`` counting its connections. Targets, all in one run:
direct nginx; nginx as a header-injecting reverse proxy with an upstream keep-alive pool (the
anchor users would pick); bare ``mitmdump --mode reverse:https://…``; tokenproxy; tokenproxy
``--workers 2``. Each round runs every load against every target back to back, in an order
that alternates between rounds; figures are medians of the rounds, ratios the median of each
round's paired ratio. tokenproxy is measured as a black box (its process, its metrics, its
log), so the scenario runs unchanged on whichever ``proxy_addon`` the tree holds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import parts, stats
from bench import transport_parts as tp
from bench.report import table
from bench.scenario import RunOptions, Scenario
from tests.support.emulator import start_emulator

RTT = 0.040  # seconds between proxy and upstream in the WAN phase
LOADS = (("keep-alive", 1), ("keep-alive", 16), ("keep-alive", 64), ("new", 16))
WAN_LOADS = (("keep-alive", 16), ("new", 16))
H2 = "tokenproxy, upstream_http2"
DIRECT, ANCHOR, BARE, PROXY, WORKERS = ("direct (nginx)", "nginx proxy (keep-alive pool)",
                                        "bare mitmdump", "tokenproxy", "tokenproxy --workers 2")
ROUNDS, WAN_ROUNDS = 3, 2
DEFAULT_DURATION, QUICK_DURATION = 3.0, 2.0
# the renewal phase: tokens of ACCESS_TTL s renewed RENEW_SHARE of their life ahead, the
# token endpoint answering after TOKEN_DELAY s (a platform is not a loopback emulator)
ACCESS_TTL, RENEW_SHARE, TOKEN_DELAY = 10.0, 0.3, 0.1
RENEWAL_WINDOW, QUICK_RENEWAL_WINDOW = 16.0, 9.0
DIRECT_TOKEN_CALLS = 10

# the targets of issue 16
MAX_CONNS_PER_1000 = 10.0
MIN_NEW_VS_KEEPALIVE = 0.7
MAX_WAN_P50_VS_NGINX = 1.2
MIN_RPS_VS_BARE = 2.0
MAX_P50_VS_BARE = 0.5
MIN_WORKERS_GAIN = 1.6
MAX_RENEWAL_VS_ENDPOINT = 2.0

Key = tuple[str, str, int]  # target, load kind, connections


def load_name(kind: str, connections: int) -> str:
    return (f"keep-alive, {connections} conn" if kind == "keep-alive"
            else f"new connection per request, {connections} concurrent")


def measure(upstream: tp.Upstream, targets: dict[str, parts.Target],
            loads: tuple[tuple[str, int], ...], duration: float, rounds: int,
            phase: str) -> dict[Key, list[tp.Sample]]:
    """``rounds`` rounds; each runs every load against every target, the targets' order
    reversed every other round."""
    runs: dict[Key, list[tp.Sample]] = {}
    labels = list(targets)
    for round_no in range(rounds):
        order = labels if round_no % 2 == 0 else labels[::-1]
        for kind, connections in loads:
            for label in order:
                sample = tp.run_load(upstream, targets[label].url, kind, connections, duration)
                runs.setdefault((label, kind, connections), []).append(sample)
                print(f"transport {phase}: round {round_no + 1}/{rounds} {label:30} "
                      f"{kind:10} c={connections:<3} {sample.rps:8.0f} req/s "
                      f"p50 {sample.p50_ms:7.2f} ms p99 {sample.p99_ms:7.2f} ms "
                      f"upstream conns/1000 {sample.per_thousand:6.1f} "
                      f"errors {sample.errors}", flush=True)
    return runs


def paired(runs: dict[Key, list[tp.Sample]], ours: Key, theirs: Key,
           field: Callable[[tp.Sample], float]) -> float:
    """Median of each round's ratio ours / theirs."""
    return stats.median([stats.ratio(field(a), field(b))
                         for a, b in zip(runs[ours], runs[theirs], strict=True)])


def rows_of(runs: dict[Key, list[tp.Sample]], labels: list[str],
            loads: tuple[tuple[str, int], ...]) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for kind, connections in loads:
        for label in labels:
            samples = runs.get((label, kind, connections))
            if not samples:
                continue
            rows.append((f"{label} — {load_name(kind, connections)}",
                         stats.spread([s.rps for s in samples]),
                         stats.fmt_ms(stats.median([s.p50_ms for s in samples])),
                         stats.fmt_ms(stats.median([s.p99_ms for s in samples])),
                         f"{stats.median([s.per_thousand for s in samples]):.1f}",
                         sum(s.errors for s in samples)))
    return rows


# ------------------------------------------------------------------------------ renewal
@dataclass
class Window:
    """What tokenproxy's metrics and log say about the renewals within one time window."""

    renewals: float  # tokenproxy_refreshes{outcome=refreshed} delta
    token_calls: float  # token-endpoint calls timed (histogram count delta)
    token_call_s: float  # their mean duration (histogram sum / count delta)
    waits: float  # requests that waited for a renewal
    wait_s: float  # their mean wait
    spans: list[float]  # "state healthy -> refreshing" to "refreshing -> healthy", seconds
    wrk: parts.WrkResult | None = None


_METRICS = {
    "renewals": "tokenproxy_refreshes_total",
    "call_sum": "tokenproxy_token_endpoint_duration_seconds_sum",
    "call_count": "tokenproxy_token_endpoint_duration_seconds_count",
    "wait_sum": "tokenproxy_token_wait_seconds_sum",
    "wait_count": "tokenproxy_token_wait_seconds_count",
}
_STATE_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*account main: "
                       r"state (\w+) -> (\w+)")


def _snapshot(admin_url: str) -> dict[str, float]:
    values = {key: parts.metric_total(admin_url, name) for key, name in _METRICS.items()}
    refreshed = parts.metric_series(admin_url, "tokenproxy_refreshes_total")
    values["renewals"] = sum(v for labels, v in refreshed.items()
                             if 'outcome="refreshed"' in labels)
    return values


def _spans(log: Path, start: float, end: float) -> list[float]:
    """Renewal spans (refreshing state) that began within [start, end] (Unix time)."""
    spans, began = [], None
    for line in log.read_text(errors="replace").splitlines():
        match = _STATE_RE.match(line)
        if match is None:
            continue
        at = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if match.group(3) == "refreshing":
            began = at
        elif match.group(2) == "refreshing" and began is not None:
            if start <= began <= end:
                spans.append(at - began)
            began = None
    return spans


def renewal_window(proxy_admin: str, log: Path, seconds: float,
                   load: Callable[[], parts.WrkResult] | None) -> Window:
    before, started = _snapshot(proxy_admin), time.time()
    result = None
    if load is None:
        time.sleep(seconds)
    else:
        result = load()
    time.sleep(0.5)  # the log line of a renewal that just ended
    after, ended = _snapshot(proxy_admin), time.time()
    d = {k: after[k] - before[k] for k in after}
    return Window(renewals=d["renewals"], token_calls=d["call_count"],
                  token_call_s=stats.ratio(d["call_sum"], d["call_count"]),
                  waits=d["wait_count"], wait_s=stats.ratio(d["wait_sum"], d["wait_count"]),
                  spans=_spans(log, started, ended), wrk=result)


@dataclass
class Renewal:
    endpoint_s: list[float]  # direct refresh grants to the upstream's token endpoint
    idle: Window
    loaded: Window


def measure_renewal(keys: tp.Pki, workdir: Path, emulator_url: str, upstream: tp.Upstream,
                    window: float) -> Renewal:
    httpx.post(emulator_url + "/_emulator/policy", timeout=10,
               json={"access_ttl": ACCESS_TTL, "token_delay": TOKEN_DELAY}).raise_for_status()
    endpoint = tp.token_endpoint_latency(upstream, keys, DIRECT_TOKEN_CALLS)
    with tp.tokenproxy(keys, workdir, upstream.url, refresh_ahead_share=RENEW_SHARE) \
            as (target, proxy):
        assert target.admin_url is not None
        parts.wrk(target.url, 64, 1)  # connections open: not measured
        idle = renewal_window(target.admin_url, proxy.log_path, window, None)
        loaded = renewal_window(target.admin_url, proxy.log_path, window,
                                lambda: parts.wrk(target.url, 64, window))
    print(f"transport renewal: endpoint {endpoint}, idle {idle}, under load {loaded}",
          flush=True)
    return Renewal(endpoint, idle, loaded)


# ------------------------------------------------------------------------------ report
def render(lan: dict[Key, list[tp.Sample]], wan: dict[Key, list[tp.Sample]],
           renewal: Renewal, duration: float, rounds: int, wan_rounds: int, netem: bool,
           origins: list[str], workers_error: str) -> str:
    lines = [
        "What each proxy costs on the way to an HTTPS upstream (issue 16). Upstream: nginx "
        "(1 worker, TLS 1.2/1.3, a throwaway P-256 CA made by the bench) serving the "
        "platform's extension answer as a static file, the token endpoint routed to the "
        "emulator; its `stub_status` counts the connections it accepts. Request: "
        "`GET /restapi/v1.0/account/~/extension/~` with the client key as Bearer. Targets, "
        "all in the same run, each verifying the upstream's certificate against the bench CA:",
        "",
        f"- **{DIRECT}**: the client straight to the HTTPS upstream.",
        f"- **{ANCHOR}**: nginx (1 worker) as a reverse proxy that sets `Authorization` and "
        "keeps up to 64 idle TLS connections to the upstream (`keepalive 64`, "
        "`proxy_ssl_session_reuse on`) — what users would pick instead of tokenproxy (it "
        "does not rewrite links).",
        f"- **{BARE}**: `mitmdump --mode reverse:https://… --set "
        "ssl_verify_upstream_trusted_ca=<CA>` (all default addons).",
        f"- **{PROXY}**: `tokenproxy run`, SQLite store, token acquired before the first run. "
        "It trusts the bench CA the way a host trusts a private CA (certifi's bundle plus the "
        "CA, and `SSL_CERT_FILE`); upstream verification stays on.",
        f"- **{WORKERS}**: the same with `--workers 2` (one SQLite file shared by the workers).",
        f"- **{H2}**: one process with `upstream_http2 = true` (the upstream nginx offers `h2` "
        "by ALPN; the other targets speak HTTP/1.1 to it, offering no ALPN).",
        "",
        f"Clients: keep-alive is `wrk -t1 -c<N> -d{duration:g}s --latency`; new connection per "
        f"request is `hey -disable-keepalive -c 16 -z {duration:g}s`. Each cell is the median "
        f"of {rounds} round{'s' if rounds != 1 else ''} (min-max of requests/s in brackets); "
        "every round runs each load against each target back to back, the targets' order "
        "reversed every other round. "
        "Upstream TLS connections per 1,000 requests: connections the upstream nginx accepted "
        "during the run over the requests it served (for the direct target these are the "
        "clients' own connections).",
        "",
        table(("target — clients", "requests/s", "p50 ms", "p99 ms",
               "upstream TLS conns / 1,000 req", "failed"),
              rows_of(lan, [DIRECT, ANCHOR, BARE, PROXY, WORKERS, H2], LOADS)),
        "",
    ]
    how = ("`tc netem` is not available in this kernel (no `sch_netem`), so a delaying TCP "
           "relay (`bench/transport_relay.py`) sits between each proxy and the upstream"
           if not netem else "a delaying TCP relay (`bench/transport_relay.py`) sits between "
           "each proxy and the upstream")
    lines += [
        f"**40 ms round trip to the upstream.** {how}: it delays each connection's first "
        f"bytes by one round trip (the TCP handshake) and every chunk by {RTT * 500:g} ms each "
        f"way, passing TLS through untouched. Clients still reach the proxies on loopback; "
        f"for {DIRECT} the client itself is the one 40 ms away. Medians of {wan_rounds} "
        f"round{'s' if wan_rounds != 1 else ''}:",
        "",
        table(("target — clients", "requests/s", "p50 ms", "p99 ms",
               "upstream TLS conns / 1,000 req", "failed"),
              rows_of(wan, [DIRECT, ANCHOR, BARE, PROXY], WAN_LOADS)),
        "",
    ]
    endpoint_ms = stats.median(renewal.endpoint_s) * 1000

    def window_row(name: str, w: Window) -> tuple[object, ...]:
        spans = (f"{stats.fmt_ms(stats.median(w.spans) * 1000)} ({len(w.spans)})"
                 if w.spans else "none")
        return (name, f"{w.renewals:.0f}", stats.fmt_ms(w.token_call_s * 1000)
                if w.token_calls else "n/a", spans,
                f"{w.waits:.0f}", stats.fmt_ms(w.wait_s * 1000) if w.waits else "n/a",
                f"{w.wrk.rps:,.0f}" if w.wrk else "idle")

    lines += [
        f"**A renewal during a saturating load.** A tokenproxy of its own, its tokens living "
        f"{ACCESS_TTL:g} s (emulator policy) and renewed {RENEW_SHARE:.0%} of their life "
        f"ahead (`refresh_ahead_share`); the emulator's token endpoint answers after "
        f"{TOKEN_DELAY * 1000:g} ms (`token_delay`: a platform's token endpoint is not a "
        "loopback process). The token endpoint's own latency: "
        f"{DIRECT_TOKEN_CALLS} refresh grants straight to the upstream's token endpoint on "
        f"one kept-alive TLS connection, p50 **{stats.fmt_ms(endpoint_ms)} ms**. Then one "
        "window idle and one under `wrk -t1 -c64`, back to back, read from tokenproxy itself: "
        "the token call's time is the exact mean of the window's "
        "`tokenproxy_token_endpoint_duration_seconds` (sum and count deltas, timed by "
        "tokenproxy around the call); the renewal span is the time its log shows the account "
        "`refreshing` (token call and store write, after the in-flight requests on the old "
        "token drained); waits are requests that waited for a renewal "
        "(`tokenproxy_token_wait_seconds`).",
        "",
        table(("window", "renewals", "token call ms (mean)", "renewal span ms (median, n)",
               "requests that waited", "their mean wait ms", "wrk req/s"),
              [window_row("idle", renewal.idle), window_row("wrk -c64", renewal.loaded)]),
        "",
    ]
    lines += targets(lan, wan, renewal, endpoint_ms, workers_error)
    lines += ["", f"tokenproxy code measured: `{', '.join(origins)}` (every tokenproxy process "
              "of the run reported it)."]
    return "\n".join(lines)


def targets(lan: dict[Key, list[tp.Sample]], wan: dict[Key, list[tp.Sample]],
            renewal: Renewal, endpoint_ms: float, workers_error: str) -> list[str]:
    new16, ka16, ka1, ka64 = (PROXY, "new", 16), (PROXY, "keep-alive", 16), \
        (PROXY, "keep-alive", 1), (PROXY, "keep-alive", 64)
    conns = stats.median([s.per_thousand for s in lan[new16]])
    new_vs_ka = paired(lan, new16, ka16, lambda s: s.rps)
    wan_p50 = paired(wan, (PROXY, "new", 16), (ANCHOR, "new", 16), lambda s: s.p50_ms)
    rps_vs_bare = paired(lan, ka16, (BARE, "keep-alive", 16), lambda s: s.rps)
    p50_vs_bare = paired(lan, ka1, (BARE, "keep-alive", 1), lambda s: s.p50_ms)
    loaded = renewal.loaded
    lines = [
        "Targets (issue 16), tokenproxy:",
        "",
        f"- New-connection clients: ≤ {MAX_CONNS_PER_1000:g} upstream TLS connections per "
        f"1,000 requests: {conns:.1f} — {stats.verdict(conns <= MAX_CONNS_PER_1000)}.",
        f"- New-connection throughput ≥ {MIN_NEW_VS_KEEPALIVE}x its keep-alive throughput "
        f"(16 each): {stats.fmt_ratio(new_vs_ka)} — "
        f"{stats.verdict(new_vs_ka >= MIN_NEW_VS_KEEPALIVE)}.",
        f"- 40 ms round trip: new-connection p50 ≤ {MAX_WAN_P50_VS_NGINX}x the nginx proxy's: "
        f"{stats.fmt_ratio(wan_p50)} — {stats.verdict(wan_p50 <= MAX_WAN_P50_VS_NGINX)}.",
        f"- Keep-alive requests/s at 16 connections ≥ {MIN_RPS_VS_BARE:g}x bare mitmdump's: "
        f"{stats.fmt_ratio(rps_vs_bare)} — {stats.verdict(rps_vs_bare >= MIN_RPS_VS_BARE)}.",
        f"- Keep-alive p50 at 1 connection ≤ {MAX_P50_VS_BARE}x bare mitmdump's: "
        f"{stats.fmt_ratio(p50_vs_bare)} — {stats.verdict(p50_vs_bare <= MAX_P50_VS_BARE)}.",
    ]
    if (WORKERS, "keep-alive", 64) in lan:
        gain = paired(lan, (WORKERS, "keep-alive", 64), ka64, lambda s: s.rps)
        lines.append(f"- `--workers 2` ≥ {MIN_WORKERS_GAIN}x one worker on 2 cores (keep-alive, "
                     f"64 connections): {stats.fmt_ratio(gain)} — "
                     f"{stats.verdict(gain >= MIN_WORKERS_GAIN)}.")
    else:
        lines.append(f"- `--workers 2` ≥ {MIN_WORKERS_GAIN}x one worker on 2 cores: **not met, "
                     f"not measurable** — {workers_error}")
    if (H2, "keep-alive", 16) in lan:
        h2_ka = paired(lan, (H2, "keep-alive", 16), ka16, lambda s: s.rps)
        h2_new = paired(lan, (H2, "new", 16), new16, lambda s: s.rps)
        better = h2_ka > 1.0 and h2_new > 1.0
        lines.append(f"- `upstream_http2` on by default only if it measures better: HTTP/2 vs "
                     f"HTTP/1.1 pool requests/s {stats.fmt_ratio(h2_ka)} (keep-alive, 16) and "
                     f"{stats.fmt_ratio(h2_new)} (new connection, 16) — "
                     f"{'better: turn it on' if better else 'not better: it stays off'}.")
    if loaded.spans:
        span_ms = max(loaded.spans) * 1000
        renewal_ratio = span_ms / endpoint_ms
        wait = (f"; the requests that waited for it waited {stats.fmt_ms(loaded.wait_s * 1000)} "
                f"ms on average ({stats.fmt_ratio(loaded.wait_s * 1000 / endpoint_ms)}), the "
                "drain of the requests in flight on the old token included"
                if loaded.waits else "")
        lines.append(
            f"- A renewal under `wrk -c64` completes within {MAX_RENEWAL_VS_ENDPOINT:g}x the "
            f"token endpoint's own latency (the longest renewal span of "
            f"{len(loaded.spans)}): {stats.fmt_ms(span_ms)} ms vs "
            f"{stats.fmt_ms(endpoint_ms)} ms = {stats.fmt_ratio(renewal_ratio)} — "
            f"{stats.verdict(renewal_ratio <= MAX_RENEWAL_VS_ENDPOINT)}{wait}.")
    else:
        lines.append("- A renewal under `wrk -c64`: **no renewal happened in the window** "
                     "(not measured).")
    errors = sum(s.errors for runs in (lan, wan) for samples in runs.values() for s in samples)
    lines.append(f"- Failed requests (socket errors, timeouts, non-2xx) over all runs: {errors}.")
    return lines


# ------------------------------------------------------------------------------ run
def run(options: RunOptions) -> str:
    parts.require_tools("nginx", "wrk", "hey", "openssl")
    duration = options.duration or (QUICK_DURATION if options.quick else DEFAULT_DURATION)
    rounds, wan_rounds = (1, 1) if options.quick else (ROUNDS, WAN_ROUNDS)
    window = QUICK_RENEWAL_WINDOW if options.quick else RENEWAL_WINDOW
    netem = tp.netem_available()
    workers_error = ""
    print(f"transport: bench code proxy_addon at {tp.proxy_addon_origin_here()}; "
          f"netem {'available' if netem else 'unavailable: delaying relay'}", flush=True)
    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(start_emulator("--auth-rate", "0",
                                                      "--session-cap", "1000"))
        keys = stack.enter_context(tp.pki())
        upstream = stack.enter_context(tp.https_upstream(keys, emulator.url))
        with contextlib.ExitStack() as lan_stack:
            lan_targets = {
                DIRECT: parts.Target(DIRECT, upstream.url, (upstream.proc.pid,)),
                ANCHOR: lan_stack.enter_context(tp.nginx_anchor(keys, upstream.port)),
                BARE: lan_stack.enter_context(tp.bare_mitmdump(keys, upstream.url)),
                PROXY: lan_stack.enter_context(tp.tokenproxy(keys, options.workdir,
                                                             upstream.url))[0],
            }
            lan_targets[H2] = lan_stack.enter_context(tp.tokenproxy(
                keys, options.workdir, upstream.url, upstream_http2=True))[0]
            try:
                lan_targets[WORKERS] = lan_stack.enter_context(tp.tokenproxy_workers(
                    keys, options.workdir, upstream.url, 2))
            except tp.WorkersBroken as exc:
                workers_error = str(exc)
                print(f"transport: {workers_error}", flush=True)
            for target in lan_targets.values():  # connections open, caches warm
                parts.wrk(target.url, 16, 1)
            lan = measure(upstream, lan_targets, LOADS, duration, rounds, "LAN")
        with contextlib.ExitStack() as wan_stack:
            relay = wan_stack.enter_context(tp.delay_relay(upstream.port, RTT))
            far = f"https://127.0.0.1:{relay}"
            wan_targets = {
                DIRECT: parts.Target(DIRECT, far, ()),
                ANCHOR: wan_stack.enter_context(tp.nginx_anchor(keys, relay)),
                BARE: wan_stack.enter_context(tp.bare_mitmdump(keys, far)),
                PROXY: wan_stack.enter_context(tp.tokenproxy(keys, options.workdir, far))[0],
            }
            for target in wan_targets.values():
                parts.wrk(target.url, 16, 1)
            wan = measure(upstream, wan_targets, WAN_LOADS, duration, wan_rounds, "WAN")
        renewal = measure_renewal(keys, options.workdir, emulator.url, upstream, window)
        origins = keys.check_origins()
    return render(lan, wan, renewal, duration, rounds, wan_rounds, netem, origins,
                  workers_error)


SCENARIO = Scenario(
    name="transport",
    title="Transport to an HTTPS upstream: connections, new-connection clients, 40 ms RTT, "
          "workers, renewal under load",
    summary="HTTPS upstream: nginx direct / nginx proxy / bare mitmdump / tokenproxy (+2 "
            "workers), keep-alive and new-connection clients, 40 ms RTT, renewal under load",
    run=run,
)
