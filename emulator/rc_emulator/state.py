"""Pure platform logic, no HTTP: apps, users, sessions, token issue/refresh/revoke, expiry,
session cap, auth codes, the rate limiters (token endpoint and API groups) and the counters.

Time comes from an injectable ``clock`` (seconds as float, default ``time.monotonic``) so tests
can move it forward without sleeping. Every public method is synchronous and runs to completion,
so under asyncio each one is atomic.

Rules implemented (platform.md):

* Every jwt/password/authorization_code login creates a session; a refresh does not.
* Refresh tokens are single-use and rotate within the same session; the previous access token
  then answers OAU-129 while the session lives (OAU-213 once it is gone). Within
  ``policy.refresh_grace`` seconds, replaying the previous refresh token returns the same pair.
* At most ``policy.session_cap`` live sessions per (client_id, owner_id): the next login evicts
  the oldest (``evict``) or is refused with 400 invalid_grant OAU-260 (``refuse``).
* Revoking any token of a session (current or rotated out) kills the whole session.
* A session is *live* until it is revoked/evicted or both of its tokens have expired.
* Rate limits (ringcentral-api-docs ``docs/basics/rate-limits.md``) count per (user, client id)
  and group: the token endpoint in the Auth group (``auth_rate``/``auth_window``/
  ``auth_penalty``; the user is the one the grant names: password → username, JWT → the
  assertion's user, refresh → the token's owner, code → the code's user; when it cannot be
  told, :data:`UNKNOWN_USER`), API calls in their table group (``api_*``, enforced only under
  ``api_rate=enforce``). Injected penalties (:meth:`Platform.add_penalty`) apply in any mode.

Why one module of ~700 lines: :class:`Platform` is one state machine whose methods share its
locks-free atomicity (each runs to completion on the event loop) and its indexes (sessions by
token, by pair, auth codes); split across modules, every rule above would reach into another
module's private indexes. Its HTTP side (:mod:`.api`, :mod:`.app`) and its errors
(:mod:`.errors`) are already apart.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import math
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from . import errors
from .errors import PlatformError
from .policy import Policy
from .ratelimit import AUTH_GROUP, GLOBAL_CODE, PenaltyFaults, SlidingWindowLimiter, headers
from .seed import DEFAULT_SEED, JWT_GRANT_URN, App, Seed, User
from .tokens import new_token, token_kind

UNKNOWN_USER = "?"  # auth limiter key's user when the token request names none we know
SCOPE = "ReadAccounts ReadCallLog ReadCallRecording ReadMessages SMS Faxes"
CODE_TTL = 60.0
DEAD_RETENTION = 3600.0  # how long ended sessions are remembered (OAU-211 / OAU-210 answers)
MAX_ROTATED_PER_SESSION = 1000
MAX_STORED_SESSIONS = 50_000
_SWEEP_INTERVAL = 1.0
_PKCE_RE = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_ENDPOINT_RE = re.compile(r"[A-Za-z0-9._~-]{1,128}")

GRANT_TAGS = {
    JWT_GRANT_URN: "jwt",
    "password": "password",
    "refresh_token": "refresh_token",
    "authorization_code": "authorization_code",
}


@dataclass
class Session:
    session_id: str
    client_id: str
    owner_id: str
    endpoint_id: str
    outside: bool
    created: float
    seq: int
    access_token: str = ""
    access_expires: float = 0.0
    refresh_token: str = ""
    refresh_expires: float = 0.0
    alive: bool = True
    ended: float | None = None
    end_reason: str = ""
    body: dict[str, Any] = field(default_factory=dict)
    rotated_access: dict[str, None] = field(default_factory=dict)
    used_refresh: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)

    def live(self, now: float) -> bool:
        return self.alive and now < max(self.access_expires, self.refresh_expires)

    def gone_since(self) -> float:
        """Clock time from which the session is neither alive nor usable."""
        if self.ended is not None:
            return self.ended
        return max(self.access_expires, self.refresh_expires)


@dataclass
class AuthCode:
    client_id: str
    redirect_uri: str
    challenge: str | None
    owner_id: str
    expires: float
    used: bool = False


def _new_counters() -> dict[str, Any]:
    return {
        "token_calls": 0,
        "token_calls_by_grant": Counter(
            {"jwt": 0, "password": 0, "refresh_token": 0, "authorization_code": 0, "other": 0}
        ),
        "token_errors_by_code": Counter(),
        "rate_limited": 0,
        "logins": 0,
        "outside_logins": 0,
        "refreshes": 0,
        "refresh_replays": 0,
        "revocations": 0,
        "evictions": 0,
        "api_requests": 0,
        "api_401_by_code": Counter(),
        # authenticated API requests of a throttled group: served (passed the limiter) + 429
        "api_calls_by_group": Counter(),
        "api_served_by_group": Counter(),
        "api_429_by_group": Counter(),
    }


def pair_key(client_id: str, owner_id: str) -> str:
    return f"{client_id}/{owner_id}"


def pkce_s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _ceil_seconds(value: float) -> int:
    return max(1, math.ceil(value - 1e-9))


class Platform:
    """The emulated platform's whole state."""

    def __init__(
        self,
        seed: Seed = DEFAULT_SEED,
        policy: Policy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy or Policy()
        self.clock = clock
        self.apps: dict[str, App] = {a.client_id: a for a in seed.apps}
        self.users: tuple[User, ...] = seed.users
        self._users_by_id = {u.owner_id: u for u in seed.users}
        self._users_by_jwt = {u.jwt: u for u in seed.users}
        self.sessions: dict[str, Session] = {}
        self._by_pair: dict[str, list[Session]] = {}
        self._access: dict[str, Session] = {}
        self._refresh: dict[str, Session] = {}
        self._codes: dict[str, AuthCode] = {}
        self._seq = 0
        self._last_sweep = float("-inf")
        self._alternate_oauth = False
        self.limiter = SlidingWindowLimiter(clock)  # token endpoint (Auth group)
        self.api_limiter = SlidingWindowLimiter(clock)
        self.faults = PenaltyFaults(clock)
        self.counters = _new_counters()
        self.max_live: Counter[str] = Counter()
        self.max_live_proxy: Counter[str] = Counter()

    # ------------------------------------------------------------------ policy
    def set_policy(self, changes: dict[str, Any]) -> Policy:
        """Apply validated policy changes (raises policy.PolicyError)."""
        self.policy = self.policy.updated(changes)
        return self.policy

    # ------------------------------------------------------------ token endpoint
    def token_request(self, form: Mapping[str, str], authorization: str | None) -> dict[str, Any]:
        """Handle one POST /restapi/oauth/token; returns the success body or raises."""
        grant_type = form.get("grant_type", "")
        tag = GRANT_TAGS.get(grant_type, "other")
        c = self.counters
        c["token_calls"] += 1
        c["token_calls_by_grant"][tag] += 1
        try:
            refused = self.auth_group_hit(*self._auth_pair(form, authorization))
            if refused is not None:
                raise refused
            body = self._token_grant(grant_type, form, authorization)
        except PlatformError as exc:
            c["token_errors_by_code"][exc.code] += 1
            raise
        if self.policy.revoke_issued > 0:
            self.policy = dataclasses.replace(self.policy,
                                              revoke_issued=self.policy.revoke_issued - 1)
            session = self._access.get(body["access_token"])
            if session is not None:
                self._kill(session, "revoked")
                c["revocations"] += 1
        return body

    def token_error(self, exc: PlatformError, grant_type: str = "") -> None:
        """Count a token-endpoint error raised before :meth:`token_request` could run."""
        c = self.counters
        c["token_calls"] += 1
        c["token_calls_by_grant"][GRANT_TAGS.get(grant_type, "other")] += 1
        c["token_errors_by_code"][exc.code] += 1

    def auth_group_hit(self, client_id: str, owner_id: str) -> PlatformError | None:
        """Count one call of the Auth group (token endpoint, ``/restapi/oauth/wstoken``) for
        the pair, keyed per ``auth_rate_key``: None when allowed, else the 429 (an injected
        Auth penalty or the limiter's), counted in ``rate_limited``."""
        c = self.counters
        fault = self.faults.hit(AUTH_GROUP, client_id, owner_id)
        if fault is not None:
            c["rate_limited"] += 1
            return errors.api_rate_limited(fault.code, fault.retry_after)
        wait, _ = self.limiter.hit(
            self._auth_key(client_id, owner_id),
            self.policy.auth_rate,
            self.policy.auth_window,
            self.policy.auth_penalty,
        )
        if wait is not None:
            c["rate_limited"] += 1
            return errors.rate_limited(wait)
        return None

    def auth_pair_remaining(self, client_id: str, owner_id: str) -> int:
        p = self.policy
        return self.limiter.remaining(self._auth_key(client_id, owner_id), p.auth_rate,
                                      p.auth_window)

    def auth_rate_remaining(self, form: Mapping[str, str], authorization: str | None) -> int:
        p = self.policy
        key = self._auth_key(*self._auth_pair(form, authorization))
        return self.limiter.remaining(key, p.auth_rate, p.auth_window)

    def _auth_key(self, client_id: str, owner_id: str) -> str:
        if self.policy.auth_rate_key == "app":
            return client_id
        return pair_key(client_id, owner_id)

    def _auth_pair(self, form: Mapping[str, str], authorization: str | None) -> tuple[str, str]:
        """(client id, user) a token request counts against in the Auth group; the user is
        :data:`UNKNOWN_USER` when the request names none the platform knows."""
        basic = _parse_basic(authorization) if authorization else None
        client_id = basic[0] if basic is not None else form.get("client_id") or "-"
        return client_id, self._grant_owner(form) or UNKNOWN_USER

    def _grant_owner(self, form: Mapping[str, str]) -> str | None:
        """The user a token request names, whatever its password or the token's state."""
        tag = GRANT_TAGS.get(form.get("grant_type", ""))
        if tag == "jwt":
            user = self._users_by_jwt.get(form.get("assertion", ""))
            return user.owner_id if user is not None else None
        if tag == "password":
            wanted = form.get("username", "").lstrip("+")
            extension = form.get("extension", "")
            for user in self.users:
                if wanted and user.username.lstrip("+") == wanted:
                    return user.owner_id if extension in ("", user.extension) else None
            return None
        if tag == "refresh_token":
            token = form.get("refresh_token", "")
            session = self._refresh.get(token) if token_kind(token) == "R" else None
            return session.owner_id if session is not None else None
        if tag == "authorization_code":
            code = self._codes.get(form.get("code", ""))
            return code.owner_id if code is not None else None
        return None

    # --------------------------------------------------------------- API rates
    def api_rate_hit(
        self, group: str, session: Session
    ) -> tuple[dict[str, str], PlatformError | None]:
        """Count one authenticated API request of ``group`` for the session's (user, app):
        (its ``X-Rate-Limit-*`` headers, None) when served, (headers, the 429) when refused by
        an injected penalty or, under ``api_rate=enforce``, by the group's limit."""
        p = self.policy
        c = self.counters
        c["api_calls_by_group"][group] += 1
        limit = p.api_limit(group)
        fault = self.faults.hit(group, session.client_id, session.owner_id)
        if fault is not None:
            c["api_429_by_group"][group] += 1
            if fault.code == GLOBAL_CODE:
                return {}, errors.api_rate_limited(fault.code, fault.retry_after)
            return (self._rate_headers(group, limit, 0),
                    errors.api_rate_limited(fault.code, fault.retry_after))
        wait, remaining = self.api_limiter.hit(
            (pair_key(session.client_id, session.owner_id), group.lower()),
            limit, p.api_window, p.api_penalty, enforce=p.api_rate == "enforce")
        if wait is not None:
            c["api_429_by_group"][group] += 1
            return (self._rate_headers(group, limit, 0),
                    errors.api_rate_limited("CMN-301", wait))
        c["api_served_by_group"][group] += 1
        return self._rate_headers(group, limit, remaining), None

    def api_rate_headers_unauthenticated(self, group: str) -> dict[str, str]:
        """Headers of an API request refused with a 401 (no user: nothing is counted)."""
        limit = self.policy.api_limit(group)
        return self._rate_headers(group, limit, limit - 1)

    def auth_rate_headers(self, remaining: int) -> dict[str, str]:
        p = self.policy
        return self._rate_headers(AUTH_GROUP, p.auth_rate, remaining, p.auth_window)

    def _rate_headers(self, group: str, limit: int, remaining: int,
                      window: float | None = None) -> dict[str, str]:
        p = self.policy
        if not p.api_rate_headers:
            return {}
        return headers(p.group_header(group), limit, remaining,
                       p.api_window if window is None else window)

    def add_penalty(self, group: str, code: str, retry_after: float | None, seconds: float,
                    client_id: str | None = None, owner_id: str | None = None) -> dict[str, Any]:
        """Inject a penalty on ``group`` (see :class:`.ratelimit.PenaltyFault`); raises
        ValueError on an unknown client id or user."""
        if client_id is not None and client_id not in self.apps:
            raise ValueError(f"client_id: unknown client id {client_id!r}")
        if owner_id is not None and owner_id not in self._users_by_id:
            raise ValueError(f"owner_id: unknown user {owner_id!r}")
        return self.faults.add(group, code, retry_after, seconds, client_id, owner_id).describe()

    def reset_rates(self) -> None:
        """Forget every rate window and penalty (token endpoint, API groups, injected)."""
        self.limiter.reset()
        self.api_limiter.reset()
        self.faults.clear()

    def _token_grant(
        self, grant_type: str, form: Mapping[str, str], authorization: str | None
    ) -> dict[str, Any]:
        app = self._authenticate_client(form, authorization)
        if not grant_type:
            raise errors.missing_param("grant_type")
        tag = GRANT_TAGS.get(grant_type)
        if tag is None:
            raise errors.unsupported_grant_type()
        if tag not in app.grants:
            raise errors.unauthorized_client()
        if tag == "refresh_token":
            return self._refresh_grant(app, form)
        if tag == "jwt":
            user = self._jwt_user(form)
        elif tag == "password":
            user = self._password_user(form)
        else:
            user = self._code_user(app, form)
        access_ttl, refresh_ttl = self._ttls(form)
        endpoint_id = form.get("endpoint_id") or ""
        if endpoint_id and not _ENDPOINT_RE.fullmatch(endpoint_id):
            raise errors.invalid_param("endpoint_id")
        session = self._login(app.client_id, user.owner_id, False, access_ttl, refresh_ttl)
        if endpoint_id:
            session.endpoint_id = endpoint_id
            session.body["endpoint_id"] = endpoint_id
        return dict(session.body)

    def _authenticate_client(self, form: Mapping[str, str], authorization: str | None) -> App:
        if authorization is not None and authorization.strip():
            basic = _parse_basic(authorization)
            if basic is None:
                raise errors.invalid_client("malformed Basic authorization header")
            client_id, secret = basic
            app = self.apps.get(client_id)
            if app is None:
                raise errors.invalid_client("unknown client id")
            if app.public:
                if secret:
                    raise errors.invalid_client("public client must not send a client secret")
            elif app.client_secret is None or not hmac.compare_digest(
                secret.encode(), app.client_secret.encode()
            ):
                raise errors.invalid_client("wrong client secret")
            if form.get("client_id") and form["client_id"] != client_id:
                raise errors.invalid_client("client_id does not match the authorization header")
            return app
        client_id = form.get("client_id", "")
        if not client_id:
            raise errors.invalid_client("client authentication is not specified")
        app = self.apps.get(client_id)
        if app is None:
            raise errors.invalid_client("unknown client id")
        if not app.public:
            raise errors.invalid_client("confidential client must use HTTP Basic authentication")
        return app

    def _jwt_user(self, form: Mapping[str, str]) -> User:
        assertion = _required(form, "assertion")
        user = self._users_by_jwt.get(assertion)
        if user is None:
            raise errors.bad_credentials()
        return user

    def _password_user(self, form: Mapping[str, str]) -> User:
        username = _required(form, "username")
        password = _required(form, "password")
        extension = form.get("extension", "")
        wanted = username.lstrip("+")
        for user in self.users:
            if user.username.lstrip("+") != wanted:
                continue
            if extension and extension != user.extension:
                break
            if hmac.compare_digest(password.encode(), user.password.encode()):
                return user
            break
        raise errors.bad_credentials()

    def _code_user(self, app: App, form: Mapping[str, str]) -> User:
        code_value = _required(form, "code")
        redirect_uri = _required(form, "redirect_uri")
        code = self._codes.get(code_value) if token_kind(code_value) == "C" else None
        if code is None:
            raise errors.grant_not_found()
        if code.used:
            raise errors.grant_revoked()
        if self.clock() >= code.expires:
            raise errors.grant_expired()
        if code.client_id != app.client_id:
            raise errors.code_mismatch("Authorization code was issued to another client")
        if code.redirect_uri != redirect_uri:
            raise errors.code_mismatch("Parameter [redirect_uri] does not match the authorization")
        if code.challenge is not None:
            verifier = form.get("code_verifier", "")
            if not verifier:
                raise errors.pkce_failed("Parameter [code_verifier] is not specified")
            if not _PKCE_RE.fullmatch(verifier) or not hmac.compare_digest(
                pkce_s256(verifier), code.challenge
            ):
                raise errors.pkce_failed("Invalid code verifier")
        code.used = True
        return self._users_by_id[code.owner_id]

    def _ttls(self, form: Mapping[str, str]) -> tuple[float, float]:
        p = self.policy
        access = self._ttl(form, "access_token_ttl", p.access_ttl, 600.0, 3600.0)
        refresh = self._ttl(form, "refresh_token_ttl", p.refresh_ttl, 3600.0, 604800.0)
        return access, refresh

    @staticmethod
    def _ttl(form: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
        raw = form.get(name, "")
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise errors.invalid_param(name) from None
        if not math.isfinite(value) or value <= 0:
            raise errors.invalid_param(name)
        return min(max(value, min(lo, default)), max(hi, default))

    def _refresh_grant(self, app: App, form: Mapping[str, str]) -> dict[str, Any]:
        token = _required(form, "refresh_token")
        self._sweep()
        session = self._refresh.get(token) if token_kind(token) == "R" else None
        if session is None or session.client_id != app.client_id:
            raise errors.grant_not_found()
        if not session.alive:
            raise errors.grant_revoked()
        now = self.clock()
        used = session.used_refresh.get(token)
        if used is not None:
            used_at, body = used
            grace = self.policy.refresh_grace
            if grace > 0 and now - used_at <= grace:
                self.counters["refresh_replays"] += 1
                return dict(body)
            raise errors.grant_revoked()
        if now >= session.refresh_expires:
            raise errors.grant_expired()
        access_ttl, refresh_ttl = self._ttls(form)
        session.rotated_access[session.access_token] = None
        if len(session.rotated_access) > MAX_ROTATED_PER_SESSION:
            oldest = next(iter(session.rotated_access))
            del session.rotated_access[oldest]
            self._access.pop(oldest, None)
        self._issue(session, access_ttl, refresh_ttl)
        session.used_refresh[token] = (now, dict(session.body))
        if len(session.used_refresh) > MAX_ROTATED_PER_SESSION:
            oldest = next(iter(session.used_refresh))
            del session.used_refresh[oldest]
            self._refresh.pop(oldest, None)
        self.counters["refreshes"] += 1
        return dict(session.body)

    # ----------------------------------------------------------------- sessions
    def _login(
        self, client_id: str, owner_id: str, outside: bool, access_ttl: float, refresh_ttl: float
    ) -> Session:
        self._sweep()
        now = self.clock()
        key = pair_key(client_id, owner_id)
        live = [s for s in self._by_pair.get(key, []) if s.live(now)]
        cap = self.policy.session_cap
        if len(live) >= cap:
            if self.policy.session_cap_policy == "refuse":
                raise errors.session_cap_refused()
            for victim in live[: len(live) - cap + 1]:
                self._kill(victim, "evicted")
                self.counters["evictions"] += 1
        self._seq += 1
        session = Session(
            session_id=self._new_session_id(),
            client_id=client_id,
            owner_id=owner_id,
            endpoint_id=secrets.token_urlsafe(16),
            outside=outside,
            created=now,
            seq=self._seq,
        )
        self.sessions[session.session_id] = session
        self._by_pair.setdefault(key, []).append(session)
        self._issue(session, access_ttl, refresh_ttl)
        self.counters["outside_logins" if outside else "logins"] += 1
        self._track_max(key, now)
        return session

    def _new_session_id(self) -> str:
        while True:
            sid = str(10**17 + secrets.randbelow(9 * 10**17))
            if sid not in self.sessions:
                return sid

    def _issue(self, session: Session, access_ttl: float, refresh_ttl: float) -> None:
        now = self.clock()
        session.access_token = new_token("A")
        session.refresh_token = new_token("R")
        session.access_expires = now + access_ttl
        session.refresh_expires = now + refresh_ttl
        self._access[session.access_token] = session
        self._refresh[session.refresh_token] = session
        session.body = {
            "access_token": session.access_token,
            "token_type": "bearer",
            "expires_in": _ceil_seconds(access_ttl),
            "refresh_token": session.refresh_token,
            "refresh_token_expires_in": _ceil_seconds(refresh_ttl),
            "scope": SCOPE,
            "owner_id": session.owner_id,
            "endpoint_id": session.endpoint_id,
            "session_id": session.session_id,
        }

    def _kill(self, session: Session, reason: str) -> None:
        if session.alive:
            session.alive = False
            session.ended = self.clock()
            session.end_reason = reason

    def _live_counts(self, now: float) -> tuple[Counter[str], Counter[str]]:
        total: Counter[str] = Counter()
        proxy: Counter[str] = Counter()
        for key, sessions in self._by_pair.items():
            for s in sessions:
                if s.live(now):
                    total[key] += 1
                    if not s.outside:
                        proxy[key] += 1
        return total, proxy

    def _track_max(self, key: str, now: float) -> None:
        live = [s for s in self._by_pair.get(key, []) if s.live(now)]
        self.max_live[key] = max(self.max_live[key], len(live))
        n_proxy = sum(1 for s in live if not s.outside)
        self.max_live_proxy[key] = max(self.max_live_proxy[key], n_proxy)

    def _sweep(self, force: bool = False) -> None:
        """Forget sessions gone for longer than DEAD_RETENTION, and expired auth codes."""
        now = self.clock()
        if not force and now - self._last_sweep < _SWEEP_INTERVAL:
            return
        self._last_sweep = now
        for key in list(self._by_pair):
            self._by_pair[key] = [s for s in self._by_pair[key] if s.live(now)]
            if not self._by_pair[key]:
                del self._by_pair[key]
        stale = [
            s
            for s in self.sessions.values()
            if not s.live(now) and now - s.gone_since() > DEAD_RETENTION
        ]
        overflow = len(self.sessions) - len(stale) - MAX_STORED_SESSIONS
        if overflow > 0:
            dead = sorted(
                (s for s in self.sessions.values() if not s.live(now) and s not in stale),
                key=Session.gone_since,
            )
            stale.extend(dead[:overflow])
        for s in stale:
            self._forget(s)
        for value in [v for v, c in self._codes.items() if now >= c.expires + DEAD_RETENTION]:
            del self._codes[value]

    def _forget(self, session: Session) -> None:
        self.sessions.pop(session.session_id, None)
        for token in (session.access_token, *session.rotated_access):
            self._access.pop(token, None)
        for token in (session.refresh_token, *session.used_refresh):
            self._refresh.pop(token, None)

    # ----------------------------------------------------------------- revoke
    def revoke(self, token: str) -> bool:
        """Kill the session owning ``token`` (any of its tokens); False if none is alive."""
        self._sweep()
        kind = token_kind(token)
        session = None
        if kind == "A":
            session = self._access.get(token)
        elif kind == "R":
            session = self._refresh.get(token)
        if session is None or not session.alive:
            return False
        self._kill(session, "revoked")
        self.counters["revocations"] += 1
        return True

    # ------------------------------------------------------------- authorize
    def authorize(self, params: Mapping[str, str]) -> str:
        """Auto-approve an authorization request; returns the redirect URL with the code."""
        response_type = _required(params, "response_type")
        client_id = _required(params, "client_id")
        app = self.apps.get(client_id)
        if app is None:
            raise errors.invalid_client("unknown client id")
        if response_type != "code":
            raise errors.unsupported_response_type()
        if "authorization_code" not in app.grants:
            raise errors.unauthorized_client()
        redirect_uri = _required(params, "redirect_uri")
        parts = urlsplit(redirect_uri)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
            raise errors.invalid_param("redirect_uri")
        challenge = params.get("code_challenge") or None
        if challenge is not None:
            if params.get("code_challenge_method", "plain") != "S256":
                raise errors.invalid_param("code_challenge_method")
            if not re.fullmatch(r"[A-Za-z0-9_-]{43}", challenge):
                raise errors.invalid_param("code_challenge")
        elif app.public:
            raise errors.missing_param("code_challenge")
        hint = params.get("login_hint", "")
        user = self.users[0]
        if hint:
            found = [u for u in self.users if hint in (u.username, u.extension, u.owner_id)]
            if not found:
                raise errors.invalid_param("login_hint")
            user = found[0]
        self._sweep()
        code = new_token("C")
        self._codes[code] = AuthCode(
            client_id, redirect_uri, challenge, user.owner_id, self.clock() + CODE_TTL
        )
        query = parse_qsl(parts.query, keep_blank_values=True)
        query.append(("code", code))
        if "state" in params:
            query.append(("state", params["state"]))
        return urlunsplit(parts._replace(query=urlencode(query)))

    # -------------------------------------------------------------- API auth
    def check_access(self, authorization: str | None) -> Session:
        """Authenticate an API call's Authorization header; counts it; raises a 401."""
        self.counters["api_requests"] += 1
        self._sweep()
        try:
            return self._check_access(authorization)
        except PlatformError as exc:
            self.counters["api_401_by_code"][exc.code] += 1
            raise

    def check_bearer(self, authorization: str | None) -> Session:
        """The session of a Bearer access token, with the API's 401s, without counting an API
        request (``/restapi/oauth/wstoken`` authenticates this way)."""
        self._sweep()
        return self._check_access(authorization)

    def _check_access(self, authorization: str | None) -> Session:
        if authorization is None or not authorization.strip():
            raise errors.missing_auth_header()
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise errors.access_unparsable()
        kind = token_kind(token)
        if kind is None:
            raise errors.access_unparsable()
        session = self._access.get(token) if kind == "A" else None
        if session is None or not session.alive:
            raise errors.access_not_found()
        if token != session.access_token:
            raise errors.access_rotated()
        if self.clock() >= session.access_expires:
            envelope = self.policy.expired_envelope
            if envelope == "alternate":
                envelope = "oauth" if self._alternate_oauth else "api"
                self._alternate_oauth = not self._alternate_oauth
            raise errors.access_expired(self.policy.expired_code, envelope)
        return session

    # ----------------------------------------------------------------- admin
    def outside_login(
        self, client_id: str, owner_id: str, count: int
    ) -> tuple[list[dict[str, Any]], int]:
        """``count`` logins by an outside actor; returns (token bodies, refused count)."""
        if client_id not in self.apps:
            raise ValueError(f"unknown client_id {client_id!r}")
        if owner_id not in self._users_by_id:
            raise ValueError(f"unknown owner_id {owner_id!r}")
        bodies: list[dict[str, Any]] = []
        refused = 0
        p = self.policy
        for _ in range(count):
            try:
                session = self._login(client_id, owner_id, True, p.access_ttl, p.refresh_ttl)
            except PlatformError:
                refused += 1
                continue
            bodies.append(dict(session.body))
        return bodies, refused

    def revoke_all(self) -> int:
        now = self.clock()
        victims = [s for s in self.sessions.values() if s.live(now)]
        for s in victims:
            self._kill(s, "revoked")
        self.counters["revocations"] += len(victims)
        return len(victims)

    def expire_now(self, refresh: bool = False) -> int:
        now = self.clock()
        live = [s for s in self.sessions.values() if s.live(now)]
        for s in live:
            s.access_expires = min(s.access_expires, now)
            if refresh:
                s.refresh_expires = min(s.refresh_expires, now)
        return len(live)

    def reset_counters(self) -> None:
        self.counters = _new_counters()
        total, proxy = self._live_counts(self.clock())
        self.max_live = Counter(total)
        self.max_live_proxy = Counter(proxy)

    def counters_snapshot(self) -> dict[str, Any]:
        total, proxy = self._live_counts(self.clock())
        out: dict[str, Any] = {
            k: dict(v) if isinstance(v, Counter) else v for k, v in self.counters.items()
        }
        out["live_sessions"] = dict(total)
        out["live_sessions_proxy"] = dict(proxy)
        out["max_live_sessions"] = {k: v for k, v in self.max_live.items() if v}
        max_proxy = {k: v for k, v in self.max_live_proxy.items() if v}
        out["max_live_sessions_proxy"] = max_proxy
        out["max_live_sessions_outside"] = dict(max_proxy)  # alias: excludes outside sessions
        return out

    def sessions_snapshot(self) -> list[dict[str, Any]]:
        now = self.clock()
        live = sorted((s for s in self.sessions.values() if s.live(now)), key=lambda s: s.seq)
        return [
            {
                "session_id": s.session_id,
                "client_id": s.client_id,
                "owner_id": s.owner_id,
                "outside": s.outside,
                "created": round(s.created, 3),
                "age": round(now - s.created, 3),
                "access_expires_in": round(max(0.0, s.access_expires - now), 3),
                "refresh_expires_in": round(max(0.0, s.refresh_expires - now), 3),
            }
            for s in live
        ]


def _parse_basic(authorization: str | None) -> tuple[str, str] | None:
    """(client_id, secret) from ``Basic base64(id:secret)``, or None if malformed."""
    if not authorization:
        return None
    scheme, _, cred = authorization.strip().partition(" ")
    cred = cred.strip()
    if scheme.lower() != "basic" or not cred:
        return None
    try:
        decoded = base64.b64decode(cred, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    client_id, sep, secret = decoded.partition(":")
    if not sep or not client_id:
        return None
    return client_id, secret


def _required(form: Mapping[str, str], name: str) -> str:
    """A non-empty form or query parameter, or the platform's missing-parameter error."""
    value = form.get(name, "")
    if not value:
        raise errors.missing_param(name)
    return value
