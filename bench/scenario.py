"""The contract between the runner and a scenario module.

A scenario is a named callable that takes :class:`RunOptions` and returns the markdown body of
its section of ``docs/benchmarks.md`` (everything under the section heading). It starts and
stops every process it needs, only on loopback, and bounds every loop in count and time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunOptions:
    """What the command line asked for, shared by all scenarios of one run."""

    quick: bool  # shorter runs, for a smoke check
    duration: float | None  # seconds; overrides the scenario's own default when set
    command: str  # the exact command line, rendered in each section
    workdir: Path  # a scratch directory (configs, logs), deleted after the run
    logs: Path | None  # when set, scenarios copy their process logs here
    soak: bool = False  # the long variants (``make soak``), e.g. 1M requests for ``memory``


@dataclass(frozen=True)
class Scenario:
    """One benchmark: ``run`` returns the markdown body of its section."""

    name: str  # command-line name and section id: lowercase letters, digits, '-'
    title: str  # section heading
    summary: str  # one line for ``--list``
    run: Callable[[RunOptions], str]
