"""Rate limiting: the group of each API operation, the sliding-window limiters and the
injected penalties (the ``/_emulator/rate-penalty`` fault).

Platform facts (ringcentral-api-docs ``docs/basics/rate-limits.md``, ``errors.md``, and
``platform-rate-groups.md``): user-level limits count per (authenticated user, application)
pair and per group; defaults Light 50, Medium 40, Heavy 10, Auth 5 requests per 60 s with a
60 s penalty; every request sent during the penalty restarts it. Answers carry
``X-Rate-Limit-Group``, ``-Limit``, ``-Remaining``, ``-Window`` (user-level limits only); a
429 says CMN-301/302 "Request rate exceeded" or CMN-310 "Global request rate exceeded" (an
account or per-IP limit: no ``X-Rate-Limit-*`` headers) with ``Retry-After`` (may be absent).

Group of a request: :class:`RateTable` (``data/platform-rate-groups.tsv``, the published spec's
``x-throttling-group`` of each operation); a path not in it falls back to :func:`heuristic_group`.

Windows are **sliding**: a call is allowed when fewer than ``limit`` calls of the same key were
allowed in the last ``window`` seconds. The call over the limit starts a penalty and forgets the
window, so after the penalty the key has its whole limit again.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

DEFAULT_API_LIMITS = {"Light": 50, "Medium": 40, "Heavy": 10}
AUTH_GROUP = "Auth"
NO_THROTTLING = "NoThrottling"
KNOWN_GROUPS = ("Light", "Medium", "Heavy", AUTH_GROUP)
TABLE_RESOURCE = "data/platform-rate-groups.tsv"


# ------------------------------------------------------------------------ group of a request
@dataclass(frozen=True)
class _Template:
    segments: tuple[str | None, ...]  # None: a {param}, matching one non-empty segment
    group: str
    rank: tuple[int, tuple[bool, ...]]  # smaller is more specific

    def matches(self, parts: list[str]) -> bool:
        pairs = zip(self.segments, parts, strict=True)
        return all(seg is None or seg == part for seg, part in pairs)


class RateTable:
    """Method + path template → group, from the TSV (``#`` comment lines, a header line, then
    ``method path group operationId``). ``{param}`` matches exactly one non-empty segment
    (``{apiVersion}`` so matches ``v1.0``); among several matching templates the most specific
    wins: fewest params, then literal segments earliest."""

    def __init__(self, text: str) -> None:
        self._by_shape: dict[tuple[str, int], list[_Template]] = {}
        header_seen = False
        for line in text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            cols = line.split("\t")
            if not header_seen:
                header_seen = True
                if cols[:3] == ["method", "path", "group"]:
                    continue
            if len(cols) < 3:
                raise ValueError(f"rate table: bad line {line!r}")
            method, path, group = cols[0].upper(), cols[1], cols[2]
            segs = tuple(None if s.startswith("{") and s.endswith("}") else s
                         for s in path.strip("/").split("/"))
            params = tuple(s is None for s in segs)
            template = _Template(segs, group, (sum(params), params))
            self._by_shape.setdefault((method, len(segs)), []).append(template)
        for templates in self._by_shape.values():
            templates.sort(key=lambda t: t.rank)

    def lookup(self, method: str, path: str) -> str | None:
        """The group of ``method path`` in the table, or None. HEAD is looked up as GET."""
        method = method.upper()
        if method == "HEAD":
            method = "GET"
        parts = path.strip("/").split("/")
        if any(not p for p in parts):
            return None
        for template in self._by_shape.get((method, len(parts)), ()):
            if template.matches(parts):
                return template.group
        return None

    def groups(self) -> set[str]:
        return set(self.counts())

    def counts(self) -> dict[str, int]:
        """Operations per group."""
        out: dict[str, int] = {}
        for templates in self._by_shape.values():
            for t in templates:
                out[t.group] = out.get(t.group, 0) + 1
        return out


@cache
def rate_table() -> RateTable:
    """The bundled table, loaded once (package data, found in an installed emulator too)."""
    text = resources.files("rc_emulator").joinpath(TABLE_RESOURCE).read_text("utf-8")
    return RateTable(text)


def heuristic_group(method: str, path: str) -> str:
    """Group of a path the table does not know: downloads and faxes Heavy, reads Light,
    writes Medium."""
    if path.endswith("/content") or path.endswith("/fax"):
        return "Heavy"
    if method.upper() in ("GET", "HEAD", "OPTIONS"):
        return "Light"
    return "Medium"


def request_group(method: str, path: str, media_prefix: str = "/media",
                  use_table: bool = True) -> str | None:
    """Canonical group of an API request; None for a NoThrottling operation (not counted, no
    headers). The emulated media host's ``/media`` prefix is dropped before the lookup.
    ``use_table=False``: the heuristic alone (policy ``api_group_source=heuristic``)."""
    lookup_path = path
    if path == media_prefix or path.startswith(media_prefix + "/"):
        lookup_path = path[len(media_prefix):] or "/"
    group = rate_table().lookup(method, lookup_path) if use_table else None
    if group is None:
        return heuristic_group(method, lookup_path)
    if group.lower() == NO_THROTTLING.lower():
        return None
    return group


def canonical_group(name: str) -> str:
    """A group name as the table writes it when it is a known one (case-insensitive)."""
    for known in (*KNOWN_GROUPS, *sorted(rate_table().groups())):
        if known.lower() == name.lower():
            return known
    return name


# ------------------------------------------------------------------------------ limiters
@dataclass
class _Bucket:
    calls: deque[float] = field(default_factory=deque)
    penalty_until: float = float("-inf")


class SlidingWindowLimiter:
    """Sliding window of ``rate`` calls per ``window`` seconds per key, with a penalty that
    restarts on every call made during it. Report mode (``enforce=False``) only counts."""

    _MAX_KEYS = 10_000

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets: dict[object, _Bucket] = {}

    def hit(self, key: object, rate: int, window: float, penalty: float,
            enforce: bool = True) -> tuple[float | None, int]:
        """Record one call: (None, remaining) if allowed, else (penalty seconds, 0)."""
        if rate <= 0:
            return None, 0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._MAX_KEYS:
                self._buckets.clear()
            bucket = self._buckets[key] = _Bucket()
        if enforce and now < bucket.penalty_until:
            bucket.penalty_until = now + penalty
            return penalty, 0
        calls = bucket.calls
        while calls and calls[0] <= now - window:
            calls.popleft()
        if len(calls) >= rate:
            if enforce:
                bucket.penalty_until = now + penalty
                calls.clear()
                return penalty, 0
            while len(calls) >= rate:  # report mode: keep at most `rate` calls
                calls.popleft()
        calls.append(now)
        return None, rate - len(calls)

    def remaining(self, key: object, rate: int, window: float) -> int:
        """Calls still allowed in the current window (0 during a penalty)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return rate
        now = self._clock()
        if now < bucket.penalty_until:
            return 0
        return max(0, rate - sum(1 for t in bucket.calls if t > now - window))

    def reset(self) -> None:
        self._buckets.clear()


