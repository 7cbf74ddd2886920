"""Scenario ``fleet``: a legacy fleet of SDK-style clients, alone and behind tokenproxy.

Six independent apps share one RingCentral user (same client id, same JWT credential) and each
make about 5 requests/s to ``GET /restapi/v1.0/account/~/extension/~`` for a fixed duration,
against a fresh platform emulator per side with the same compressed-time policy: access tokens
live 5 s, refresh tokens 60 s, the token endpoint allows 5 calls per 60 s per client id (60 s
penalty restarted by every call made during it), at most 5 sessions per (user, client id) with
the oldest evicted by a 6th login, and every session revoked from outside every 10 s.

Side A: each app manages its own tokens like the official SDK (see :class:`SdkPlatform` and
:class:`LegacyApp`). Side B: the same six workers are plain HTTP clients, each with its own
client key, talking through tokenproxy (auth budget 5 calls / 60 s, token wait 10 s).

Figures come from the workers' own tallies (what the apps saw) and from the emulator's counters
(what the platform saw).
"""

from __future__ import annotations

import base64
import math
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import report
from bench.scenario import RunOptions, Scenario
from tests.support.emulator import Emulator, start_emulator
from tests.support.proxy import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_JWT,
    Proxy,
    client,
    jwt_account,
    start_proxy,
)

API_PATH = "/restapi/v1.0/account/~/extension/~"
TOKEN_PATH = "/restapi/oauth/token"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
PAIR = f"{DEMO_CLIENT_ID}/100001"  # the emulator's (client id, owner id) key of the demo user
TOKEN_ERROR_CODES = frozenset({"OAU-213", "OAU-210", "OAU-129", "OAU-128"})

WORKERS = 6
RATE = 5.0  # requests per second per worker
DEFAULT_DURATION = 60.0
QUICK_DURATION = 20.0
REVOKE_EVERY = 30.0
ACCESS_TTL = 60
REFRESH_TTL = 600
AUTH_RATE = 5
AUTH_WINDOW = 60
AUTH_PENALTY = 60
SESSION_CAP = 5
EMULATOR_ARGS = (
    "--access-ttl", str(ACCESS_TTL), "--refresh-ttl", str(REFRESH_TTL),
    "--auth-rate", str(AUTH_RATE), "--auth-window", str(AUTH_WINDOW),
    "--auth-penalty", str(AUTH_PENALTY),
    "--session-cap", str(SESSION_CAP), "--session-cap-policy", "evict",
)
PROXY_OPTIONS: dict[str, Any] = {
    "auth_budget_calls": 5, "auth_budget_window": 60, "token_wait_timeout": 10,
}
HTTP_TIMEOUT = 30.0
JOIN_GRACE = 45.0  # s the workers may take past the deadline (one request in flight at most)
DEFAULT_RETRY_AFTER = 60.0


# ------------------------------------------------------------------------------ outcomes
@dataclass
class Result:
    """What one app-level request ended with."""

    ok: bool
    label: str = ""  # failure kind, e.g. "401 OAU-213" or "429 CMN-301 (token endpoint)"
    proxy_code: str | None = None  # X-Tokenproxy-Error: the proxy answered by itself
    retry_after: float | None = None
    backoff: float = 0.0  # s the app waits before its next request (Retry-After)


@dataclass
class Tally:
    """One worker's (or a whole side's) view of its requests."""

    requests: int = 0
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    proxy_own: Counter[str] = field(default_factory=Counter)
    failure_times: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    failure_latencies: list[float] = field(default_factory=list)
    proxy_retry_after: list[float] = field(default_factory=list)
    backoff_seconds: float = 0.0
    start_login_failures: Counter[str] = field(default_factory=Counter)

    def record(self, at: float, latency: float, result: Result) -> None:
        self.requests += 1
        self.latencies.append(latency)
        if result.ok:
            self.ok += 1
            return
        self.failures[result.label] += 1
        self.failure_times.append(at)
        self.failure_latencies.append(latency)
        if result.proxy_code is not None:
            self.proxy_own[result.proxy_code] += 1
            if result.retry_after is not None:
                self.proxy_retry_after.append(result.retry_after)

    def merge(self, other: Tally) -> None:
        self.requests += other.requests
        self.ok += other.ok
        self.failures.update(other.failures)
        self.proxy_own.update(other.proxy_own)
        self.failure_times += other.failure_times
        self.latencies += other.latencies
        self.failure_latencies += other.failure_latencies
        self.proxy_retry_after += other.proxy_retry_after
        self.backoff_seconds += other.backoff_seconds
        self.start_login_failures.update(other.start_login_failures)


