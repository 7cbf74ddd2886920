"""An app's virtual gateway session: what the app sees as "its" connection to the platform.

It has its own ``wsc`` recovery token and sequence, at most one subscription (a second POST
replaces the first, as on the platform: ringcentral-api-docs
``docs/notifications/websockets/subscribing.md``, "Only one subscription per server") with an id
of the proxy's, and one socket at a time. Frames leave through one ordered queue and one writer
(notifications keep their order); an app that reads too slowly for ``MAX_QUEUED`` frames is
closed (1013) rather than holding memory. While the app is away, notifications for it are
buffered (``recovery_buffer``, oldest dropped) for ``recovery_timeout`` seconds: it reconnects
with a new ws token and ``&wsc=`` and gets them, as the platform would do
(``session-recovery.md``). Nothing of the upstream session (its ``wsc``, its subscription id)
ever reaches the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import frames
from .filters import Filter

MAX_QUEUED = 10_000  # frames waiting for a slow app's socket
CLOSE_TRY_AGAIN = 1013


@dataclass(slots=True)
class AppSubscription:
    id: str
    filters: list[Filter]
    created: str = field(default_factory=frames.now_iso)

    def matches(self, event: Filter) -> bool:
        return any(f.matches(event) for f in self.filters)

    def info(self, expires_in: int = 900) -> dict[str, Any]:
        """The SubscriptionInfo the platform answers (WebSocket subscriptions renew
        themselves: subscribing.md, so the expiration is nominal)."""
        expires = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + expires_in))
        return {"id": self.id, "creationTime": self.created, "status": "Active",
                "eventFilters": [f.text for f in self.filters], "expirationTime": expires,
                "expiresIn": expires_in, "deliveryMode": {"transportType": "WebSocket"}}


class AppSession:
    def __init__(self, client: str, account: str, buffer_size: int,
                 rewrite: Callable[[str, str], str]) -> None:
        self.wsc = "TPXWSC." + secrets.token_urlsafe(24)
        self.client = client
        self.account = account
        self.sequence = 0
        self.subscription: AppSubscription | None = None
        self.link_index: int | None = None  # which upstream link carries its filters
        self.socket: web.WebSocketResponse | None = None
        self.detached_at: float | None = None
        self.active_requests = 0
        self.subscribe_times: deque[float] = deque()
        self.bad_frames = 0
        self.base = ""  # the app's base URL (links in bodies point there)
        self._rewrite = rewrite
        self._buffer: deque[str] = deque(maxlen=buffer_size)
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    # -- the socket -------------------------------------------------------------------------

    def attach(self, socket: web.WebSocketResponse, base: str, recovered: bool | None) -> None:
        """Serve ``socket``; ``recovered``: None (a new session), True/False (the app asked to
        recover: the ConnectionDetails says how it went). Buffered frames follow."""
        self.socket = socket
        self.base = base
        self.detached_at = None
        self._queue = asyncio.Queue()
        self._queue.put_nowait(self.connection_details(recovered))
        while self._buffer:
            self._queue.put_nowait(self._buffer.popleft())
        self._writer = asyncio.create_task(self._write(socket))

    async def detach(self) -> None:
        self.socket = None
        self.detached_at = time.monotonic()
        writer, self._writer = self._writer, None
        if writer is not None:
            self._queue.put_nowait(None)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
        # frames that never left wait for a recovery, like the platform's buffer
        while not self._queue.empty():
            text = self._queue.get_nowait()
            if text is not None and '"ServerNotification"' in text[:80]:
                self._buffer.append(text)

    def send(self, text: str) -> bool:
        """Queue a frame for the app (buffer it while the app is away). False: the app reads
        too slowly and is being closed."""
        if self.socket is None:
            self._buffer.append(text)
            return True
        if self._queue.qsize() >= MAX_QUEUED:
            socket = self.socket
            asyncio.get_running_loop().create_task(socket.close(
                code=CLOSE_TRY_AGAIN, message=b"TPX-WS-SLOW-READER: frames queued beyond the "
                b"proxy's limit; reconnect with your wsc to recover"))
            return False
        self._queue.put_nowait(text)
        return True

    async def _write(self, socket: web.WebSocketResponse) -> None:
        while True:
            text = await self._queue.get()
            if text is None:
                return
            try:
                await socket.send_str(text)
            except (ConnectionError, RuntimeError):
                self._buffer.append(text)  # the app is gone: kept for its recovery
                return

    # -- frames of this session -------------------------------------------------------------

    def connection_details(self, recovered: bool | None, *, timeout: float = 180,
                           buffer: int = 100) -> str:
        meta = {"type": "ConnectionDetails", "messageId": frames.new_id(), "status": 200,
                "wsc": {"token": self.wsc, "sequence": self.sequence},
                "headers": {"RCRequestId": frames.new_id()}}
        body: dict[str, Any] = {
            "creationTime": frames.now_iso(), "maxConnectionsPerSession": 1,
            "recoveryBufferSize": self._buffer.maxlen or buffer, "recoveryTimeout": timeout,
            "idleTimeout": 1800, "absoluteTimeout": 86400, "maxActiveRequests": 10}
        if recovered is not None:
            body["recoveryState"] = "Successful" if recovered else "Failed"
        return frames.dump(meta, body)

    def notify(self, meta: dict[str, Any], body: dict[str, Any]) -> bool:
        """Queue one notification for this app: its own subscription id and wsc sequence,
        links pointing at the proxy."""
        assert self.subscription is not None
        self.sequence += 1
        out_meta = {key: value for key, value in meta.items() if key != "wsc"}
        out_meta["wsc"] = {"token": self.wsc, "sequence": self.sequence}
        out_body = dict(body)
        out_body["subscriptionId"] = self.subscription.id
        return self.send(self._rewrite(frames.dump(out_meta, out_body), self.base))

    def rewrite(self, text: str) -> str:
        return self._rewrite(text, self.base)

    def expired(self, now: float, timeout: float) -> bool:
        return self.socket is None and self.detached_at is not None \
            and now - self.detached_at >= timeout
