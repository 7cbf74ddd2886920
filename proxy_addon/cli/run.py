"""``tokenproxy run``: the composition root. Wire config, token pool, store, the gateway's
addons (:class:`~proxy_addon.gateway.master.Gateway`, in flow order) and the mitmproxy master,
and serve.

When the config enables ``[emulator]`` (the demo), the bundled platform emulator is started
first as a child process and stopped with the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping

import httpx

from .. import __version__
from ..config import AccountConfig, Config
from ..events.service import EventsService
from ..gateway import pooled_body
from ..gateway.audit import Audit, access_logger
from ..gateway.events_route import EventsRoute
from ..gateway.forward import Forward
from ..gateway.guard import Guard
from ..gateway.identify import Identify
from ..gateway.in_flight import InFlight
from ..gateway.inject import Inject
from ..gateway.link_scanner import LinkScanner
from ..gateway.links import LinkRewriter, Links
from ..gateway.listening import Listening
from ..gateway.login import Login
from ..gateway.master import Gateway, build_master, listen_tcp_only
from ..gateway.rate_limit import RateLimit
from ..gateway.replay import Replay
from ..gateway.replay_buffer import ReplayBuffer
from ..gateway.request_id import RequestId
from ..gateway.request_metrics import RequestMetrics
from ..gateway.request_span import RequestSpan
from ..gateway.scope import Scope
from ..gateway.throttle import BadKeyThrottle
from ..ops import logs
from ..ops.admin import AdminServer
from ..ops.events_metrics import EventsMetrics
from ..ops.metrics import Metrics, PoolObserver
from ..ops.processes import ProcessIdentity, ProcessReports
from ..ops.tracing import start_tracing
from ..ratelimit.governor import Governor
from ..ratelimit.groups import GroupTable
from ..ratelimit.headers import rate_headers
from ..store import StoreError, StoreKeyMismatch, TokenStore
from ..store.factory import StoreConfigError, make_cipher, open_store
from ..store.instrumented import InstrumentedStore
from ..tokens.pool import TokenPool
from ..upstream.clients import upstream_clients
from ..upstream.data_plane import DataPlane, upstream_ssl_context
from ..upstream.replay_sender import Replayer
from ..upstream.token_endpoint import TokenEndpoint
from ..virtual.grants import VirtualTokens
from ..virtual.login import LoginInterceptor
from .live_accounts import LiveAccounts
from .reload import Reloader

log = logging.getLogger("tokenproxy")


class StartupError(Exception):
    """The proxy cannot start (the message says why)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _raise_file_limit() -> None:
    """A proxy holds two sockets per client connection: use the whole allowed fd budget."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def run(config: Config, worker: bool = False, banner: bool = True,
        worker_index: int | None = None) -> int:
    """Serve until stopped; ``worker``: one of several processes sharing the listen address
    (``--workers``): it binds with SO_REUSEPORT and leaves the emulator to the supervisor;
    ``worker_index``: its index, named in its status report."""
    _raise_file_limit()
    try:
        make_cipher(config.store)  # fail fast on key problems, before starting anything
    except StoreConfigError as exc:
        raise StartupError(f"store: {exc}", exit_code=2) from None
    listen_tcp_only(reuse_port=worker)  # workers share the address (SO_REUSEPORT)
    emulator = _emulator(config) if not worker else contextlib.nullcontext()
    with emulator, _combined_pem(config) as tls_pem, _tracing(config):
        return asyncio.run(_serve(config, tls_pem, banner, worker_index))


async def _serve(config: Config, tls_pem: str | None = None, banner: bool = True,
                 worker_index: int | None = None) -> int:
    async with upstream_clients(config) as clients:
        metrics = Metrics(folded=config.proxy.metrics_per_account == "folded")
        endpoint = TokenEndpoint(config.proxy.upstream, clients.control, metrics)
        store = InstrumentedStore(open_store(config.store), metrics)
        try:
            await store.open()
        except (StoreKeyMismatch, StoreError) as exc:
            raise StartupError(f"store {config.store.backend}: {exc}", exit_code=2) from None
        metrics.prepare(config, store.backend)
        pool = TokenPool.build(config, endpoint, store, observer=PoolObserver(metrics))
        budgets = pool.auth_budgets
        if budgets is not None:  # the Auth group's limit, as each token answer tells it
            def learn_auth_limits(account: AccountConfig, headers: Mapping[str, str]) -> None:
                rate = rate_headers(headers)
                budgets.for_account(account).learn(rate.limit, rate.window)

            endpoint.on_answer = learn_auth_limits
        metrics.watch_pool(pool)
        metrics.watch_upstream(clients.data)
        await pool.start()
        virtual = VirtualTokens(store)
        throttle = BadKeyThrottle(config.proxy.bad_key_limit)  # guesses of keys and logins
        login = LoginInterceptor(config, pool, virtual, endpoint, throttle=throttle)
        # request bodies and replayed answers held for replay share one process-wide budget
        buffer = ReplayBuffer(config.proxy.replay_body_limit, config.proxy.replay_buffer_total)
        governor = _governor(config, store)
        watcher = None
        if governor is not None:
            metrics.watch_rate_limits(governor)
            if governor.shared:
                watcher = asyncio.create_task(_count_processes(governor, store))
        events = _events(config, pool, clients.control, metrics, governor)
        in_flight = InFlight()
        gateway = _gateway(config, pool, clients.data, metrics, virtual, login, throttle, buffer,
                           banner, governor, events, in_flight)
        master = build_master(config, gateway, tls_pem=tls_pem)
        # every process reports itself to the store; /status lists them all (issue 19.7)
        reports = ProcessReports(store, ProcessIdentity.here(worker_index, __version__),
                                 config.proxy.status_report_interval)
        admin = AdminServer(config, pool, store, metrics, governor,
                            events.hub.snapshot if events is not None else None,
                            requests=in_flight.figures, processes=reports)
        drain = Drain(config, master.shutdown, admin, in_flight)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, drain.signalled)
        # SIGHUP: the config file again; its accounts and clients apply at once (cli/reload.py)
        appliers = [a.clients_changed for a in gateway.addons if hasattr(a, "clients_changed")]
        accounts = LiveAccounts(
            pool, store, metrics,
            [*(a.accounts_changed for a in gateway.addons if hasattr(a, "accounts_changed")),
             login.accounts_changed],
            [events.accounts_changed] if events is not None else [])
        if events is not None:
            appliers.append(events.clients_changed)
        audit = next((a for a in gateway.addons if isinstance(a, Audit)), None)
        settings = [lambda new: logs.set_format(new.proxy.log_format)]
        if audit is not None:
            settings.append(lambda new: audit.access_log_changed(new.proxy.access_log))
        if governor is not None:  # off: a restart turns it on ("off" leaves it out)
            settings.append(lambda new: new.rate_limits.mode == "off"
                            or governor.settings_changed(new.rate_limits))
        loop.add_signal_handler(signal.SIGHUP, Reloader(config, appliers, metrics, accounts,
                                                        settings).signalled)
        try:
            if events is not None:
                await events.start()
            await admin.start()
            await master.run()
        finally:
            if watcher is not None:
                watcher.cancel()
            if events is not None:
                await events.stop()
            pool.close()
            await pool.leave()
            await admin.stop()
            await store.close()
    return 0


def _gateway(config: Config, pool: TokenPool, plane: DataPlane, metrics: Metrics,
             virtual: VirtualTokens, login: LoginInterceptor, throttle: BadKeyThrottle,
             buffer: ReplayBuffer, banner: bool = True,
             governor: Governor | None = None, events: EventsService | None = None,
             in_flight: InFlight | None = None) -> Gateway:
    """The gateway's addons, each built from what it needs (order: see ``Gateway``)."""
    proxy = config.proxy
    rewriter = LinkRewriter(proxy.upstream, proxy.media_upstream, proxy.public_url)
    tls = proxy.tls_cert is not None
    return Gateway(
        guard=Guard(require_tls=tls, public_url=proxy.public_url, login_enabled=True,
                    events_path=config.events.path if events is not None else None),
        identify=Identify(config.clients, config.accounts, pool, throttle, virtual),
        login=Login(login, config.accounts),
        inject=Inject(buffer, proxy.media_upstream),
        replay=Replay(Replayer(plane, buffer), buffer, rewriter, metrics),
        links=Links(rewriter, proxy.stream_threshold),
        request_metrics=RequestMetrics(metrics),
        listening=Listening(tls, on_listening=lambda urls: _print_banner(config, urls)
                            if banner else None),
        forward=_forward(config, plane),
        rate_limit=(RateLimit(governor, Replayer(plane, buffer), buffer, metrics)
                    if governor is not None else None),
        events=(EventsRoute(events.tokens, events.hub, config.events.path, rewriter.base,
                            events.metrics) if events is not None else None),
        scope=Scope(config.clients),  # always: a reload may give a client an allow list
        in_flight=in_flight,
        request_id=RequestId(),
        request_span=RequestSpan() if config.tracing.enabled else None,
        # always in the chain: a reload may turn the access log on, move it or turn it off
        audit=Audit(access_logger(proxy.access_log), proxy.access_log),
    )


