"""Admin and fault-injection routes under ``/_emulator`` (no auth: a loopback test tool).

``GET health``, ``GET counters``, ``POST reset-counters`` (counters only), ``POST revoke-all``,
``POST expire-now[?refresh=1]``, ``POST outside-login``, ``GET|POST policy``, ``GET sessions``,
``POST reset-rates`` (forgets every rate window and penalty: token endpoint, API groups,
injected), ``POST rate-penalty``; WebSocket faults (:mod:`.ws`): ``POST ws/drop``
``{"how": "close"|"abort"}``, ``POST ws/expire-tokens``, ``POST ws/refuse-recovery``
``{"enabled": bool}``, ``POST ws/emit`` ``{"event", "body", "user"}``, ``GET ws/sessions``,
``GET|POST ws/policy`` (the ``ws_*`` options, apart from ``policy``).
Responses never contain token values, except ``outside-login`` which returns the tokens it made.

``POST rate-penalty`` injects a rate-limit penalty (a platform that lowered its limits, or an
account/IP-level limit) in any ``api_rate`` mode. Body::

    {"group": "Light",        # required, case-insensitive; "Auth" hits the token endpoint
     "retry_after": 5,        # number >= 0 → "Retry-After: 5" (rounded up); null or absent:
                              # no Retry-After header (clients then wait >= 30 s: errors.md)
     "seconds": 5,            # penalty length > 0; default retry_after when > 0, else the
                              # policy's api_penalty (auth_penalty for Auth)
     "code": "CMN-301",       # or CMN-302; CMN-310 (global limit): no X-Rate-Limit-* headers
     "client_id": "...", "owner_id": "..."}   # optional: only that pair (default every pair)

From then on every request of the group (of the targeted pair) answers 429 with that code; as
on the platform, each request during the penalty restarts it, for the pair it came from (each
pair's penalty ends ``seconds`` after its own last request; a pair not heard from ends with the
original ``seconds``). A new penalty replaces one of the same group and target. Answers 200
with the penalty's fields (shape above) or 400 ``{"error": "<field>: <reason>"}``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

from aiohttp import web

from .app import PLATFORM, WS_HUB, json_response
from .policy import PolicyError
from .ratelimit import AUTH_GROUP, NO_THROTTLING, RATE_CODES, canonical_group

log = logging.getLogger("rc_emulator.admin")
PREFIX = "/_emulator"
MAX_OUTSIDE_LOGINS = 1000
PENALTY_FIELDS = ("group", "retry_after", "seconds", "code", "client_id", "owner_id")
_GROUP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def _bad(message: str) -> web.Response:
    return json_response({"error": message}, status=400)


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


async def health(request: web.Request) -> web.Response:
    return json_response({"ok": True})


async def counters(request: web.Request) -> web.Response:
    return json_response({**request.app[PLATFORM].counters_snapshot(),
                          **request.app[WS_HUB].counters_snapshot()})


async def reset_counters(request: web.Request) -> web.Response:
    request.app[PLATFORM].reset_counters()
    request.app[WS_HUB].reset_counters()
    return json_response({"ok": True})


async def revoke_all(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM]
    n = platform.revoke_all()
    closed = 0
    if request.app[WS_HUB].policy.ws_on_revoke == "drop":  # their WS sessions stay recoverable
        closed = request.app[WS_HUB].close_dead_oauth(1008, "Token revoked")
    log.info("admin: revoked %d sessions, closed %d WebSocket connections", n, closed)
    return json_response({"revoked": n, "ws_closed": closed})


async def expire_now(request: web.Request) -> web.Response:
    refresh = request.rel_url.query.get("refresh", "0").lower() in ("1", "true", "yes")
    n = request.app[PLATFORM].expire_now(refresh=refresh)
    log.info("admin: expired %d sessions (refresh=%s)", n, refresh)
    return json_response({"expired": n, "refresh": refresh})


async def outside_login(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if body is None:
        return _bad("body must be a JSON object")
    client_id = body.get("client_id", "demo-client-id")
    owner_id = body.get("owner_id", "100001")
    count = body.get("count", 1)
    if not isinstance(client_id, str) or not isinstance(owner_id, str):
        return _bad("client_id and owner_id must be strings")
    if (
        isinstance(count, bool)
        or not isinstance(count, int)
        or not 0 <= count <= MAX_OUTSIDE_LOGINS
    ):
        return _bad(f"count must be an integer in 0..{MAX_OUTSIDE_LOGINS}")
    try:
        tokens, refused = request.app[PLATFORM].outside_login(client_id, owner_id, count)
    except ValueError as exc:
        return _bad(str(exc))
    log.info(
        "admin: %d outside logins for %s/%s (%d refused)", len(tokens), client_id, owner_id, refused
    )
    return json_response({"tokens": tokens, "refused": refused})


async def get_policy(request: web.Request) -> web.Response:
    return json_response(request.app[PLATFORM].policy.as_dict())


async def set_policy(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if body is None:
        return _bad("body must be a JSON object")
    try:
        policy = request.app[PLATFORM].set_policy(body)
    except PolicyError as exc:
        return _bad(str(exc))
    log.info("admin: policy changed: %s", ", ".join(sorted(body)) or "(nothing)")
    return json_response(policy.as_dict())


async def sessions(request: web.Request) -> web.Response:
    return json_response(request.app[PLATFORM].sessions_snapshot())


async def reset_rates(request: web.Request) -> web.Response:
    request.app[PLATFORM].reset_rates()
    log.info("admin: rate windows and penalties reset")
    return json_response({"ok": True})


def _seconds(body: dict[str, Any], name: str, positive: bool) -> float | None:
    """An optional number field (null/absent → None); ValueError with the reason."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a number or null")
    if positive and value <= 0:
        raise ValueError(f"{name}: must be > 0")
    if value < 0:
        raise ValueError(f"{name}: must be >= 0")
    return float(value)


