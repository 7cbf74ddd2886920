"""Event filters: which notification an app asked for.

An event filter is an API path (``/restapi/v1.0/account/~/extension/~/message-store/instant?
type=SMS``) where ``~`` stands for the session's own account or extension; the platform names the
event of a notification by the same path with the ids filled in
(ringcentral-api-docs ``docs/notifications/event-filters``, ``code-samples/websockets/
websocket-notification.json``). The proxy subscribes upstream with the union of its apps'
filters, so an event always matches the filter it was subscribed for: a filter matches an event
when every segment is equal, ``~`` after ``account``/``extension`` standing for any id, with the
same query parameters in any order. The ``/restapi/v1.0`` prefix is optional in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

PREFIX = ("restapi", "v1.0")
MAX_FILTER = 1024
_SELF_NAMED = frozenset({"account", "extension"})


@dataclass(frozen=True, slots=True)
class Filter:
    text: str  # as the app wrote it
    segments: tuple[str, ...]
    query: frozenset[tuple[str, str]]

    def matches(self, event: Filter) -> bool:
        if len(self.segments) != len(event.segments) or self.query != event.query:
            return False
        previous = ""
        for mine, theirs in zip(self.segments, event.segments, strict=True):
            if mine != theirs and not (mine == "~" and previous in _SELF_NAMED and theirs):
                return False
            previous = theirs
        return True

    @property
    def key(self) -> tuple[tuple[str, ...], frozenset[tuple[str, str]]]:
        """Equal for two spellings of one filter (prefix, query order)."""
        return self.segments, self.query


class FilterError(ValueError):
    pass


def parse_filter(text: object) -> Filter:
    """A filter as apps and the platform write them; :class:`FilterError` says what is wrong."""
    if not isinstance(text, str) or not text.startswith("/"):
        raise FilterError("an event filter is a string starting with '/'")
    if len(text) > MAX_FILTER or any(c.isspace() or ord(c) < 32 for c in text):
        raise FilterError(f"an event filter is at most {MAX_FILTER} characters, without "
                          "spaces or control characters")
    path, _, query = text.partition("?")
    segments = [s.lower() for s in path.split("/") if s]
    if tuple(segments[:2]) == PREFIX:
        segments = segments[2:]
    if not segments:
        raise FilterError("an event filter names a resource (e.g. /restapi/v1.0/account/~/"
                          "extension/~/message-store)")
    return Filter(text, tuple(segments), frozenset(parse_qsl(query, keep_blank_values=True)))


def parse_filters(value: object, limit: int) -> list[Filter]:
    """An app's ``eventFilters``: a non-empty list of at most ``limit`` filters."""
    if not isinstance(value, list) or not value:
        raise FilterError("eventFilters must be a non-empty list of event filters")
    if len(value) > limit:
        raise FilterError(f"at most {limit} event filters per subscription")
    filters: dict[tuple[tuple[str, ...], frozenset[tuple[str, str]]], Filter] = {}
    for item in value:
        parsed = parse_filter(item)
        filters.setdefault(parsed.key, parsed)
    return list(filters.values())