class Drain:
    """A graceful stop (issue 19, item 2). The first SIGTERM/SIGINT turns ``/readyz`` 503 and
    answers ``Connection: close``; new connections are still served for ``drain_grace`` seconds
    (load balancers notice the readiness and stop sending), then the requests in flight get up
    to ``shutdown_timeout`` to finish, then the proxy stops (exit 0). A second signal stops at
    once."""

    def __init__(self, config: Config, stop: Callable[[], None], admin: AdminServer,
                 in_flight: InFlight) -> None:
        self._grace = config.proxy.drain_grace
        self._timeout = config.proxy.shutdown_timeout
        self._stop = stop
        self._admin = admin
        self._in_flight = in_flight
        self._task: asyncio.Task[None] | None = None

    def signalled(self) -> None:
        if self._task is not None:
            log.warning("second stop signal: stopping now", extra={"event": "drain_abandoned"})
            self._stop()
            return
        self._admin.draining = self._in_flight.draining = True
        log.info("draining: /readyz answers 503; serving %g s more, then up to %g s for the "
                 "%d request(s) in flight", self._grace, self._timeout, self._in_flight.count,
                 extra={"event": "draining"})
        self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        await asyncio.sleep(self._grace)
        started = time.monotonic()
        finished = await self._in_flight.idle(self._timeout)
        left = self._in_flight.count
        log.info("drained in %.1f s%s; stopping", time.monotonic() - started,
                 "" if finished else f" ({left} request(s) still in flight at the timeout)",
                 extra={"event": "drained"})
        self._stop()


