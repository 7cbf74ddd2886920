"""The operator's listener (``[proxy] metrics_listen``): ``/metrics`` (Prometheus),
``/healthz``, ``/readyz``, ``/status`` (every account's state as JSON, read by
``tokenproxy status``) and ``/`` (the same as an auto-refreshing HTML page, ``status_page``).
A background probe keeps ``tokenproxy_store_up`` current while no renewal touches the store.
``/status`` covers every process sharing the store: this one's figures, fresh, and the reports
the other workers and replicas wrote within the window (:mod:`.processes`, which also writes
this process's own report while the listener runs).

With ``[proxy] admin_token_env``, ``/metrics``, ``/status`` and ``/`` answer only requests carrying
``Authorization: Bearer <that variable's value>`` (compared in constant time; 401 otherwise);
the probes ``/healthz`` and ``/readyz`` stay open for kubelets and load balancers, and tell a
caller without the token no more than up / ready / degraded. The config refuses a
non-loopback ``metrics_listen`` without a token.

Runs on the proxy's own event loop, beside mitmproxy; never serves token values.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..config import Config, ProxyConfig
from ..store import StoreError, TokenStore
from ..tokens.pool import TokenPool
from ..tokens.states import AccountState
from .logs import SECRETS
from .metrics import Metrics, RateBudgets
from .processes import ProcessReports, local_view, merge_status
from .status_page import render_status_page, render_unauthorized_page

log = logging.getLogger("tokenproxy.admin")

HEALTHY_STATES = {AccountState.HEALTHY, AccountState.IDLE, AccountState.REFRESHING}
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tokenproxy-admin"'}
Handler = Callable[[web.Request], Awaitable[web.Response]]
# what a replica cannot do while the store is unreachable (``/readyz`` "impaired")
IMPAIRED_WITHOUT_STORE = (
    "renewals",  # a token that expires is not renewed (a pair that cannot be saved is lost)
    "virtual_logins",  # logins, refreshes and revocations through the proxy
    "uncached_virtual_tokens",  # virtual tokens not read here within virtual_grant_stale_max
)


def admin_token(proxy: ProxyConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token the admin listener requires (``[proxy] admin_token_env``), or None."""
    if proxy.admin_token_env is None:
        return None
    return (os.environ if environ is None else environ).get(proxy.admin_token_env) or None


