"""One account's events: its apps' sessions multiplexed over few upstream sockets.

A platform session allows ``maxConnectionsPerSession`` (50) sockets and each one costs a ws token
from the Auth budget (5 a minute, shared with the token endpoint), so 100 apps cannot each have
one. The channel keeps at most ``[events] upstream_sockets`` :class:`~.upstream_link.UpstreamLink`
per account; an app's session is assigned to the least loaded. The platform allows ONE
subscription per socket (ringcentral-api-docs ``docs/notifications/websockets/subscribing.md``),
so each link's subscription carries the union of its apps' filters, updated as apps subscribe,
change filters and leave: changes that arrive together go out as one ``POST``/``PUT``/``DELETE
/restapi/v1.0/subscription`` over the link, none at all when the union does not change. An app's
subscribe is answered once the platform accepted the union (a filter the platform refuses is
answered to the app that sent it, the others go on). Each ``ServerNotification`` is routed to the
sessions on its link whose filters match its ``event`` (:mod:`.filters`), once: a link remembers
the ``uuid`` of recent notifications, so a platform that replays its whole buffer after a
recovery delivers nothing twice. When a link's platform session is lost (recovery refused or
too late) the subscription is created again and each app on it gets the platform's own signal,
a ``ConnectionDetails`` with ``recoveryState: "Failed"`` (``session-recovery.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..ops.events_metrics import EventsMetrics
from . import frames
from .app_session import AppSession, AppSubscription
from .filters import Filter, FilterError, parse_filter
from .rest_budget import RestBudget
from .upstream_link import LinkClosed, UpstreamLink

log = logging.getLogger("tokenproxy.events")

SUBSCRIPTION_PATH = "/restapi/v1.0/subscription"
SEEN_UUIDS = 4096  # per link: more than the platform's recovery buffer (100)
BATCH_DELAY = 0.02  # s: subscription changes arriving together go out as one
LINK_IDLE_CLOSE = 30.0  # s a link without apps stays open
# headers an app may not send through the platform's socket: credentials and hop-by-hop
DROPPED_HEADERS = frozenset({"authorization", "cookie", "host", "connection", "upgrade",
                             "proxy-authorization", "x-forwarded-for", "forwarded"})


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    upstream_sockets: int
    recovery_timeout: float
    recovery_buffer: int


@dataclass(slots=True)
class _Change:
    session: AppSession | None  # None: re-send the link's union (its session was lost)
    filters: list[Filter] | None  # None: the app's subscription goes
    replace: bool = True  # a POST: a new subscription id; a PUT keeps the app's id
    future: asyncio.Future[frames.Frame | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(slots=True)
class _LinkState:
    link: UpstreamLink
    changes: list[_Change] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    filters: frozenset[Any] = frozenset()  # the keys the platform's subscription carries
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    idle_since: float | None = None
    task: asyncio.Task[None] | None = None


class AccountChannel:
    def __init__(self, account: str, settings: ChannelSettings,
                 make_link: Callable[[int, AccountChannel], UpstreamLink],
                 metrics: EventsMetrics, rewrite: Callable[[str, str], str],
                 budget: RestBudget | None = None) -> None:
        self.account = account
        self._budget = budget  # REST over the socket spends the API budget (rate_limits)
        self._settings = settings
        self._make_link = make_link
        self._metrics = metrics
        self._rewrite = rewrite
        self.sessions: dict[str, AppSession] = {}
        self._links: dict[int, _LinkState] = {}

    # -- app sessions -----------------------------------------------------------------------

    def open_session(self, client: str, wsc: str | None) -> tuple[AppSession, bool | None]:
        """The session an app's new socket serves: its own again when it asks to recover
        (``wsc``) in time, else a new one. The second value is the recovery outcome (None:
        not asked)."""
        if wsc is not None:
            session = self.sessions.get(wsc)
            if session is not None and session.client == client and session.socket is None \
                    and not session.expired(time.monotonic(), self._settings.recovery_timeout):
                return session, True
        session = AppSession(client, self.account, self._settings.recovery_buffer,
                             self._rewrite)
        self.sessions[session.wsc] = session
        return session, (None if wsc is None else False)

    async def close_session(self, session: AppSession) -> None:
        """The app's socket closed: the session waits ``recovery_timeout`` for it."""
        await session.detach()

    def reap(self, now: float) -> None:
        """Forget sessions whose recovery time passed (their filters leave the union) and
        close links nobody used for a while."""
        for wsc, session in list(self.sessions.items()):
            if session.expired(now, self._settings.recovery_timeout):
                del self.sessions[wsc]
                if session.subscription is not None and session.link_index in self._links:
                    self._queue(session.link_index, _Change(None, None))
        for index, state in list(self._links.items()):
            used = any(s.link_index == index for s in self.sessions.values())
            if used:
                state.idle_since = None
            elif state.idle_since is None:
                state.idle_since = now
            elif now - state.idle_since >= LINK_IDLE_CLOSE:
                del self._links[index]
                asyncio.get_running_loop().create_task(self._close_link(state))

    # -- subscriptions ----------------------------------------------------------------------

    async def subscribe(self, session: AppSession, filters: list[Filter] | None,
                        replace: bool = True) -> frames.Frame | None:
        """Set (``filters``) or remove (None) the app's subscription. None once the platform's
        subscription serves it; else the platform's error answer. Raises
        :class:`~.upstream_link.LinkClosed` when the platform cannot be reached in time."""
        index = self._link_of(session)
        change = _Change(session, filters, replace)
        self._queue(index, change)
        return await change.future

    def _queue(self, index: int, change: _Change) -> None:
        state = self._links[index]
        state.changes.append(change)
        state.wake.set()

    async def _sync(self, state: _LinkState) -> None:
        while True:
            await state.wake.wait()
            await asyncio.sleep(BATCH_DELAY)
            state.wake.clear()
            batch, state.changes = state.changes, []
            if batch:
                await self._apply(state, batch)

    async def _apply(self, state: _LinkState, batch: list[_Change]) -> None:
        link = state.link
        wanted = {c.session.wsc: c.filters for c in batch if c.session is not None}
        union: dict[Any, Filter] = {}
        for session in self.sessions.values():
            if session.link_index != link.index:
                continue
            mine = wanted[session.wsc] if session.wsc in wanted else (
                session.subscription.filters if session.subscription else None)
            for f in mine or ():
                union.setdefault(f.key, f)
        try:
            refusal = await self._send_union(state, list(union.values()))
        except LinkClosed as exc:
            for change in batch:
                if change.future.done():
                    continue
                if change.session is None:
                    change.future.set_result(None)  # nobody waits: the next link_up re-sends
                else:
                    change.future.set_exception(LinkClosed(str(exc)))
            return
        if refusal is not None and len(batch) > 1:
            for change in batch:  # find whose filters the platform refused: one at a time
                await self._apply(state, [change])
            return
        for change in batch:
            session = change.session
            if session is not None and refusal is None:
                kept = session.subscription.id if session.subscription is not None \
                    and not change.replace else frames.new_id()
                session.subscription = None if change.filters is None else AppSubscription(
                    kept, change.filters)
            if not change.future.done():
                change.future.set_result(refusal)

    async def _send_union(self, state: _LinkState, union: list[Filter]) -> frames.Frame | None:
        """Make the link's platform subscription carry ``union``; the refusal, or None."""
        link = state.link
        keys = frozenset(f.key for f in union)
        if link.subscription_id is not None and keys == state.filters:
            return None  # the platform's subscription already says this
        if not union:
            if link.subscription_id is not None:
                await link.request("DELETE", f"{SUBSCRIPTION_PATH}/{link.subscription_id}")
                link.subscription_id = None
            state.filters = frozenset()
            return None
        body = {"eventFilters": [f.text for f in union],
                "deliveryMode": {"transportType": "WebSocket"}}
        answer = None
        if link.subscription_id is not None:
            answer = await link.request("PUT", f"{SUBSCRIPTION_PATH}/{link.subscription_id}",
                                        body, True)
            if _status(answer) == 404:
                link.subscription_id = None
        if link.subscription_id is None:
            answer = await link.request("POST", SUBSCRIPTION_PATH, body, True)
        assert answer is not None
        if not 200 <= _status(answer) < 300:
            log.warning("events %s: the platform refused the subscription (%s %s)",
                        self.account, _status(answer), _error_code(answer),
                        extra={"event": "events_subscription_refused", "account": self.account})
            return answer
        created = answer.body.get("id") if isinstance(answer.body, dict) else None
        if not isinstance(created, str):
            headers = answer.meta.get("headers") or {}
            created = headers.get("WSG-SubscriptionId") if isinstance(headers, dict) else None
        link.subscription_id = str(created) if created else link.subscription_id
        state.filters = keys
        return None

    # -- REST over the socket ---------------------------------------------------------------

    async def rest(self, session: AppSession, frame: frames.Frame) -> str:
        """Send an app's ClientRequest over its link; the answer frame for the app (its own
        messageId, links pointing at the proxy)."""
        link = self._links[self._link_of(session)].link
        meta = frame.meta
        headers = {k: v for k, v in (meta.get("headers") or {}).items()
                   if isinstance(k, str) and k.lower() not in DROPPED_HEADERS
                   and isinstance(v, str | int | float)}
        method, path = str(meta["method"]).upper(), str(meta["path"])
        admission = None
        if self._budget is not None:  # raises RateRefused: the hub answers the proxy's 429
            admission = await self._budget.admit(self.account, session.client, method, path)
        answer = await link.request(method, path, frame.body, frame.has_body, headers or None,
                                    meta.get("query") or None)
        if admission is not None and self._budget is not None:
            answered = answer.meta.get("headers")
            answered = answered if isinstance(answered, dict) else {}
            self._budget.learn(self.account, method, admission,
                               {str(k).lower(): str(v) for k, v in answered.items()},
                               _status(answer))
        out = {key: value for key, value in answer.meta.items() if key != "wsc"}
        out["messageId"] = frame.message_id
        self._metrics.relayed_event(self.account, "client_request")
        return session.rewrite(frames.dump(out, answer.body, answer.has_body))

    # -- the links' listener ----------------------------------------------------------------

    def link_up(self, link: UpstreamLink, outcome: str) -> None:
        state = self._links.get(link.index)
        if state is None:
            return
        if outcome == "lost":
            state.filters = frozenset()
            state.seen.clear()
            log.warning("events %s: the platform's socket session was lost (recovery failed "
                        "or too late): subscriptions re-created, apps told recoveryState "
                        "Failed", self.account, extra={"event": "events_recovery_failed",
                                                        "account": self.account})
            for session in self.sessions.values():
                if session.link_index == link.index and session.subscription is not None:
                    session.send(session.connection_details(
                        False, timeout=self._settings.recovery_timeout))
            self._queue(link.index, _Change(None, None))
        elif outcome == "recovered":
            log.info("events %s: platform socket recovered", self.account,
                     extra={"event": "events_recovered", "account": self.account})

    def link_down(self, link: UpstreamLink) -> None:
        log.info("events %s: platform socket dropped; recovering", self.account,
                 extra={"event": "events_link_down", "account": self.account})

    def notification(self, link: UpstreamLink, frame: frames.Frame) -> None:
        state = self._links.get(link.index)
        body = frame.body
        if state is None or not isinstance(body, dict):
            self._metrics.bad_upstream_frame(self.account)
            return
        uuid = body.get("uuid")
        if isinstance(uuid, str) and uuid:
            if uuid in state.seen:
                return  # replayed after a recovery: delivered already
            state.seen[uuid] = None
            if len(state.seen) > SEEN_UUIDS:
                state.seen.popitem(last=False)
        try:
            event = parse_filter(body.get("event"))
        except FilterError:
            self._metrics.bad_upstream_frame(self.account)
            return
        delivered = 0
        for session in self.sessions.values():
            subscription = session.subscription
            if session.link_index == link.index and subscription is not None \
                    and subscription.matches(event):
                session.notify(frame.meta, body)
                delivered += 1
        if delivered:
            self._metrics.relayed_event(self.account, "notification", delivered)

    # -- links ------------------------------------------------------------------------------

    def _link_of(self, session: AppSession) -> int:
        if session.link_index is not None and session.link_index in self._links:
            return session.link_index
        load = {index: 0 for index in self._links}
        for other in self.sessions.values():
            if other.link_index in load:
                load[other.link_index] += 1
        if len(self._links) < self._settings.upstream_sockets:
            index = next(i for i in range(len(self._links) + 1) if i not in self._links)
            link = self._make_link(index, self)
            state = _LinkState(link)
            self._links[index] = state
            state.task = asyncio.get_running_loop().create_task(self._sync(state))
            link.start()
        else:
            index = min(load, key=lambda i: load[i])
        session.link_index = index
        return index

    async def _close_link(self, state: _LinkState) -> None:
        if state.task is not None:
            state.task.cancel()
        for change in state.changes:
            if not change.future.done():
                change.future.set_exception(LinkClosed("the link closed"))
        await state.link.close()

    async def close(self) -> None:
        for state in list(self._links.values()):
            await self._close_link(state)
        self._links.clear()
        for session in list(self.sessions.values()):
            if session.socket is not None:
                with contextlib.suppress(Exception):
                    await session.socket.close(code=1001, message=b"tokenproxy is stopping")

    def snapshot(self) -> dict[str, Any]:
        return {"app_sessions": len(self.sessions),
                "app_sockets": sum(1 for s in self.sessions.values() if s.socket is not None),
                "upstream_sockets": sum(1 for s in self._links.values() if s.link.up.is_set()),
                "subscribed_filters": sum(len(s.filters) for s in self._links.values())}


def _status(answer: frames.Frame) -> int:
    status = answer.meta.get("status")
    return status if isinstance(status, int) else 500


def _error_code(answer: frames.Frame) -> str:
    body = answer.body
    return str(body.get("errorCode", ""))[:40] if isinstance(body, dict) else ""
