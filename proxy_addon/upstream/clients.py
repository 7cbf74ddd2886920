"""The process's ways out to the platform, split by plane (issue 16, item 2).

* **control**: the token endpoint's own client (logins, refreshes, revocations): a few
  connections that nothing else uses, so a renewal never queues behind API traffic;
* **data**: API traffic the proxy sends itself (replays of token 401s): at most 100
  connections; waiting for a free one is bounded by ``upstream_timeout`` like every phase of
  the request (a full pool fails that replay, it does not hang).

Forwarded requests still leave through mitmproxy's own per-client connection; moving them onto a
shared pool is the rest of issue 16 (``docs/design/upstream-pool.md``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from ..config import Config

CONTROL_CONNECTIONS = 4  # renewals are single-flight per account: a few suffice
DATA_CONNECTIONS = 100
DATA_KEEPALIVE = 20


@dataclass(frozen=True)
class UpstreamClients:
    control: httpx.AsyncClient  # the token endpoint's, never shared
    data: httpx.AsyncClient  # replays (API requests)


def _client(config: Config, connections: int, keepalive: int) -> httpx.AsyncClient:
    proxy = config.proxy
    return httpx.AsyncClient(
        timeout=proxy.upstream_timeout, verify=proxy.verify_upstream_tls, follow_redirects=False,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=keepalive))


@contextlib.asynccontextmanager
async def upstream_clients(config: Config, *, control_connections: int = CONTROL_CONNECTIONS,
                           data_connections: int = DATA_CONNECTIONS
                           ) -> AsyncIterator[UpstreamClients]:
    """Both clients, closed on exit."""
    async with _client(config, control_connections, control_connections) as control, \
            _client(config, data_connections, min(DATA_KEEPALIVE, data_connections)) as data:
        yield UpstreamClients(control=control, data=data)
