"""Which rate-limit group an API operation counts in (issue 17): the first question the
governor (:mod:`.governor`) asks of every request.

The platform counts API calls per (user, app) and per *group* of operations
(ringcentral-api-docs ``docs/basics/rate-limits.md``). Each operation's group is published in
the OpenAPI spec as ``x-throttling-group``; ``platform-rate-groups.tsv`` (bundled, from the
2021 spec: its header names the source) seeds the lookup so the first call of an operation is
already governed. Every answer's ``X-Rate-Limit-Group`` teaches the group of its operation
(:meth:`GroupTable.learn`), and what the platform said always wins over the table: the spec is
old, newer operations are missing, and group names may change (the docs, line 89). Group names
compare case-insensitively (the docs' example writes ``light``, the spec ``Light``).

An operation is a method and a path template: a table template when one matches (``{param}``
matches one path segment), else the path with its ids folded (``~``, numbers, long tokens with
digits), so ``/…/message-store/123`` and ``/…/message-store/456`` are one operation. What is
neither in the table nor learned falls back to the method: reads ``Light``, writes ``Medium``
(most of the spec's GETs are Light, most writes Medium), until an answer says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import resources

NO_THROTTLING = "nothrottling"  # the spec's group of operations the platform does not count
AUTH = "auth"  # /restapi/oauth/*: not in the spec; the docs' Auth group
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
# an operation learned per method and template: beyond this many, new ones are not kept (an
# app sending random paths must not grow the process), they fall back to the table/method
MAX_LEARNED = 4096
_ID = re.compile(r"^(~|\d+|[0-9a-fA-F-]{32,36}|(?=[^/]*\d)[A-Za-z0-9._-]{9,})$")
_GROUP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


def group_key(name: str) -> str | None:
    """A group name as the governor keys it (lower case), or None if it is not a plausible
    group name (the header is the platform's word, but a proxy on the way may garble it)."""
    name = name.strip()
    return name.lower() if _GROUP_NAME.match(name) else None


class _Node:
    __slots__ = ("literal", "methods", "param", "template")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.methods: dict[str, str] = {}  # method -> group key
        self.template = ""


class GroupTable:
    """Operation → group: learned answers first, then the spec's table, then the method."""

    def __init__(self, rows: Iterable[tuple[str, str, str]]) -> None:
        self._root = _Node()
        self._learned: dict[tuple[str, str], str] = {}
        for method, template, group in rows:
            key = group_key(group)
            if key is None:
                raise ValueError(f"rate-limit group table: bad group {group!r} for {template}")
            node = self._root
            for segment in _segments(template):
                if segment.startswith("{") and segment.endswith("}"):
                    node.param = node.param or _Node()
                    node = node.param
                else:
                    node = node.literal.setdefault(segment, _Node())
            node.methods[method.upper()] = key
            node.template = template

    @classmethod
    def bundled(cls) -> GroupTable:
        """The table shipped with tokenproxy (``platform-rate-groups.tsv``)."""
        text = resources.files(__package__).joinpath("platform-rate-groups.tsv").read_text(
            encoding="utf-8")
        return cls(parse_tsv(text))

    def operation(self, method: str, path: str) -> tuple[str, str | None]:
        """(the operation's key: method and template, the table's group key or None)."""
        method = method.upper()
        path = path.split("?", 1)[0]
        node = self._match(self._root, _segments(path), 0)
        if node is not None:
            group = node.methods.get(method)
            if group is None and method == "HEAD":
                group = node.methods.get("GET")
            return f"{method} {node.template}", group
        return f"{method} {fold(path)}", None

    def group(self, method: str, path: str) -> tuple[str, str]:
        """(operation key, group key) of a request: learned, else table, else by method."""
        path = path.split("?", 1)[0]
        if path.startswith("/restapi/oauth/"):
            return f"{method.upper()} {path}", AUTH
        operation, table_group = self.operation(method, path)
        learned = self._learned.get((method.upper(), operation))
        if learned is not None:
            return operation, learned
        if table_group is not None:
            return operation, table_group
        return operation, "light" if method.upper() in _READS else "medium"

    def learn(self, method: str, operation: str, group: str) -> None:
        """The platform said this operation counts in ``group`` (a group key)."""
        key = (method.upper(), operation)
        if key in self._learned or len(self._learned) < MAX_LEARNED:
            self._learned[key] = group

    def groups(self) -> set[str]:
        """Every group key the table names."""
        found: set[str] = set()
        stack = [self._root]
        while stack:
            node = stack.pop()
            found.update(node.methods.values())
            stack.extend(node.literal.values())
            if node.param is not None:
                stack.append(node.param)
        return found

    @property
    def learned(self) -> int:
        return len(self._learned)

    def _match(self, node: _Node, segments: list[str], index: int) -> _Node | None:
        if index == len(segments):
            return node if node.methods else None
        segment = segments[index]
        child = node.literal.get(segment)
        if child is not None:  # a literal segment beats a parameter
            found = self._match(child, segments, index + 1)
            if found is not None:
                return found
        if node.param is not None and segment:
            return self._match(node.param, segments, index + 1)
        return None


def _segments(path: str) -> list[str]:
    return path.strip("/").split("/") if path.strip("/") else []


def fold(path: str) -> str:
    """The path with its id-like segments replaced by ``{}``."""
    return "/" + "/".join("{}" if _ID.match(s) else s for s in _segments(path))


def parse_tsv(text: str) -> list[tuple[str, str, str]]:
    """(method, path template, group) rows of the bundled table (``#`` lines and the header
    skipped)."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#") or line.startswith("method\t"):
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            raise ValueError(f"rate-limit group table line {number}: expected 3+ columns")
        rows.append((fields[0], fields[1], fields[2]))
    return rows
