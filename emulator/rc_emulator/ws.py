"""WebSocket notifications, the HTTP side: ``POST /restapi/oauth/wstoken`` and the gateway
``GET /ws`` (frames, REST over the socket, subscriptions, keep-alive, timeouts).

State lives in :class:`.ws_events.WsHub` (``app[WS_HUB]``); each open connection is a
:class:`Connection` (a :class:`.ws_events.Link`): one task reads frames, one sends the
outgoing queue in order (``ConnectionDetails`` first, then replayed and new notifications and
answers), each ``ClientRequest`` runs in a task of its own (at most ``maxActiveRequests``).

REST over the socket (``ClientRequest``) runs the same route handlers as HTTP: the path is
resolved on the app's router and the handler is called with an in-process request
(``aiohttp.test_utils.make_mocked_request``: same headers, query and body), as the connection's
OAuth session's user (no access token needed: the ws token authenticated the connection), with
the API rate limits counted as the HTTP middleware counts them. Subscriptions
(``/restapi/v1.0/subscription``) are answered by the gateway itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_urldispatcher import MatchInfoError
from multidict import CIMultiDict
from yarl import URL

from . import errors
from .app import (
    API_PREFIX,
    MAX_BODY,
    OAUTH_PREFIX,
    PLATFORM,
    RATE_KEY,
    SESSION_KEY,
    WS_HUB,
    error_response,
    http_error,
    json_response,
)
from .errors import PlatformError
from .ratelimit import GLOBAL_CODE, RATE_CODES, request_group
from .state import Session
from .ws_events import (
    ABSOLUTE,
    IDLE,
    MALFORMED,
    MAX_ACTIVE_REQUESTS,
    NOT_ALLOWED,
    NOT_UPGRADE,
    TOO_MANY_REQUESTS,
    UNKNOWN_TYPE,
    Link,
    Note,
    WsHub,
    WsSession,
    WsToken,
    ws_error,
)

log = logging.getLogger("rc_emulator.ws")

WS_PATH = "/ws"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
SUBSCRIPTION = API_PREFIX + "/subscription"
MAX_FRAME = 4 * 1024 * 1024
CLOSE_TIMEOUT = 2.0  # how long a server-initiated close waits for the client's close frame
_SKIP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "upgrade",
                 "authorization", "accept-encoding"}


# ------------------------------------------------------------------------------ wstoken
async def wstoken(request: web.Request) -> web.Response:
    """``POST /restapi/oauth/wstoken``: the API's 401s for a bad Bearer token; then counted in
    the Auth group like the token endpoint (same limiter, same key)."""
    platform = request.app[PLATFORM]
    hub = request.app[WS_HUB]
    hub.counters["ws_token_calls"] += 1
    try:
        session = platform.check_bearer(request.headers.get("Authorization"))
    except PlatformError as exc:
        log.info("wstoken -> %s %s", exc.status, exc.code)
        response = error_response(exc)
        response.headers.update(NO_STORE)
        return response
    await request.read()  # the body, if any, is ignored
    refused = platform.auth_group_hit(session.client_id, session.owner_id)
    if refused is not None:
        response = error_response(refused)
        log.info("wstoken -> %s %s", refused.status, refused.code)
    else:
        issued = hub.issue_token(session)
        body = {"ws_access_token": issued["ws_access_token"], "uri": _ws_uri(request),
                "expires_in": issued["expires_in"]}
        response = json_response(body)
        log.info("wstoken -> 200 owner=%s session=%s", session.owner_id, session.session_id)
    response.headers.update(NO_STORE)
    policy = platform.policy
    if policy.auth_rate > 0 and (refused is None or refused.code != GLOBAL_CODE):
        remaining = 0 if refused is not None and refused.code in RATE_CODES else \
            platform.auth_pair_remaining(session.client_id, session.owner_id)
        request[RATE_KEY] = platform.auth_rate_headers(remaining)
    return response


def _ws_uri(request: web.Request) -> str:
    """``ws_public_uri``, else the emulator's own address (wss when it serves TLS)."""
    public = request.app[WS_HUB].policy.ws_public_uri
    if public:
        return public
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if sockname:
        host, port = sockname[0], sockname[1]
        host = f"[{host}]" if ":" in host else host
        netloc = f"{host}:{port}"
    else:
        netloc = request.host
    return f"{'wss' if request.secure else 'ws'}://{netloc}{WS_PATH}"


