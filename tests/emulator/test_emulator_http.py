"""HTTP tests against a real emulator subprocess (one shared per module; no auth rate limit)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from mitmproxy.net import encoding
from rc_emulator.app import choose_coding
from rc_emulator.state import pkce_s256
from rc_emulator.tokens import new_token

from tests.emulator.emu_client import (
    BASIC,
    EXT,
    JWT_GRANT,
    NOJWT,
    RATE_HEADERS,
    TOKEN_FIELDS,
    bearer,
    client,
    jwt_login,
    oauth_error,
    refresh,
    token,
    token_invalid,
)
from tests.support.emulator import Emulator, recording_sha256


@pytest.fixture
def c(emulator: Emulator):
    with client(emulator) as http:
        yield http


def test_health_and_url(emulator: Emulator, c: httpx.Client) -> None:
    assert emulator.url.startswith("http://127.0.0.1:")
    assert c.get("/_emulator/health").json() == {"ok": True}


def test_jwt_grant(c: httpx.Client) -> None:
    response = token(c, {"grant_type": JWT_GRANT, "assertion": "demo-jwt-credential"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert list(body) == TOKEN_FIELDS
    assert (body["token_type"], body["expires_in"], body["refresh_token_expires_in"]) == (
        "bearer",
        3600,
        604800,
    )
    assert body["owner_id"] == "100001"
    info = c.get(EXT, headers=bearer(body["access_token"]))
    assert info.status_code == 200
    assert info.json()["extensionNumber"] == "101"
    # the official SDK sends a lowercase scheme
    lower = c.get(EXT, headers={"Authorization": "bearer " + body["access_token"]})
    assert lower.status_code == 200


def test_password_grant(c: httpx.Client) -> None:
    form = {
        "grant_type": "password",
        "username": "+15550100002",
        "password": "demo-password-2",
        "extension": "102",
    }
    body = token(c, form, NOJWT).json()
    assert body["owner_id"] == "100002"
    info = c.get(EXT, headers=bearer(body["access_token"])).json()
    assert info["extensionNumber"] == "102"
    assert info["uri"] == f"{c.base_url}".rstrip("/") + EXT


def test_refresh_grant_rotates(c: httpx.Client) -> None:
    first = jwt_login(c)
    response = refresh(c, first["refresh_token"])
    assert response.status_code == 200
    second = response.json()
    assert second["session_id"] == first["session_id"]
    old = c.get(EXT, headers=bearer(first["access_token"]))
    assert old.status_code == 401
    assert old.json() == token_invalid("OAU-129", "Access token corrupted")
    assert c.get(EXT, headers=bearer(second["access_token"])).status_code == 200
    replay = refresh(c, first["refresh_token"])
    assert replay.status_code == 400
    assert replay.json() == oauth_error("invalid_grant", "OAU-211", "Token revoked")


def test_authorization_code_grant_with_pkce(c: httpx.Client) -> None:
    verifier = "verifier-" + "x" * 50
    params = {
        "response_type": "code",
        "client_id": "demo-public-client",
        "redirect_uri": "http://127.0.0.1:9/callback",
        "state": "abc 123",
        "code_challenge": pkce_s256(verifier),
        "code_challenge_method": "S256",
    }
    response = c.get("/restapi/oauth/authorize", params=params)
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert location.netloc == "127.0.0.1:9" and location.path == "/callback"
    query = parse_qs(location.query)
    assert query["state"] == ["abc 123"]
    form = {
        "grant_type": "authorization_code",
        "client_id": "demo-public-client",
        "code": query["code"][0],
        "redirect_uri": "http://127.0.0.1:9/callback",
        "code_verifier": verifier,
    }
    body = token(c, form, auth=None).json()
    assert body["owner_id"] == "100001"
    again = token(c, form, auth=None)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    bad = c.get("/restapi/oauth/authorize", params={**params, "response_type": "token"})
    assert bad.status_code == 400
    assert bad.json()["error"] == "unsupported_response_type"


@pytest.mark.parametrize(
    "form,auth,expected",
    [
        (
            {"grant_type": JWT_GRANT, "assertion": "demo-jwt-credential"},
            ("demo-client-id", "wrong-secret"),
            ("invalid_client", "OAU-153"),
        ),
        (
            {"grant_type": JWT_GRANT, "assertion": "demo-jwt-credential"},
            None,
            ("invalid_client", "OAU-153"),
        ),
        (
            {"grant_type": JWT_GRANT, "assertion": "wrong"},
            BASIC,
            ("invalid_grant", "OAU-140"),
        ),
        (
            {"grant_type": JWT_GRANT, "assertion": "demo-jwt-credential"},
            NOJWT,
            ("unauthorized_client", "OAU-251"),
        ),
        (
            {"grant_type": "refresh_token", "refresh_token": new_token("R")},
            BASIC,
            ("invalid_grant", "OAU-213"),
        ),
        ({"grant_type": "client_credentials"}, BASIC, ("unsupported_grant_type", "OAU-250")),
        ({"assertion": "demo-jwt-credential"}, BASIC, ("invalid_request", "OAU-101")),
    ],
)
def test_token_endpoint_errors(c: httpx.Client, form: dict, auth: object, expected: tuple) -> None:
    response = token(c, form, auth)
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"error", "error_description", "errors"}
    assert (body["error"], body["errors"][0]["errorCode"]) == expected
    assert body["errors"][0]["message"] == body["error_description"]
    if expected[1] == "OAU-140":
        assert body == oauth_error("invalid_grant", "OAU-140", "Invalid resource owner credentials")
    if expected[1] == "OAU-153":
        assert body["error_description"].startswith("Invalid client: ")


def test_malformed_basic_header(c: httpx.Client) -> None:
    for header in ("Basic", "Basic ???", "Basic " + "a" * 10, "Digest abc"):
        response = c.post(
            "/restapi/oauth/token",
            data={"grant_type": JWT_GRANT, "assertion": "demo-jwt-credential"},
            headers={"Authorization": header},
        )
        assert response.status_code == 400
        assert response.json()["errors"][0]["errorCode"] == "OAU-153"


def test_api_auth_error_bodies(c: httpx.Client) -> None:
    missing = c.get(EXT)
    assert missing.status_code == 401
    assert missing.json() == {
        "errorCode": "AGW-401",
        "message": "Authorization header is not specified",
    }
    garbage = c.get(EXT, headers=bearer("definitely-not-a-token"))
    assert garbage.json() == token_invalid("OAU-149", "Unparsable access token")
    unknown = c.get(EXT, headers=bearer(new_token("A")))
    assert unknown.status_code == 401
    assert unknown.json() == token_invalid("OAU-213", "Token not found")
    for response in (missing, garbage, unknown):
        for header in RATE_HEADERS:
            assert header in response.headers


def test_unknown_api_path(c: httpx.Client) -> None:
    assert c.get("/restapi/v1.0/no/such/thing").status_code == 401
    access = jwt_login(c)["access_token"]
    response = c.get("/restapi/v1.0/no/such/thing", headers=bearer(access))
    assert response.status_code == 404
    body = response.json()
    assert body["errorCode"] == "CMN-102" and body["errors"][0]["errorCode"] == "CMN-102"
    assert c.get("/nowhere").status_code == 404


def test_rate_limit_headers(c: httpx.Client) -> None:
    headers = bearer(jwt_login(c)["access_token"])
    first = c.get(EXT, headers=headers)
    second = c.get(EXT, headers=headers)
    assert first.headers["X-Rate-Limit-Group"] == "Light"
    assert first.headers["X-Rate-Limit-Limit"] == "50"
    assert first.headers["X-Rate-Limit-Window"] == "60"
    remaining = int(first.headers["X-Rate-Limit-Remaining"])
    assert int(second.headers["X-Rate-Limit-Remaining"]) in (remaining - 1, 49)
    post = c.post(EXT + "/sms", headers=headers, json={"text": "hi"})
    assert (post.headers["X-Rate-Limit-Group"], post.headers["X-Rate-Limit-Limit"]) == (
        "Medium",
        "40",
    )
    content = c.get("/restapi/v1.0/account/~/recording/1/content?size=10", headers=headers)
    assert (content.headers["X-Rate-Limit-Group"], content.headers["X-Rate-Limit-Limit"]) == (
        "Heavy",
        "10",
    )


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_echo(c: httpx.Client, method: str) -> None:
    session = jwt_login(c)
    body = b"" if method == "GET" else os.urandom(3000)
    response = c.request(
        method,
        "/restapi/v1.0/echo/some/path?a=1&b=x+y&a=2",
        content=body,
        headers={
            **bearer(session["access_token"]),
            "X-Custom-Header": "Value-1",
            "Content-Type": "application/octet-stream",
        },
    )
    assert response.status_code == 200
    echo = response.json()
    assert echo["method"] == method
    assert echo["path"] == "/restapi/v1.0/echo/some/path"
    assert echo["query"] == "a=1&b=x+y&a=2"
    assert echo["bodySha256"] == hashlib.sha256(body).hexdigest()
    assert echo["bodyLength"] == len(body)
    assert echo["tokenSessionId"] == session["session_id"]
    assert echo["headers"]["x-custom-header"] == "Value-1"
    assert "authorization" not in echo["headers"]
    assert all(name == name.lower() for name in echo["headers"])


def test_sms_hash(c: httpx.Client) -> None:
    headers = bearer(jwt_login(c)["access_token"])
    raw = json.dumps({"from": {"phoneNumber": "+15550100001"}, "text": "héllo"}).encode()
    response = c.post(
        EXT + "/sms", content=raw, headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["bodySha256"] == hashlib.sha256(raw).hexdigest()
    assert body["id"]
    assert body["uri"].startswith(str(c.base_url).rstrip("/") + EXT + "/message-store/")
    bad = c.post(EXT + "/sms", content=b"{not json", headers=headers)
    assert bad.status_code == 400
    assert bad.json()["errorCode"] == "CMN-101"


def test_fax_multipart(c: httpx.Client) -> None:
    headers = bearer(jwt_login(c)["access_token"])
    request = c.build_request(
        "POST",
        EXT + "/fax",
        headers=headers,
        data={"faxResolution": "High"},
        files=[
            ("json", ("request.json", b'{"to":[{"phoneNumber":"+1555"}]}', "application/json")),
            ("attachment", ("page.pdf", os.urandom(20_000), "application/pdf")),
        ],
    )
    raw = request.read()
    response = c.send(request)
    assert response.status_code == 200
    body = response.json()
    assert body["bodySha256"] == hashlib.sha256(raw).hexdigest()
    assert body["parts"] == 3
    assert [(p["name"], p["contentType"]) for p in body["partDetails"]] == [
        ("faxResolution", "text/plain"),
        ("json", "application/json"),
        ("attachment", "application/pdf"),
    ]
    assert body["partDetails"][2]["size"] == 20_000
    assert body["uri"].startswith("http://")
    not_multipart = c.post(EXT + "/fax", headers=headers, json={})
    assert not_multipart.status_code == 400


def test_call_log_paging_absolute_urls(emulator: Emulator, c: httpx.Client) -> None:
    headers = bearer(jwt_login(c)["access_token"])
    url: str | None = emulator.url + EXT + "/call-log?perPage=10"
    records: list[dict] = []
    pages = 0
    while url and pages < 10:
        assert url.startswith(emulator.url + "/restapi/v1.0/")
        response = c.get(url, headers=headers)
        assert response.status_code == 200
        page = response.json()
        pages += 1
        assert page["uri"].startswith(emulator.url)
        assert page["paging"]["page"] == pages
        nav = page["navigation"]
        assert nav["firstPage"]["uri"].startswith(emulator.url)
        assert nav["lastPage"]["uri"].endswith("page=4&perPage=10")
        assert ("previousPage" in nav) == (pages > 1)
        records.extend(page["records"])
        url = nav.get("nextPage", {}).get("uri")
    assert pages == 4
    assert len(records) == 35 and len({r["id"] for r in records}) == 35
    for record in records:
        assert record["uri"].startswith(emulator.url + "/restapi/v1.0/")
        assert record["recording"]["uri"].startswith(emulator.url + "/restapi/v1.0/")
        assert record["recording"]["contentUri"].startswith(emulator.url + "/media/restapi/")
    default = c.get(EXT + "/call-log", headers=headers).json()
    assert default["paging"]["perPage"] == 10 and len(default["records"]) == 10
    beyond = c.get(EXT + "/call-log?page=9", headers=headers).json()
    assert beyond["records"] == [] and "nextPage" not in beyond["navigation"]
    for bad in ("page=0", "perPage=abc", "perPage=100000"):
        assert c.get(EXT + "/call-log?" + bad, headers=headers).status_code == 400


def test_recording_streamed(emulator: Emulator, c: httpx.Client) -> None:
    headers = bearer(jwt_login(c)["access_token"])
    page = c.get(EXT + "/call-log?perPage=1", headers=headers).json()
    recording = page["records"][0]["recording"]
    size = 5_000_000
    digest = hashlib.sha256()
    received = 0
    with c.stream("GET", recording["contentUri"] + f"?size={size}", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(size)
        assert response.headers["content-type"] == "audio/mpeg"
        for chunk in response.iter_bytes():
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == recording_sha256(recording["id"], size)
    # default size 1 MiB, also served without the /media prefix
    plain = c.get(f"/restapi/v1.0/account/~/recording/{recording['id']}/content", headers=headers)
    assert len(plain.content) == 1024 * 1024
    assert hashlib.sha256(plain.content).hexdigest() == recording_sha256(recording["id"], 2**20)
    head = c.head(recording["contentUri"] + "?size=123", headers=headers)
    assert head.status_code == 200 and head.headers["content-length"] == "123"
    assert c.get(recording["contentUri"]).status_code == 401
    bad = c.get(recording["contentUri"] + "?size=-1", headers=headers)
    assert bad.status_code == 400


def test_revoke_endpoint(c: httpx.Client) -> None:
    body = jwt_login(c)
    response = c.post("/restapi/oauth/revoke", data={"token": body["refresh_token"]}, auth=BASIC)
    assert response.status_code == 200 and response.content == b""
    gone = c.get(EXT, headers=bearer(body["access_token"]))
    assert gone.json() == token_invalid("OAU-213", "Token not found")
    assert refresh(c, body["refresh_token"]).json()["errors"][0]["errorCode"] == "OAU-211"
    unknown = c.post("/restapi/oauth/revoke", data={"token": new_token("A")})
    assert unknown.status_code == 200
    assert c.post("/restapi/oauth/revoke", data={}).status_code == 400


GARBAGE = [
    ({"Content-Type": "application/json"}, b'{"grant_type": "password"}'),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"\xff\xfe\x00garbage\x80"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"grant_type=" + b"A" * 2_000_000),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"&".join([b"a=b"] * 5000)),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"%%%%%=&&==;;"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b""),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"grant_type=password\x00&x=\x00"),
    ({"Content-Type": "multipart/form-data; boundary=x"}, b"--x\r\n\r\nbroken"),
    ({"Content-Type": "text/plain; charset=utf-16"}, "grant_type=password".encode("utf-16")),
    ({}, b"grant_type=password&username=%E2%82%AC&password=" + b"p" * 60_000),
    ({"Authorization": "Basic " + "=" * 50}, b"grant_type=refresh_token&refresh_token=%00"),
    ({"Authorization": "Basic w6k6w6k="}, b"grant_type=" + JWT_GRANT.encode()),
]


@pytest.mark.parametrize("headers,content", GARBAGE)
def test_garbage_token_input_never_500(c: httpx.Client, headers: dict, content: bytes) -> None:
    response = c.post("/restapi/oauth/token", headers=headers, content=content)
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"error", "error_description", "errors"}
    assert body["errors"][0]["errorCode"].startswith("OAU-")


def test_wrong_methods_use_the_envelope(c: httpx.Client) -> None:
    response = c.get("/restapi/oauth/token")
    assert response.status_code == 405
    assert "errors" in response.json()
    assert c.get("/restapi/oauth/revoke").status_code == 405


# -- compression (--compress / policy "compress"): answers as a compressing front end sends them


def _raw(c: httpx.Client, method: str, path: str, **kw: object) -> tuple[httpx.Response, bytes]:
    """The answer and its body exactly as sent (still encoded)."""
    with c.stream(method, path, **kw) as response:  # type: ignore[arg-type]
        return response, b"".join(response.iter_raw())


@pytest.fixture
def compressing(emulator: Emulator) -> Iterator[Callable[[str], None]]:
    """Switch the shared emulator's compression; back to off afterwards."""
    yield lambda setting: emulator.set_policy(compress=setting) and None
    emulator.set_policy(compress="off")


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd", "deflate"])
def test_compress_every_answer_error_bodies_included(
    c: httpx.Client, compressing: Callable[[str], None], coding: str
) -> None:
    compressing(coding)
    accept = {"Accept-Encoding": "gzip, deflate, br, zstd"}
    access = jwt_login(c)["access_token"]
    answers = {
        "401": _raw(c, "GET", EXT, headers={**accept, **bearer(new_token("A"))}),
        "400": _raw(c, "POST", "/restapi/oauth/token", headers=accept, auth=BASIC,
                    data={"grant_type": "refresh_token", "refresh_token": "nope"}),
        "200": _raw(c, "GET", EXT, headers={**accept, **bearer(access)}),
        "404": _raw(c, "GET", "/restapi/v1.0/nowhere", headers={**accept, **bearer(access)}),
    }
    for status, (response, raw) in answers.items():
        assert str(response.status_code) == status
        assert response.headers["content-encoding"] == coding, status
        assert response.headers["vary"] == "Accept-Encoding"
        assert response.headers["content-length"] == str(len(raw))
        body = json.loads(encoding.decode(raw, coding))
        assert body != {} and (status == "200" or "errors" in body or "errorCode" in body)
    assert json.loads(encoding.decode(answers["401"][1], coding))["errors"][0]["errorCode"] \
        == "OAU-213"
    # never in a coding the client did not accept: another one, q=0, or no Accept-Encoding
    for header in ("identity", f"{coding};q=0, *;q=0", "x-unknown"):
        response, raw = _raw(c, "GET", EXT, headers={"Accept-Encoding": header, **bearer(access)})
        assert "content-encoding" not in response.headers, header
        assert response.headers["vary"] == "Accept-Encoding"
        assert json.loads(raw)["extensionNumber"] == "101"
    with client_without_accept_encoding(c) as plain:
        response, raw = _raw(plain, "GET", EXT, headers=bearer(new_token("A")))
    assert "content-encoding" not in response.headers
    assert json.loads(raw)["errors"][0]["errorCode"] == "OAU-213"