def _events(config: Config, pool: TokenPool, control: httpx.AsyncClient,
            metrics: Metrics, governor: Governor | None) -> EventsService | None:
    """Apps' WebSocket subscriptions (``[events]``), links in relayed bodies rewritten as
    for REST answers."""
    if not config.events.enabled:
        return None
    proxy = config.proxy
    rewriter = LinkRewriter(proxy.upstream, proxy.media_upstream, proxy.public_url)

    def rewrite(account: AccountConfig) -> Callable[[str, str], str]:
        def rewrite_text(text: str, base: str) -> str:
            scan = LinkScanner(rewriter.fixer(base, account))
            return (scan(text.encode()) + scan(b"")).decode("utf-8", "replace")
        return rewrite_text

    return EventsService(config, pool, control,
                         EventsMetrics(metrics, [a.name for a in config.accounts]), rewrite,
                         governor, upstream_ssl_context(proxy.verify_upstream_tls))


def _governor(config: Config, store: TokenStore) -> Governor | None:
    """The API rate-limit governor, unless ``[rate_limits] mode = "off"``: budgets counted in
    the store when it is shared (SQLite, Redis), else per process; a worker of ``--workers N``
    knows N from the supervisor (the per-process budget while the store is away: 1/N)."""
    if config.rate_limits.mode == "off":
        return None
    try:
        processes = max(1, int(os.environ.get("TOKENPROXY_WORKERS", "1")))
    except ValueError:
        processes = 1
    return Governor(config.rate_limits, GroupTable.bundled(), processes=processes,
                    windows=store)


