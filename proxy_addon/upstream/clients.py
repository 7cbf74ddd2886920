"""The process's ways out to the platform, split by plane (issue 16, items 1 and 2).

* **control**: the token endpoint's own client (logins, refreshes, revocations): a few
  connections that nothing else uses, so a renewal never queues behind API traffic;
* **data**: the shared pool (:class:`~.data_plane.DataPlane`) every app's forwarded request
  and every replay leaves through: ``[proxy] upstream_pool_size`` connections, kept alive
  ``upstream_keepalive`` seconds; waiting for a free one is bounded by
  ``upstream_pool_wait`` (a full pool refuses, it does not hang).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from ..config import Config
from .data_plane import DataPlane, data_plane, upstream_ssl_context

CONTROL_CONNECTIONS = 4  # renewals are single-flight per account: a few suffice


@dataclass(frozen=True)
class UpstreamClients:
    control: httpx.AsyncClient  # the token endpoint's, never shared
    data: DataPlane  # forwarded requests and replays


@contextlib.asynccontextmanager
async def upstream_clients(config: Config, *, control_connections: int = CONTROL_CONNECTIONS,
                           data_connections: int | None = None
                           ) -> AsyncIterator[UpstreamClients]:
    """Both clients, closed on exit."""
    proxy = config.proxy
    control = httpx.AsyncClient(
        timeout=proxy.upstream_timeout, verify=upstream_ssl_context(proxy.verify_upstream_tls),
        follow_redirects=False,
        limits=httpx.Limits(max_connections=control_connections,
                            max_keepalive_connections=control_connections))
    async with control, data_plane(
            data_connections or proxy.upstream_pool_size, proxy.upstream_timeout,
            proxy.upstream_pool_wait, proxy.verify_upstream_tls,
            proxy.upstream_keepalive, proxy.upstream_http2) as data:
        yield UpstreamClients(control=control, data=data)
