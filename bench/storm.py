"""Scenario ``storm``: 1,000 concurrent requests at the moment the platform expires the token.

The emulator is the upstream (it enforces token expiry) with a token endpoint that takes
``TOKEN_DELAY`` seconds to answer, like the platform's. Each round fires two bursts of 1,000
requests at once (``hey``, one new connection each), A/B-alternated:

- **fresh token**: the proxy's token is valid: what 1,000 simultaneous new connections cost;
- **at expiry**: the emulator expires the token just before the burst: every request that
  carries it gets ``401 OAU-210``; the proxy renews once and replays them all.

What the burst at expiry adds over the fresh-token one is the cost of the renewal, to be set
against the token endpoint's own latency (measured by the proxy:
``tokenproxy_token_endpoint_duration_seconds``).
"""

from __future__ import annotations

import contextlib
import time

from bench import parts, stats
from bench.report import table
from bench.scenario import RunOptions, Scenario
from tests.support.emulator import Emulator, start_emulator

REQUESTS = 1000
ROUNDS = 3
TOKEN_DELAY = 0.3  # s the emulator's token endpoint takes
SETTLE = 1.0  # s between bursts, so one does not spill into the next
FRESH, EXPIRY = "fresh token", "at expiry"


def one_burst(kind: str, emulator: Emulator, target: parts.Target) -> dict[str, float]:
    assert target.admin_url is not None
    emulator.reset_counters()
    duration_sum = parts.metric_total(target.admin_url,
                                      "tokenproxy_token_endpoint_duration_seconds_sum")
    duration_count = parts.metric_total(target.admin_url,
                                        "tokenproxy_token_endpoint_duration_seconds_count")
    replays = parts.metric_total(target.admin_url, "tokenproxy_replays_total")
    if kind == EXPIRY:
        emulator.expire_now()
    result = parts.burst(target.url, REQUESTS)
    time.sleep(SETTLE)
    counters = emulator.counters()
    calls = parts.metric_total(target.admin_url,
                               "tokenproxy_token_endpoint_duration_seconds_count")
    endpoint_seconds = parts.metric_total(
        target.admin_url, "tokenproxy_token_endpoint_duration_seconds_sum") - duration_sum
    figures = {
        "ok": result.statuses.get(200, 0),
        "failed": REQUESTS - result.statuses.get(200, 0),
        "p50": result.p50_ms,
        "p99": result.p99_ms,
        "slowest": result.slowest_ms,
        "token_calls": counters["token_calls"],
        "api_401": sum(counters["api_401_by_code"].values()),
        "replays": parts.metric_total(target.admin_url, "tokenproxy_replays_total") - replays,
        "endpoint_ms": (endpoint_seconds / (calls - duration_count) * 1000
                        if calls > duration_count else float("nan")),
    }
    print(f"storm: {kind:11} 200s {figures['ok']:.0f}/{REQUESTS} p50 {result.p50_ms:.0f} ms "
          f"p99 {result.p99_ms:.0f} ms token calls {figures['token_calls']:.0f} "
          f"401s {figures['api_401']:.0f} replays {figures['replays']:.0f}", flush=True)
    return figures


def render(runs: dict[str, list[dict[str, float]]]) -> str:
    def med(kind: str, key: str) -> float:
        return stats.median([r[key] for r in runs[kind]])

    def per_round(kind: str, key: str) -> str:
        return " / ".join(f"{r[key]:.0f}" for r in runs[kind])

    rows = [
        ("requests answered 200 (per round)", per_round(FRESH, "ok"), per_round(EXPIRY, "ok")),
        ("token-endpoint calls (per round)", per_round(FRESH, "token_calls"),
         per_round(EXPIRY, "token_calls")),
        ("401s the platform sent (per round)", per_round(FRESH, "api_401"),
         per_round(EXPIRY, "api_401")),
        ("transparent replays (per round)", per_round(FRESH, "replays"),
         per_round(EXPIRY, "replays")),
        ("latency p50 ms (median)", stats.fmt_ms(med(FRESH, "p50")),
         stats.fmt_ms(med(EXPIRY, "p50"))),
        ("latency p99 ms (median)", stats.fmt_ms(med(FRESH, "p99")),
         stats.fmt_ms(med(EXPIRY, "p99"))),
        ("slowest ms (median)", stats.fmt_ms(med(FRESH, "slowest")),
         stats.fmt_ms(med(EXPIRY, "slowest"))),
    ]
    endpoint = stats.median([r["endpoint_ms"] for r in runs[EXPIRY]
                             if r["endpoint_ms"] == r["endpoint_ms"]] or [float("nan")])
    added_p50 = med(EXPIRY, "p50") - med(FRESH, "p50")
    added_p99 = med(EXPIRY, "p99") - med(FRESH, "p99")
    calls = [r["token_calls"] for r in runs[EXPIRY]]
    failed = sum(r["failed"] for kind in runs for r in runs[kind])
    lines = [
        f"{ROUNDS} rounds; each fires a burst of {REQUESTS:,} requests at once (`hey -n {REQUESTS} "
        f"-c {REQUESTS}`, one new connection per request) with a fresh token and one right "
        "after the emulator expired the token (`/_emulator/expire-now`), in alternating order. "
        f"The emulator is the upstream; its token endpoint takes {TOKEN_DELAY:g} s to answer "
        "(`--token-delay`).",
        "",
        table(("", f"burst, {FRESH}", f"burst, {EXPIRY}"), rows),
        "",
        f"- Token-endpoint latency seen by the proxy during the storms (median): "
        f"{stats.fmt_ms(endpoint)} ms.",
        f"- Added by the expiry (medians, at expiry - fresh token): p50 "
        f"{stats.fmt_ms(added_p50)} ms, p99 {stats.fmt_ms(added_p99)} ms — "
        f"{stats.fmt_ratio(stats.ratio(added_p50, endpoint))} and "
        f"{stats.fmt_ratio(stats.ratio(added_p99, endpoint))} the token endpoint's own latency. "
        "The rest of the added time is the second trip: every request that carried the dead "
        "token is answered 401 by the platform and replayed.",
        f"- One renewal per storm: token calls per storm {', '.join(f'{c:.0f}' for c in calls)}; "
        f"requests that failed over all bursts: {failed:.0f}.",
        "- Most of the fresh-token burst's latency is accepting 1,000 new connections at once "
        "on one proxy process; with keep-alive connections (scenario `throughput`) a request "
        "costs under a millisecond.",
    ]
    return "\n".join(lines)


def run(options: RunOptions) -> str:
    parts.require_tools("hey")
    runs: dict[str, list[dict[str, float]]] = {FRESH: [], EXPIRY: []}
    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(start_emulator(
            "--auth-rate", "0", "--token-delay", str(TOKEN_DELAY)))
        target = stack.enter_context(parts.tokenproxy(options.workdir, emulator.url,
                                                      token_wait_timeout=30))
        parts.burst(target.url, 100)  # warm-up, not measured
        for round_no in range(ROUNDS):
            order = (FRESH, EXPIRY) if round_no % 2 == 0 else (EXPIRY, FRESH)
            for kind in order:
                runs[kind].append(one_burst(kind, emulator, target))
    return render(runs)


SCENARIO = Scenario(
    name="storm",
    title="Refresh storm: 1,000 concurrent requests at the moment of expiry",
    summary="1,000 requests at once, fresh token vs right after the platform expired it",
    run=run,
)
