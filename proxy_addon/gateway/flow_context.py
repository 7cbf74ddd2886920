"""What the gateway's addons know about one flow, kept in ONE object on the flow.

The first addon that learns something about a flow (:mod:`.guard`: an OAuth route the login
interceptor answers; :mod:`.identify`: the client and its account) attaches a
:class:`FlowContext` under one metadata key; the later addons (:mod:`.login`,
:mod:`.rate_limit`, :mod:`.inject`, :mod:`.replay`, :mod:`.links`, :mod:`.request_metrics`) read
and update it. A flow without a context was refused before anyone identified it (or never got
that far).
"""

from __future__ import annotations

from dataclasses import dataclass

from mitmproxy import http
from mitmproxy.connection import ConnectionState

from ..config import ClientConfig
from ..tokens.pool import AccountTokens

KEY = "tokenproxy"  # the one metadata key of the gateway


@dataclass(slots=True)
class FlowContext:
    """One flow's state between the gateway's hooks."""

    login: bool = False  # an OAuth route answered by the login interceptor (guard)
    client: ClientConfig | None = None  # who is calling (identify; login: on a login)
    account: AccountTokens | None = None  # whose token it gets (identify): None, not admitted
    generation: int = -1  # token generation injected; -1 before injection (inject)
    leased: bool = False  # holds a lease on ``generation`` in the pool (inject)
    replayed: bool = False  # sent again after a token 401 (replay)
    buffered: int = 0  # body bytes reserved in the process's replay buffer (inject)
    rate_operation: str = ""  # method and path template, for learning its group (rate_limit)
    rate_group: str | None = None  # the rate-limit group it was admitted in (rate_limit)
    rate_admitted: float | None = None  # when its group let it go (monotonic; rate_limit)
    rate_slot: str | None = None  # its slot in the store's shared window (rate_limit)
    rate_waited: float = 0.0  # seconds it waited for its group's budget (rate_limit)
    rate_refused: bool = False  # answered 429 by the proxy itself (rate_limit)
    rate_resent: bool = False  # sent again after the platform's 429 (rate_limit)
    ws_token: bool = False  # POST /restapi/oauth/wstoken, answered by the proxy (events_route)
    events_socket: bool = False  # an upgrade on the events path (guard -> events_route)
    events_ticket: str | None = None  # the hub's ticket of that upgrade (events_route)


def context_of(flow: http.HTTPFlow) -> FlowContext | None:
    return flow.metadata.get(KEY)


def attach(flow: http.HTTPFlow) -> FlowContext:
    """The flow's context, created on first use."""
    context: FlowContext | None = flow.metadata.get(KEY)
    if context is None:
        context = flow.metadata[KEY] = FlowContext()
    return context


def admitted(flow: http.HTTPFlow) -> FlowContext | None:
    """The context of a flow identified as a client of an account (not refused, no login)."""
    context: FlowContext | None = flow.metadata.get(KEY)
    return context if context is not None and context.account is not None else None


def client_gone(flow: http.HTTPFlow) -> bool:
    """The app closed its connection (its own timeout, a crash): nobody waits for an answer.
    While a hook runs mitmproxy only queues the close event, so ``flow.live`` cannot tell; the
    connection's state is set by the reader as soon as it sees EOF or a reset."""
    return not flow.client_conn.state & ConnectionState.CAN_READ
