"""One WebSocket to the platform's gateway for an account, kept up and recovered.

The link connects to the ``uri`` of a ws token (:mod:`.platform_ws_tokens`), waits for the first
``ConnectionDetails`` ("prevent any interaction ... until the ConnectionDetails message is
received": ringcentral-api-docs ``docs/notifications/websockets/session-recovery.md``) and keeps
the ``wsc`` recovery token the platform sends (``meta.wsc``, updated by later frames). When the
socket drops — token rotation, a platform restart, idle or absolute timeout (WSG-902/903,
``heart-beats.md``), the network — it reconnects at once, then backing off, with a ws token and
``&wsc=`` while within ``recoveryTimeout``; the answer's ``recoveryState`` says whether the
subscription and the buffered events survived. A ws token is reused for a reconnect while it is
young (the SDKs' rule) unless the platform ever refused a reuse (the docs' single-use reading),
in which case each connect gets a new one. It carries ClientRequests (REST over the socket) for
the :mod:`.channel`, at most ``maxActiveRequests`` at once, matched to their answers by
``messageId``; and sends a ``Heartbeat`` every ``heartbeat_interval`` so the platform never sees
the socket idle. Notifications and state changes go to the channel (:class:`LinkListener`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from . import frames
from .platform_ws_tokens import PlatformWsTokens, UpstreamWsToken, WsTokenUnavailable

log = logging.getLogger("tokenproxy.events")

DETAILS_TIMEOUT = 15.0
_SECRET_QUERY = re.compile(r"(access_token|wsc)=[^&\s'\"]*")
BACKOFF = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)


class LinkListener(Protocol):
    def link_up(self, link: UpstreamLink, outcome: str) -> None:
        """``outcome``: ``new`` (first connect), ``recovered`` (recoveryState Successful) or
        ``lost`` (the platform's session and its subscription are gone)."""

    def link_down(self, link: UpstreamLink) -> None: ...

    def notification(self, link: UpstreamLink, frame: frames.Frame) -> None: ...


@dataclass(frozen=True, slots=True)
class LinkSettings:
    heartbeat_interval: float
    request_timeout: float
    max_frame_bytes: int


class LinkClosed(Exception):
    """The link closed before the answer came."""


class UpstreamLink:
    def __init__(self, account: str, index: int, tokens: PlatformWsTokens,
                 http: aiohttp.ClientSession, settings: LinkSettings,
                 listener: LinkListener, counted: Any) -> None:
        self.account = account
        self.index = index
        self._tokens = tokens
        self._http = http
        self._settings = settings
        self._listener = listener
        self._counted = counted  # metrics facade (see .channel)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.up = asyncio.Event()
        self._wsc: str | None = None
        self._recovery_timeout = 180.0
        self._dropped_at: float | None = None
        self._token: UpstreamWsToken | None = None
        self._reuse_refused = False
        self._slots = asyncio.Semaphore(10)
        self._pending: dict[str, asyncio.Future[frames.Frame]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.had_session = False  # a platform session existed (subscriptions may be lost)
        self.subscription_id: str | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"events-link-{self.account}")

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._fail_pending()

    # -- REST over the socket -------------------------------------------------------------

    async def request(self, method: str, path: str, body: Any = None, has_body: bool = False,
                      headers: dict[str, Any] | None = None,
                      query: dict[str, Any] | None = None) -> frames.Frame:
        """Send a ClientRequest and return the platform's answer frame. Raises
        :class:`LinkClosed` (no link within the timeout, or it dropped before answering)."""
        timeout = self._settings.request_timeout
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(self.up.wait(), timeout)
        except TimeoutError:
            raise LinkClosed("no connection to the platform's gateway") from None
        async with self._slots:
            ws = self._ws
            if ws is None or not self.up.is_set():
                raise LinkClosed("the platform's socket dropped")
            message_id = frames.new_id()
            meta: dict[str, Any] = {"type": "ClientRequest", "messageId": message_id,
                                    "method": method, "path": path}
            if headers:
                meta["headers"] = headers
            if query:
                meta["query"] = query
            future: asyncio.Future[frames.Frame] = asyncio.get_running_loop().create_future()
            self._pending[message_id] = future
            try:
                await ws.send_str(frames.dump(meta, body, has_body))
                return await asyncio.wait_for(future, max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                raise LinkClosed("the platform did not answer in time") from None
            except (ConnectionError, RuntimeError, aiohttp.ClientError):
                raise LinkClosed("the platform's socket dropped") from None
            finally:
                self._pending.pop(message_id, None)

    # -- the connection's life ------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            try:
                await self._connect_and_read()
                failures = 0
            except asyncio.CancelledError:
                raise
            except WsTokenUnavailable as exc:
                self._counted.link_error(self.account)
                log.warning("events %s: no ws token: %s; retrying in %.0f s", self.account, exc,
                            exc.retry_after, extra={"event": "events_ws_token_unavailable",
                                                    "account": self.account})
                await asyncio.sleep(exc.retry_after)
                continue
            except Exception as exc:  # any failure: reconnect, bounded back-off
                self._counted.link_error(self.account)
                log.warning("events %s: platform socket failed: %s", self.account,
                            _describe(exc), extra={"event": "events_link_failed",
                                                   "account": self.account})
            if self._closing:
                return
            await asyncio.sleep(BACKOFF[min(failures, len(BACKOFF) - 1)])
            failures += 1

    async def _connect_and_read(self) -> None:
        recovering = (self._wsc is not None and self._dropped_at is not None
                      and time.monotonic() - self._dropped_at < self._recovery_timeout)
        ws = await self._open(recovering)
        try:
            first = await asyncio.wait_for(ws.receive(), DETAILS_TIMEOUT)
            details = self._details(first)
            outcome = self._outcome(recovering, details)
            self._ws = ws
            self.up.set()
            self._dropped_at = None
            self.had_session = True
            self._counted.link_up(self.account, outcome, recovering)
            self._listener.link_up(self, outcome)
            heartbeat = asyncio.create_task(self._heartbeat(ws))
            try:
                await self._read(ws)
            finally:
                heartbeat.cancel()
        finally:
            was_up = self.up.is_set()
            self.up.clear()
            self._ws = None
            self._fail_pending()
            with contextlib.suppress(Exception):
                await ws.close()
            if was_up:
                self._dropped_at = time.monotonic()
                self._counted.link_down(self.account)
                self._listener.link_down(self)

    async def _open(self, recovering: bool) -> aiohttp.ClientWebSocketResponse:
        token = self._token
        reuse = token is not None and token.young(time.monotonic()) and not self._reuse_refused
        if not reuse:
            token = self._token = await self._tokens.fetch()
        assert token is not None
        try:
            return await self._upgrade(token, recovering)
        except aiohttp.WSServerHandshakeError as exc:
            self._token = None  # never again: a refused token is spent or dead
            if not (reuse and exc.status in (401, 403)):
                raise
        self._reuse_refused = True  # a single-use platform: a new token for each connect
        log.info("events %s: the platform refused a ws token's reuse; each connect gets a new "
                 "one from now on", self.account, extra={"account": self.account})
        token = self._token = await self._tokens.fetch()
        return await self._upgrade(token, recovering)

    async def _upgrade(self, token: UpstreamWsToken, recovering: bool
                       ) -> aiohttp.ClientWebSocketResponse:
        url = f"{token.uri}?access_token={quote(token.token, safe='')}"
        if recovering and self._wsc:
            url += f"&wsc={quote(self._wsc, safe='')}"
        return await self._http.ws_connect(
            url, autoping=True, max_msg_size=self._settings.max_frame_bytes,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0))

    def _details(self, message: aiohttp.WSMessage) -> dict[str, Any]:
        if message.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"the gateway's first message is {message.type.name}, not "
                                  "ConnectionDetails")
        frame = frames.parse(message.data, from_app=False)
        if frame.type == "Error":
            body = frame.body if isinstance(frame.body, dict) else {}
            raise ConnectionError(f"the gateway refused the socket: "
                                  f"{str(body.get('errorCode', 'Error'))[:40]}")
        if frame.type != "ConnectionDetails" or not isinstance(frame.body, dict):
            raise ConnectionError(f"the gateway's first frame is {frame.type[:40]!r}, not "
                                  "ConnectionDetails")
        self._note_wsc(frame.meta)
        body = frame.body
        timeout = body.get("recoveryTimeout")
        if isinstance(timeout, int | float) and 0 < timeout <= 86400:
            self._recovery_timeout = float(timeout)
        active = body.get("maxActiveRequests")
        if isinstance(active, int) and 1 <= active <= 1000:
            self._slots = asyncio.Semaphore(active)
        return body

    def _outcome(self, recovering: bool, details: dict[str, Any]) -> str:
        if recovering and details.get("recoveryState") == "Successful":
            return "recovered"
        if self.had_session:
            self.subscription_id = None  # the platform's session is new: re-subscribe
            return "lost"
        return "new"

    def _note_wsc(self, meta: dict[str, Any]) -> None:
        wsc = meta.get("wsc")
        if isinstance(wsc, dict) and isinstance(wsc.get("token"), str) \
                and 0 < len(wsc["token"]) <= 2048:
            self._wsc = wsc["token"]

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            message = await ws.receive()
            if message.type is aiohttp.WSMsgType.TEXT:
                self._dispatch(message.data)
            elif message.type is aiohttp.WSMsgType.BINARY:
                self._dispatch(message.data.decode("utf-8", "replace"))
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                return

    def _dispatch(self, text: str) -> None:
        try:
            frame = frames.parse(text, from_app=False)
        except frames.FrameError as exc:
            self._counted.bad_upstream_frame(self.account)
            log.warning("events %s: ignored a malformed frame from the platform: %s",
                        self.account, exc, extra={"account": self.account})
            return
        self._note_wsc(frame.meta)
        if frame.type == "ServerNotification":
            self._listener.notification(self, frame)
            return
        future = self._pending.get(frame.message_id)
        if future is not None and frame.type in ("ClientRequest", "Error"):
            if not future.done():
                future.set_result(frame)
            return
        if frame.type == "Error":
            body = frame.body if isinstance(frame.body, dict) else {}
            log.info("events %s: the platform's gateway said %s", self.account,
                     str(body.get("errorCode", "Error"))[:40],
                     extra={"event": "events_gateway_error", "account": self.account})

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(self._settings.heartbeat_interval)
                await ws.send_str(frames.heartbeat_frame())

    def _fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(LinkClosed("the platform's socket dropped"))
        self._pending.clear()


def _describe(exc: BaseException) -> str:
    """The failure without the URL: aiohttp's messages name it, and it holds the ws token."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"upgrade refused with {exc.status}"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return exc.__class__.__name__
    text = _SECRET_QUERY.sub(r"\1=…", str(exc))[:200]
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
