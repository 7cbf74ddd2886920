"""aiohttp application wiring: shared keys, the error/auth middleware, rate-limit headers, logging.

The middleware authenticates every request under ``/restapi/v1.0`` and ``/media`` (before
routing errors, so an unknown API path answers 401 without a token and 404 with one), turns
:class:`~.errors.PlatformError` and aiohttp's HTTP errors into the platform's JSON envelopes and
never lets an exception become a bare 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from . import errors
from .errors import PlatformError
from .ratelimit import API_GROUPS
from .ratelimit import headers as rate_headers
from .state import Platform, Session, pair_key

log = logging.getLogger("proxy_addon.emulator")


@dataclass
class Urls:
    """Bases for absolute URLs in API responses (filled in once the port is known)."""

    public: str = ""
    media: str = ""


PLATFORM = web.AppKey("platform", Platform)
URLS = web.AppKey("urls", Urls)
SESSION_KEY = "emulator.session"
RATE_KEY = "emulator.rate_headers"

API_PREFIX = "/restapi/v1.0"
MEDIA_PREFIX = "/media"
OAUTH_PREFIX = "/restapi/oauth"
MAX_BODY = 64 * 1024 * 1024


def is_api_path(path: str) -> bool:
    return (
        path == API_PREFIX
        or path.startswith(API_PREFIX + "/")
        or path == MEDIA_PREFIX
        or path.startswith(MEDIA_PREFIX + "/")
    )


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode("utf-8"),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


def error_response(exc: PlatformError) -> web.Response:
    return json_response(exc.body, exc.status, dict(exc.headers))


def session_of(request: web.Request) -> Session:
    session: Session = request[SESSION_KEY]
    return session


def _rate_group(request: web.Request) -> str:
    path = request.path
    if path.endswith("/content") or path.endswith("/fax"):
        return "Heavy"
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return "Light"
    return "Medium"


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    status = exc.status
    if status == 404:
        code, message = "CMN-102", "Resource not found"
    elif status == 405:
        code, message = "CMN-405", f"Method {request.method} is not allowed"
    elif status == 413:
        code, message = "CMN-101", "Request body is too large"
    else:
        code, message = f"CMN-{status}", exc.reason or "Request failed"
    if request.path.startswith(OAUTH_PREFIX):
        body = errors.oauth_body("invalid_request", code, message)
    else:
        body = errors.generic_body(code, message)
    headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
    return json_response(body, status, headers)


@web.middleware
async def platform_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    platform = request.app[PLATFORM]
    try:
        if is_api_path(request.path):
            group = _rate_group(request)
            try:
                session = platform.check_access(request.headers.get("Authorization"))
            except PlatformError:
                request[RATE_KEY] = rate_headers(
                    group, API_GROUPS[group], API_GROUPS[group] - 1, 60
                )
                raise
            request[SESSION_KEY] = session
            key = pair_key(session.client_id, session.owner_id)
            request[RATE_KEY] = platform.api_rates.count(key, group)
        response: web.StreamResponse = await handler(request)
        return response
    except PlatformError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unexpected error handling %s %s", request.method, request.path)
        return error_response(errors.api_error(500, "CMN-500", "Internal server error"))


async def _add_rate_headers(request: web.Request, response: web.StreamResponse) -> None:
    rate = request.get(RATE_KEY)
    if rate:
        for name, value in rate.items():
            response.headers[name] = value


class AccessLogger(AbstractAccessLogger):
    """One debug line per request: method, path WITHOUT the query (it may carry tokens)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.debug(
            "%s %s %s %.1fms", request.method, request.path, response.status, time * 1000
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)


def build_app(platform: Platform, public_url: str = "", media_url: str = "") -> web.Application:
    """The emulator's aiohttp application; URLs may be set later through ``app[URLS]``."""
    from . import admin, api

    app = web.Application(middlewares=[platform_middleware], client_max_size=MAX_BODY)
    app[PLATFORM] = platform
    app[URLS] = Urls(public_url.rstrip("/"), media_url.rstrip("/"))
    app.on_response_prepare.append(_add_rate_headers)
    api.add_routes(app)
    admin.add_routes(app)
    return app
