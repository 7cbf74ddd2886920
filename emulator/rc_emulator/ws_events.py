"""WebSocket notifications, the pure part (no HTTP): ws tokens, WS sessions (wsc), their one
subscription, event filters, notifications, the recovery buffer and the ``ws_*`` counters.

:class:`WsHub` is to the WebSocket gateway what :class:`.state.Platform` is to the REST API:
every method is synchronous, so under asyncio each one is atomic. The gateway (:mod:`.ws`)
gives each open connection a :class:`Link` through which the hub delivers notifications and
closes connections.

Platform facts (ringcentral-api-docs ``docs/notifications/websockets/*.md`` and
``code-samples/websockets/*.json``): a ws token comes from ``POST /restapi/oauth/wstoken``; a
connection's first frame is ``ConnectionDetails`` carrying ``wsc: {token, sequence}``; one
subscription per WS session (a second POST replaces it); a session lost without a close is
recoverable for ``recoveryTimeout`` seconds with ``&wsc=``, keeping its subscription and
replaying up to ``recoveryBufferSize`` missed events.

Choices the docs leave open (documented in ``emulator/README.md``): the wsc token stays the same
across recoveries; ``ConnectionDetails`` of a new session carries sequence 1, each notification
takes the next number, a recovered session's ``ConnectionDetails`` carries its last number.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from . import errors
from .errors import PlatformError
from .state import Platform, Session, pair_key
from .tokens import new_token, token_kind

if TYPE_CHECKING:
    from .policy import WsPolicy

API_PREFIX = "/restapi/v1.0"
ACCOUNT_ID = "37439510"  # the account of every seeded user (api.extension_info)
MAX_ACTIVE_REQUESTS = 10  # ConnectionDetails.maxActiveRequests
TOKEN_RETENTION = 3600.0  # expired ws tokens answer WSG-103 this long, then WSG-102
MAX_TOKENS = 50_000
MAX_SESSIONS = 50_000

# Error codes of the gateway (the platform documents only WSG-902/903: heart-beats.md)
NO_TOKEN = ("WSG-101", "WebSocket access token is not specified")
BAD_TOKEN = ("WSG-102", "Invalid WebSocket access token")
EXPIRED_TOKEN = ("WSG-103", "WebSocket access token expired")
USED_TOKEN = ("WSG-104", "WebSocket access token already used")
TOO_MANY = ("WSG-105", "Maximum number of connections per session reached")
NOT_UPGRADE = ("WSG-106", "WebSocket upgrade expected")
MALFORMED = "WSG-110"
UNKNOWN_TYPE = "WSG-111"
NOT_ALLOWED = "WSG-112"
TOO_MANY_REQUESTS = ("WSG-113", "Too many active requests")
IDLE = ("WSG-902", "Idle timeout expired")
ABSOLUTE = ("WSG-903", "Absolute timeout expired")


def ws_error(status: int, code: tuple[str, str]) -> PlatformError:
    return errors.api_error(status, code[0], code[1])


def iso_now() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def number(value: float) -> int | float:
    """A policy number as JSON writes it: whole numbers as integers."""
    return int(value) if float(value).is_integer() else value


# ---------------------------------------------------------------------------- event filters
def normalize(path: str, owner_id: str) -> tuple[str, frozenset[tuple[str, str]]]:
    """(path without the ``/restapi/v1.0`` prefix, ``~`` expanded; its query as a set)."""
    parts = urlsplit(path)
    p = parts.path
    if p == API_PREFIX or p.startswith(API_PREFIX + "/"):
        p = p[len(API_PREFIX):]
    segments = (p.rstrip("/") or "/").split("/")
    for i in range(1, len(segments)):
        if segments[i] == "~":
            if segments[i - 1] == "account":
                segments[i] = ACCOUNT_ID
            elif segments[i - 1] == "extension":
                segments[i] = owner_id
    return "/".join(segments), frozenset(parse_qsl(parts.query, keep_blank_values=True))


def expand(path: str, owner_id: str) -> str:
    """A filter as a notification's ``event``: prefixed, ``~`` expanded, query as written."""
    normalized, _ = normalize(path, owner_id)
    query = urlsplit(path).query
    return f"{API_PREFIX}{normalized}" + (f"?{query}" if query else "")