def error_codes(response: httpx.Response) -> list[str]:
    """Every errorCode of a platform/proxy error body (either envelope), outermost last."""
    try:
        body = response.json()
    except ValueError:
        return []
    if not isinstance(body, dict):
        return []
    codes: list[str] = []
    errors = body.get("errors")
    if isinstance(errors, list):
        codes += [str(e["errorCode"]) for e in errors if isinstance(e, dict) and "errorCode" in e]
    for key in ("errorCode", "error"):
        if isinstance(body.get(key), str):
            codes.append(body[key])
    return codes


def retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def result_of(response: httpx.Response) -> Result:
    if 200 <= response.status_code < 300:
        return Result(ok=True)
    codes = error_codes(response)
    label = f"{response.status_code} {codes[0] if codes else '-'}"
    return Result(ok=False, label=label, proxy_code=response.headers.get("X-Tokenproxy-Error"),
                  retry_after=retry_after(response))


# -------------------------------------------------------------- side A: the SDK model
class TokenCallError(Exception):
    """The token endpoint refused a call (the SDK raises ApiException)."""

    def __init__(self, response: httpx.Response) -> None:
        codes = error_codes(response)
        self.status = response.status_code
        self.code = codes[0] if codes else "-"
        self.retry_after = retry_after(response)
        super().__init__(f"token endpoint {self.status} {self.code}")


class RefreshTokenExpired(Exception):
    """Raised before any call when the SDK's own clock says the refresh token is dead."""


