"""Scenario ``replicas``: ``tokenproxy run`` with 1 worker vs ``--workers 2`` on this machine,
and where a request's CPU goes (py-spy profile of one worker under load).

Both set-ups run side by side in front of the same nginx upstream, measured with ``wrk``
beside them in A/B-alternated rounds. The profile samples one single-worker tokenproxy under
``wrk`` load; a sample counts for the addon when one of its frames belongs to the
``proxy_addon`` package (inclusive: what the addon's hooks call counts too), excluding the
start-up frames every stack has (``__main__``, ``cli``, ``runner``).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench import parts, stats
from bench.report import table
from bench.scenario import RunOptions, Scenario
from tests.support.emulator import start_emulator

CONNECTIONS = (16, 64)
ROUNDS = 3
DEFAULT_DURATION = 5.0
QUICK_DURATION = 2.0
PROFILE_SECONDS = 10.0
PROFILE_RATE = 250  # samples/s
TARGET_SCALING = 1.3  # 2 workers / 1 worker, at least
TARGET_ADDON_SHARE = 0.10  # the addon's share of per-request CPU, at most
START_FRAMES = ("proxy_addon/__main__.py", "proxy_addon/cli/main.py", "proxy_addon/cli/run.py")
ONE, TWO = "1 worker", "2 workers"


@dataclass
class Profile:
    samples: int
    addon_samples: int
    addon_functions: Counter[str]
    mitmproxy_samples: int
    requests: int
    cpu_seconds: float

    @property
    def addon_share(self) -> float:
        return self.addon_samples / self.samples if self.samples else float("nan")


def classify(raw: str) -> tuple[int, int, int, Counter[str]]:
    """(all samples, addon samples, samples in mitmproxy outside the addon, addon samples by
    the outermost addon function) of py-spy's ``--format raw`` output."""
    total = addon = mitm = 0
    functions: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if not any(s in f for s in START_FRAMES)]
        ours = next((f for f in frames if "proxy_addon/" in f), None)
        if ours is not None:
            addon += count
            name, _, where = ours.partition(" (")
            functions[f"{name} ({where.split(':')[0]})"] += count
        elif any("mitmproxy/" in f for f in frames):
            mitm += count
    return total, addon, mitm, functions


