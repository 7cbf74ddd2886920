"""Scenario ``throughput``: requests/s and latency at 1, 16 and 64 connections, direct to the
upstream vs bare ``mitmdump`` vs tokenproxy.

The upstream is nginx with a static extension answer (the token endpoint routed to the emulator,
see :mod:`bench.parts`), so the proxy is the bottleneck. The three targets run side by side
for the whole scenario; each measurement is one ``wrk`` run against one of them while the
others idle, and the order of the targets rotates from round to round (A/B alternation), so
drift of the machine spreads over all of them. Figures are medians of the rounds.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from bench import parts, stats
from bench.report import table
from bench.scenario import RunOptions, Scenario
from tests.support.emulator import start_emulator

CONNECTIONS = (1, 16, 64)
ROUNDS = 3
DEFAULT_DURATION = 4.0
QUICK_DURATION = 2.0
TARGET_RPS_RATIO = 1.6  # tokenproxy / bare mitmdump at 16 connections, at least
TARGET_P50_RATIO = 0.7  # tokenproxy / bare mitmdump p50 at 1 connection, at most
LABELS = ("direct (nginx)", "bare mitmdump", "tokenproxy")


@dataclass
class Runs:
    """Every round's figures for one (target, connections)."""

    rps: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    errors: int = 0

    def add(self, result: parts.WrkResult) -> None:
        self.rps.append(result.rps)
        self.p50.append(result.p50_ms)
        self.p99.append(result.p99_ms)
        self.errors += result.errors


def measure(targets: dict[str, parts.Target], duration: float,
            rounds: int = ROUNDS) -> dict[tuple[str, int], Runs]:
    """``rounds`` rounds; in each, every connection count against every target, the target
    order rotated by one each round."""
    runs: dict[tuple[str, int], Runs] = {}
    order = list(targets)
    for round_no in range(rounds):
        rotated = order[round_no % len(order):] + order[:round_no % len(order)]
        for connections in CONNECTIONS:
            for label in rotated:
                result = parts.wrk(targets[label].url, connections, duration)
                runs.setdefault((label, connections), Runs()).add(result)
                print(f"throughput: round {round_no + 1}/{rounds} {label:15} c={connections:<3} "
                      f"{result.rps:8.0f} req/s p50 {result.p50_ms:7.2f} ms "
                      f"p99 {result.p99_ms:7.2f} ms errors {result.errors}", flush=True)
    return runs


def render(runs: dict[tuple[str, int], Runs], duration: float, rounds: int) -> str:
    direct, bare, proxy = LABELS
    lines = [
        f"Each cell: median of {rounds} `wrk -t1 -c<connections> -d{duration:g}s --latency` runs "
        "(min-max of the runs in brackets), the targets A/B-alternated: every round measures "
        "each connection count against each target, the order of the targets rotating by one "
        "from round to round. Request: `GET /restapi/v1.0/account/~/extension/~` with the "
        "client key as Bearer. Upstream: nginx (1 worker) serving the platform's extension "
        "answer as a static file (its `uri` links included, which tokenproxy rewrites to "
        "itself), the token endpoint routed to the emulator; all on loopback.",
        "",
        f"- **{direct}**: wrk → nginx.",
        f"- **{bare}**: wrk → `mitmdump --mode reverse:<nginx> --listen-host 127.0.0.1 "
        "--listen-port <port>` (all default addons) → nginx.",
        f"- **{proxy}**: wrk → `tokenproxy run` (its lean master and the full addon: client key "
        "check, credential swap, header scrubbing, metrics, link rewriting) → nginx; SQLite "
        "store; the token acquired before the first run.",
        "",
    ]
    rows = []
    for connections in CONNECTIONS:
        for label in LABELS:
            r = runs[(label, connections)]
            rows.append((f"{label}, {connections} conn", stats.spread(r.rps),
                         stats.fmt_ms(stats.median(r.p50)), stats.fmt_ms(stats.median(r.p99)),
                         r.errors))
    lines.append(table(("target", "requests/s", "p50 ms", "p99 ms", "failed"), rows))
    lines.append("")
    ratio_rows = []
    for connections in CONNECTIONS:
        b, t = runs[(bare, connections)], runs[(proxy, connections)]
        ratio_rows.append((
            f"{connections} conn",
            stats.fmt_ratio(stats.ratio(stats.median(t.rps), stats.median(b.rps))),
            stats.fmt_ratio(stats.ratio(stats.median(t.p50), stats.median(b.p50))),
            stats.fmt_ratio(stats.ratio(stats.median(t.p99), stats.median(b.p99))),
        ))
    lines.append("Ratios tokenproxy / bare mitmdump (of the medians):")
    lines.append("")
    lines.append(table(("connections", "requests/s", "p50", "p99"), ratio_rows))
    rps_ratio = stats.ratio(stats.median(runs[(proxy, 16)].rps),
                            stats.median(runs[(bare, 16)].rps))
    p50_ratio = stats.ratio(stats.median(runs[(proxy, 1)].p50),
                            stats.median(runs[(bare, 1)].p50))
    lines += [
        "",
        "Targets (issue 7):",
        "",
        f"- requests/s at 16 connections ≥ {TARGET_RPS_RATIO}x bare mitmdump: "
        f"{stats.fmt_ratio(rps_ratio)} — {stats.verdict(rps_ratio >= TARGET_RPS_RATIO)}.",
        f"- p50 at 1 connection ≤ {TARGET_P50_RATIO}x bare mitmdump's: "
        f"{stats.fmt_ratio(p50_ratio)} — {stats.verdict(p50_ratio <= TARGET_P50_RATIO)}.",
    ]
    errors = sum(r.errors for r in runs.values())
    lines.append(f"- Failed requests (socket errors and non-2xx) over all runs: {errors}.")
    return "\n".join(lines)


def run(options: RunOptions) -> str:
    parts.require_tools(*parts.REQUIRED_COMMANDS)
    duration = options.duration or (QUICK_DURATION if options.quick else DEFAULT_DURATION)
    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(start_emulator("--auth-rate", "0"))
        upstream = stack.enter_context(parts.nginx_upstream(emulator.url))
        targets = {
            LABELS[0]: parts.Target(LABELS[0], upstream.url, (upstream.proc.pid,)),
            LABELS[1]: stack.enter_context(parts.bare_mitmdump(upstream.url)),
            LABELS[2]: stack.enter_context(parts.tokenproxy(options.workdir, upstream.url)),
        }
        for target in targets.values():  # connections open, caches warm: not measured
            parts.wrk(target.url, 16, 1)
        runs = measure(targets, duration)
    return render(runs, duration, ROUNDS)


SCENARIO = Scenario(
    name="throughput",
    title="Throughput and latency: direct vs bare mitmdump vs tokenproxy",
    summary="wrk at 1/16/64 connections: nginx direct, bare mitmdump, tokenproxy (A/B rounds)",
    run=run,
)