# ------------------------------------------------------------------------------ gateway
def _bearer(request: web.Request) -> str | None:
    token = request.query.get("access_token")
    if token:
        return token
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def gateway(request: web.Request) -> web.StreamResponse:
    """``GET /ws``: refuse (401/429/400 with a JSON body) or upgrade and serve frames."""
    hub = request.app[WS_HUB]
    ws = web.WebSocketResponse(autoping=False, timeout=CLOSE_TIMEOUT, max_msg_size=MAX_FRAME)
    try:
        token = hub.check_token(_bearer(request))
        if not ws.can_prepare(request).ok:
            raise ws_error(400, NOT_UPGRADE)
        hub.check_capacity(token)
    except PlatformError as exc:
        hub.refused(exc)
        log.info("ws upgrade refused: %s %s", exc.status, exc.code)
        return error_response(exc)
    await ws.prepare(request)
    wsc = request.query.get("wsc") or None
    conn = Connection(request, ws, hub, token)
    session, state, replay = hub.open(token, wsc, conn)  # no await before the first frame
    conn.send(hub.connection_details(session, state))
    for note in replay:
        conn.deliver(note)
    log.info("ws connected owner=%s session=%s recovery=%s replay=%d",
             token.owner_id, session.id, state, len(replay))
    try:
        await conn.run()
    finally:
        hub.closed(conn)
    return ws