async def rate_penalty(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if body is None:
        return _bad("body must be a JSON object")
    platform = request.app[PLATFORM]
    unknown = sorted(set(body) - set(PENALTY_FIELDS))
    if unknown:
        return _bad(f"{unknown[0]}: unknown field (expected {', '.join(PENALTY_FIELDS)})")
    group = body.get("group")
    if not isinstance(group, str) or not _GROUP_NAME.fullmatch(group):
        return _bad("group: required, a group name such as Light, Medium, Heavy or Auth")
    if group.lower() == NO_THROTTLING.lower():
        return _bad("group: NoThrottling operations are never limited")
    group = canonical_group(group)
    code = body.get("code", "CMN-301")
    if code not in RATE_CODES:
        return _bad(f"code: must be one of {', '.join(RATE_CODES)}")
    for name in ("client_id", "owner_id"):
        if body.get(name) is not None and not isinstance(body[name], str):
            return _bad(f"{name}: must be a string or null")
    try:
        retry_after = _seconds(body, "retry_after", positive=False)
        seconds = _seconds(body, "seconds", positive=True)
    except ValueError as exc:
        return _bad(str(exc))
    if seconds is None:
        policy = platform.policy
        default = policy.auth_penalty if group == AUTH_GROUP else policy.api_penalty
        seconds = retry_after if retry_after else default
        if seconds <= 0:
            return _bad("seconds: must be > 0 (the default penalty is 0: give seconds)")
    try:
        penalty = platform.add_penalty(group, code, retry_after, seconds,
                                       body.get("client_id"), body.get("owner_id"))
    except ValueError as exc:
        return _bad(str(exc))
    log.info("admin: rate penalty %s", penalty)
    return json_response(penalty)


# ------------------------------------------------------------------ WebSocket faults
async def ws_drop(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if body is None:
        return _bad("body must be a JSON object")
    how = body.get("how", "close")
    if how not in ("close", "abort"):
        return _bad("how: must be close or abort")
    n = request.app[WS_HUB].drop(how)
    log.info("admin: dropped %d WebSocket connections (%s)", n, how)
    return json_response({"dropped": n, "how": how})


async def ws_expire_tokens(request: web.Request) -> web.Response:
    n = request.app[WS_HUB].expire_tokens()
    log.info("admin: %d ws tokens expired", n)
    return json_response({"expired": n})


async def ws_refuse_recovery(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if body is None or not isinstance(body.get("enabled"), bool):
        return _bad("enabled: required, true or false")
    request.app[WS_HUB].refuse_recovery = body["enabled"]
    log.info("admin: refuse WebSocket recoveries: %s", body["enabled"])
    return json_response({"enabled": body["enabled"]})


async def ws_emit(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if body is None:
        return _bad("body must be a JSON object")
    unknown = sorted(set(body) - {"event", "body", "user"})
    if unknown:
        return _bad(f"{unknown[0]}: unknown field (expected event, body, user)")
    event = body.get("event")
    if not isinstance(event, str) or not event.startswith("/") or len(event) < 2:
        return _bad("event: required, a path such as /restapi/v1.0/account/~/extension/~/presence")
    payload = body.get("body", {})
    user = body.get("user")
    if user is not None:
        if not isinstance(user, str):
            return _bad("user: must be a user id (string) or null")
        if all(u.owner_id != user for u in request.app[PLATFORM].users):
            return _bad(f"user: unknown user {user!r}")
    n = request.app[WS_HUB].publish(event, payload, user)
    log.info("admin: emitted %s -> %d notifications", event, n)
    return json_response({"notifications": n})


async def ws_get_policy(request: web.Request) -> web.Response:
    return json_response(request.app[WS_HUB].policy.as_dict())


async def ws_set_policy(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if body is None:
        return _bad("body must be a JSON object")
    hub = request.app[WS_HUB]
    try:
        hub.policy = hub.policy.updated(body)
    except PolicyError as exc:
        return _bad(str(exc))
    log.info("admin: ws policy changed: %s", ", ".join(sorted(body)) or "(nothing)")
    return json_response(hub.policy.as_dict())


async def ws_sessions(request: web.Request) -> web.Response:
    return json_response(request.app[WS_HUB].sessions_snapshot())


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(PREFIX + "/health", health)
    r.add_get(PREFIX + "/counters", counters)
    r.add_post(PREFIX + "/reset-counters", reset_counters)
    r.add_post(PREFIX + "/revoke-all", revoke_all)
    r.add_post(PREFIX + "/expire-now", expire_now)
    r.add_post(PREFIX + "/outside-login", outside_login)
    r.add_get(PREFIX + "/policy", get_policy)
    r.add_post(PREFIX + "/policy", set_policy)
    r.add_get(PREFIX + "/sessions", sessions)
    r.add_post(PREFIX + "/reset-rates", reset_rates)
    r.add_post(PREFIX + "/rate-penalty", rate_penalty)
    r.add_post(PREFIX + "/ws/drop", ws_drop)
    r.add_post(PREFIX + "/ws/expire-tokens", ws_expire_tokens)
    r.add_post(PREFIX + "/ws/refuse-recovery", ws_refuse_recovery)
    r.add_post(PREFIX + "/ws/emit", ws_emit)
    r.add_get(PREFIX + "/ws/sessions", ws_sessions)
    r.add_get(PREFIX + "/ws/policy", ws_get_policy)
    r.add_post(PREFIX + "/ws/policy", ws_set_policy)
