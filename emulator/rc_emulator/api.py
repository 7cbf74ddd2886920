"""Platform routes: the OAuth endpoints and the sample REST API (authenticated by the middleware).

OAuth: ``POST /restapi/oauth/token``, ``POST /restapi/oauth/revoke``,
``GET /restapi/oauth/authorize`` (``POST /restapi/oauth/wstoken`` is in :mod:`.ws`).
API (``/restapi/v1.0``): extension info, sms, fax, call-log, recording metadata and content
(also under the ``/media`` prefix, the emulated media host), and ``echo`` (any method) which
reports what it received. A sent SMS publishes its ``message-store`` events to WebSocket
subscribers (:mod:`.ws_events`).
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import hashlib
import itertools
import json
import logging
import math
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from . import errors, media
from .app import (
    API_PREFIX,
    MEDIA_PREFIX,
    PLATFORM,
    RATE_KEY,
    URLS,
    WS_HUB,
    error_response,
    json_response,
    session_of,
)
from .errors import PlatformError
from .ratelimit import GLOBAL_CODE, RATE_CODES
from .state import GRANT_TAGS
from .ws_events import sms_events

log = logging.getLogger("rc_emulator.api")

FORM_LIMIT = 64 * 1024  # token/revoke bodies above this are refused
DRAIN_LIMIT = 16 * 1024 * 1024  # ...after reading (and dropping) at most this much
MAX_FIELDS = 100
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
CALL_LOG_TOTAL = 35
_REC_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_message_ids = itertools.count(900_000_001)


# ----------------------------------------------------------------------------- OAuth
async def read_form(request: web.Request) -> dict[str, str]:
    """Parse a bounded form-urlencoded body (first value of each key); PlatformError if bad."""
    if "Content-Type" in request.headers:
        if request.content_type != "application/x-www-form-urlencoded":
            raise errors.invalid_request(
                "Unsupported content type, expected application/x-www-form-urlencoded"
            )
    data = bytearray()
    total = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
        if total <= FORM_LIMIT:
            data += chunk
        elif total > DRAIN_LIMIT:
            break
    if total > FORM_LIMIT:
        raise errors.invalid_request("Request body is too large")
    try:
        text = data.decode("utf-8")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise errors.invalid_request("Request body is not a valid form") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


async def token(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM]
    authorization = request.headers.get("Authorization")
    grant = "-"
    refused_code = ""
    try:
        form = await read_form(request)
        grant = GRANT_TAGS.get(form.get("grant_type", ""), "other")
    except PlatformError as exc:
        platform.token_error(exc)
        response = error_response(exc)
        form = {}
    else:
        try:
            body = platform.token_request(form, authorization)
        except PlatformError as exc:
            refused_code = exc.code
            response = error_response(exc)
            log.info("token grant=%s -> %s %s", grant, exc.status, exc.code)
        else:
            response = json_response(body)
            if grant == "refresh_token" and request.app[WS_HUB].policy.ws_on_refresh == "drop":
                request.app[WS_HUB].close_oauth_sessions({body["session_id"]}, 1008,
                                                         "Token refreshed")
            log.info(
                "token grant=%s -> 200 owner=%s session=%s",
                grant,
                body["owner_id"],
                body["session_id"],
            )
    response.headers.update(NO_STORE)
    policy = platform.policy
    if policy.auth_rate > 0 and refused_code != GLOBAL_CODE:  # CMN-310: not a user-level limit
        remaining = 0 if refused_code in RATE_CODES else \
            platform.auth_rate_remaining(form, authorization)
        request[RATE_KEY] = platform.auth_rate_headers(remaining)
    if policy.token_delay > 0:
        await asyncio.sleep(policy.token_delay)
    return response


async def revoke(request: web.Request) -> web.Response:
    form = await read_form(request)
    value = form.get("token", "")
    if not value:
        raise errors.missing_param("token")
    killed = request.app[PLATFORM].revoke(value)
    log.info("revoke -> session %s", "killed" if killed else "not found")
    return web.Response(status=200, headers=NO_STORE)


async def authorize(request: web.Request) -> web.Response:
    params: dict[str, str] = {}
    for key, value in request.rel_url.query.items():
        params.setdefault(key, value)
    location = request.app[PLATFORM].authorize(params)
    return web.Response(status=302, headers={"Location": location, **NO_STORE})


# ------------------------------------------------------------------------------- API
def _base(request: web.Request) -> str:
    """Absolute URL of the account/extension the request names (keeps its '~' segments)."""
    account = request.match_info.get("account", "~")
    extension = request.match_info.get("extension")
    url = f"{request.app[URLS].public}{API_PREFIX}/account/{account}"
    return url if extension is None else f"{url}/extension/{extension}"


def _check_owner(request: web.Request) -> None:
    session = session_of(request)
    if request.match_info.get("account") not in ("~", session.owner_id, "37439510"):
        raise errors.not_found("Account")
    extension = request.match_info.get("extension")
    if extension is not None and extension not in ("~", session.owner_id):
        raise errors.not_found("Extension")


async def extension_info(request: web.Request) -> web.Response:
    _check_owner(request)
    session = session_of(request)
    user = next(u for u in request.app[PLATFORM].users if u.owner_id == session.owner_id)
    public = request.app[URLS].public
    return json_response(
        {
            "uri": public + request.rel_url.raw_path,
            "id": int(user.owner_id) if user.owner_id.isdigit() else user.owner_id,
            "extensionNumber": user.extension,
            "name": f"Demo User {user.extension}",
            "type": "User",
            "status": "Enabled",
            "contact": {"firstName": "Demo", "lastName": f"User {user.extension}"},
            "account": {"id": "37439510", "uri": f"{public}{API_PREFIX}/account/37439510"},
        }
    )


async def sms(request: web.Request) -> web.Response:
    _check_owner(request)
    raw = await request.read()
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        payload = None
    if not isinstance(payload, dict):
        raise errors.api_error(400, "CMN-101", "Request body is not a valid JSON object")
    message = _queued_body(request, "SMS", raw, **{
        "from": payload.get("from"), "to": payload.get("to"), "subject": payload.get("text")})
    owner_id = session_of(request).owner_id
    hub = request.app[WS_HUB]
    for event, body in sms_events(owner_id, message):  # WebSocket notifications (.ws_events)
        hub.publish(event, body, owner_id)
    return json_response(message)


async def fax(request: web.Request) -> web.Response:
    _check_owner(request)
    if request.content_type != "multipart/form-data" or "boundary" not in request.headers.get(
        "Content-Type", ""
    ):
        raise errors.api_error(400, "CMN-101", "Request body must be multipart/form-data")
    raw = await request.read()
    header = request.headers["Content-Type"].encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + header + b"\r\n\r\n" + raw
    )
    parts = list(message.iter_parts()) if message.is_multipart() else []
    if not parts:
        raise errors.api_error(400, "CMN-101", "Request body has no multipart parts")
    details = []
    for part in parts:
        payload = part.get_payload(decode=True)
        details.append(
            {
                "name": part.get_param("name", header="content-disposition"),
                "filename": part.get_filename(),
                "contentType": part.get_content_type(),
                "size": len(payload) if isinstance(payload, bytes) else 0,
            }
        )
    return _queued_message(request, "Fax", raw, parts=len(details), partDetails=details)


def _queued_message(request: web.Request, kind: str, raw: bytes, **fields: object
                    ) -> web.Response:
    return json_response(_queued_body(request, kind, raw, **fields))


def _queued_body(request: web.Request, kind: str, raw: bytes, **fields: object
                 ) -> dict[str, Any]:
    """The answer to a sent message: its id and URI, and the hash of the raw request body
    (tests compare it to check that a replayed body arrived byte-identical)."""
    msg_id = str(next(_message_ids))
    return {
        "id": msg_id,
        "uri": f"{_base(request)}/message-store/{msg_id}",
        "type": kind,
        "direction": "Outbound",
        "messageStatus": "Queued",
        **fields,
        "bodySha256": hashlib.sha256(raw).hexdigest(),
        "bodyLength": len(raw),
    }


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.rel_url.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise errors.bad_api_param(name) from None
    if not lo <= value <= hi:
        raise errors.bad_api_param(name)
    return value


def recording_id(n: int) -> str:
    return str(700_000_000 + n)


async def call_log(request: web.Request) -> web.Response:
    _check_owner(request)
    page = _int_param(request, "page", 1, 1, 1_000_000)
    per_page = _int_param(request, "perPage", 10, 1, 1000)
    urls = request.app[URLS]
    account = request.match_info["account"]
    path_url = urls.public + request.rel_url.raw_path
    others = [(k, v) for k, v in request.rel_url.query.items() if k not in ("page", "perPage")]

    def page_uri(n: int) -> str:
        return f"{path_url}?{urlencode([*others, ('page', n), ('perPage', per_page)])}"

    total_pages = max(1, math.ceil(CALL_LOG_TOTAL / per_page))
    start = (page - 1) * per_page
    end = min(CALL_LOG_TOTAL, start + per_page)
    records = []
    for n in range(start, end):
        rec = recording_id(n)
        rec_base = f"{API_PREFIX}/account/{account}/recording/{rec}"
        records.append(
            {
                "id": f"CL{n + 1:06d}",
                "uri": f"{path_url}/CL{n + 1:06d}",
                "sessionId": str(500_000_000 + n),
                "startTime": f"2024-01-{1 + n % 28:02d}T{n % 24:02d}:00:00.000Z",
                "duration": 30 + n,
                "type": "Voice",
                "direction": "Inbound" if n % 2 else "Outbound",
                "action": "Phone Call",
                "result": "Accepted",
                "recording": {
                    "id": rec,
                    "uri": urls.public + rec_base,
                    "type": "Automatic",
                    "contentUri": f"{urls.media}{rec_base}/content",
                },
            }
        )
    paging: dict[str, Any] = {
        "page": page,
        "totalPages": total_pages,
        "perPage": per_page,
        "totalElements": CALL_LOG_TOTAL,
    }
    if records:
        paging["pageStart"] = start
        paging["pageEnd"] = end - 1
    navigation: dict[str, Any] = {"firstPage": {"uri": page_uri(1)}}
    if page < total_pages:
        navigation["nextPage"] = {"uri": page_uri(page + 1)}
    if page > 1:
        navigation["previousPage"] = {"uri": page_uri(min(page - 1, total_pages))}
    navigation["lastPage"] = {"uri": page_uri(total_pages)}
    return json_response(
        {"uri": page_uri(page), "records": records, "paging": paging, "navigation": navigation}
    )


def _rec_id(request: web.Request) -> str:
    rec = request.match_info["rec_id"]
    if not _REC_ID.fullmatch(rec):
        raise errors.not_found("Recording")
    return rec


async def recording_info(request: web.Request) -> web.Response:
    _check_owner(request)
    rec = _rec_id(request)
    rec_base = f"{API_PREFIX}/account/{request.match_info['account']}/recording/{rec}"
    urls = request.app[URLS]
    return json_response(
        {
            "uri": urls.public + rec_base,
            "id": rec,
            "contentUri": f"{urls.media}{rec_base}/content",
            "contentType": "audio/mpeg",
            "duration": 60,
        }
    )


async def recording_content(request: web.Request) -> web.StreamResponse:
    _check_owner(request)
    rec = _rec_id(request)
    size = _int_param(request, "size", media.DEFAULT_SIZE, 0, media.MAX_SIZE)
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "audio/mpeg",
            "Content-Disposition": f'attachment; filename="{rec}.mp3"',
        },
    )
    response.content_length = size
    await response.prepare(request)
    if request.method != "HEAD":
        for chunk in media.chunks(rec, size):
            await response.write(chunk)
    await response.write_eof()
    return response


async def echo(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        digest.update(chunk)
        length += len(chunk)
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        if key == "authorization":
            continue
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return json_response(
        {
            "method": request.method,
            "path": request.rel_url.raw_path,
            "query": request.rel_url.raw_query_string,
            "headers": headers,
            "bodySha256": digest.hexdigest(),
            "bodyLength": length,
            "tokenSessionId": session_of(request).session_id,
        }
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/restapi/oauth/token", token)
    r.add_post("/restapi/oauth/revoke", revoke)
    r.add_get("/restapi/oauth/authorize", authorize)
    ext = API_PREFIX + "/account/{account}/extension/{extension}"
    r.add_get(ext, extension_info)
    r.add_post(ext + "/sms", sms)
    r.add_post(ext + "/fax", fax)
    r.add_get(ext + "/call-log", call_log)
    rec = API_PREFIX + "/account/{account}/recording/{rec_id}"
    r.add_get(rec, recording_info)
    for prefix in ("", MEDIA_PREFIX):
        r.add_get(prefix + rec + "/content", recording_content)
    r.add_route("*", API_PREFIX + "/echo", echo)
    r.add_route("*", API_PREFIX + "/echo/{tail:.*}", echo)
