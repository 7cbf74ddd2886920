"""A lean mitmproxy master for tokenproxy: only the addons a reverse proxy needs, and the
order in which a request meets tokenproxy's own (:class:`Gateway`).

``mitmdump`` loads some 35 addons that every flow passes through; tokenproxy needs the core,
the proxy server, layer selection and TLS, plus its gateway (no DNS resolver addon: it serves
mitmproxy's DNS mode only; upstream names resolve through the OS). Every hook event visits
every addon of the chain, so each one left out saves work on every request; the gateway's
addons are children of one :class:`Gateway` (mitmproxy's ``addons`` attribute), which costs a
hook lookup per child instead of a dispatch per addon. This module also makes mitmproxy's own
error answers (e.g. the upstream refusing connections) JSON in the platform's envelope instead
of HTML, so apps can parse them.
"""

from __future__ import annotations

import asyncio
import logging
import os

from mitmproxy import addons as _unused  # noqa: F401 - import order: registers addon modules
from mitmproxy import options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig
from mitmproxy.http import Headers, Response
from mitmproxy.master import Master
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1

from ..config import Config
from ..upstream.tls_resume import UpstreamTlsResumption
from . import early_answer, errors, stream_abort
from .audit import Audit
from .events_route import EventsRoute
from .forward import Forward
from .guard import Guard
from .identify import Identify
from .in_flight import InFlight
from .inject import Inject
from .links import Links
from .listening import Listening
from .login import Login
from .rate_limit import RateLimit
from .replay import Replay
from .request_id import RequestId
from .request_metrics import RequestMetrics
from .request_span import RequestSpan
from .scope import Scope

log = logging.getLogger("tokenproxy.master")


class Gateway:
    """tokenproxy's addons, one concern each, in the order a request meets them. mitmproxy
    calls each hook on them in this order and awaits an addon's coroutine before the next
    addon's same hook, so each may rely on what the ones before it decided (an addon skips a
    flow that already has an answer)."""

    name = "gateway"

    def __init__(self, *, guard: Guard, identify: Identify, login: Login | None,
                 inject: Inject, replay: Replay, links: Links,
                 request_metrics: RequestMetrics, listening: Listening,
                 forward: Forward | None = None, rate_limit: RateLimit | None = None,
                 events: EventsRoute | None = None, scope: Scope | None = None,
                 in_flight: InFlight | None = None, request_id: RequestId | None = None,
                 audit: Audit | None = None, request_span: RequestSpan | None = None) -> None:
        self.addons: list[object] = [
            # requests in flight, counted for a graceful drain; Connection: close while it runs
            *([in_flight] if in_flight is not None else []),
            # requestheaders: X-Request-Id kept or made, traceparent checked; both ways
            *([request_id] if request_id is not None else []),
            # [tracing]: the request's span starts (traceparent upstream: the proxy's span)
            # and is current in every hook, down to request_span.end
            *([request_span] if request_span is not None else []),
            guard,  # requestheaders: TLS, target, OAuth routes, spoofable/hop-by-hop headers
            identify,  # requestheaders: client key or virtual token, else 401 (throttled)
            *([scope] if scope is not None else []),  # requestheaders: the client's allow list
            # requestheaders: a ws token -> the events hub; request: wstoken answered
            *([events] if events is not None else []),
            *([login] if login is not None else []),  # request: /restapi/oauth/token, revoke
            # requestheaders: the group's budget, or a fair wait, or 429; response: 429 resent
            *([rate_limit] if rate_limit is not None else []),
            inject,  # body policy; request: lease + Authorization; leases end at answer/error
            *([forward] if forward is not None else []),  # request: out through the pool
            replay,  # response: token 401 -> renew -> send again (at most twice)
            links,  # responseheaders: streaming; response: links point at the proxy
            request_metrics,  # responseheaders: upstream latency; response/error: counted
            listening,  # running: "tokenproxy listening on URL"
            *([audit] if audit is not None else []),  # response/error: one audit line
            # response: X-Request-Id on the final answer (a replayed one included)
            *([request_id.end] if request_id is not None else []),
            # every hook: the span detached again; response/error: the span ends
            *([request_span.end] if request_span is not None else []),
        ]