AuthRateLimiter = SlidingWindowLimiter  # the token endpoint's (Auth group) limiter


# ---------------------------------------------------------------------- injected penalties
RATE_CODES = ("CMN-301", "CMN-302", "CMN-310")
GLOBAL_CODE = "CMN-310"


@dataclass
class PenaltyFault:
    """An injected penalty on a group: every request of the group (of the target pair, or of
    any pair) answers 429 until it ends; each one restarts it for the pair it hit."""

    group: str
    code: str
    retry_after: float | None
    seconds: float
    client_id: str | None
    owner_id: str | None
    until: float  # end for pairs not hit yet
    pairs: dict[tuple[str, str], float] = field(default_factory=dict)

    def targets(self, group: str, client_id: str, owner_id: str) -> bool:
        return (self.group.lower() == group.lower()
                and self.client_id in (None, client_id) and self.owner_id in (None, owner_id))

    def describe(self) -> dict[str, object]:
        return {"group": self.group, "code": self.code, "retry_after": self.retry_after,
                "seconds": self.seconds, "client_id": self.client_id, "owner_id": self.owner_id}


class PenaltyFaults:
    """The active injected penalties; a new one replaces one of the same group and target."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._faults: list[PenaltyFault] = []

    def add(self, group: str, code: str, retry_after: float | None, seconds: float,
            client_id: str | None, owner_id: str | None) -> PenaltyFault:
        fault = PenaltyFault(group, code, retry_after, seconds, client_id, owner_id,
                             self._clock() + seconds)
        same = (group.lower(), client_id, owner_id)
        self._faults = [f for f in self._faults
                        if (f.group.lower(), f.client_id, f.owner_id) != same]
        self._faults.append(fault)
        return fault

    def hit(self, group: str, client_id: str, owner_id: str) -> PenaltyFault | None:
        """The fault refusing this request (its penalty restarted for the pair), or None."""
        if not self._faults:
            return None
        now = self._clock()
        self._faults = [f for f in self._faults
                        if now < f.until or any(now < end for end in f.pairs.values())]
        pair = (client_id, owner_id)
        for fault in reversed(self._faults):
            if fault.targets(group, client_id, owner_id) and now < fault.pairs.get(pair,
                                                                                    fault.until):
                if pair in fault.pairs or len(fault.pairs) < 10_000:
                    fault.pairs[pair] = now + fault.seconds
                return fault
        return None

    def clear(self) -> None:
        self._faults.clear()


# ------------------------------------------------------------------------------- headers
def format_window(window: float) -> str:
    """``X-Rate-Limit-Window``: whole seconds as an integer ("60"), else the float ("2.5")."""
    return str(int(window)) if float(window).is_integer() else repr(float(window))


def format_retry_after(seconds: float) -> str:
    """``Retry-After`` (delay-seconds: an integer): rounded up, so a client never retries early."""
    return str(max(0, math.ceil(seconds - 1e-9)))


def headers(group: str, limit: int, remaining: int, window: float) -> dict[str, str]:
    return {
        "X-Rate-Limit-Group": group,
        "X-Rate-Limit-Limit": str(limit),
        "X-Rate-Limit-Remaining": str(max(0, remaining)),
        "X-Rate-Limit-Window": format_window(window),
    }