def check_filters(body: Any) -> list[str]:
    """The subscription request's filters (duplicates dropped), or a 400 CMN-101."""
    if not isinstance(body, dict):
        raise errors.api_error(400, "CMN-101", "Request body is not a valid JSON object")
    filters = body.get("eventFilters")
    if (not isinstance(filters, list) or not filters
            or not all(isinstance(f, str) and f.startswith("/") and len(f) > 1
                       for f in filters)):
        raise errors.bad_api_param("eventFilters")
    mode = body.get("deliveryMode")
    transport = mode.get("transportType") if isinstance(mode, dict) else None
    if not isinstance(transport, str) or transport.lower() != "websocket":
        raise errors.bad_api_param("deliveryMode.transportType")
    return list(dict.fromkeys(filters))


def sms_events(owner_id: str, message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The events an SMS sent by ``owner_id`` produces: message-store and instant?type=SMS."""
    now = iso_now()
    msg_id = int(message["id"]) if str(message["id"]).isdigit() else message["id"]
    account = int(ACCOUNT_ID)
    extension = int(owner_id) if owner_id.isdigit() else owner_id
    store = {
        "accountId": account,
        "extensionId": extension,
        "lastUpdated": now,
        "changes": [{"type": "SMS", "newCount": 1, "updatedCount": 0,
                     "newMessageIds": [msg_id]}],
    }
    instant = {
        "id": str(message["id"]),
        "uri": message.get("uri"),
        "to": message.get("to"),
        "from": message.get("from"),
        "type": "SMS",
        "creationTime": now,
        "lastModifiedTime": now,
        "readStatus": "Read",
        "priority": "Normal",
        "attachments": [{"id": str(message["id"]), "type": "Text",
                         "contentType": "text/plain"}],
        "direction": "Outbound",
        "availability": "Alive",
        "subject": message.get("subject"),
        "messageStatus": "Queued",
    }
    base = f"{API_PREFIX}/account/~/extension/~/message-store"
    return [(base, store), (base + "/instant?type=SMS", instant)]


# --------------------------------------------------------------------------------- records
@dataclass
class WsToken:
    owner_id: str
    client_id: str
    session_id: str  # the OAuth session whose access token asked for it
    expires: float
    used: bool = False
    invalidated: bool = False  # the expire-tokens fault


@dataclass
class Note:
    """One notification of a WS session, as sent (or to be sent)."""

    sequence: int
    uuid: str
    text: str
    sent: bool = False


@dataclass
class Subscription:
    id: str
    filters: list[str]
    created: str

    def info(self) -> dict[str, Any]:
        """SubscriptionInfo; WS subscriptions renew themselves (subscribing.md), so the
        expiration fields are nominal."""
        expires_in = 900
        expires = datetime.now(UTC).timestamp() + expires_in
        expiration = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        return {
            "id": self.id,
            "uri": f"{API_PREFIX}/subscription/{self.id}",
            "eventFilters": list(self.filters),
            "expirationTime": expiration,
            "expiresIn": expires_in,
            "status": "Active",
            "creationTime": self.created,
            "deliveryMode": {"transportType": "WebSocket", "encryption": False},
        }


class Link:
    """An open connection as the hub sees it (implemented by :mod:`.ws`)."""

    owner_id: str
    client_id: str
    oauth_session_id: str
    session: WsSession | None

    def deliver(self, note: Note) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self, code: int, reason: str, final: str | None = None) -> None:
        raise NotImplementedError  # pragma: no cover - interface

    def abort(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class WsSession:
    id: str  # public id (admin snapshot); the wsc token is never shown there
    wsc: str
    owner_id: str
    client_id: str
    created: float
    created_iso: str
    sequence: int = 1
    buffer: deque[Note] = field(default_factory=deque)
    subscription: Subscription | None = None
    link: Link | None = None
    disconnected_at: float | None = None


def _new_counters() -> dict[str, Any]:
    return {
        "ws_token_calls": 0,
        "ws_connects": 0,
        "ws_recoveries_successful": 0,
        "ws_recoveries_failed": 0,
        "ws_client_requests": 0,
        "ws_subscription_requests": 0,
        "ws_notifications_sent": 0,
        "ws_refused_upgrades": 0,
        "ws_refused_by_code": Counter(),
    }


class WsHub:
    """Every ws token, WS session and open connection of the emulator."""

    def __init__(self, platform: Platform, policy: WsPolicy | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        from .policy import WsPolicy

        self.platform = platform
        self.policy = policy or WsPolicy()
        self.clock = clock or platform.clock
        self.tokens: dict[str, WsToken] = {}
        self.sessions: dict[str, WsSession] = {}  # by wsc token
        self.links: list[Link] = []
        self.refuse_recovery = False
        self.counters = _new_counters()
        self.open_max: Counter[str] = Counter()
        self._ids = 0

    # ------------------------------------------------------------------------ ws tokens
    def issue_token(self, session: Session) -> dict[str, Any]:
        self.sweep()
        ttl = self.policy.ws_token_ttl
        value = new_token("W")
        self.tokens[value] = WsToken(session.owner_id, session.client_id, session.session_id,
                                     self.clock() + ttl)
        return {"ws_access_token": value, "expires_in": max(1, round(ttl))}

    def check_token(self, value: str | None) -> WsToken:
        """The ws token an upgrade presents, or the 401 refusing it (not consumed yet)."""
        self.sweep()
        if not value:
            raise ws_error(401, NO_TOKEN)
        token = self.tokens.get(value) if token_kind(value) == "W" else None
        if token is None:
            raise ws_error(401, BAD_TOKEN)
        if token.invalidated or self.clock() >= token.expires:
            raise ws_error(401, EXPIRED_TOKEN)
        if token.used and self.policy.ws_token_use == "single":
            raise ws_error(401, USED_TOKEN)
        return token

    def check_capacity(self, token: WsToken) -> None:
        if self.open_count(token.owner_id, token.client_id) >= self.policy.ws_max_connections:
            raise ws_error(429, TOO_MANY)

    def expire_tokens(self) -> int:
        n = 0
        for token in self.tokens.values():
            if not token.invalidated:
                token.invalidated = True
                n += 1
        return n

    def refused(self, exc: PlatformError) -> None:
        self.counters["ws_refused_upgrades"] += 1
        self.counters["ws_refused_by_code"][exc.code] += 1

    # --------------------------------------------------------------------- connections
    def open_count(self, owner_id: str, client_id: str) -> int:
        return sum(1 for link in self.links
                   if link.owner_id == owner_id and link.client_id == client_id)

    def open(self, token: WsToken, wsc: str | None, link: Link
             ) -> tuple[WsSession, str | None, list[Note]]:
        """Register a new connection: (its WS session, recoveryState or None when no recovery
        was asked, the notes to replay). Consumes the token."""
        self.sweep()
        token.used = True
        now = self.clock()
        c = self.counters
        c["ws_connects"] += 1
        state: str | None = None
        replay: list[Note] = []
        session: WsSession | None = None
        if wsc is not None:
            old = self.sessions.get(wsc)
            if (old is not None and not self.refuse_recovery
                    and (old.owner_id, old.client_id) == (token.owner_id, token.client_id)):
                session = old
                state = "Successful"
                c["ws_recoveries_successful"] += 1
                if old.link is not None:  # taken over: the old connection is closed
                    previous = old.link
                    old.link = None
                    previous.session = None
                    previous.close(1008, "Session recovered by another connection")
                if self.policy.ws_replay == "buffer":
                    replay = list(old.buffer)
                else:
                    replay = [n for n in old.buffer if not n.sent]
            else:
                state = "Failed"
                c["ws_recoveries_failed"] += 1
        if session is None:
            session = self._new_session(token, now)
        session.link = link
        session.disconnected_at = None
        link.session = session
        self.links.append(link)
        key = pair_key(token.client_id, token.owner_id)
        self.open_max[key] = max(self.open_max[key],
                                 self.open_count(token.owner_id, token.client_id))
        return session, state, replay

    def _new_session(self, token: WsToken, now: float) -> WsSession:
        if len(self.sessions) >= MAX_SESSIONS:
            idle = [s for s in self.sessions.values() if s.link is None]
            for s in idle[: len(idle) // 2 + 1]:
                self.sessions.pop(s.wsc, None)
        self._ids += 1
        session = WsSession(f"ws-{self._ids}", new_token("S"), token.owner_id, token.client_id,
                            now, iso_now())
        self.sessions[session.wsc] = session
        return session

    def closed(self, link: Link) -> None:
        """A connection ended (any way): its session starts its recovery window."""
        if link in self.links:
            self.links.remove(link)
        session = link.session
        link.session = None
        if session is not None and session.link is link:
            session.link = None
            session.disconnected_at = self.clock()

    def connection_details(self, session: WsSession, state: str | None) -> str:
        p = self.policy
        request_id = str(uuid.uuid4())
        meta = {
            "type": "ConnectionDetails",
            "messageId": request_id,
            "status": 200,
            "wsc": {"token": session.wsc, "sequence": session.sequence},
            "headers": {"RCRequestId": request_id},
        }
        body: dict[str, Any] = {
            "creationTime": session.created_iso,
            "maxConnectionsPerSession": p.ws_max_connections,
            "recoveryBufferSize": p.ws_recovery_buffer,
            "recoveryTimeout": number(p.ws_recovery_timeout),
            "idleTimeout": number(p.ws_idle_timeout),
            "absoluteTimeout": number(p.ws_absolute_timeout),
            "maxActiveRequests": MAX_ACTIVE_REQUESTS,
        }
        if state is not None:
            body["recoveryState"] = state
        return json.dumps([meta, body])

    # -------------------------------------------------------------------- subscriptions
    def subscribe(self, session: WsSession, body: Any) -> Subscription:
        """Create the session's subscription, replacing any other (subscribing.md)."""
        filters = check_filters(body)
        session.subscription = Subscription(str(uuid.uuid4()), filters, iso_now())
        return session.subscription

    def find_subscription(self, session: WsSession, sub_id: str) -> Subscription:
        sub = session.subscription
        if sub is None or sub.id != sub_id:
            raise errors.not_found("Subscription")
        return sub

    def update_subscription(self, session: WsSession, sub_id: str, body: Any) -> Subscription:
        sub = self.find_subscription(session, sub_id)
        sub.filters = check_filters(body)
        return sub

    def delete_subscription(self, session: WsSession, sub_id: str) -> None:
        self.find_subscription(session, sub_id)
        session.subscription = None

    # ---------------------------------------------------------------------------- events
    def publish(self, event: str, body: Any, owner_id: str | None = None) -> int:
        """Send ``event`` (a path, ``~`` allowed) to every WS session (of ``owner_id``, or of
        any user) whose subscription has matching filters: one notification per matching
        filter. Returns how many notifications were produced (sent or buffered)."""
        self.sweep()
        produced = 0
        for session in list(self.sessions.values()):
            sub = session.subscription
            if sub is None or (owner_id is not None and session.owner_id != owner_id):
                continue
            wanted = normalize(event, session.owner_id)
            for f in sub.filters:
                if normalize(f, session.owner_id) == wanted:
                    self._notify(session, sub, expand(f, session.owner_id), body)
                    produced += 1
        return produced

    def _notify(self, session: WsSession, sub: Subscription, event: str, body: Any) -> None:
        session.sequence += 1
        note_id = str(uuid.uuid4())
        meta = {
            "type": "ServerNotification",
            "messageId": note_id,
            "status": 200,
            "headers": {"RCRequestId": str(uuid.uuid4())},
            "wsc": {"token": session.wsc, "sequence": session.sequence},
        }
        payload = {
            "uuid": note_id,
            "event": event,
            "timestamp": iso_now(),
            "subscriptionId": sub.id,
            "ownerId": session.owner_id,
            "body": body,
        }
        note = Note(session.sequence, note_id, json.dumps([meta, payload]))
        size = self.policy.ws_recovery_buffer
        if session.buffer.maxlen != size:
            session.buffer = deque(session.buffer, maxlen=size)
        session.buffer.append(note)
        if session.link is not None:
            session.link.deliver(note)

    def sent(self, note: Note) -> None:
        note.sent = True
        self.counters["ws_notifications_sent"] += 1

    # ---------------------------------------------------------------- oauth interaction
    def close_oauth_sessions(self, session_ids: set[str], code: int, reason: str) -> int:
        victims = [link for link in self.links if link.oauth_session_id in session_ids]
        for link in victims:
            link.close(code, reason)
        return len(victims)

    def close_dead_oauth(self, code: int, reason: str) -> int:
        """Close every connection whose OAuth session is no longer alive (after revoke-all)."""
        sessions = self.platform.sessions
        dead = {link.oauth_session_id for link in self.links
                if (s := sessions.get(link.oauth_session_id)) is None or not s.alive}
        return self.close_oauth_sessions(dead, code, reason)

    def drop(self, how: str) -> int:
        victims = list(self.links)
        for link in victims:
            if how == "abort":
                link.abort()
            else:
                link.close(1001, "Going away")
        return len(victims)

    # ------------------------------------------------------------------------- upkeep
    def sweep(self) -> None:
        now = self.clock()
        timeout = self.policy.ws_recovery_timeout
        for wsc in [w for w, s in self.sessions.items()
                    if s.link is None and s.disconnected_at is not None
                    and now - s.disconnected_at > timeout]:
            del self.sessions[wsc]
        stale = [v for v, t in self.tokens.items() if now - t.expires > TOKEN_RETENTION]
        for value in stale:
            del self.tokens[value]
        if len(self.tokens) > MAX_TOKENS:
            for value in sorted(self.tokens, key=lambda v: self.tokens[v].expires)[
                    : len(self.tokens) - MAX_TOKENS]:
                del self.tokens[value]

    def reset_counters(self) -> None:
        self.counters = _new_counters()
        self.open_max = Counter()
        for link in self.links:
            key = pair_key(link.client_id, link.owner_id)
            self.open_max[key] = self.open_count(link.owner_id, link.client_id)

    def counters_snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: dict(v) if isinstance(v, Counter) else v for k, v in self.counters.items()
        }
        by_pair: Counter[str] = Counter(pair_key(link.client_id, link.owner_id)
                                        for link in self.links)
        out["ws_open"] = len(self.links)
        out["ws_open_by_pair"] = dict(by_pair)
        out["ws_open_max"] = {k: v for k, v in self.open_max.items() if v}
        return out

    def sessions_snapshot(self) -> list[dict[str, Any]]:
        self.sweep()
        now = self.clock()
        out = []
        for s in self.sessions.values():
            sub = s.subscription
            out.append({
                "id": s.id,
                "owner_id": s.owner_id,
                "client_id": s.client_id,
                "connected": s.link is not None,
                "age": round(now - s.created, 3),
                "disconnected_for": (None if s.disconnected_at is None
                                     else round(now - s.disconnected_at, 3)),
                "subscription": None if sub is None else {"id": sub.id,
                                                          "eventFilters": list(sub.filters)},
                "sequence": s.sequence,
                "buffered": len(s.buffer),
                "unsent": sum(1 for n in s.buffer if not n.sent),
            })
        return out