def profile(target: parts.Target, workdir: Path) -> Profile:
    pid = target.pids[0]
    out = workdir / "profile.txt"
    spy = str(parts.BIN / "py-spy")
    # blocking sampling (py-spy pauses the process for each sample): whole, consistent stacks
    command = [spy, "record", "--format", "raw", "-r", str(PROFILE_RATE),
               "-d", str(round(PROFILE_SECONDS)), "-o", str(out), "-p", str(pid)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(0.5)  # py-spy attached
    cpu_before = parts.cpu_seconds(pid)
    result = parts.wrk(target.url, 16, PROFILE_SECONDS - 1)
    cpu = parts.cpu_seconds(pid) - cpu_before
    _, err = proc.communicate(timeout=PROFILE_SECONDS + 30)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({proc.returncode}): {err.strip()[-500:]}")
    total, addon, mitm, functions = classify(out.read_text())
    print(f"replicas: profile {total} samples, addon {addon} ({addon / max(total, 1):.1%}), "
          f"{result.requests} requests, {cpu:.2f} CPU s", flush=True)
    return Profile(total, addon, functions, mitm, result.requests, cpu)


def render(runs: dict[tuple[str, int], list[parts.WrkResult]], prof: Profile,
           duration: float) -> str:
    rows = []
    verdicts = []
    for connections in CONNECTIONS:
        one = [r.rps for r in runs[(ONE, connections)]]
        two = [r.rps for r in runs[(TWO, connections)]]
        scale = stats.ratio(stats.median(two), stats.median(one))
        verdicts.append((connections, scale))
        rows.append((f"{connections} conn", stats.spread(one), stats.spread(two),
                     stats.fmt_ms(stats.median([r.p99_ms for r in runs[(ONE, connections)]])),
                     stats.fmt_ms(stats.median([r.p99_ms for r in runs[(TWO, connections)]])),
                     stats.fmt_ratio(scale)))
    per_request_us = prof.cpu_seconds / prof.requests * 1e6 if prof.requests else float("nan")
    addon_us = per_request_us * prof.addon_share
    top = "; ".join(f"{name}: {count / prof.samples:.1%}"
                    for name, count in prof.addon_functions.most_common(6))
    lines = [
        f"`tokenproxy run` (1 process) and `tokenproxy run --workers 2` (a supervisor and two "
        "worker processes sharing the listen port with SO_REUSEPORT and one SQLite store) run "
        f"side by side in front of the nginx upstream. {ROUNDS} rounds of `wrk -t1 "
        f"-c<connections> -d{duration:g}s` per set-up and connection count, the order "
        "alternating; wrk and nginx run on the same 2 cores.",
        "",
        table(("connections", "1 worker req/s", "2 workers req/s", "1 worker p99 ms",
               "2 workers p99 ms", "2 / 1"), rows),
        "",
    ]
    lines += [f"- 2 workers ≥ {TARGET_SCALING}x one worker at {c} connections: "
              f"{stats.fmt_ratio(s)} — {stats.verdict(s >= TARGET_SCALING)}."
              for c, s in verdicts]
    lines += [
        "",
        f"**Where a request's CPU goes** (py-spy {PROFILE_RATE} samples/s for "
        f"{PROFILE_SECONDS:g} s on one tokenproxy process under `wrk -c16`, "
        f"{prof.requests:,} requests, {prof.samples:,} samples):",
        "",
        f"- CPU per request, whole process: {per_request_us:.0f} µs "
        f"({prof.cpu_seconds:.2f} CPU s / {prof.requests:,} requests).",
        f"- The addon (`proxy_addon` frames, inclusive): {prof.addon_share:.1%} of the samples "
        f"≈ {addon_us:.0f} µs per request — target ≤ {TARGET_ADDON_SHARE:.0%}: "
        f"{stats.verdict(prof.addon_share <= TARGET_ADDON_SHARE)}. By hook: {top}.",
        f"- mitmproxy itself (outside the addon's frames): "
        f"{prof.mitmproxy_samples / prof.samples:.1%}; the rest is asyncio, the socket "
        "calls and the interpreter.",
        "- With a fresh token the addon's request path does no store I/O, takes no lock and "
        "copies no body: it looks the client key up by digest, leases the in-memory token and "
        "sets one header; answers stream through when larger than `stream_threshold`, JSON "
        "answers under it are scanned once for links to rewrite.",
    ]
    return "\n".join(lines)


def run(options: RunOptions) -> str:
    parts.require_tools("nginx", "wrk")
    if not (parts.BIN / "py-spy").exists():
        raise parts.MissingTool("py-spy is not in the venv: run `make bench`")
    duration = options.duration or (QUICK_DURATION if options.quick else DEFAULT_DURATION)
    runs: dict[tuple[str, int], list[parts.WrkResult]] = {}
    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(start_emulator("--auth-rate", "0"))
        upstream = stack.enter_context(parts.nginx_upstream(emulator.url))
        targets = {
            ONE: stack.enter_context(parts.tokenproxy_workers(options.workdir, upstream.url, 1)),
            TWO: stack.enter_context(parts.tokenproxy_workers(options.workdir, upstream.url, 2)),
        }
        for target in targets.values():
            parts.wrk(target.url, 64, 1)  # warm-up, not measured
        order = [ONE, TWO]
        for round_no in range(ROUNDS):
            for connections in CONNECTIONS:
                for label in order if round_no % 2 == 0 else order[::-1]:
                    result = parts.wrk(targets[label].url, connections, duration)
                    runs.setdefault((label, connections), []).append(result)
                    print(f"replicas: round {round_no + 1}/{ROUNDS} {label:9} c={connections:<3}"
                          f" {result.rps:8.0f} req/s p99 {result.p99_ms:7.2f} ms "
                          f"errors {result.errors}", flush=True)
        prof = profile(targets[ONE], options.workdir)
    return render(runs, prof, duration)


SCENARIO = Scenario(
    name="replicas",
    title="Replicas: 1 vs 2 workers, and the addon's share of a request's CPU",
    summary="tokenproxy --workers 1 vs 2 (A/B rounds) and a py-spy profile of the addon",
    run=run,
)
