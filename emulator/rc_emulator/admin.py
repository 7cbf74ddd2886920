"""Admin and fault-injection routes under ``/_emulator`` (no auth: a loopback test tool).

``GET health``, ``GET counters``, ``POST reset-counters``, ``POST revoke-all``,
``POST expire-now[?refresh=1]``, ``POST outside-login``, ``GET|POST policy``, ``GET sessions``.
Responses never contain token values, except ``outside-login`` which returns the tokens it made.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from .app import PLATFORM, json_response
from .policy import PolicyError

log = logging.getLogger("rc_emulator.admin")
PREFIX = "/_emulator"
MAX_OUTSIDE_LOGINS = 1000


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