class Connection(Link):
    """One open WebSocket connection."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse, hub: WsHub,
                 token: WsToken) -> None:
        self.request = request
        self.ws = ws
        self.hub = hub
        self.owner_id = token.owner_id
        self.client_id = token.client_id
        self.oauth_session_id = token.session_id
        self.session: WsSession | None = None
        self.queue: asyncio.Queue[tuple[str, Note | None] | None] = asyncio.Queue()
        self.closing: tuple[int, str, str | None] | None = None
        self.active: set[asyncio.Task[None]] = set()
        self.opened = time.monotonic()
        self.last_activity = self.opened

    # -- Link
    def deliver(self, note: Note) -> None:
        self.queue.put_nowait((note.text, note))

    def send(self, text: str) -> None:
        self.queue.put_nowait((text, None))

    def close(self, code: int, reason: str, final: str | None = None) -> None:
        if self.closing is None:
            self.closing = (code, reason, final)
            self.queue.put_nowait(None)

    def abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    # -- tasks
    async def run(self) -> None:
        sender = asyncio.create_task(self._sender())
        try:
            await self._reader()
        finally:
            for task in list(self.active):
                task.cancel()
            if not sender.done():
                self.close(1000, "")
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sender, CLOSE_TIMEOUT + 1)
            if not sender.done():
                sender.cancel()
            if not self.ws.closed:
                self.abort()

    async def _sender(self) -> None:
        ws = self.ws
        while True:
            item = await self.queue.get()
            if self.closing is not None:
                break
            if item is None or ws.closed:
                continue
            text, note = item
            try:
                await ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return
            if note is not None:
                self.hub.sent(note)
        code, reason, final = self.closing
        with contextlib.suppress(ConnectionError, RuntimeError):
            if final is not None and not ws.closed:
                await ws.send_str(final)
            await ws.close(code=code, message=reason.encode("utf-8"))

    async def _reader(self) -> None:
        ws = self.ws
        policy = lambda: self.hub.policy  # noqa: E731 - read live (POST /_emulator/policy)
        next_ping = time.monotonic() + (policy().ws_ping_interval or 0)
        pong_due: float | None = None
        while True:
            p = policy()
            now = time.monotonic()
            idle_at = self.last_activity + p.ws_idle_timeout
            absolute_at = self.opened + p.ws_absolute_timeout
            if now >= absolute_at:
                self._timeout(ABSOLUTE)
                return
            if now >= idle_at:
                self._timeout(IDLE)
                return
            if pong_due is not None and now >= pong_due:
                log.info("ws: no pong within %ss, connection dropped", p.ws_pong_timeout)
                self.abort()
                return
            if p.ws_ping_interval > 0 and pong_due is None and now >= next_ping:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.ping()
                pong_due = now + p.ws_pong_timeout
                next_ping = now + p.ws_ping_interval
            deadlines = [idle_at, absolute_at]
            if pong_due is not None:
                deadlines.append(pong_due)
            elif p.ws_ping_interval > 0:
                deadlines.append(next_ping)
            wait = max(0.01, min(min(deadlines) - time.monotonic(), 5.0))
            try:
                msg = await ws.receive(timeout=wait)
            except TimeoutError:
                continue
            if msg.type == WSMsgType.TEXT:
                self.last_activity = time.monotonic()
                self._frame(msg.data)
            elif msg.type == WSMsgType.BINARY:
                self.last_activity = time.monotonic()
                self._error(None, 400, MALFORMED, "Binary frames are not supported")
            elif msg.type == WSMsgType.PING:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.pong(msg.data)
            elif msg.type == WSMsgType.PONG:
                pong_due = None
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                return

    def _timeout(self, code: tuple[str, str]) -> None:
        final = self._error_text(None, 408, code[0], code[1])
        log.info("ws: %s %s", *code)
        self.close(1000, code[1], final)

    # -- frames
    def _error_text(self, message_id: Any, status: int, code: str, message: str) -> str:
        meta = {"type": "Error", "status": status, "messageId": message_id}
        return json.dumps([meta, {"errorCode": code, "message": message}])

    def _error(self, message_id: Any, status: int, code: str, message: str) -> None:
        self.send(self._error_text(message_id, status, code, message))

    def _frame(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            self._error(None, 400, MALFORMED, "Frame is not valid JSON")
            return
        if not isinstance(frame, list) or not 1 <= len(frame) <= 2 \
                or not isinstance(frame[0], dict):
            self._error(None, 400, MALFORMED, "Frame must be a JSON array [meta, body?]")
            return
        meta = frame[0]
        body = frame[1] if len(frame) > 1 else None
        message_id = meta.get("messageId")
        kind = meta.get("type")
        if kind == "Heartbeat":
            self.send(json.dumps([{"type": "Heartbeat", "messageId": message_id}]))
        elif kind == "ClientRequest":
            method, path = meta.get("method"), meta.get("path")
            headers, query = meta.get("headers") or {}, meta.get("query") or {}
            if not isinstance(message_id, str) or not message_id:
                self._error(message_id, 400, MALFORMED, "ClientRequest needs a messageId")
            elif not isinstance(method, str) or not method.isalpha() \
                    or not isinstance(path, str) or not path.startswith("/"):
                self._error(message_id, 400, MALFORMED,
                            "ClientRequest needs a method and a path starting with /")
            elif not isinstance(headers, dict) or not isinstance(query, dict):
                self._error(message_id, 400, MALFORMED,
                            "ClientRequest headers and query must be objects")
            elif len(self.active) >= MAX_ACTIVE_REQUESTS:
                self.hub.counters["ws_client_requests"] += 1
                exc = ws_error(429, TOO_MANY_REQUESTS)
                self._answer(message_id, exc.status, {}, exc.body)
            else:
                self.hub.counters["ws_client_requests"] += 1
                task = asyncio.create_task(
                    self._client_request(message_id, method.upper(), path, headers, query, body))
                self.active.add(task)
                task.add_done_callback(self.active.discard)
        else:
            self._error(message_id, 400, UNKNOWN_TYPE, f"Unknown frame type {kind!r}")

    def _answer(self, message_id: str, status: int, headers: dict[str, str], body: Any) -> None:
        meta = {"type": "ClientRequest", "messageId": message_id, "status": status,
                "headers": {"RCRequestId": str(uuid.uuid4()), **headers}}
        self.send(json.dumps([meta] if body is None else [meta, body]))

    async def _client_request(self, message_id: str, method: str, path: str,
                              headers: dict[str, Any], query: dict[str, Any],
                              body: Any) -> None:
        try:
            status, out_headers, out_body = await self._dispatch(method, path, headers, query,
                                                                 body)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ws: ClientRequest %s %s failed", method, path)
            exc = errors.api_error(500, "CMN-500", "Internal server error")
            status, out_headers, out_body = exc.status, {}, exc.body
        self._answer(message_id, status, out_headers, out_body)

    # -- REST over the socket
    async def _dispatch(self, method: str, path: str, headers: dict[str, Any],
                        query: dict[str, Any], body: Any) -> tuple[int, dict[str, str], Any]:
        url = URL(path)
        extra = [(str(k), str(x)) for k, v in query.items()
                 for x in (v if isinstance(v, list) else [v])]
        if extra:
            url = url.extend_query(extra)
        if url.path == OAUTH_PREFIX or url.path.startswith(OAUTH_PREFIX + "/"):
            return self._refusal(f"{OAUTH_PREFIX}/* cannot be called over WebSocket")
        if not (url.path == API_PREFIX or url.path.startswith(API_PREFIX + "/")):
            exc = errors.not_found()
            return exc.status, {}, exc.body
        if url.path.endswith("/content"):
            return self._refusal("Binary downloads cannot be made over WebSocket")
        raw = b"" if body is None else json.dumps(body).encode("utf-8")
        req_headers: CIMultiDict[str] = CIMultiDict()
        for name, value in headers.items():
            if str(name).lower() not in _SKIP_HEADERS:
                req_headers.add(str(name), str(value))
        if raw and "Content-Type" not in req_headers:
            req_headers["Content-Type"] = "application/json"
        req_headers["Content-Length"] = str(len(raw))
        app = self.request.app
        payload = StreamReader(self.request.protocol, 2**16, loop=asyncio.get_running_loop())
        if raw:
            payload.feed_data(raw)
        payload.feed_eof()
        request = make_mocked_request(method, str(url), headers=req_headers, app=app,
                                      payload=payload, client_max_size=MAX_BODY)
        match = await app.router.resolve(request)
        if not isinstance(match, MatchInfoError):
            request = make_mocked_request(method, str(url), headers=req_headers, app=app,
                                          payload=payload, match_info=dict(match),
                                          client_max_size=MAX_BODY)
        response = await self._run(request, match, url)
        return self._result(request, response)

    def _refusal(self, message: str) -> tuple[int, dict[str, str], Any]:
        exc = errors.api_error(400, NOT_ALLOWED, message)
        return exc.status, {}, exc.body

    async def _run(self, request: web.Request, match: Any, url: URL) -> web.StreamResponse:
        """The HTTP middleware's steps for this connection's session: rate group, handler,
        error envelopes."""
        platform = self.request.app[PLATFORM]
        try:
            oauth = self._oauth_session()
            request[SESSION_KEY] = oauth
            group = request_group(request.method, url.path, "/media",
                                  platform.policy.api_group_source == "table")
            if group is not None:
                request[RATE_KEY], refused = platform.api_rate_hit(group, oauth)
                if refused is not None:
                    raise refused
            if self._is_subscription(url.path):
                return self._subscription(request.method, url.path, await request.read())
            if isinstance(match, MatchInfoError):
                raise match.http_exception
            response: web.StreamResponse = await match.handler(request)
            return response
        except PlatformError as exc:
            return error_response(exc)
        except web.HTTPException as exc:
            return http_error(request, exc)

    def _oauth_session(self) -> Session:
        """The OAuth session the connection's ws token was issued for while it is alive, else
        a live one of the same user and app (after a re-login), else a 401."""
        platform = self.request.app[PLATFORM]
        session = platform.sessions.get(self.oauth_session_id)
        now = platform.clock()
        if session is not None and session.live(now):
            return session
        for other in sorted(platform.sessions.values(), key=lambda s: -s.seq):
            if other.client_id == self.client_id and other.owner_id == self.owner_id \
                    and other.live(now):
                return other
        raise errors.access_not_found()

    def _result(self, request: web.Request, response: web.StreamResponse
                ) -> tuple[int, dict[str, str], Any]:
        if not isinstance(response, web.Response):
            return self._refusal("Streamed answers cannot be sent over WebSocket")
        headers = {k: v for k, v in response.headers.items()
                   if k.lower() not in ("content-length", "content-encoding")}
        for name, value in (request.get(RATE_KEY) or {}).items():
            headers[name] = value
        raw = response.body
        body: Any = None
        if isinstance(raw, bytes | bytearray) and raw:
            try:
                body = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                body = bytes(raw).decode("utf-8", "replace")
        return response.status, headers, body

    # -- subscriptions
    @staticmethod
    def _is_subscription(path: str) -> bool:
        return path.rstrip("/") == SUBSCRIPTION or path.startswith(SUBSCRIPTION + "/")

    def _subscription(self, method: str, path: str, raw: bytes) -> web.Response:
        self.hub.counters["ws_subscription_requests"] += 1
        session = self.session
        if session is None:  # taken over by a recovery elsewhere
            raise errors.not_found("Subscription")
        tail = path.rstrip("/")[len(SUBSCRIPTION):].strip("/")
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise errors.api_error(400, "CMN-101",
                                       "Request body is not a valid JSON object") from None
        hub = self.hub
        if not tail:
            if method != "POST":
                raise web.HTTPMethodNotAllowed(method, ["POST"])
            sub = hub.subscribe(session, body)
        elif "/" in tail:
            raise errors.not_found("Subscription")
        elif method == "GET":
            sub = hub.find_subscription(session, tail)
        elif method in ("PUT", "POST"):
            sub = hub.update_subscription(session, tail, body)
        elif method == "DELETE":
            hub.delete_subscription(session, tail)
            return web.Response(status=204)
        else:
            raise web.HTTPMethodNotAllowed(method, ["GET", "PUT", "DELETE"])
        log.info("ws subscription %s %s filters=%d", method, sub.id, len(sub.filters))
        return json_response(sub.info(), headers={"WSG-SubscriptionId": sub.id})


async def _shutdown(app: web.Application) -> None:
    """Close every WebSocket connection (1001) when the emulator stops."""
    app[WS_HUB].drop("close")
    await asyncio.sleep(0)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/restapi/oauth/wstoken", wstoken)
    app.router.add_get(WS_PATH, gateway)
    app.on_shutdown.append(_shutdown)
