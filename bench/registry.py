"""The list of scenarios, in the order they run and appear in ``docs/benchmarks.md``.

To add a scenario: write a module ``bench/<name>.py`` exposing ``SCENARIO = Scenario(...)`` and
append it here.
"""

from __future__ import annotations

from bench import (
    chaos,
    drain,
    events,
    fleet,
    memory,
    ratelimit,
    replicas,
    scale,
    storm,
    throughput,
    transport,
)
from bench.scenario import Scenario

SCENARIOS: tuple[Scenario, ...] = (
    throughput.SCENARIO,
    storm.SCENARIO,
    fleet.SCENARIO,
    memory.SCENARIO,
    replicas.SCENARIO,
    drain.SCENARIO,
    chaos.SCENARIO,
    transport.SCENARIO,
    scale.SCENARIO,
    ratelimit.SCENARIO,
    events.SCENARIO,
)


def by_name() -> dict[str, Scenario]:
    return {s.name: s for s in SCENARIOS}
