"""The first addon a request meets: what may not go on at all, decided on the request line and
headers alone, and what an app may not say.

``requestheaders``: plain HTTP where TLS is required, ``CONNECT``, a target naming another host
or spelled ambiguously (dot-segments, encoded slashes: :mod:`.request_target`), the emulator's
admin routes, OAuth routes the proxy does not serve (403; ``wstoken`` and the events path are
marked for :mod:`.events_route` when ``[events]`` is on) and oversized login forms are answered
here (:func:`~.early_answer.refuse_at_headers`: the body is never read). A request that goes on
leaves with its path normalised, without the headers that would let it speak for a proxy in
front of us, and without the hop-by-hop headers it lists in ``Connection``. An OAuth route the
login interceptor answers is marked in the flow's :class:`~.flow_context.FlowContext`
(``login``) for :mod:`.login`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from mitmproxy import http

from ..virtual.login import LoginInterceptor
from . import errors
from .early_answer import refuse_at_headers
from .flow_context import attach
from .request_target import TargetRefused, is_own_authority, parse_target

# Headers an app must not set: they would claim to come from a proxy in front of us.
SPOOFABLE_HEADERS = ("x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
                     "x-forwarded-port", "x-forwarded-prefix", "forwarded", "x-real-ip",
                     "proxy-authorization", "proxy-connection")
_SPOOFABLE_NAMES = frozenset(name.encode() for name in SPOOFABLE_HEADERS)
OAUTH_ROUTE = "/restapi/oauth"  # routes compare lowercase, without a trailing slash
WS_TOKEN_ROUTE = "/restapi/oauth/wstoken"
EMULATOR_ROUTE = "/_emulator"
LOGIN_FORM_LIMIT = 64 * 1024  # bytes: a login form is a few hundred


class Guard:
    def __init__(self, require_tls: bool, public_url: str | None = None,
                 login_enabled: bool = False, events_path: str | None = None) -> None:
        self._require_tls = require_tls
        self._public_netloc = urlsplit(public_url).netloc if public_url else None
        self._login_enabled = login_enabled  # OAuth token/revoke routes answered by the proxy
        self._events_path = events_path.lower() if events_path else None  # [events] enabled

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        refusal = self._refusal(flow)
        if refusal is not None:
            refuse_at_headers(flow, refusal)
            return
        if any(name.lower() in _SPOOFABLE_NAMES for name, _ in request.headers.fields):
            for name in SPOOFABLE_HEADERS:  # never let an app speak for the proxy
                request.headers.pop(name, None)
        for name in _connection_tokens(request.headers.get("connection", "")):
            request.headers.pop(name, None)  # hop-by-hop, listed by the client

    def _refusal(self, flow: http.HTTPFlow) -> http.Response | None:
        """The answer for a request that may not go on, or None. Leaves the normalised path
        in the request (see :mod:`.request_target`)."""
        request = flow.request
        if self._require_tls and not flow.client_conn.tls_established:
            return errors.error_response(
                400, "TPX-TLS-REQUIRED", "This proxy only accepts HTTPS: use https:// in the "
                "server URL (and treat any credential just sent in clear as exposed).")
        if request.method.upper() == "CONNECT":
            return errors.error_response(
                405, errors.BAD_TARGET, "CONNECT is not served: this is a reverse proxy "
                "to the platform, not a forward proxy.")
        if request.authority:  # absolute-form: origin-form upstream, and only for us
            if not is_own_authority(request.authority, flow.client_conn.sockname,
                                    self._public_netloc):
                return errors.error_response(
                    400, errors.BAD_TARGET, "The request target names another host: "
                    "send the path only (GET /restapi/... HTTP/1.1).")
            request.authority = ""
        try:
            target = parse_target(request.path)
        except TargetRefused as exc:
            return errors.error_response(400, errors.BAD_TARGET,
                                               f"Bad request target: {exc}.")
        if target.path != request.path:
            request.path = target.path
        route = target.route
        if route == EMULATOR_ROUTE or route.startswith(EMULATOR_ROUTE + "/"):
            return errors.error_response(
                404, errors.NOT_SERVED, "The emulator's admin routes are never served "
                "through the proxy.")
        if self._events_path is not None:
            if route == self._events_path:
                attach(flow).events_socket = True  # events_route checks the upgrade
                return None
            if route == WS_TOKEN_ROUTE:
                attach(flow).ws_token = True  # answered by events_route once identified
                return None
        if route == OAUTH_ROUTE or route.startswith(OAUTH_ROUTE + "/"):
            query = target.path.partition("?")[2]
            canonical = route + ("?" + query if query else "")
            if self._login_enabled and LoginInterceptor.handles(canonical):
                request.path = canonical  # the interceptor matches the canonical spelling
                attach(flow).login = True
                return _login_form_refusal(request)
            return errors.error_response(
                403, errors.OAUTH_MANAGED,
                "tokenproxy manages this account's OAuth tokens: do not log in through the "
                "proxy; send your client key as 'Authorization: Bearer <key>' on API calls.")
        return None


def _login_form_refusal(request: http.Request) -> http.Response | None:
    """Login forms are small: refuse one beyond LOGIN_FORM_LIMIT before reading it."""
    length = request.headers.get("content-length", "")
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        return errors.error_response(
            411, errors.BODY_REFUSED, "Send the login form with a Content-Length.")
    if length.isdigit() and int(length) > LOGIN_FORM_LIMIT:
        return errors.error_response(
            413, errors.BODY_REFUSED,
            f"A login form is at most {LOGIN_FORM_LIMIT} bytes.")
    return None


def _connection_tokens(value: str) -> list[str]:
    """Header names a client lists in ``Connection`` (hop-by-hop: not forwarded)."""
    names = [t.strip().lower() for t in value.split(",") if t.strip()]
    return [n for n in names if n not in ("keep-alive", "close", "upgrade")]
