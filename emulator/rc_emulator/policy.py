"""The emulator's running policy (TTLs, rate limit, session cap, fault options) and its validation.

Shared by the CLI (:mod:`.server`) and the admin endpoint ``POST /_emulator/policy``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

CAP_POLICIES = ("evict", "refuse")
EXPIRED_ENVELOPES = ("api", "oauth", "alternate")
EXPIRED_CODES = ("OAU-210", "OAU-128")
# Content codings of answers (see .app, compression_middleware): as a front end compresses.
COMPRESSIONS = ("off", "gzip", "br", "zstd", "deflate", "any")


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

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def updated(self, changes: dict[str, Any]) -> Policy:
        """A validated copy with ``changes`` applied; raises PolicyError."""
        if not isinstance(changes, dict):
            raise PolicyError("policy", "expected a JSON object")
        values = self.as_dict()
        for key, raw in changes.items():
            if key not in values:
                raise PolicyError(key, "unknown policy field")
            values[key] = _coerce(key, raw)
        return Policy(**values)


_POSITIVE = {"access_ttl", "refresh_ttl", "auth_window"}
_NON_NEGATIVE = {"auth_penalty", "refresh_grace", "token_delay"}
_COUNTS = {"auth_rate": 0, "session_cap": 1, "revoke_issued": 0, "chunk_bytes": 0}
_CHOICES = {
    "session_cap_policy": CAP_POLICIES,
    "expired_envelope": EXPIRED_ENVELOPES,
    "expired_code": EXPIRED_CODES,
    "compress": COMPRESSIONS,
}


def _coerce(key: str, raw: Any) -> Any:
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
