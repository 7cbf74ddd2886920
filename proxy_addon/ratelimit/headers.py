"""Read what the platform says about its limits from an answer's headers — defensively.

``X-Rate-Limit-Group``, ``-Limit``, ``-Remaining``, ``-Window`` come with every answer counted
against a user-level limit; a 429 carries ``Retry-After`` (seconds), without which a client
waits at least 30 s (ringcentral-api-docs ``docs/basics/rate-limits.md``, lines 20-21, 95-100).
Anything malformed (negative, non-numeric, absurdly large, a garbled group name) is ignored
rather than obeyed, and every wait read from a header is capped: a hostile or broken upstream
header can slow one group down for at most ``max_penalty`` seconds, never stop traffic for good.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .groups import group_key

MAX_LIMIT = 1_000_000  # requests per window: beyond this a header is not believed
MAX_WINDOW = 86_400.0  # seconds: a day


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """One answer's view of its group's limit (any field may be missing)."""

    group: str | None  # group key (lower case)
    limit: int | None
    remaining: int | None
    window: float | None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.group, self.limit, self.remaining, self.window))


def rate_headers(headers: Mapping[str, str]) -> RateHeaders:
    """The four X-Rate-Limit-* headers, each None when absent or malformed."""
    group_value = headers.get("x-rate-limit-group")
    group = group_key(group_value) if group_value else None
    limit = _count(headers.get("x-rate-limit-limit"), minimum=1)
    remaining = _count(headers.get("x-rate-limit-remaining"), minimum=0)
    if limit is not None and remaining is not None and remaining > limit:
        remaining = limit
    window = _seconds(headers.get("x-rate-limit-window"), minimum_exclusive=0.0,
                      maximum=MAX_WINDOW)
    return RateHeaders(group, limit, remaining, window)


def retry_after(headers: Mapping[str, str], default: float, cap: float) -> float:
    """Seconds a 429 asks to wait: ``Retry-After`` (delta seconds) when it is a sane number,
    else ``default`` (the docs: at least 30 s); never more than ``cap``."""
    value = _seconds(headers.get("retry-after"), minimum_exclusive=None, maximum=None)
    if value is None:
        value = default
    return min(max(0.0, value), cap)


def _count(text: str | None, *, minimum: int) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 9:  # no sign, "1e9", "٣"
        return None
    value = int(text)
    return value if minimum <= value <= MAX_LIMIT else None


def _seconds(text: str | None, *, minimum_exclusive: float | None,
             maximum: float | None) -> float | None:
    if text is None:
        return None
    text = text.strip()
    if not text or len(text) > 16 or not all(c.isascii() and (c.isdigit() or c == ".")
                                             for c in text):
        return None  # negative, an HTTP date, "inf", "nan", garbage: not believed
    try:
        value = float(text)
    except ValueError:
        return None
    if minimum_exclusive is not None and value <= minimum_exclusive:
        return None
    if maximum is not None and value > maximum:
        return None
    return value
