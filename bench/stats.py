"""Small statistics and formatting shared by the performance scenarios: medians of repeated
runs, ratios, and their rendering in the markdown tables."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no runs")
    return float(statistics.median(values))


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def fmt_ratio(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}x"


def fmt_ms(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_rps(value: float) -> str:
    return f"{value:,.0f}"


def spread(values: Sequence[float], fmt=fmt_rps) -> str:  # type: ignore[no-untyped-def]
    """``median (min-max)`` of the runs."""
    return f"{fmt(median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"
