"""tokenproxy benchmarks: scenarios that measure the proxy against real processes on loopback.

Run ``python -m bench [SCENARIO ...] [--quick]`` from the repository root. Each scenario is a
module exposing a :class:`bench.scenario.Scenario`, registered in :mod:`bench.registry`; the
runner (:mod:`bench.__main__`) runs the chosen ones and :mod:`bench.report` rewrites their
sections of ``docs/benchmarks.md`` (keeping the sections of scenarios that did not run).
"""