def client_without_accept_encoding(c: httpx.Client) -> httpx.Client:
    plain = httpx.Client(base_url=c.base_url, timeout=30.0, trust_env=False)
    del plain.headers["accept-encoding"]
    return plain


@pytest.mark.parametrize("header,expected", [
    ("gzip, deflate, br, zstd", "br"),
    ("gzip, deflate, zstd", "zstd"),
    ("deflate, gzip", "gzip"),
    ("deflate", "deflate"),
    ("br;q=0.5, gzip;q=0.9", "gzip"),
    ("BR;Q=1, gzip", "br"),
    ("x-gzip", "gzip"),
    ("*", "br"),
    ("*;q=0.1, zstd;q=0.2", "zstd"),
    ("br;q=0, *", "zstd"),
    ("gzip;q=0", None),
    ("gzip;q=abc", None),
    ("gzip;q=2", None),
    ("identity", None),
    ("", None),
    (None, None),
])
def test_compress_any_honours_q_values(header: str | None, expected: str | None) -> None:
    assert choose_coding("any", header) == expected
    assert choose_coding("off", header) is None
    if expected is not None:
        assert choose_coding(expected, header) == expected


def test_compress_any_over_http(c: httpx.Client, compressing: Callable[[str], None]) -> None:
    compressing("any")
    access = bearer(jwt_login(c)["access_token"])
    for header, coding in (("gzip;q=0.5, zstd", "zstd"), ("deflate, br", "br"),
                           ("gzip", "gzip")):
        response, raw = _raw(c, "GET", EXT, headers={"Accept-Encoding": header, **access})
        assert response.headers["content-encoding"] == coding
        assert json.loads(encoding.decode(raw, coding))["extensionNumber"] == "101"
    # HEAD and empty bodies stay as they are
    head, _ = _raw(c, "HEAD", EXT, headers={"Accept-Encoding": "gzip", **access})
    assert "content-encoding" not in head.headers
    body = jwt_login(c)
    revoke, raw = _raw(c, "POST", "/restapi/oauth/revoke", auth=BASIC,
                       data={"token": body["refresh_token"]}, headers={"Accept-Encoding": "br"})
    assert revoke.status_code == 200 and raw == b"" and "content-encoding" not in revoke.headers


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compress_streamed_recording(emulator: Emulator, c: httpx.Client,
                                     compressing: Callable[[str], None], coding: str) -> None:
    """Recording content streams compressed (chunked: the compressed length is not known up
    front), in gzip or deflate; br and zstd streams go out as they are (aiohttp's streaming
    compressor is zlib only)."""
    compressing("any")
    headers = bearer(jwt_login(c)["access_token"])
    rec = "/restapi/v1.0/account/~/recording/rec-9/content?size=300000"
    response, raw = _raw(c, "GET", rec, headers={**headers, "Accept-Encoding": f"br, {coding}"})
    assert response.headers["content-encoding"] == coding
    assert response.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.headers
    assert response.headers["vary"] == "Accept-Encoding"
    content = encoding.decode(raw, coding)
    assert hashlib.sha256(content).hexdigest() == recording_sha256("rec-9", 300000)
    # httpx decodes it like any client would
    decoded = c.get(rec, headers={**headers, "Accept-Encoding": coding})
    assert hashlib.sha256(decoded.content).hexdigest() == recording_sha256("rec-9", 300000)
    compressing("br")
    plain, raw = _raw(c, "GET", rec, headers={**headers, "Accept-Encoding": "br"})
    assert "content-encoding" not in plain.headers and plain.headers["vary"] == "Accept-Encoding"
    assert plain.headers["content-length"] == "300000" and len(raw) == 300000


def test_compress_policy_and_cli(emulator: Emulator, make_emulator: Callable[..., Emulator],
                                 compressing: Callable[[str], None]) -> None:
    assert emulator.set_policy()["compress"] == "off"
    with pytest.raises(httpx.HTTPStatusError) as refused:
        emulator.set_policy(compress="lz4")
    assert refused.value.response.json()["error"] == (
        "compress: must be one of off, gzip, br, zstd, deflate, any")
    limited = make_emulator("--compress", "gzip", "--auth-rate", "1")
    assert limited.set_policy()["compress"] == "gzip"
    with client(limited) as lc:
        jwt_login(lc)
        response, raw = _raw(lc, "POST", "/restapi/oauth/token", auth=BASIC,
                             data={"grant_type": JWT_GRANT, "assertion": "demo-jwt-credential"},
                             headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 429 and response.headers["content-encoding"] == "gzip"
    assert json.loads(encoding.decode(raw, "gzip"))["errors"][0]["errorCode"] == "CMN-301"