def bearer_matches(authorization: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>`` (scheme case-insensitive, RFC 9110 11.1), compared in
    constant time."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(errors="replace"), token.encode())


class AdminServer:
    PROBE_EVERY = 5.0  # seconds between store probes
    PROBE_FRESH = 0.5  # seconds a probe's answer is reused for readiness checks

    def __init__(self, config: Config, pool: TokenPool, store: TokenStore,
                 metrics: Metrics | None = None, rate_limits: RateBudgets | None = None,
                 events: Callable[[], dict[str, Any]] | None = None, *,
                 requests: Callable[[], Mapping[str, int]] | None = None,
                 processes: ProcessReports | None = None) -> None:
        self._config = config
        self._requests = requests  # this process's requests: {"served", "in_flight"}
        self._processes = processes  # reports of every process sharing the store (issue 19.7)
        self._events = events  # the events hub's snapshot (issue 18), when [events] is on
        self.draining = False  # SIGTERM: not ready any more, whatever else holds
        self._rate_limits = rate_limits  # the API rate-limit governor, when it runs
        self._pool = pool
        self._store = store
        self._metrics = metrics or Metrics()
        self._runner: web.AppRunner | None = None
        self._probe: asyncio.Task[None] | None = None
        self._probe_under_way: asyncio.Task[tuple[bool, str | None]] | None = None
        self._probed_at = 0.0  # monotonic: when the last probe started
        self._token = admin_token(config.proxy)
        if self._token:
            SECRETS.add([self._token], fixed=True)
        self.url: str | None = None

    async def start(self) -> None:
        listen = self._config.proxy.metrics_listen
        if listen is None:  # no listener, but still a process the others list
            await self._start_reports()
            return
        app = web.Application()
        app.router.add_get("/metrics", self._guarded(self._metrics_page))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._guarded(self._status))
        app.router.add_get("/", self._guarded(self._status_page, html=True))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, listen.host, listen.port)
        await site.start()
        server = site._server  # aiohttp exposes the bound sockets only here
        port = server.sockets[0].getsockname()[1] if server and server.sockets else listen.port
        self.url = f"http://{listen.host}:{port}"
        self._probe = asyncio.get_running_loop().create_task(self._probe_store())
        await self._start_reports()
        print(f"tokenproxy metrics on {self.url}", flush=True)

    async def _start_reports(self) -> None:
        if self._processes is not None:
            await self._processes.start(self.process_view, self.url)

    async def stop(self) -> None:
        if self._processes is not None:
            await self._processes.stop()
        if self._probe is not None:
            self._probe.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _probe_store(self) -> None:
        while True:
            await asyncio.sleep(self.PROBE_EVERY)
            await self.store_reachable()

    def _authorized(self, request: web.Request) -> bool:
        return self._token is None or bearer_matches(request.headers.get("Authorization"),
                                                     self._token)

    def _guarded(self, handler: Handler, html: bool = False) -> Handler:
        async def guarded(request: web.Request) -> web.Response:
            if self._authorized(request):
                return await handler(request)
            if html:
                return web.Response(
                    text=render_unauthorized_page(), status=401, content_type="text/html",
                    charset="utf-8", headers={"Cache-Control": "no-store", **CHALLENGE})
            return web.json_response(
                {"error": "unauthorized",
                 "message": f"{request.path} needs Authorization: Bearer <token>, the token in "
                            "the environment variable named by [proxy] admin_token_env"},
                status=401, headers=CHALLENGE)

        return guarded

    async def _metrics_page(self, _: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        """Ready while requests can be served. A store outage alone does not make a replica
        unready (it serves the tokens it holds, and taking every replica out of a load
        balancer at once would turn a store outage into a full one); the body says
        ``degraded`` and which part is down (the store's error text only with the admin
        token, when one is configured: it may name hosts)."""
        if self.draining:  # load balancers: send nothing new here
            return web.json_response({"ready": False, "draining": True}, status=503)
        store_ok, problem = await self.store_reachable()
        serving = all(a.can_serve() for a in self._pool.accounts.values())
        ready = store_ok or serving
        store: dict[str, object] = {"backend": self._store.backend, "ok": store_ok}
        if problem and self._authorized(request):
            store["error"] = problem
        body: dict[str, object] = {"ready": ready, "degraded": not store_ok, "store": store}
        if not store_ok:
            # Still ready: client keys and the virtual tokens this process read lately
            # ([proxy] virtual_grant_stale_max) are served, and the store is shared, so every
            # replica is as degraded as this one: taking them out would end that traffic too.
            # What needs the store's word fails fast with 503 TPX-STORE-UNAVAILABLE:
            body["impaired"] = list(IMPAIRED_WITHOUT_STORE)
        return web.json_response(body, status=200 if ready else 503)

    async def store_reachable(self) -> tuple[bool, str | None]:
        """One probe at a time: concurrent readiness checks share the one under way, and an
        answer is reused for PROBE_FRESH seconds, so a burst of probes never queues store
        calls ahead of renewals (the SQLite store runs every call on one thread; issue
        15.9)."""
        probe = self._probe_under_way
        if probe is None or (probe.done() and time.monotonic() - self._probed_at
                             >= self.PROBE_FRESH):
            self._probed_at = time.monotonic()
            probe = self._probe_under_way = asyncio.get_running_loop().create_task(
                self._probe_once())
        return await asyncio.shield(probe)

    async def _probe_once(self) -> tuple[bool, str | None]:
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
        return web.json_response(await self.status())

    async def _status_page(self, _: web.Request) -> web.Response:
        return web.Response(text=render_status_page(await self.status()),
                            content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    def process_view(self, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """This process's part of its report (:mod:`.processes`): accounts as it sees them,
        rate-limit budgets, WebSocket counts, requests; from ``body`` (default: fresh)."""
        requests = self._requests() if self._requests is not None else {}
        return local_view(self.status_body() if body is None else body, requests,
                          self.draining)

    async def status(self) -> dict[str, Any]:
        """What ``/status`` answers: :meth:`status_body` with every process that reported to
        the store within the window (``processes``, ``totals``, per-process figures summed);
        the other processes' reports unreadable: this process alone, ``processes_error``
        saying why."""
        body = self.status_body()
        if self._processes is None:
            return body
        own = self._processes.report(self.process_view(body))
        others, error = await self._processes.others()
        return merge_status(body, own, others, shared=self._processes.shared,
                            window=self._processes.window, error=error)

    def status_body(self) -> dict[str, Any]:
        """This process's own ``/status`` (see :meth:`status` for every process's): every
        account's snapshot (no token values), its rate-limit budgets and the events hub's
        sockets."""
        accounts = [a.snapshot() for a in self._pool.accounts.values()]
        healthy = all(AccountState(a["state"]) in HEALTHY_STATES for a in accounts)
        if self._rate_limits is not None:  # each account's API budgets, group by group
            groups: dict[str, list[dict[str, object]]] = {}
            for view in self._rate_limits.views():
                groups.setdefault(view.account, []).append({
                    "group": view.group, "limit": view.limit, "window": view.window,
                    "used": view.used, "remaining": view.platform_remaining,
                    "queued": view.queued, "penalty_left": round(view.penalty_left, 1)})
            for account in accounts:
                account["rate_limits"] = groups.get(account["account"], [])
        body: dict[str, Any] = {"time": time.time(), "healthy": healthy, "accounts": accounts}
        if self._events is not None:
            body["events"] = self._events()
        return body