class SdkPlatform:
    """Model of ``ringcentral.platform.Platform`` + ``Auth`` (ringcentral-python).

    * ``login(jwt=...)`` posts the JWT grant with Basic client auth and stores the answer;
      expiry times are computed on the client's own clock (``time() + expires_in``).
    * Before every API call (``_ensure_authentication``): if the access token is expired by
      that clock, ``refresh()``; ``refresh()`` raises "Refresh token has expired" without a
      call when the refresh token is expired by that clock (or absent).
    * Non-2xx answers raise; the SDK itself never retries, never logs in again and has no
      429 handling. Unlike the real SDK (which asks ``access_token_ttl=3600`` and
      ``refresh_token_ttl=604800`` on a refresh), the model asks no lifetimes, so the
      emulator's compressed 5 s / 60 s stand in for the platform's 1 h / 7 days.
    """

    def __init__(self, http: httpx.Client, client_id: str, client_secret: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._http = http
        self._basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        self._clock = clock
        self._token_type = "bearer"
        self._access_token = ""
        self._expire_time = 0.0
        self._refresh_token = ""
        self._refresh_expire_time = 0.0

    def access_token_valid(self) -> bool:
        return self._expire_time > self._clock()

    def refresh_token_valid(self) -> bool:
        return bool(self._refresh_token) and self._refresh_expire_time > self._clock()

    def login(self, jwt: str) -> None:
        self._request_token({"grant_type": JWT_GRANT, "assertion": jwt})

    def refresh(self) -> None:
        if not self.refresh_token_valid():
            raise RefreshTokenExpired("Refresh token has expired")
        self._request_token({"grant_type": "refresh_token", "refresh_token": self._refresh_token})

    def get(self, path: str) -> httpx.Response:
        self._ensure_authentication()
        return self._http.get(
            path, headers={"Authorization": f"{self._token_type} {self._access_token}"})

    def _ensure_authentication(self) -> None:
        if not self.access_token_valid():
            self.refresh()

    def _request_token(self, form: dict[str, str]) -> None:
        response = self._http.post(TOKEN_PATH, data=form,
                                   headers={"Authorization": f"Basic {self._basic}"})
        if not 200 <= response.status_code < 300:
            raise TokenCallError(response)
        data = response.json()
        now = self._clock()
        self._token_type = str(data.get("token_type") or "bearer")
        self._access_token = str(data["access_token"])
        self._expire_time = now + float(data.get("expires_in", 0))
        self._refresh_token = str(data.get("refresh_token", ""))
        self._refresh_expire_time = now + float(data.get("refresh_token_expires_in", 0))


class LegacyApp:
    """The application code around the SDK, as the forum threads show it (and as the
    ringcentral-js SDK does on its own): on a token 401 (OAU-213/210/129/128, either envelope)
    refresh once — logging in again with the JWT when the refresh fails or the refresh token
    is dead by its clock — and retry the request once; a pre-request refresh that fails also
    falls back to a login; a 429 from the token endpoint makes the request fail and the app
    wait ``Retry-After`` seconds (60 when absent) before its next request."""

    def __init__(self, sdk: SdkPlatform, jwt: str) -> None:
        self.sdk = sdk
        self._jwt = jwt

    def start(self) -> Result:
        try:
            self.sdk.login(self._jwt)
        except TokenCallError as exc:
            return self._token_failure(exc)
        except httpx.HTTPError as exc:
            return Result(ok=False, label=f"transport error ({type(exc).__name__})")
        return Result(ok=True)

    def request(self) -> Result:
        try:
            self._authenticate(refresh_first=not self.sdk.access_token_valid())
            response = self.sdk.get(API_PATH)
            if response.status_code == 401 and TOKEN_ERROR_CODES & set(error_codes(response)):
                self._authenticate(refresh_first=True)
                response = self.sdk.get(API_PATH)
            return result_of(response)
        except TokenCallError as exc:
            return self._token_failure(exc)
        except httpx.HTTPError as exc:
            return Result(ok=False, label=f"transport error ({type(exc).__name__})")

    def _authenticate(self, refresh_first: bool) -> None:
        if not refresh_first:
            return
        try:
            self.sdk.refresh()
        except RefreshTokenExpired:
            self.sdk.login(self._jwt)
        except TokenCallError as exc:
            if exc.status == 429:
                raise
            self.sdk.login(self._jwt)

    @staticmethod
    def _token_failure(exc: TokenCallError) -> Result:
        backoff = 0.0
        if exc.status == 429:
            backoff = exc.retry_after if exc.retry_after is not None else DEFAULT_RETRY_AFTER
        return Result(ok=False, label=f"{exc.status} {exc.code} (token endpoint)",
                      retry_after=exc.retry_after, backoff=backoff)


# ------------------------------------------------------------------------------- driver
@dataclass
class Clock:
    """Shared timing of one side's run."""

    t0: float
    deadline: float
    stop: threading.Event

    def wait_until(self, moment: float) -> bool:
        """Sleep until ``moment`` (never past the deadline); True if the run was stopped."""
        return self.stop.wait(max(0.0, min(moment, self.deadline) - time.monotonic()))


def worker_loop(request: Callable[[], Result], tally: Tally, clock: Clock, offset: float,
                start: Callable[[], Result] | None = None) -> None:
    """Call ``request`` on a fixed schedule (RATE per second, shifted by ``offset``), never in
    bursts: slots missed while a request or a back-off ran are skipped."""
    period = 1.0 / RATE
    if start is not None:
        result = start()
        if not result.ok:
            tally.start_login_failures[result.label] += 1
            if result.backoff > 0:
                tally.backoff_seconds += max(0.0, min(result.backoff,
                                                      clock.deadline - time.monotonic()))
                if clock.wait_until(time.monotonic() + result.backoff):
                    return
    max_slots = int((clock.deadline - clock.t0) * RATE) + 2
    slot = max(0, math.ceil((time.monotonic() - clock.t0 - offset) / period))
    for _ in range(max_slots):
        due = clock.t0 + offset + slot * period
        if due >= clock.deadline or clock.wait_until(due):
            return
        sent = time.monotonic()
        result = request()
        done = time.monotonic()
        tally.record(sent - clock.t0, done - sent, result)
        if result.backoff > 0:
            tally.backoff_seconds += max(0.0, min(result.backoff, clock.deadline - done))
            if clock.wait_until(done + result.backoff):
                return
        slot = max(slot + 1, math.ceil((time.monotonic() - clock.t0 - offset) / period))


def revoker_loop(emulator: Emulator, clock: Clock, log: list[tuple[float, int | str]]) -> None:
    """Revoke every live session every REVOKE_EVERY seconds (the outside churn)."""
    for k in range(1, int((clock.deadline - clock.t0) / REVOKE_EVERY) + 1):
        moment = clock.t0 + k * REVOKE_EVERY
        if moment >= clock.deadline or clock.wait_until(moment):
            return
        try:
            log.append((time.monotonic() - clock.t0, emulator.revoke_all()))
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            log.append((time.monotonic() - clock.t0, f"failed: {type(exc).__name__}"))


@dataclass
class SideResult:
    label: str
    tally: Tally
    counters: dict[str, Any]
    elapsed: float
    revocations: list[tuple[float, int | str]]


def run_side(label: str, emulator: Emulator, duration: float,
             workers: list[tuple[Callable[[], Result], Callable[[], Result] | None]]) -> SideResult:
    """Run the workers and the revoker for ``duration`` seconds; collect tallies and counters."""
    emulator.reset_counters()
    t0 = time.monotonic() + 0.5  # let every thread start before the first slot
    clock = Clock(t0=t0, deadline=t0 + duration, stop=threading.Event())
    tallies = [Tally() for _ in workers]
    revocations: list[tuple[float, int | str]] = []
    threads = [
        threading.Thread(target=worker_loop, name=f"{label}-worker-{i}", daemon=True,
                         args=(request, tallies[i], clock, i / (RATE * len(workers)), start))
        for i, (request, start) in enumerate(workers)
    ]
    threads.append(threading.Thread(target=revoker_loop, name=f"{label}-revoker", daemon=True,
                                    args=(emulator, clock, revocations)))
    for t in threads:
        t.start()
    try:
        join_by = clock.deadline + JOIN_GRACE
        for t in threads:
            t.join(max(0.0, join_by - time.monotonic()))
    finally:
        clock.stop.set()
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        raise RuntimeError(f"threads still running {JOIN_GRACE} s after the deadline: {stuck}")
    elapsed = time.monotonic() - t0
    counters = emulator.counters()
    total = Tally()
    for t in tallies:
        total.merge(t)
    return SideResult(label, total, counters, elapsed, revocations)


def side_sdk_fleet(duration: float, logs: Path | None) -> SideResult:
    emulator = start_emulator(*EMULATOR_ARGS)
    clients: list[httpx.Client] = []
    try:
        workers: list[tuple[Callable[[], Result], Callable[[], Result] | None]] = []
        for _ in range(WORKERS):
            http = httpx.Client(base_url=emulator.url, timeout=HTTP_TIMEOUT, trust_env=False)
            clients.append(http)
            app = LegacyApp(SdkPlatform(http, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET), DEMO_JWT)
            workers.append((app.request, app.start))
        return run_side("sdk", emulator, duration, workers)
    finally:
        for http in clients:
            http.close()
        _save_log(logs, "fleet-sdk-emulator.log", emulator.stderr())
        emulator.stop()


def side_proxy(duration: float, workdir: Path, logs: Path | None) -> SideResult:
    emulator = start_emulator(*EMULATOR_ARGS)
    proxy: Proxy | None = None
    clients: list[httpx.Client] = []
    try:
        keys = [f"bench-fleet-{i}-{secrets.token_hex(12)}" for i in range(WORKERS)]
        proxy = start_proxy(workdir, emulator.url, accounts=[jwt_account()],
                            clients=[client(f"fleet-app-{i}", key=k) for i, k in enumerate(keys)],
                            **PROXY_OPTIONS)
        workers: list[tuple[Callable[[], Result], Callable[[], Result] | None]] = []
        for key in keys:
            http = proxy.http(key, trust_env=False)
            clients.append(http)
            workers.append((_plain_request(http), None))
        return run_side("proxy", emulator, duration, workers)
    finally:
        for http in clients:
            http.close()
        if proxy is not None:
            proxy.stop()
            _save_log(logs, "fleet-proxy.log", proxy.logs())
        _save_log(logs, "fleet-proxy-emulator.log", emulator.stderr())
        emulator.stop()


def _plain_request(http: httpx.Client) -> Callable[[], Result]:
    def request() -> Result:
        try:
            return result_of(http.get(API_PATH))
        except httpx.HTTPError as exc:
            return Result(ok=False, label=f"transport error ({type(exc).__name__})")
    return request


def _save_log(logs: Path | None, name: str, text: str) -> None:
    if logs is not None:
        (logs / name).write_text(text, encoding="utf-8")


# ------------------------------------------------------------------------------ report
def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "-"


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.0f}"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counter.most_common()) or "none"


