"""The proxy's WebSocket endpoint for apps, on a loopback port of its own.

mitmproxy relays an app's upgrade here once :mod:`proxy_addon.gateway.events_route` verified its
ws token and swapped it for a one-time ticket (``/hub/<ticket>``; nothing else opens a socket
here): mitmproxy keeps the app's connection and TLS, this server speaks the gateway protocol.
Each socket serves an :class:`~.app_session.AppSession` of the account's
:class:`~.channel.AccountChannel`: the first frame is the session's ``ConnectionDetails``;
``Heartbeat`` is answered at once; ``ClientRequest`` to ``/restapi/v1.0/subscription`` is the
app's subscription (kept by the channel, at most ``subscribe_per_minute`` changes a minute);
other ``ClientRequest`` s go to the platform over the account's link (at most
``maxActiveRequests``, 10, at once per app). Bad input never reaches the platform: a malformed
frame gets an ``Error`` frame (the socket stays open, until ``MAX_BAD_FRAMES``: close 1008), a
frame over ``max_frame_bytes`` closes the socket with 1009, OAuth routes are refused.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from ..config.allow import AllowList
from ..ops.events_metrics import EventsMetrics
from . import frames
from .app_session import AppSession
from .channel import SUBSCRIPTION_PATH, AccountChannel
from .filters import FilterError, parse_filters
from .rest_budget import RateRefused
from .upstream_link import LinkClosed
from .ws_tokens import SocketTokens, WsGrant, WsTokenError

log = logging.getLogger("tokenproxy.events")

MAX_BAD_FRAMES = 20  # malformed frames a socket may send before it is closed (1008)
MAX_ACTIVE = 10  # an app's ClientRequests in flight (the platform's maxActiveRequests)
TICKET_TTL = 30.0  # s between the addon's ticket and the relayed upgrade
REAP_INTERVAL = 2.0
CLOSE_POLICY = 1008


@dataclass(frozen=True, slots=True)
class HubSettings:
    max_frame_bytes: int
    max_app_sockets: int
    subscribe_per_minute: int
    filters_per_app: int
    recovery_timeout: float


@dataclass(slots=True)
class _Ticket:
    grant: WsGrant
    wsc: str | None
    base: str
    expires: float


class Hub:
    def __init__(self, channels: dict[str, AccountChannel], settings: HubSettings,
                 metrics: EventsMetrics, scopes: dict[str, AllowList] | None = None) -> None:
        self.channels = channels
        self._scopes = scopes or {}  # clients' allow lists: REST over the socket too
        self._settings = settings
        self._metrics = metrics
        self._tokens = SocketTokens()
        self._tickets: dict[str, _Ticket] = {}
        self._open = 0
        self._runner: web.AppRunner | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.port = 0

    def clients_changed(self, scopes: dict[str, AllowList]) -> None:
        self._scopes = scopes

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/hub/{ticket}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._reaper = asyncio.create_task(self._reap())

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for channel in self.channels.values():
            await channel.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- tickets (the addon's side) ---------------------------------------------------------

    def admit(self, grant: WsGrant, wsc: str | None, base: str) -> str:
        """A ticket for one upgrade with this grant; raises :class:`WsTokenError` when the
        token has a socket open already or the proxy is at ``max_app_sockets``."""
        if grant.account not in self.channels:
            raise WsTokenError("TPX-WS-TOKEN-UNKNOWN", "The ws token's account is no longer "
                               "configured: get a new one with POST /restapi/oauth/wstoken.")
        if self._open + len(self._tickets) >= self._settings.max_app_sockets:
            raise WsTokenError("TPX-WS-BUSY", f"The proxy serves its maximum of "
                               f"{self._settings.max_app_sockets} app sockets: retry later.")
        self._tokens.claim(grant)
        ticket = secrets.token_urlsafe(32)
        self._tickets[ticket] = _Ticket(grant, wsc, base, time.monotonic() + TICKET_TTL)
        return ticket

    def cancel(self, ticket: str) -> None:
        """The upgrade never reached the hub (the app left, the relay failed)."""
        entry = self._tickets.pop(ticket, None)
        if entry is not None:
            self._tokens.release(entry.grant)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            now = time.monotonic()
            for ticket, entry in list(self._tickets.items()):
                if entry.expires <= now:
                    self.cancel(ticket)
            for channel in self.channels.values():
                channel.reap(now)

    # -- one app socket ---------------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        entry = self._tickets.pop(request.match_info["ticket"], None)
        if entry is None:
            return web.Response(status=403, text="no such ticket")
        try:
            ws = web.WebSocketResponse(max_msg_size=self._settings.max_frame_bytes,
                                       autoping=True, compress=False)
            await ws.prepare(request)
        except Exception:
            self._tokens.release(entry.grant)
            raise
        channel = self.channels[entry.grant.account]
        session, recovered = channel.open_session(entry.grant.client, entry.wsc)
        session.attach(ws, entry.base, recovered)
        self._open += 1
        self._metrics.app_socket(channel.account, 1)
        try:
            await self._read(ws, channel, session)
        finally:
            self._open -= 1
            self._metrics.app_socket(channel.account, -1)
            self._tokens.release(entry.grant)
            await channel.close_session(session)
        return ws

    async def _read(self, ws: web.WebSocketResponse, channel: AccountChannel,
                    session: AppSession) -> None:
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                message = await ws.receive()
                if message.type is aiohttp.WSMsgType.TEXT:
                    task = self._frame(message.data, ws, channel, session)
                    if task is not None:
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                elif message.type is aiohttp.WSMsgType.BINARY:
                    self._refuse(session, "malformed", 400, "TPX-WS-BAD-FRAME",
                                 "Binary frames are not served: send JSON text frames.")
                else:
                    if message.type is aiohttp.WSMsgType.ERROR:
                        self._metrics.refused_frame("too_big")  # aiohttp closed it with 1009
                    return
                if session.bad_frames > MAX_BAD_FRAMES:
                    await ws.close(code=CLOSE_POLICY, message=b"TPX-WS-BAD-FRAME: too many "
                                   b"malformed frames")
                    return
        finally:
            for task in tasks:
                task.cancel()

    def _frame(self, text: str, ws: web.WebSocketResponse, channel: AccountChannel,
               session: AppSession) -> asyncio.Task[None] | None:
        try:
            frame = frames.parse(text, from_app=True)
        except frames.FrameError as exc:
            self._refuse(session, "malformed", 400, "TPX-WS-BAD-FRAME", str(exc),
                         exc.message_id)
            return None
        if frame.type == "Heartbeat":
            session.send(frames.heartbeat_frame(frame.message_id))
            return None
        route = str(frame.meta["path"]).split("?", 1)[0].rstrip("/").lower()
        if route == "/restapi/oauth" or route.startswith("/restapi/oauth/"):
            self._refuse(session, "oauth_route", 403, "TPX-OAUTH-MANAGED", "OAuth routes are "
                         "not served over the socket: tokenproxy manages the account's "
                         "tokens.", frame.message_id, answer=True)
            return None
        scope = self._scopes.get(session.client)
        if scope is not None and not scope.allows(str(frame.meta["method"]),
                                                  str(frame.meta["path"])):
            self._refuse(session, "scope", 403, "TPX-SCOPE-DENIED", "Outside this client's "
                         "[[clients]] allow list.", frame.message_id, answer=True)
            return None
        if session.active_requests >= MAX_ACTIVE:
            self._refuse(session, "busy", 429, "TPX-WS-BUSY", f"At most {MAX_ACTIVE} requests "
                         "in flight per socket (maxActiveRequests).", frame.message_id,
                         answer=True)
            return None
        session.active_requests += 1
        if route == SUBSCRIPTION_PATH or route.startswith(SUBSCRIPTION_PATH + "/"):
            work = self._subscription(channel, session, frame, route)
        else:
            work = self._rest(channel, session, frame)
        return asyncio.get_running_loop().create_task(self._counted(session, work))

    async def _counted(self, session: AppSession, work: Any) -> None:
        try:
            await work
        finally:
            session.active_requests -= 1

    async def _rest(self, channel: AccountChannel, session: AppSession,
                    frame: frames.Frame) -> None:
        try:
            session.send(await channel.rest(session, frame))
        except RateRefused as exc:
            self._metrics.refused_frame("rate_limited")
            message = "Request rate exceeded"
            meta = {"type": "ClientRequest", "messageId": frame.message_id, "status": 429,
                    "headers": {"RCRequestId": frames.new_id(), "Content-Type": "application/json",
                                "Retry-After": str(max(1, math.ceil(exc.retry_after))),
                                "X-Tokenproxy-Error": "TPX-RATE-LIMITED"}}
            session.send(frames.dump(meta, {"errorCode": "CMN-301", "message": message, "errors": [
                {"errorCode": "CMN-301", "message": message}]}))
        except LinkClosed as exc:
            session.send(frames.error_frame(503, "TPX-EVENTS-UNAVAILABLE", f"The platform's "
                                            f"gateway cannot be reached: {exc}; retry.",
                                            frame.message_id, kind="ClientRequest"))

    async def _subscription(self, channel: AccountChannel, session: AppSession,
                            frame: frames.Frame, route: str) -> None:
        method = str(frame.meta["method"]).upper()
        named = route[len(SUBSCRIPTION_PATH) + 1:] or None
        mine = session.subscription
        message_id = frame.message_id
        if named is not None and (mine is None or named != mine.id.lower()):
            session.send(frames.error_frame(404, "CMN-102", "Resource for parameter "
                                            "[subscriptionId] is not found", message_id,
                                            kind="ClientRequest"))
            return
        if method == "GET":
            if named is None:
                records = [mine.info()] if mine is not None else []
                session.send(frames.answer_frame(message_id, 200, {"records": records}))
            else:
                assert mine is not None
                session.send(frames.answer_frame(message_id, 200, mine.info(),
                                                 {"WSG-SubscriptionId": mine.id}))
            return
        if (method == "POST") != (named is None) or method not in ("POST", "PUT", "DELETE"):
            session.send(frames.error_frame(405, "CMN-405", f"{method} is not allowed here",
                                            message_id, kind="ClientRequest"))
            return
        if not self._may_change(session):
            self._refuse(session, "subscribe_rate", 429, "TPX-WS-SUBSCRIBE-RATE",
                         f"At most {self._settings.subscribe_per_minute} subscription changes "
                         "a minute per socket.", message_id, answer=True)
            return
        filters = None
        if method != "DELETE":
            body = frame.body if isinstance(frame.body, dict) else {}
            mode = body.get("deliveryMode")
            transport = mode.get("transportType") if isinstance(mode, dict) else "WebSocket"
            if transport != "WebSocket":
                session.send(frames.error_frame(
                    400, "TPX-WS-BAD-SUBSCRIPTION", "Over the socket, deliveryMode."
                    "transportType must be \"WebSocket\".", message_id, kind="ClientRequest"))
                return
            try:
                filters = parse_filters(body.get("eventFilters"), self._settings.filters_per_app)
            except FilterError as exc:
                session.send(frames.error_frame(400, "TPX-WS-BAD-SUBSCRIPTION", str(exc),
                                                message_id, kind="ClientRequest"))
                return
        try:
            refusal = await channel.subscribe(session, filters, replace=method == "POST")
        except LinkClosed as exc:
            session.send(frames.error_frame(503, "TPX-EVENTS-UNAVAILABLE", f"The platform's "
                                            f"gateway cannot be reached: {exc}; retry.",
                                            message_id, kind="ClientRequest"))
            return
        if refusal is not None:
            meta = {k: v for k, v in refusal.meta.items() if k != "wsc"}
            meta["messageId"] = message_id
            session.send(frames.dump(meta, refusal.body, refusal.has_body))
        elif method == "DELETE" or session.subscription is None:
            session.send(frames.dump({"type": "ClientRequest", "messageId": message_id,
                                      "status": 204, "headers": {"RCRequestId": frames.new_id()}},
                                     has_body=False))
        else:
            subscription = session.subscription
            session.send(frames.answer_frame(message_id, 200, subscription.info(),
                                             {"WSG-SubscriptionId": subscription.id}))

    def _may_change(self, session: AppSession) -> bool:
        now = time.monotonic()
        times = session.subscribe_times
        while times and times[0] <= now - 60.0:
            times.popleft()
        if len(times) >= self._settings.subscribe_per_minute:
            return False
        times.append(now)
        return True

    def _refuse(self, session: AppSession, reason: str, status: int, code: str, message: str,
                message_id: str | None = None, answer: bool = False) -> None:
        self._metrics.refused_frame(reason)
        if reason == "malformed":
            session.bad_frames += 1
        session.send(frames.error_frame(status, code, message, message_id,
                                        kind="ClientRequest" if answer else "Error"))

    def snapshot(self) -> dict[str, Any]:
        return {"app_sockets": self._open,
                "accounts": {name: c.snapshot() for name, c in self.channels.items()}}
