"""The list of scenarios, in the order they run and appear in ``docs/benchmarks.md``.

To add a scenario (throughput vs bare mitmdump, refresh storm, memory, replicas, ...): write a
module ``bench/<name>.py`` exposing ``SCENARIO = Scenario(...)`` and append it here.
"""

from __future__ import annotations

from bench import fleet
from bench.scenario import Scenario

SCENARIOS: tuple[Scenario, ...] = (fleet.SCENARIO,)


def by_name() -> dict[str, Scenario]:
    return {s.name: s for s in SCENARIOS}
