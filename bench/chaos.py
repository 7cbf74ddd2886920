"""Scenario ``chaos``: 3 proxy replicas on a Redis with Sentinel, under faults, with 300 clients.

Issue 15 ("Redis for real deployments"): a Redis primary, a replica and three Sentinels on
loopback; 3 ``tokenproxy run`` replicas sharing it; ``CLIENTS`` keep-alive clients
(:mod:`bench.load`) spread over the replicas, moving to the next replica when one refuses
connections (what a load balancer does). During the run, at random times (seeded, so a run can be
repeated):

- ``kill -9`` of a proxy replica, restarted ``REPLICA_DOWN`` s later on the same port;
- ``kill -9`` of the Redis primary right after a rotation (the next one the emulator counts
  once the kill is due): the Sentinels promote the replica; the old primary is
  restarted a few seconds later as a replica of the new one;
- revocation of every live session on the platform (the emulator's ``/_emulator/revoke-all``).

How the proxies reach Redis (``--redis``, or ``TOKENPROXY_CHAOS_REDIS``):

- ``sentinel``: ``[store] sentinels = ["127.0.0.1:PORT", …]``, ``sentinel_service = "NAME"``
  (issue 15; the proxies follow a promotion themselves);
- ``url``: ``[store] url`` pointing at a forwarder of this harness that sends each new connection
  to the primary the Sentinels name and cuts the open ones when it changes (as HAProxy with a
  Sentinel check does): for a tokenproxy without Sentinel support;
- ``auto`` (default): ``sentinel`` when ``tokenproxy check-config`` accepts the keys, else ``url``.

Figures: requests and failures by kind as the clients saw them; token calls, logins, 401s,
evictions and the most live sessions per (user, client id) from the emulator's counters; for
every primary kill, the time until the Sentinels named a new primary and the span of
client-visible failures after it.

Run it: ``python -m bench chaos --soak`` (10 minutes, ``make soak``), ``python -m bench chaos``
(2 minutes), or its own command line ``python -m bench.chaos --minutes 1`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import parts, report, stats
from bench.load import failure_window, failures_by_kind
from bench.report import table
from bench.scenario import RunOptions, Scenario
from tests.support.emulator import Emulator, start_emulator
from tests.support.processes import stop_process
from tests.support.proxy import (
    APP_KEY,
    STORE_KEY,
    Proxy,
    client,
    jwt_account,
    render_config,
    start_proxy_with_config,
)

CLIENTS = 300
INTERVAL = 2.0  # s between one client's requests: 150 requests/s in all on 2 shared cores
REPLICAS = 3
SOAK_SECONDS = 600.0
DEFAULT_SECONDS = 120.0
QUICK_SECONDS = 60.0
ACCESS_TTL = 30  # s: rotations happen during the run too
REFRESH_TTL = 86_400
SESSION_CAP = 5
TOKEN_DELAY = 0.3  # s the token endpoint takes to answer (after it rotated), as in drain
SERVICE = "tokenproxy"
PAIR = "demo-client-id/100001"
TOKEN_401_CODES = ("OAU-210", "OAU-128", "OAU-129", "OAU-213")
# fault timing (s): first occurrence as a share of the run, then the gap between two
REPLICA_KILL_FIRST, REPLICA_KILL_GAP = 0.15, (20.0, 40.0)
REPLICA_DOWN = (2.0, 5.0)
PRIMARY_KILL_FIRST, PRIMARY_KILL_GAP = 0.30, (90.0, 150.0)
OLD_PRIMARY_DOWN = (3.0, 6.0)
REVOKE_FIRST, REVOKE_GAP = 0.45, (30.0, 60.0)
FAILOVER_LIMIT = 30.0  # s to wait for the Sentinels to name a new primary
EVENT_HORIZON = 30.0  # s after an event its failures are counted to it (or the next event)
TICK = 0.2
MIN_FAULT_GAP = 5.0  # s between the starts of two faults (a due fault waits)
REQUESTS_PER_CONNECTION = 15  # then a client opens a new connection (to a random replica)
SETUP_GRACE = 180.0  # s for start-up and shutdown beyond the run: the hard deadline
MODE_ENV = "TOKENPROXY_CHAOS_REDIS"
MODES = ("auto", "sentinel", "url")


# ------------------------------------------------------------------ url mode forwarder
class SentinelForwarder:
    """A loopback TCP forwarder to the primary the Sentinels name (for ``url`` mode)."""

    def __init__(self, ha: parts.SentinelSet) -> None:
        self.ha = ha
        self.port = parts.free_port()
        self.primary: int | None = ha.primary_port()
        self._loop = asyncio.new_event_loop()
        self._stop = threading.Event()
        self._conns: set[asyncio.StreamWriter] = set()
        self._threads = [threading.Thread(target=self._serve, daemon=True),
                         threading.Thread(target=self._watch, daemon=True)]

    def __enter__(self) -> SentinelForwarder:
        ready = threading.Event()
        self._ready = ready
        for t in self._threads:
            t.start()
        if not ready.wait(10):
            raise RuntimeError("the Redis forwarder did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._loop.call_soon_threadsafe(self._loop.stop)
        for t in self._threads:
            t.join(5)

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            primary = self.ha.primary_port()
            if primary is not None and primary != self.primary:
                self.primary = primary
                self._loop.call_soon_threadsafe(self._cut_all)

    def _cut_all(self) -> None:
        for writer in list(self._conns):
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            for _ in range(10_000_000):
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            if self.primary is None:
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.primary), 2)
            except (OSError, TimeoutError):
                return
            self._conns.add(up_writer)
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                self._conns.discard(up_writer)
        finally:
            self._conns.discard(writer)
            writer.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._cut_all()


# --------------------------------------------------------------------------- replicas
@dataclass
class Replica:
    index: int
    config: Path
    port: int
    metrics_port: int
    proxy: Proxy | None = None
    restarts: int = 0
    starting: bool = False
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        last: Exception | None = None
        for _ in range(5):  # the store may be failing over right now: a few tries
            if self.closed:
                return
            try:
                proxy = start_proxy_with_config(
                    self.config, timeout=30, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
            except RuntimeError as exc:
                last = exc
                time.sleep(2)
                continue
            with self.lock:
                if self.closed:  # the run ended while this one started: no orphan
                    stop_process(proxy.proc, 10)
                else:
                    self.proxy = proxy
            return
        raise RuntimeError(f"replica {self.index} does not start: {last}")

    def close(self) -> None:
        with self.lock:
            self.closed = True
            if self.proxy is not None:
                stop_process(self.proxy.proc, 10)

    def alive(self) -> bool:
        return self.proxy is not None and self.proxy.proc.poll() is None


def store_table(mode: str, ha: parts.SentinelSet, forward_port: int | None) -> dict[str, object]:
    if mode == "sentinel":
        return {"backend": "redis", "sentinels": ha.sentinel_addresses,
                "sentinel_service": ha.service}
    return {"backend": "redis", "url": f"redis://127.0.0.1:{forward_port}/0"}


def write_config(path: Path, port: int, metrics_port: int, upstream: str,
                 store: dict[str, object]) -> None:
    proxy = {"listen": f"127.0.0.1:{port}", "metrics_listen": f"127.0.0.1:{metrics_port}",
             "upstream": upstream, "auth_budget_calls": 0, "token_wait_timeout": 10}
    path.write_text(render_config(proxy, [jwt_account()], [client()], store))


def sentinel_supported(workdir: Path, ha: parts.SentinelSet, upstream: str) -> bool:
    """Whether this tokenproxy's config accepts ``sentinels`` / ``sentinel_service``."""
    path = workdir / "probe.toml"
    write_config(path, parts.free_port(), parts.free_port(), upstream,
                 store_table("sentinel", ha, None))
    done = subprocess.run([sys.executable, "-m", "proxy_addon", "check-config", "--offline",
                           "--config", str(path)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TOKENPROXY_STORE_KEY": STORE_KEY})
    said = done.stdout + done.stderr
    return not (done.returncode == 2 and "sentinel" in said and "unknown key" in said)


# ------------------------------------------------------------------------------ events
@dataclass
class Event:
    at: float  # wall clock
    kind: str  # "replica", "primary", "revoke"
    detail: str
    end: float | None = None  # when the fault was over (restart done / new primary named)
    promoted_after: float | None = None  # primary kills: s until the Sentinels named another


@dataclass
class Plan:
    """The next time of each fault (monotonic), drawn from a seeded generator."""

    rng: random.Random
    replica_at: float
    primary_at: float
    revoke_at: float

    @classmethod
    def make(cls, start: float, seconds: float, seed: int) -> Plan:
        rng = random.Random(seed)
        return cls(rng, start + seconds * REPLICA_KILL_FIRST,
                   start + seconds * PRIMARY_KILL_FIRST, start + seconds * REVOKE_FIRST)


@dataclass
class ChaosState:
    events: list[Event] = field(default_factory=list)
    # (monotonic due, replica, its kill event)
    restarts: list[tuple[float, Replica, Event]] = field(default_factory=list)
    starting: list[threading.Thread] = field(default_factory=list)
    primary_killed: tuple[Event, int, float] | None = None  # event, old port, monotonic kill
    old_primary_restart: tuple[float, int, Event] | None = None
    last_fault: float = float("-inf")  # monotonic
    armed: tuple[int, float] | None = None  # a primary kill waiting for a rotation


def _restart(replica: Replica, event: Event) -> None:
    try:
        replica.start()
        replica.restarts += 1
        event.end = time.time()
    except RuntimeError as exc:
        event.detail += f"; restart failed: {str(exc)[:200]}"
    finally:
        replica.starting = False


def _rotations(emulator: Emulator) -> int:
    try:
        counters = emulator.counters()
    except Exception:  # a busy emulator: try again next tick
        return -1
    return int(counters["refreshes"]) + int(counters["logins"])


def _kill_primary(ha: parts.SentinelSet, state: ChaosState, after_rotation: bool) -> None:
    old = ha.primary_port()
    if old is None or not ha.node(old).alive():
        return
    node = ha.node(old)
    assert node.proc is not None
    when = "right after a rotation" if after_rotation else "no rotation seen"
    event = Event(time.time(), "primary", f"Redis primary :{old} kill -9 ({when})")
    killed = time.monotonic()
    parts.kill9(node.proc)
    state.events.append(event)
    state.primary_killed = (event, old, killed)
    state.last_fault = time.monotonic()


def tick(now: float, plan: Plan, state: ChaosState, replicas: list[Replica],
         ha: parts.SentinelSet, emulator: Emulator) -> None:
    """One step of the fault loop: start what is due, finish what is over."""
    rng = plan.rng
    for due, replica, event in list(state.restarts):
        if now >= due:
            state.restarts.remove((due, replica, event))
            # in a thread: a start waits for the store, which may be failing over right now
            replica.starting = True
            thread = threading.Thread(target=_restart, args=(replica, event), daemon=True)
            thread.start()
            state.starting.append(thread)
    state.starting = [t for t in state.starting if t.is_alive()]
    quiet = now - state.last_fault >= MIN_FAULT_GAP  # one fault at a time, for attribution
    if quiet and now >= plan.replica_at:
        live = [r for r in replicas if r.alive() and not r.starting]
        if len(live) > 1:  # never all of them at once
            victim = rng.choice(live)
            assert victim.proxy is not None
            event = Event(time.time(), "replica", f"replica {victim.index} kill -9")
            parts.kill9(victim.proxy.proc)
            state.events.append(event)
            state.restarts.append((now + rng.uniform(*REPLICA_DOWN), victim, event))
            state.last_fault = now
            quiet = False
        plan.replica_at = now + rng.uniform(*REPLICA_KILL_GAP)
    if state.primary_killed is not None:
        event, old, killed = state.primary_killed
        primary = ha.primary_port()
        if primary is not None and primary != old:
            event.promoted_after = time.monotonic() - killed
            event.detail += f", :{primary} promoted"
            state.primary_killed = None
            state.old_primary_restart = (now + rng.uniform(*OLD_PRIMARY_DOWN), old, event)
        elif now - killed > FAILOVER_LIMIT:
            event.detail += f", no promotion within {FAILOVER_LIMIT:g} s"
            state.primary_killed = None
            state.old_primary_restart = (now, old, event)
    if state.old_primary_restart is not None and now >= state.old_primary_restart[0]:
        _, old, event = state.old_primary_restart
        state.old_primary_restart = None
        new = ha.primary_port()
        ha.node(old).start(replica_of=new if new != old else None)
        event.end = time.time()
        event.detail += f"; :{old} back as a replica"
    if quiet and now >= plan.primary_at:
        if state.primary_killed is None and state.old_primary_restart is None:
            # right after a rotation (issue 15): the newest pair was just written
            rotations = _rotations(emulator)
            if rotations < 0:
                pass
            elif state.armed is None:
                if ha.wait_replicas_synced(2):  # a replica the Sentinels can promote
                    state.armed = (rotations, now)
            elif rotations > state.armed[0] or now - state.armed[1] > ACCESS_TTL + 10:
                after_rotation = rotations > state.armed[0]
                state.armed = None
                _kill_primary(ha, state, after_rotation)
                quiet = False
                plan.primary_at = now + rng.uniform(*PRIMARY_KILL_GAP)
        else:
            plan.primary_at = now + rng.uniform(*PRIMARY_KILL_GAP)
    if quiet and now >= plan.revoke_at:
        at = time.time()
        with contextlib.suppress(Exception):
            n = emulator.revoke_all()
            state.events.append(Event(at, "revoke", f"revoke-all: {n} sessions",
                                      end=time.time()))
            state.last_fault = now
        plan.revoke_at = now + rng.uniform(*REVOKE_GAP)


# --------------------------------------------------------------------------- the run
@dataclass
class ChaosResult:
    mode: str
    seconds: float
    load: dict
    counters: dict
    events: list[Event]
    final_ok: list[bool]  # a request through each replica after the run


@contextlib.contextmanager
def _replicas(workdir: Path, upstream: str, store: dict[str, object]) -> Iterator[list[Replica]]:
    replicas = []
    try:
        for i in range(REPLICAS):
            path = workdir / f"replica-{i}.toml"
            r = Replica(i, path, parts.free_port(), parts.free_port())
            write_config(path, r.port, r.metrics_port, upstream, store)
            replicas.append(r)
            r.start()
        yield replicas
    finally:
        for r in replicas:
            r.close()


def _final_probe(replicas: list[Replica]) -> list[bool]:
    import httpx

    ok = []
    for r in replicas:
        try:
            answer = httpx.get(r.url + parts.API_PATH, timeout=15,
                               headers={"Authorization": f"Bearer {APP_KEY}"})
            ok.append(answer.status_code == 200)
        except httpx.HTTPError:
            ok.append(False)
    return ok


def chaos_run(workdir: Path, seconds: float, mode: str, clients: int = CLIENTS,
              seed: int = 15) -> ChaosResult:
    hard_deadline = time.monotonic() + seconds + SETUP_GRACE
    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(start_emulator(
            "--auth-rate", "0", "--access-ttl", str(ACCESS_TTL), "--refresh-ttl",
            str(REFRESH_TTL), "--session-cap", str(SESSION_CAP), "--session-cap-policy",
            "evict", "--token-delay", str(TOKEN_DELAY)))
        ha = stack.enter_context(parts.redis_sentinel_set(workdir, SERVICE))
        if mode == "auto":
            mode = "sentinel" if sentinel_supported(workdir, ha, emulator.url) else "url"
        forward_port = None
        if mode == "url":
            forward_port = stack.enter_context(SentinelForwarder(ha)).port
        print(f"chaos: Redis via {mode}; {REPLICAS} replicas, {clients} clients, "
              f"{seconds:.0f} s", flush=True)
        replicas = stack.enter_context(_replicas(workdir, emulator.url,
                                                 store_table(mode, ha, forward_port)))
        for r in replicas:
            parts.warm_up(r.url, requests=5)
        emulator.reset_counters()
        started = time.monotonic()
        load = parts.start_load(workdir, [r.url for r in replicas], [APP_KEY], clients,
                                INTERVAL, seconds, failover=True,
                                per_connection=REQUESTS_PER_CONNECTION)
        plan = Plan.make(started, seconds, seed)
        state = ChaosState()
        try:
            last_report = started
            while time.monotonic() - started < seconds and time.monotonic() < hard_deadline:
                if load.proc.poll() is not None:
                    break
                tick(time.monotonic(), plan, state, replicas, ha, emulator)
                if time.monotonic() - last_report >= 10:
                    last_report = time.monotonic()
                    print(f"chaos: {last_report - started:4.0f} s, {len(state.events)} faults "
                          f"so far", flush=True)
                time.sleep(TICK)
            # bring everything back before the last figures: pending restarts, old primary
            for _ in range(int(60 / TICK)):
                if not state.restarts and not state.starting \
                        and state.primary_killed is None and state.old_primary_restart is None:
                    break
                plan.replica_at = plan.primary_at = plan.revoke_at = float("inf")
                tick(time.monotonic(), plan, state, replicas, ha, emulator)
                time.sleep(TICK)
        finally:
            result = load.finish()
        run_seconds = time.monotonic() - started
        counters = emulator.counters()
        final_ok = _final_probe(replicas)
    return ChaosResult(mode, run_seconds, result, counters, state.events, final_ok)


# -------------------------------------------------------------------------- rendering
def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def event_windows(events: list[Event], failures: list[tuple[float, str]], run_end: float
                  ) -> list[tuple[Event, int, float | None, float | None, Counter[str]]]:
    """Each event with the failures from its time until the next event (at most
    ``EVENT_HORIZON`` s after it ended): (event, count, first, last, count by kind), times
    relative to the event."""
    ordered = sorted(events, key=lambda e: e.at)
    out = []
    for i, e in enumerate(ordered):
        nxt = ordered[i + 1].at if i + 1 < len(ordered) else run_end
        end = max(min(nxt, (e.end or e.at) + EVENT_HORIZON), e.at)
        kinds = Counter(kind for t, kind in failures if e.at <= t < end)
        out.append((e, *failure_window(failures, e.at, end), kinds))
    return out


def _kinds(kinds: Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in kinds.most_common())


def render(r: ChaosResult, clients: int) -> str:
    load, c = r.load, r.counters
    failures = failures_by_kind(load["outcomes"])
    failed = sum(failures.values())
    kinds = Counter(e.kind for e in r.events)
    windows = event_windows(r.events, [tuple(f) for f in load["failures"]], load["ended"])
    attributed = sum(w[1] for w in windows)
    token_401 = sum(v for k, v in c["api_401_by_code"].items() if k in TOKEN_401_CODES)
    promotions = [e.promoted_after for e in r.events
                  if e.kind == "primary" and e.promoted_after is not None]
    rows = [
        ("run length", f"{r.seconds:.0f} s"),
        ("requests (clients)", f"{load['requests']:,}"),
        ("answered 2xx", f"{load['outcomes'].get('ok', 0):,} "
                         f"({load['outcomes'].get('ok', 0) / max(load['requests'], 1):.2%})"),
        ("client-visible failures", f"{failed:,}"),
        ("refused connects retried on another replica (not failures)",
         f"{load.get('redirects', 0):,}"),
        ("… within 30 s of a fault", f"{attributed:,}"),
        ("faults: replica kill -9 / primary kill -9 / revoke-all",
         f"{kinds['replica']} / {kinds['primary']} / {kinds['revoke']}"),
        ("Sentinel promotion after a primary kill s (each)",
         ", ".join(f"{p:.1f}" for p in promotions) or "-"),
        ("token-endpoint calls (emulator)", f"{c['token_calls']:,}"),
        ("… by grant", ", ".join(f"{k}: {v}" for k, v in c["token_calls_by_grant"].items()
                                 if v) or "none"),
        ("… refused, by code", ", ".join(f"{k}: {v}" for k, v in
                                         sorted(c["token_errors_by_code"].items())) or "none"),
        ("logins / refreshes / evictions", f"{c['logins']} / {c['refreshes']} / "
                                           f"{c['evictions']}"),
        ("token 401s the platform answered", f"{token_401:,}"),
        ("… by code", ", ".join(f"{k}: {v}" for k, v in sorted(c["api_401_by_code"].items())
                                if v) or "none"),
        ("max live sessions (user, client id)", f"{c['max_live_sessions'].get(PAIR, 0)} "
                                                f"(cap {SESSION_CAP})"),
        ("latency p50 / p99 / max ms", f"{stats.fmt_ms(load['p50_ms'])} / "
                                       f"{stats.fmt_ms(load['p99_ms'])} / "
                                       f"{stats.fmt_ms(load['max_ms'])}"),
        ("every replica answers 200 after the run", "yes" if all(r.final_ok) else
         f"**no** ({', '.join(str(i) for i, ok in enumerate(r.final_ok) if not ok)})"),
    ]
    how = ("`[store] sentinels = [the 3 Sentinels]`, `sentinel_service`: the proxies follow the "
           "promotion themselves" if r.mode == "sentinel" else
           "`[store] url` on a forwarder of the harness that sends each new connection to the "
           "primary the Sentinels name and cuts the open ones when it changes (this tokenproxy "
           "has no Sentinel support)")
    lines = [
        f"{REPLICAS} `tokenproxy run` replicas share a Redis primary with one replica and three "
        f"Sentinels (quorum 2, `down-after-milliseconds 1000`), all on loopback; the proxies "
        f"reach it by {how}. {clients} keep-alive clients (`bench/load.py`) each send "
        f"`GET /restapi/v1.0/account/~/extension/~` every {INTERVAL:g} s over the replicas "
        "as behind a load balancer: a refused connect is retried on the next replica at once, "
        f"a client opens a new connection after {REQUESTS_PER_CONNECTION} requests or a lost "
        "one, to a random replica; a request in flight or "
        "sent on a keep-alive connection to a killed replica fails (`conn closed`/`conn "
        "reset`) and is counted, never retried. Upstream: the "
        f"platform emulator, access tokens {ACCESS_TTL} s, token endpoint answering in "
        f"{TOKEN_DELAY:g} s, session cap {SESSION_CAP} (a 6th "
        "login evicts the oldest), no token-endpoint rate limit. Faults at seeded random times: "
        f"`kill -9` of a replica (back {REPLICA_DOWN[0]:g}-{REPLICA_DOWN[1]:g} s later; every "
        f"{REPLICA_KILL_GAP[0]:g}-{REPLICA_KILL_GAP[1]:g} s), `kill -9` of the Redis primary "
        f"(every {PRIMARY_KILL_GAP[0]:g}-{PRIMARY_KILL_GAP[1]:g} s, right after the next "
        "rotation the emulator counts, so the newest pair was just written; the old primary "
        "back as a replica a few seconds after the promotion), every live session revoked on the "
        f"platform (every {REVOKE_GAP[0]:g}-{REVOKE_GAP[1]:g} s); at least "
        f"{MIN_FAULT_GAP:g} s between the starts of two faults.",
        "",
        table(("", "figure"), rows),
        "",
        "Failures by kind: " + (", ".join(f"{k}: {v:,}" for k, v in failures.items())
                                or "none") + ".",
        "",
        "Faults, and the client-visible failures from each until the next one (at most "
        f"{EVENT_HORIZON:g} s after it was over; first and last relative to the fault):",
        "",
        table(("fault", "at s", "over after s", "failures", "first s", "last s", "by kind"),
              [(e.detail, f"{e.at - load['started']:.0f}",
                _fmt_s(None if e.end is None else e.end - e.at), n, _fmt_s(first), _fmt_s(last),
                _kinds(kinds) or "-")
               for e, n, first, last, kinds in windows]),
    ]
    if r.mode == "url":
        lines += ["", "This tokenproxy has no `[store] sentinels`: the figures are those of a "
                      "Sentinel-following forwarder in front of plain `url` stores, to be re-run "
                      "with `sentinels` once the Sentinel support of issue 15 lands."]
    if load.get("failures_truncated"):
        lines += ["", "(More failures than the load generator keeps with their time: the "
                      "per-fault counts are a lower bound.)"]
    return "\n".join(lines)


def _mode() -> str:
    mode = os.environ.get(MODE_ENV, "auto")
    if mode not in MODES:
        raise ValueError(f"{MODE_ENV} must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def run(options: RunOptions) -> str:
    parts.require_tools("redis-server", "redis-sentinel")
    seconds = options.duration or (SOAK_SECONDS if options.soak else
                                   QUICK_SECONDS if options.quick else DEFAULT_SECONDS)
    result = chaos_run(options.workdir, seconds, _mode())
    print(f"chaos: {result.load['requests']} requests, failures "
          f"{failures_by_kind(result.load['outcomes'])}, token calls "
          f"{result.counters['token_calls']}, max sessions "
          f"{result.counters['max_live_sessions']}", flush=True)
    if options.logs is not None:
        for log in options.workdir.rglob("*.log"):
            name = "-".join(log.relative_to(options.workdir).parts)
            (options.logs / f"chaos-{name}").write_bytes(log.read_bytes())
    return render(result, CLIENTS)


SCENARIO = Scenario(
    name="chaos",
    title="Chaos: 3 replicas on Redis with Sentinel, kill -9 of replicas and of the primary, "
          "revocations",
    summary="300 clients, 3 replicas, Redis primary+replica+3 Sentinels; random kill -9 and "
            "revocations (2 min; --soak: 10 min)",
    run=run,
)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.chaos``: the scenario with its own options; writes its section."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--minutes", type=float, help="run length (default 2; --soak: 10)")
    parser.add_argument("--soak", action="store_true", help="the make soak variant (10 min)")
    parser.add_argument("--redis", choices=MODES, default=None,
                        help=f"how the proxies reach Redis (default ${MODE_ENV} or auto)")
    parser.add_argument("--output", type=Path, default=report.DEFAULT_OUTPUT)
    parser.add_argument("--no-write", action="store_true",
                        help="print the section instead of writing it")
    parser.add_argument("--logs", type=Path, help="copy the process logs into DIR")
    args = parser.parse_args(argv)
    if args.minutes is not None and not 0.25 <= args.minutes <= 60:
        parser.error("--minutes must be between 0.25 and 60")
    if args.redis:
        os.environ[MODE_ENV] = args.redis
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "-m", "bench.chaos", *argv])
    facts = report.machine_facts()
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp:
        options = RunOptions(quick=False, command=command, workdir=Path(tmp), logs=args.logs,
                             soak=args.soak,
                             duration=None if args.minutes is None else args.minutes * 60)
        body = run(options)
    name = "chaos-soak" if args.soak else "chaos"
    title = SCENARIO.title + (" (soak)" if args.soak else "")
    section = report.render_section(name, title, command, facts, body)
    if args.no_write:
        print(section)
        return 0
    from bench.registry import SCENARIOS

    order = [n for s in SCENARIOS for n in (s.name, f"{s.name}-soak")]
    report.update_document(args.output, facts, {name: section}, order)
    print(f"bench.chaos: wrote {name} to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

