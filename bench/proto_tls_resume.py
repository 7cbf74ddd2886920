"""PROTOTYPE for issue 16 (docs/design/upstream-pool.md, question 2) — not product code.

mitmproxy offers no TLS session resumption towards the upstream: ``TlsConfig.tls_start_server``
builds a fresh ``SSL.Connection`` from a cached ``SSL.Context`` for every server connection and
never calls ``set_session`` (mitmproxy/addons/tlsconfig.py, the TODO above ``class TlsConfig``:
"We should re-use SSL.Context options here, if only for TLS session resumption"). This addon,
loaded with ``mitmdump -s`` (scripts run before TlsConfig, so it asks TlsConfig for the
connection first; TlsConfig then leaves it alone), adds client-side resumption: the session
of a server connection is kept when the connection ends (by then TLS 1.3 tickets have been
read) and set on the next connection to the same (address, SNI) before its handshake.
"""

from __future__ import annotations

import logging

from mitmproxy import connection, ctx, tls
from OpenSSL import SSL

log = logging.getLogger("proto_tls_resume")


class TlsResume:
    def __init__(self) -> None:
        self.sessions: dict[tuple, SSL.Session] = {}
        self.live: dict[str, tuple[tuple, SSL.Connection]] = {}
        self.offered = 0
        self.resumed = 0

    def tls_start_server(self, data: tls.TlsData) -> None:
        server = data.conn
        if not isinstance(server, connection.Server):
            return
        if data.ssl_conn is None:  # scripts run before TlsConfig: let it build the connection
            ctx.master.addons.get("tlsconfig").tls_start_server(data)
        key = (server.address, server.sni)
        session = self.sessions.get(key)
        if session is not None:
            data.ssl_conn.set_session(session)
            self.offered += 1
        self.live[server.id] = (key, data.ssl_conn)

    def tls_established_server(self, data: tls.TlsData) -> None:
        if data.ssl_conn is not None and SSL._lib.SSL_session_reused(data.ssl_conn._ssl):  # type: ignore[attr-defined]
            self.resumed += 1

    def server_disconnected(self, data) -> None:  # ServerConnectionHookData
        entry = self.live.pop(data.server.id, None)
        if entry is None:
            return
        key, ssl_conn = entry
        session = ssl_conn.get_session()
        if session is not None:
            self.sessions[key] = session

    def done(self) -> None:
        log.warning("proto_tls_resume: offered %d, resumed %d", self.offered, self.resumed)


addons = [TlsResume()]
