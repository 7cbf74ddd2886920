"""Requests in flight, for a graceful drain (issue 19, item 2); the first addon of the chain.

``requestheaders`` counts a request in, ``response``/``error`` out (once per flow). While the
process drains (SIGTERM: :mod:`proxy_addon.cli.run`), every answer carries ``Connection: close``,
so apps on keep-alive connections reconnect — to another replica, once the load balancer saw
``/readyz`` turn 503 — instead of sending more here; :meth:`InFlight.idle` waits until the last
request in flight has its answer. :meth:`InFlight.figures` (served, in flight) goes into this
process's status report (``ops/processes.py``).
"""

from __future__ import annotations

import asyncio

from mitmproxy import http

_COUNTED = "tokenproxy.in_flight"


class InFlight:
    def __init__(self) -> None:
        self.count = 0
        self.served = 0  # requests answered (or failed) since start
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        flow.metadata[_COUNTED] = True
        self.count += 1
        self._idle.clear()

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if self.draining and flow.response is not None and flow.response.status_code != 101:
            flow.response.headers["connection"] = "close"

    def response(self, flow: http.HTTPFlow) -> None:
        self._done(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._done(flow)

    def _done(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.pop(_COUNTED, False):
            self.served += 1
            self.count -= 1
            if self.count <= 0:
                self.count = 0
                self._idle.set()

    def figures(self) -> dict[str, int]:
        return {"served": self.served, "in_flight": self.count}

    async def idle(self, within: float) -> bool:
        """Wait until nothing is in flight, at most ``within`` seconds; True if so."""
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True