async def _count_processes(governor: Governor, store: TokenStore) -> None:
    """Keep the governor told how many processes share the store (their heartbeats): the N of
    its 1/N budgets while the store is away."""
    while True:
        try:
            governor.note_processes(len(await store.members()))
        except Exception as exc:  # the store is away: the last count stands
            log.debug("rate limits: cannot count the processes: %s", exc)
        await asyncio.sleep(30)


def _forward(config: Config, plane: DataPlane) -> Forward | None:
    """The shared pool for forwarded requests, unless turned off or this mitmproxy lacks what
    streaming its bodies needs (then each app connection gets its own, as mitmproxy does)."""
    if not config.proxy.upstream_pool:
        return None
    if not pooled_body.install():
        log.warning("the shared upstream pool is off: this mitmproxy version cannot stream "
                    "its answers; each app connection opens its own upstream connection")
        return None
    return Forward(plane, config.proxy.stream_threshold, config.proxy.upstream_timeout)


def _print_banner(config: Config, urls: list[str]) -> None:
    if not config.emulator.enabled or not urls:
        return
    url = urls[0]
    client = next((c for c in config.clients if c.key.reveal()), None)
    print(f"\nDemo: the proxy at {url} manages tokens against the bundled emulator at "
          f"{config.proxy.upstream}.", flush=True)
    if client is not None:
        # The demo config's client key is a published demo value, not a secret.
        print("Try it:\n  curl -s -H 'Authorization: Bearer "
              f"{client.key.reveal()}' {url}/restapi/v1.0/account/~/extension/~\n", flush=True)


@contextlib.contextmanager
def _emulator(config: Config) -> Iterator[None]:
    if not config.emulator.enabled:
        yield
        return
    import importlib.util

    if importlib.util.find_spec("rc_emulator") is None:
        raise StartupError("[emulator] enabled = true, but the platform emulator is not installed "
                           "(a separate distribution, emulator/ in the source tree, left out of "
                           "the production image): pip install ./emulator, run the demo image "
                           "(docker build --target demo), or set [emulator] enabled = false and "
                           "[proxy] upstream to the platform")
    listen = str(config.emulator.listen)
    command = [sys.executable, "-m", "rc_emulator", "--listen", listen,
               *config.emulator.args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        line = _read_ready_line(proc, timeout=20.0)
        print(line, flush=True)
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


def _read_ready_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("emulator listening on"):
            return line.strip()
        if not line and proc.poll() is not None:
            raise StartupError(f"the bundled emulator exited with code {proc.returncode} "
                               "(is its port already in use? see the message above)")
    raise StartupError(f"the bundled emulator did not start within {timeout:g} s")


@contextlib.contextmanager
def _tracing(config: Config) -> Iterator[None]:
    """``[tracing]``: the process's spans exported over OTLP/HTTP while it serves; on exit the
    last ones leave (bounded: a dead collector holds no exit)."""
    tracing = start_tracing(config.tracing)
    try:
        yield
    finally:
        if tracing is not None:
            tracing.shutdown()


@contextlib.contextmanager
def _combined_pem(config: Config) -> Iterator[str | None]:
    """mitmproxy wants certificate and key in one PEM file: a private (0600) temporary one,
    removed on exit."""
    cert, key = config.proxy.tls_cert, config.proxy.tls_key
    if cert is None or key is None:
        yield None
        return
    import os
    import tempfile

    fd, path = tempfile.mkstemp(prefix="tokenproxy-tls-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as out:
            for source in (cert, key):
                with open(source, "rb") as part:
                    out.write(part.read().rstrip(b"\n") + b"\n")
        yield path
    finally:
        os.unlink(path)
