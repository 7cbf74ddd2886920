"""The operator's listener (``[proxy] metrics_listen``): ``/metrics`` (Prometheus),
``/healthz``, ``/readyz`` and ``/status`` (every account's state as JSON, read by
``tokenproxy status``). A background probe keeps ``tokenproxy_store_up`` current while no
renewal touches the store.

Runs on the proxy's own event loop, beside mitmproxy; never serves token values.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .config import Config
from .metrics import Metrics
from .pool import AccountState, TokenPool
from .store import StoreError, TokenStore

log = logging.getLogger("tokenproxy.admin")

HEALTHY_STATES = {AccountState.HEALTHY, AccountState.IDLE, AccountState.REFRESHING}


class AdminServer:
    PROBE_EVERY = 5.0  # seconds between store probes

    def __init__(self, config: Config, pool: TokenPool, store: TokenStore,
                 metrics: Metrics | None = None) -> None:
        self._config = config
        self._pool = pool
        self._store = store
        self._metrics = metrics or Metrics()
        self._runner: web.AppRunner | None = None
        self._probe: asyncio.Task[None] | None = None
        self.url: str | None = None

    async def start(self) -> None:
        listen = self._config.proxy.metrics_listen
        if listen is None:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, listen.host, listen.port)
        await site.start()
        server = site._server  # aiohttp exposes the bound sockets only here
        port = server.sockets[0].getsockname()[1] if server and server.sockets else listen.port
        self.url = f"http://{listen.host}:{port}"
        self._probe = asyncio.get_running_loop().create_task(self._probe_store())
        print(f"tokenproxy metrics on {self.url}", flush=True)

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _probe_store(self) -> None:
        while True:
            await asyncio.sleep(self.PROBE_EVERY)
            await self.store_reachable()

    async def _metrics_page(self, _: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        """Ready while requests can be served. A store outage alone does not make a replica
        unready (it serves the tokens it holds, and taking every replica out of a load
        balancer at once would turn a store outage into a full one); the body says
        ``degraded`` and which part is down."""
        store_ok, problem = await self.store_reachable()
        serving = all(a.can_serve() for a in self._pool.accounts.values())
        ready = store_ok or serving
        store: dict[str, object] = {"backend": self._store.backend, "ok": store_ok}
        if problem:
            store["error"] = problem
        body = {"ready": ready, "degraded": not store_ok, "store": store}
        return web.json_response(body, status=200 if ready else 503)

    async def store_reachable(self) -> tuple[bool, str | None]:
        first = next(iter(self._pool.accounts), "")
        try:
            await asyncio.wait_for(self._store.generation(first), 2.0)
        except StoreError as exc:
            problem = str(exc)
        except TimeoutError:
            problem = f"{self._store.backend} store: no answer within 2 s"
        else:
            self._metrics.store_up.labels(self._store.backend).set(1)
            return True, None
        self._metrics.store_up.labels(self._store.backend).set(0)
        return False, problem

    async def _status(self, _: web.Request) -> web.Response:
        accounts = [a.snapshot() for a in self._pool.accounts.values()]
        healthy = all(AccountState(a["state"]) in HEALTHY_STATES for a in accounts)
        return web.json_response({"time": time.time(), "healthy": healthy,
                                  "accounts": accounts})
