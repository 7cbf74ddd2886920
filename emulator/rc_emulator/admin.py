"""Admin and fault-injection routes under ``/_emulator`` (no auth: a loopback test tool).

``GET health``, ``GET counters``, ``POST reset-counters`` (counters only), ``POST revoke-all``,
``POST expire-now[?refresh=1]``, ``POST outside-login``, ``GET|POST policy``, ``GET sessions``,
``POST reset-rates`` (forgets every rate window and penalty: token endpoint, API groups,
injected), ``POST rate-penalty``.
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

from .app import PLATFORM, json_response
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
    return json_response(request.app[PLATFORM].counters_snapshot())


async def reset_counters(request: web.Request) -> web.Response:
    request.app[PLATFORM].reset_counters()
    return json_response({"ok": True})


async def revoke_all(request: web.Request) -> web.Response:
    n = request.app[PLATFORM].revoke_all()
    log.info("admin: revoked %d sessions", n)
    return json_response({"revoked": n})


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
