"""TLS session resumption on mitmproxy's own upstream connections (issue 16, item 4).

mitmproxy ties each upstream connection to one client connection. Every new app connection
therefore opens a new TLS connection to the platform, and mitmproxy never resumes a session:
``TlsConfig.tls_start_server`` builds a fresh ``SSL.Connection`` and never calls
``set_session``. See the TODO above ``class TlsConfig`` in ``mitmproxy/addons/tlsconfig.py``.
This addon comes right after ``TlsConfig`` in the master. When a verified connection ends, it
keeps the connection's session (its TLS 1.3 tickets have been read by then). The next connection
to the same address and SNI offers that session, so an app that opens a connection per request
costs an abbreviated handshake, not a full one. Measured on bare mitmdump with connection-per-
request clients: 83 % of connections resumed, +24 % req/s (``docs/design/upstream-pool.md`` §2).

Only sessions of connections whose handshake completed are kept: those were verified as
configured. The cache is bounded: one entry per upstream (address, SNI), 64 at most, oldest
first out.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from mitmproxy import connection, tls
from mitmproxy.proxy import server_hooks

if TYPE_CHECKING:
    from OpenSSL import SSL  # mitmproxy's TLS library; only its types are named here

MAX_UPSTREAMS = 64

Key = tuple[object, str | None]


class UpstreamTlsResumption:
    def __init__(self) -> None:
        self._sessions: OrderedDict[Key, SSL.Session] = OrderedDict()
        self._live: dict[str, tuple[Key, SSL.Connection]] = {}  # server connection id →

    def tls_start_server(self, data: tls.TlsData) -> None:
        server = data.conn
        if not isinstance(server, connection.Server) or data.ssl_conn is None:
            return  # not ours, or TlsConfig did not build the connection
        key: Key = (server.address, server.sni)
        session = self._sessions.get(key)
        if session is not None:
            data.ssl_conn.set_session(session)
        self._live[server.id] = (key, data.ssl_conn)

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        entry = self._live.pop(data.server.id, None)
        if entry is None or not data.server.tls_established:
            return  # no TLS, or a handshake that failed: nothing worth resuming
        key, ssl_conn = entry
        session = ssl_conn.get_session()
        if session is None:
            return
        self._sessions[key] = session
        self._sessions.move_to_end(key)
        while len(self._sessions) > MAX_UPSTREAMS:
            self._sessions.popitem(last=False)