def _timeline(times: list[float], duration: float) -> str:
    buckets = Counter(int(t // REVOKE_EVERY) for t in times)
    n = max(1, math.ceil(duration / REVOKE_EVERY))
    return " · ".join(f"{int(i * REVOKE_EVERY)}-{int((i + 1) * REVOKE_EVERY)} s: {buckets[i]}"
                      for i in range(n))


def _per_minute(count: int, elapsed: float) -> float:
    return count * 60.0 / elapsed if elapsed > 0 else 0.0


def render(a: SideResult, b: SideResult, duration: float) -> str:
    scheduled = int(duration * RATE) * WORKERS
    rows: list[list[object]] = []

    def row(label: str, fa: Callable[[SideResult], object],
            fb: Callable[[SideResult], object] | None = None) -> None:
        rows.append([label, fa(a), (fb or fa)(b)])

    def grant(s: SideResult, name: str) -> int:
        return int(s.counters.get("token_calls_by_grant", {}).get(name, 0))

    row(f"requests made (≈{scheduled} scheduled)", lambda s: s.tally.requests)
    row("2xx", lambda s: f"{s.tally.ok} ({_pct(s.tally.ok, s.tally.requests)})")
    row("client-visible failures (non-2xx)",
        lambda s: f"{s.tally.requests - s.tally.ok} "
                  f"({_pct(s.tally.requests - s.tally.ok, s.tally.requests)})")
    row("… of which answered by the proxy itself", lambda s: "-",
        lambda s: sum(s.tally.proxy_own.values()))
    row("demand served (2xx / scheduled)", lambda s: _pct(s.tally.ok, scheduled))
    row("token-endpoint calls / min",
        lambda s: f"{_per_minute(int(s.counters.get('token_calls', 0)), s.elapsed):.1f}")
    row("token-endpoint calls (JWT login / refresh)",
        lambda s: f"{s.counters.get('token_calls', 0)} "
                  f"({grant(s, 'jwt')} / {grant(s, 'refresh_token')})")
    row("token-endpoint 429s", lambda s: s.counters.get("rate_limited", 0))
    row("logins (sessions created)", lambda s: s.counters.get("logins", 0))
    row("evictions (login over the 5-session cap)", lambda s: s.counters.get("evictions", 0))
    row("max live sessions (user, client id)",
        lambda s: s.counters.get("max_live_sessions", {}).get(PAIR, 0))
    row("API token 401s seen by the platform",
        lambda s: sum(s.counters.get("api_401_by_code", {}).values()))
    row("latency p50 / p95 / max (ms)",
        lambda s: f"{_ms(s.tally.latencies, 0.5)} / {_ms(s.tally.latencies, 0.95)} / "
                  f"{_ms(s.tally.latencies, 1.0)}")

    def revoked(s: SideResult) -> str:
        return ", ".join(f"{t:.0f} s: {n}" for t, n in s.revocations) or "none"

    lines = [
        "Six apps share one user (client id `demo-client-id`, one JWT credential), each making "
        f"≈{RATE:g} requests/s to `GET {API_PATH}` for {duration:g} s. Each side runs against "
        "a fresh emulator started with "
        f"`{' '.join(EMULATOR_ARGS)}` (access token {ACCESS_TTL} s, refresh token "
        f"{REFRESH_TTL} s, {AUTH_RATE} token calls / {AUTH_WINDOW} s per client id with a "
        f"{AUTH_PENALTY} s penalty restarted by each call, {SESSION_CAP} sessions per user and "
        "client id, a 6th login evicts the oldest), and every live session is revoked from "
        f"outside every {REVOKE_EVERY:g} s.",
        "",
        "- **SDK fleet → platform**: each app is a model of the official ringcentral-python "
        "`Platform`: JWT login at start; before each request, if the access token is expired "
        "by the app's own clock, a refresh with its refresh token (\"Refresh token has expired\""
        " without a call when that one is dead by the same clock); the SDK itself never "
        "retries. Around it, the usual app code (what ringcentral-js does built in): on a 401 "
        "with OAU-213/210/129/128, refresh once — log in again with the JWT if the refresh "
        "fails — and retry once; a failed pre-request refresh also falls back to a login; a "
        "token-endpoint 429 fails the request and the app waits `Retry-After` before its next "
        "one. The model asks no token lifetimes, so the emulator's compressed ones apply.",
        "- **apps → tokenproxy → platform**: the same six workers as plain HTTP clients, each "
        "with its own client key (six `[[clients]]` on one account), no token logic; proxy "
        f"options {', '.join(f'`{k} = {v}`' for k, v in PROXY_OPTIONS.items())}.",
        "",
        report.table(["", "SDK fleet → platform", "apps → tokenproxy → platform"], rows),
        "",
        f"- Failures, SDK fleet: {_counts(a.tally.failures)}; start-up logins refused: "
        f"{_counts(a.tally.start_login_failures)}; time spent waiting out `Retry-After`: "
        f"{a.tally.backoff_seconds:.0f} worker-seconds of {WORKERS * duration:.0f}.",
        f"- Failures, tokenproxy: {_counts(b.tally.failures)}; proxy-answered by code: "
        f"{_counts(b.tally.proxy_own)}"
        + (f"; their `Retry-After` {min(b.tally.proxy_retry_after):.0f}-"
           f"{max(b.tally.proxy_retry_after):.0f} s" if b.tally.proxy_retry_after else "")
        + (f"; first at {min(b.tally.failure_times):.1f} s, last at "
           f"{max(b.tally.failure_times):.1f} s" if b.tally.failure_times else "")
        + ".",
        f"- Failures per {REVOKE_EVERY:g} s, SDK fleet: "
        f"{_timeline(a.tally.failure_times, duration)}.",
        f"- Failures per {REVOKE_EVERY:g} s, tokenproxy: "
        f"{_timeline(b.tally.failure_times, duration)}.",
        f"- Outside revocations (time: sessions killed): SDK fleet {revoked(a)}; tokenproxy "
        f"{revoked(b)}.",
        f"- API 401s by code (platform side): SDK fleet "
        f"{_counts(Counter(a.counters.get('api_401_by_code', {})))}; tokenproxy "
        f"{_counts(Counter(b.counters.get('api_401_by_code', {})))}.",
        "",
        interpret(a, b, scheduled),
    ]
    return "\n".join(lines)


def interpret(a: SideResult, b: SideResult, scheduled: int) -> str:
    """Two sentences drawn from the figures."""
    def calls(s: SideResult) -> str:
        return f"{_per_minute(int(s.counters.get('token_calls', 0)), s.elapsed):.1f}"

    a_429 = int(a.counters.get("rate_limited", 0))
    b_429 = int(b.counters.get("rate_limited", 0))
    b_own = sum(b.tally.proxy_own.values())
    b_fail = b.tally.requests - b.tally.ok
    if a_429:
        burst = (" already with their six start-up logins"
                 if a.tally.start_login_failures else "")
        how = (f"tripped the platform's auth limit{burst} and, as every call made during the "
               f"penalty restarts it, spent {a.tally.backoff_seconds:.0f} of "
               f"{scheduled / RATE:.0f} worker-seconds waiting out `Retry-After`")
    else:
        how = "stayed under the platform's auth limit"
    first = (
        f"Managing their own tokens, the six SDK-style apps {how} ({calls(a)} token calls a "
        f"minute against a limit of {AUTH_RATE}, {a_429} 429s, "
        f"{a.counters.get('logins', 0)} sessions, {a.counters.get('evictions', 0)} evictions) "
        f"and served {_pct(a.tally.ok, scheduled)} of their scheduled requests."
    )
    head = (
        f"Through tokenproxy the same demand cost {calls(b)} token calls a minute, {b_429} 429s "
        f"and at most {b.counters.get('max_live_sessions', {}).get(PAIR, 0)} live session, "
        f"serving {_pct(b.tally.ok, scheduled)}"
    )
    renewals = 60.0 / ACCESS_TTL + 60.0 / REVOKE_EVERY
    need = (f"one session with {ACCESS_TTL} s tokens revoked every {REVOKE_EVERY:g} s needs "
            f"about {renewals:.0f} token calls a minute and the budget allows "
            f"{PROXY_OPTIONS['auth_budget_calls']}")
    penalty = (" so the platform's penalty was never tripped" if b_429 == 0
               else f" yet the platform still answered {b_429} 429s")
    if b_fail == 0:
        second = f"{head}, and no request failed."
    elif b_own == b_fail:
        second = (
            f"{head}; every failure was a 503 the proxy answered itself within "
            f"{_ms(b.tally.failure_latencies, 1.0)} ms ({_counts(b.tally.proxy_own)}, from "
            f"{min(b.tally.failure_times):.0f} s on), "
            f"because {need},{penalty}."
        )
    else:
        second = (
            f"{head}; of its {b_fail} failures {b_own} were 503s the proxy answered itself "
            f"({_counts(b.tally.proxy_own)}) and the rest passed through from the platform "
            f"({_counts(b.tally.failures)}), because {need},{penalty}."
        )
    return first + " " + second


# ---------------------------------------------------------------------------- scenario
def run(options: RunOptions) -> str:
    duration = options.duration or (QUICK_DURATION if options.quick else DEFAULT_DURATION)
    print(f"fleet: side A (SDK fleet → emulator), {duration:g} s", flush=True)
    a = side_sdk_fleet(duration, options.logs)
    print(f"fleet: side B (apps → tokenproxy → emulator), {duration:g} s", flush=True)
    b = side_proxy(duration, options.workdir, options.logs)
    for side in (a, b):
        t = side.tally
        print(f"fleet: {side.label}: {t.requests} requests, {t.ok} ok, "
              f"failures {_counts(t.failures)}; token calls {side.counters.get('token_calls')}, "
              f"429s {side.counters.get('rate_limited')}", flush=True)
    return render(a, b, duration)


SCENARIO = Scenario(
    name="fleet",
    title="Legacy fleet: six SDK-style apps on one user, alone vs behind tokenproxy",
    summary="6 official-SDK-style clients sharing one user, direct vs through the proxy",
    run=run,
)

__all__ = ["SCENARIO", "LegacyApp", "SdkPlatform", "run"]
