"""A client's ``allow`` list (issue 19, item 3), compiled: which "METHOD /path" it may call.

Patterns are matched against the request's normalised path (after :mod:`proxy_addon.gateway.
request_target`: runs of ``/`` collapsed, encoded separators and dot-segments refused), without
its query, case-insensitively and without a trailing ``/``, percent-escapes decoded first — an
encoded spelling can only fail to match, never match something else. ``*`` matches within one
path segment, ``**`` across segments; ``~`` is the literal ``~`` of the API's paths. A path that
still holds ``\\``, ``%``, a control character or a dot-segment after decoding matches nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

_SEGMENT = "[^/]*"
_ANY = ".*"


def _compile(pattern: str) -> tuple[str, re.Pattern[str]]:
    method, _, path = pattern.strip().partition(" ")
    path = path.strip().lower().rstrip("/") or "/"
    parts = re.split(r"(\*\*|\*)", path)
    regex = "".join(_ANY if p == "**" else _SEGMENT if p == "*" else re.escape(p)
                    for p in parts)
    return method.upper(), re.compile(regex)


@dataclass(frozen=True)
class AllowList:
    rules: tuple[tuple[str, re.Pattern[str]], ...]

    @classmethod
    def of(cls, patterns: tuple[str, ...]) -> AllowList:
        return cls(tuple(_compile(p) for p in patterns))

    def allows(self, method: str, path: str) -> bool:
        route = normalised(path)
        if route is None:
            return False
        method = method.upper()
        return any((m == "*" or m == method or (m == "GET" and method == "HEAD"))
                   and rx.fullmatch(route) for m, rx in self.rules)


def normalised(path: str) -> str | None:
    """The path as patterns see it, or None when it is a trick (see the module's doc)."""
    route = unquote(path.split("?", 1)[0].split("#", 1)[0]).lower()
    if "\\" in route or "%" in route or any(ord(c) < 32 or c == "\x7f" for c in route):
        return None
    if any(part in (".", "..") for part in route.split("/")):
        return None
    route = re.sub("/{2,}", "/", route).rstrip("/")
    return route or "/"
