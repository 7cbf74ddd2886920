"""The emulator's running policy (TTLs, rate limits, session cap, fault options) and its validation.

Shared by the CLI (:mod:`.server`) and the admin endpoint ``POST /_emulator/policy``.

API rate limits (``api_*``, see :mod:`.ratelimit` and ``emulator/README.md``): ``api_rate=report``
(the default) counts and sends the ``X-Rate-Limit-*`` headers but never refuses, because other
suites send bursts beyond 50/min on purpose; ``enforce`` answers 429 over the limit (opt-in).
``api_limits`` maps group → limit per window (names case-insensitive, unknown names allowed; a
group it does not name keeps its default, Light 50 / Medium 40 / Heavy 10); the CLI writes it
``Light=50,Medium=40,Heavy=10``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .ratelimit import AUTH_GROUP, DEFAULT_API_LIMITS, NO_THROTTLING

CAP_POLICIES = ("evict", "refuse")
EXPIRED_ENVELOPES = ("api", "oauth", "alternate")
EXPIRED_CODES = ("OAU-210", "OAU-128")
# Content codings of answers (see .app, compression_middleware): as a front end compresses.
COMPRESSIONS = ("off", "gzip", "br", "zstd", "deflate", "any")


API_RATE_MODES = ("report", "enforce")
GROUP_CASES = ("title", "lower")  # X-Rate-Limit-Group: "Light" (the spec) or "light" (the docs)
GROUP_SOURCES = ("table", "heuristic")  # group of a request: the spec's table, or by method
AUTH_RATE_KEYS = ("user", "app")  # token-endpoint limiter per (user, client id) or per client id
# WebSocket notifications (see .ws and emulator/README.md "WebSocket notifications")
WS_TOKEN_USES = ("single", "reusable")  # a ws token opens one connection ever, or many
WS_REPLAYS = ("missed", "buffer")  # recovery replays never-sent events, or the whole buffer
WS_ON_REVOKE = ("drop", "keep")  # revoke-all closes the WS connections of revoked sessions
WS_ON_REFRESH = ("keep", "drop")  # a refresh rotation leaves the WS connections alone
_GROUP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_BOOLS = {"true": True, "on": True, "yes": True, "1": True,
          "false": False, "off": False, "no": False, "0": False}


class PolicyError(ValueError):
    """An invalid policy value; ``field`` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass
class Policy:
    access_ttl: float = 3600.0
    refresh_ttl: float = 604800.0
    auth_rate: int = 5
    auth_window: float = 60.0
    auth_penalty: float = 60.0
    session_cap: int = 5
    session_cap_policy: str = "evict"
    refresh_grace: float = 0.0
    expired_envelope: str = "api"
    expired_code: str = "OAU-210"
    token_delay: float = 0.0
    # fault: the next N token sets the token endpoint issues are revoked right after the
    # answer, as if an admin revoked them at once (tests a token dying before its first use)
    revoke_issued: int = 0
    # compress every answer (error bodies too) with this content coding when the client's
    # Accept-Encoding accepts it; "any" picks one per request (br > zstd > gzip > deflate)
    compress: str = "off"
    # send every buffered answer chunked, in pieces of this many bytes with a short pause
    # between them, as a front end that streams may (a client sees a body arrive in pieces,
    # split anywhere, even inside a JSON string). 0: each answer in one piece
    chunk_bytes: int = 0
    # the token endpoint's limiter counts per (user, client id) like the platform ("user"), or
    # per client id alone ("app")
    auth_rate_key: str = "user"
    # API rate limits per (user, app, group): "report" counts and sends headers only (default:
    # other suites burst on purpose), "enforce" answers 429 over the limit (opt-in)
    api_rate: str = "report"
    api_limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_API_LIMITS))
    api_window: float = 60.0
    api_penalty: float = 60.0
    # group of a request: "table" (the spec's, data/platform-rate-groups.tsv, the heuristic for
    # paths it lacks) or "heuristic" alone (downloads/fax Heavy, reads Light, writes Medium)
    api_group_source: str = "table"
    # X-Rate-Limit-Group's case: "title" (Light, as the spec) or "lower" (light, as the docs)
    api_group_case: str = "title"
    # false: no X-Rate-Limit-* header on any answer (as when only account-level limits apply)
    api_rate_headers: bool = True

    def api_limit(self, group: str) -> int:
        """The limit of ``group`` (case-insensitive); its default when the mapping omits it."""
        wanted = group.lower()
        for mapping in (self.api_limits, DEFAULT_API_LIMITS):
            for name, limit in mapping.items():
                if name.lower() == wanted:
                    return limit
        return min(DEFAULT_API_LIMITS.values())  # a group nobody knows: the strictest

    def group_header(self, group: str) -> str:
        return group.lower() if self.api_group_case == "lower" else group

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def updated(self, changes: dict[str, Any]) -> Policy:
        """A validated copy with ``changes`` applied; raises PolicyError."""
        return Policy(**_updated(self.as_dict(), changes))