def build_master(config: Config, gateway: Gateway, *extra_addons: object,
                 tls_pem: str | None = None) -> Master:
    """A master serving ``config.proxy.listen`` in reverse mode to ``config.proxy.upstream``
    through ``gateway``; with ``tls_pem`` (certificate and key in one PEM file), apps connect
    over TLS."""
    opts = options.Options()
    master = Master(opts)
    master.addons.add(
        core.Core(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        UpstreamTlsResumption(),  # after TlsConfig: it offers a kept session on its connection
        errorcheck.ErrorCheck(repeat_errors_on_stderr=True),
        gateway,
        *extra_addons,
    )
    listen = config.proxy.listen
    opts.update(
        mode=[f"reverse:{config.proxy.upstream}"],
        listen_host=listen.host,
        listen_port=listen.port,
        connection_strategy="lazy",  # unknown clients are refused before any upstream connect
        ssl_insecure=not config.proxy.verify_upstream_tls,
        keep_host_header=False,
        http2=False,
        # a backstop for what the addon decides per request: no body beyond the replay limit
        # is ever buffered, in either direction (chunked ones included, once they grow past it)
        stream_large_bodies=str(max(1, config.proxy.replay_body_limit)),
    )
    # the CA bundle of SSL_CERT_FILE / SSL_CERT_DIR (an egress proxy's CA), as the pool and
    # the token endpoint's client read it; mitmproxy itself reads only certifi's bundle
    if os.environ.get("SSL_CERT_FILE"):
        opts.update(ssl_verify_upstream_trusted_ca=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        opts.update(ssl_verify_upstream_trusted_confdir=os.environ["SSL_CERT_DIR"])
    if tls_pem is not None:
        opts.update(certs=[f"*={tls_pem}"])
    install_json_error_pages()
    skip_message_type_checks()
    early_answer.install()  # refusals at request headers never read the body
    stream_abort.install()  # a streamed answer that cannot go on cuts the app's connection
    return master


def _json_error_response(status_code: int, message: str = "") -> bytes:
    if status_code == 502:
        code, text = errors.UPSTREAM_UNREACHABLE, f"The platform is unreachable: {message}"
    else:
        code, text = errors.PROXY_ERROR, message or "proxy error"
    response = Response.make(
        status_code, errors.error_body(code, text),
        Headers(Connection="close", Content_Type="application/json",
                X_Tokenproxy_Error=code))
    return http1.assemble_response(response)


def install_json_error_pages() -> None:
    """Replace mitmproxy's HTML error pages (HTTP/1) with JSON in the platform's envelope.

    mitmproxy offers no hook for this answer: it is written by the HTTP/1 layer when the
    upstream cannot be reached. The replacement keeps the original's signature; if a future
    mitmproxy drops the function, the proxy keeps working with HTML error pages.
    """
    if hasattr(_http1, "make_error_response"):
        _http1.make_error_response = _json_error_response
    else:  # pragma: no cover - depends on the mitmproxy version
        log.warning("mitmproxy has no make_error_response: error pages stay HTML")


def skip_message_type_checks() -> None:
    """Skip mitmproxy's debug-mode type check of every field of every request and response.

    ``mitmproxy.http.MessageData.__post_init__`` runs ``typecheck.check_option_type`` on each
    field of each message unless Python runs with ``-O`` (it sits under ``if __debug__``): about
    8 % of the proxy's CPU per request in the benchmark's profile. The messages are built by
    mitmproxy's HTTP/1 parser and by this package with the right types, and ``-O`` is no option
    (it would also drop the state machines' event assertions, which guard the connections).
    Version-guarded: without the hook there is nothing to skip.
    """
    from mitmproxy.http import MessageData

    if "__post_init__" in vars(MessageData):
        MessageData.__post_init__ = _no_check  # type: ignore[method-assign]


def _no_check(self: object) -> None:
    return None


def listen_tcp_only(reuse_port: bool = False) -> None:
    """Serve apps over TCP only, optionally binding with SO_REUSEPORT so several worker
    processes (``--workers``) serve one address.

    mitmproxy's ``reverse:https://…`` mode listens on UDP as well (``transport_protocol =
    "both"``, for HTTP/3): a second worker then fails with "address already in use" on the UDP
    port, and a single process exposes a QUIC/UDP door no app needs and nothing here guards.
    mitmproxy has no option for either: its listener is rebound here (version-guarded)."""
    from mitmproxy.proxy import mode_servers

    server_class = getattr(mode_servers, "AsyncioServerInstance", None)
    original = getattr(server_class, "listen", None)
    if server_class is None or original is None:
        raise RuntimeError("this mitmproxy version has no AsyncioServerInstance.listen: "
                           "tokenproxy cannot bind its listener with it")
    original = getattr(original, "tokenproxy_original", original)

    async def listen(self, host, port):  # type: ignore[no-untyped-def]
        if self.mode.transport_protocol in ("tcp", "both"):
            return [await asyncio.start_server(self.handle_stream, host, port,
                                               reuse_port=reuse_port or None)]
        return await original(self, host, port)

    listen.tokenproxy_original = original  # type: ignore[attr-defined]
    server_class.listen = listen
