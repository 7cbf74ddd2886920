"""Command line: ``python -m bench [SCENARIO ...] [--quick]``.

No scenario names = all of them, in registry order. The sections of the scenarios that ran are
rewritten in ``docs/benchmarks.md`` (or ``--output``); the others are kept. Exit status 0 when
every chosen scenario ran, 1 when one failed (the others' sections are still written), 2 on a
usage error.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import report
from bench.registry import SCENARIOS, by_name
from bench.scenario import RunOptions


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run tokenproxy benchmarks and update docs/benchmarks.md.",
    )
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"scenarios to run (default: all): {', '.join(by_name())}")
    parser.add_argument("--quick", action="store_true",
                        help="shorter runs (a smoke check; figures are noisier)")
    parser.add_argument("--soak", action="store_true",
                        help="the long variants (e.g. 1M requests in 'memory'): make soak")
    parser.add_argument("--duration", type=float, metavar="S",
                        help="seconds each measured phase lasts (overrides defaults and --quick)")
    parser.add_argument("--output", type=Path, default=report.DEFAULT_OUTPUT, metavar="FILE",
                        help="markdown file to update (default: docs/benchmarks.md)")
    parser.add_argument("--logs", type=Path, metavar="DIR",
                        help="copy the emulator and proxy logs of each run into DIR")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in by_name()]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; "
                     f"choose from {', '.join(by_name())}")
    if args.duration is not None and not 1 <= args.duration <= 3600:
        parser.error("--duration must be between 1 and 3600 seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:12} {s.summary}")
        return 0
    chosen = [s for s in SCENARIOS if not args.scenarios or s.name in args.scenarios]
    command = shlex.join(["python", "-m", "bench", *argv])
    facts = report.machine_facts()
    sections: dict[str, str] = {}
    failed: list[str] = []
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
    for scenario in chosen:
        started = time.monotonic()
        print(f"bench: running {scenario.name} ...", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"bench-{scenario.name}-") as tmp:
            options = RunOptions(quick=args.quick, duration=args.duration, command=command,
                                 workdir=Path(tmp), logs=args.logs, soak=args.soak)
            try:
                body = scenario.run(options)
            except Exception:
                traceback.print_exc()
                print(f"bench: {scenario.name} FAILED; its section is left as it was",
                      file=sys.stderr)
                failed.append(scenario.name)
                continue
        # the long variants keep a section of their own beside the `make bench` one
        name = f"{scenario.name}-soak" if args.soak else scenario.name
        title = f"{scenario.title} (soak)" if args.soak else scenario.title
        sections[name] = report.render_section(name, title, command, facts, body)
        print(f"bench: {scenario.name} done in {time.monotonic() - started:.0f} s", flush=True)
    if sections:
        order = [n for s in SCENARIOS for n in (s.name, f"{s.name}-soak")]
        report.update_document(args.output, facts, sections, order)
        print(f"bench: wrote {', '.join(sections)} to {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