@dataclass
class WsPolicy:
    """The WebSocket gateway's options (:mod:`.ws`), apart from :class:`Policy`: changed at run
    time with ``POST /_emulator/ws/policy`` (``/_emulator/policy`` keeps its fields)."""

    # WebSocket notifications (.ws): ws token lifetime and use, the public ws URI ("" = the
    # emulator's own ws[s]://HOST:PORT/ws), connections per (user, client id), recovery window
    # and buffer, what a recovery replays, keep-alive pings (0 = none) and pong wait, idle and
    # absolute connection timeouts, and what revoke-all / a refresh rotation do to connections
    ws_token_ttl: float = 600.0
    ws_token_use: str = "single"
    ws_public_uri: str = ""
    ws_max_connections: int = 50
    ws_recovery_timeout: float = 180.0
    ws_recovery_buffer: int = 100
    ws_replay: str = "missed"
    ws_ping_interval: float = 30.0
    ws_pong_timeout: float = 10.0
    ws_idle_timeout: float = 1800.0
    ws_absolute_timeout: float = 86400.0
    ws_on_revoke: str = "drop"
    ws_on_refresh: str = "keep"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def updated(self, changes: dict[str, Any]) -> WsPolicy:
        """A validated copy with ``changes`` applied; raises PolicyError."""
        return WsPolicy(**_updated(self.as_dict(), changes))


def _updated(values: dict[str, Any], changes: Any) -> dict[str, Any]:
    if not isinstance(changes, dict):
        raise PolicyError("policy", "expected a JSON object")
    for key, raw in changes.items():
        if key not in values:
            raise PolicyError(key, "unknown policy field")
        values[key] = _coerce(key, raw)
    return values


_POSITIVE = {"access_ttl", "refresh_ttl", "auth_window", "api_window", "ws_token_ttl",
             "ws_pong_timeout", "ws_idle_timeout", "ws_absolute_timeout"}
_NON_NEGATIVE = {"auth_penalty", "refresh_grace", "token_delay", "api_penalty",
                 "ws_recovery_timeout", "ws_ping_interval"}
_COUNTS = {"auth_rate": 0, "session_cap": 1, "revoke_issued": 0, "chunk_bytes": 0,
           "ws_max_connections": 1, "ws_recovery_buffer": 0}
_CHOICES = {
    "session_cap_policy": CAP_POLICIES,
    "expired_envelope": EXPIRED_ENVELOPES,
    "expired_code": EXPIRED_CODES,
    "compress": COMPRESSIONS,
    "auth_rate_key": AUTH_RATE_KEYS,
    "api_rate": API_RATE_MODES,
    "api_group_case": GROUP_CASES,
    "api_group_source": GROUP_SOURCES,
    "ws_token_use": WS_TOKEN_USES,
    "ws_replay": WS_REPLAYS,
    "ws_on_revoke": WS_ON_REVOKE,
    "ws_on_refresh": WS_ON_REFRESH,
}


