"""Scenario ``throughput``: requests/s and latency at 1, 16 and 64 connections, direct to the
upstream vs bare ``mitmdump`` vs tokenproxy.

The upstream is nginx with a static extension answer (the token endpoint routed to the emulator,
see :mod:`bench.parts`), so the proxy is the bottleneck. The three targets run side by side
for the whole scenario; each measurement is one ``wrk`` run against one of them while the
others idle. In each round bare mitmdump and tokenproxy run back to back, in alternating order
(A/B, B/A, ...), so a drift of the machine's speed hits both alike. Figures are medians of the
rounds; the ratios are medians of each round's paired ratio.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from bench import parts, stats
from bench.report import table
from bench.scenario import RunOptions, Scenario
from tests.support.emulator import start_emulator

CONNECTIONS = (1, 16, 64)
ROUNDS = 5
DEFAULT_DURATION = 3.0
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
    """``rounds`` rounds; in each, every connection count against every target: direct
    first, then bare mitmdump and tokenproxy back to back, their order alternating."""
    runs: dict[tuple[str, int], Runs] = {}
    direct, bare, proxy = LABELS
    for round_no in range(rounds):
        order = (direct, bare, proxy) if round_no % 2 == 0 else (direct, proxy, bare)
        for connections in CONNECTIONS:
            for label in order:
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
        "(min-max of the runs in brackets). Every round measures each connection count against "
        "each target: direct first, then bare mitmdump and tokenproxy back to back in "
        "alternating order (A/B, B/A, ...). Request: "
        "`GET /restapi/v1.0/account/~/extension/~` with the client key as Bearer. "
        "Upstream: nginx (1 worker) serving the platform's extension "
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
        rps = paired(t.rps, b.rps)
        ratio_rows.append((
            f"{connections} conn",
            f"{stats.fmt_ratio(stats.median(rps))} ({stats.fmt_ratio(min(rps))}-"
            f"{stats.fmt_ratio(max(rps))})",
            stats.fmt_ratio(stats.median(paired(t.p50, b.p50))),
            stats.fmt_ratio(stats.median(paired(t.p99, b.p99))),
        ))
    lines.append("Ratios tokenproxy / bare mitmdump: the median of the rounds' paired ratios "
                 "(each round's tokenproxy run over the bare mitmdump run next to it; "
                 "min-max in brackets):")
    lines.append("")
    lines.append(table(("connections", "requests/s", "p50", "p99"), ratio_rows))
    rps_ratio = stats.median(paired(runs[(proxy, 16)].rps, runs[(bare, 16)].rps))
    p50_ratio = stats.median(paired(runs[(proxy, 1)].p50, runs[(bare, 1)].p50))
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


def paired(ours: list[float], theirs: list[float]) -> list[float]:
    """Each round's ratio ours / theirs (the runs of one round are next to each other)."""
    return [stats.ratio(a, b) for a, b in zip(ours, theirs, strict=True)]


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
