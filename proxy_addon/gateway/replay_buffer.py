"""How many request-body bytes the process holds for replay, all requests together.

A request body is buffered (so that it can be replayed after a token 401) only when its
``Content-Length`` is within ``[proxy] replay_body_limit`` *and* the process-wide budget
``[proxy] replay_buffer_total`` still has room for it; otherwise it streams through (forwarded
as it arrives, not replayable). So a burst of large uploads degrades to streaming instead of
growing the proxy's memory beyond its limit. :mod:`.inject` admits a body at its headers; the
flow's end gives the bytes back (an answer in :mod:`.replay`, an error in :mod:`.inject`).
"""

from __future__ import annotations


class ReplayBuffer:
    def __init__(self, per_request: int, total: int) -> None:
        self.per_request = per_request
        self.total = total
        self.used = 0

    def admit(self, length: int) -> bool:
        """Reserve ``length`` bytes for one body; False: stream it instead."""
        if length > self.per_request or self.used + length > self.total:
            return False
        self.used += length
        return True

    def release(self, length: int) -> None:
        self.used = max(0, self.used - length)