def _coerce(key: str, raw: Any) -> Any:
    if key == "api_limits":
        return parse_limits(raw)
    if key == "ws_public_uri":
        return parse_ws_uri(raw)
    if key == "api_rate_headers":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _BOOLS:
            return _BOOLS[raw.strip().lower()]
        raise PolicyError(key, "must be true or false")
    if key in _CHOICES:
        if raw not in _CHOICES[key]:
            raise PolicyError(key, f"must be one of {', '.join(_CHOICES[key])}")
        return raw
    if isinstance(raw, bool):
        raise PolicyError(key, "must be a number")
    if key in _COUNTS:
        value = _as_int(key, raw)
        if value < _COUNTS[key]:
            raise PolicyError(key, f"must be >= {_COUNTS[key]}")
        return value
    try:
        value_f = float(raw)
    except (TypeError, ValueError):
        raise PolicyError(key, "must be a number") from None
    if not math.isfinite(value_f):
        raise PolicyError(key, "must be finite")
    if key in _POSITIVE and value_f <= 0:
        raise PolicyError(key, "must be > 0")
    if key in _NON_NEGATIVE and value_f < 0:
        raise PolicyError(key, "must be >= 0")
    return value_f


def parse_ws_uri(raw: Any) -> str:
    """``ws_public_uri``: "" (the emulator's own address) or a ws:// / wss:// URL without
    query or fragment (the ``uri`` the wstoken answer gives)."""
    if raw is None or raw == "":
        return ""
    if not isinstance(raw, str):
        raise PolicyError("ws_public_uri", "must be a ws:// or wss:// URL")
    parts = urlsplit(raw)
    if parts.scheme not in ("ws", "wss") or not parts.netloc or parts.query or parts.fragment:
        raise PolicyError("ws_public_uri",
                          f"expected a ws:// or wss:// URL without query, got {raw!r}")
    return raw


def _as_int(key: str, raw: Any) -> int:
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            pass
    raise PolicyError(key, "must be an integer")


def parse_limits(raw: Any) -> dict[str, int]:
    """``api_limits`` from a JSON object ``{"Light": 50, ...}`` or the CLI form
    ``Light=50,Medium=40``: group names ``[A-Za-z][A-Za-z0-9_-]*`` (unique case-insensitively;
    not Auth, which is ``auth_rate``, nor NoThrottling), limits positive integers."""
    key = "api_limits"
    if isinstance(raw, str):
        items: list[tuple[Any, Any]] = []
        for part in raw.split(","):
            if not part.strip():
                continue
            name, sep, value = part.partition("=")
            if not sep:
                raise PolicyError(key, f"expected GROUP=N[,GROUP=N...], got {part.strip()!r}")
            items.append((name.strip(), value.strip()))
    elif isinstance(raw, dict):
        items = list(raw.items())
    else:
        raise PolicyError(key, "must be an object mapping group names to limits")
    limits: dict[str, int] = {}
    seen: set[str] = set()
    for name, value in items:
        if not isinstance(name, str) or not _GROUP_NAME.fullmatch(name):
            raise PolicyError(key, f"bad group name {name!r}")
        lowered = name.lower()
        if lowered == AUTH_GROUP.lower():
            raise PolicyError(key, "the Auth group's limit is auth_rate")
        if lowered == NO_THROTTLING.lower():
            raise PolicyError(key, "the NoThrottling group is never limited")
        if lowered in seen:
            raise PolicyError(key, f"group {name!r} given twice")
        seen.add(lowered)
        if isinstance(value, bool):
            raise PolicyError(key, f"limit of {name} must be a positive integer")
        try:
            limit = _as_int(key, value)
        except PolicyError:
            raise PolicyError(key, f"limit of {name} must be a positive integer") from None
        if limit <= 0:
            raise PolicyError(key, f"limit of {name} must be a positive integer")
        limits[name] = limit
    return limits
