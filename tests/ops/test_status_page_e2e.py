"""Issue 19 item 8: the status page on the admin listener (``/``), in a real headless browser.

A real proxy and emulator with two accounts: ``main`` (jwt) stays healthy with an app's
WebSocket subscribed, ``seeded`` (refresh_token) is driven into ``reauth_required`` (its
session revoked, no way back without a person). Debian's ``chromium`` then loads ``/``
(``--dump-dom``): the page shows each account's state badge, the token time left as bars, the
hint naming ``tokenproxy authorize seeded``, the rate-limit budgets and the socket; and takes a
screenshot (``--screenshot``), a real PNG. Chromium is driven from its command line only (no
selenium or playwright); when it is missing the test installs the Debian package (as root or
with ``sudo -n``) or skips saying why. Set ``TOKENPROXY_STATUS_PAGE_PNG=PATH`` to keep the
screenshot (docs/status-page.png was made that way).

Also: with ``[proxy] admin_token_env`` the page answers 401 (an HTML explanation) without the
Bearer and 200 with it, like ``/metrics``; names, errors and hints are HTML-escaped.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from proxy_addon.ops.status_page import render_status_page, render_unauthorized_page
from tests.events.apps import PRESENCE, answer_to, connect, subscribe_frame, ws_token
from tests.support.proxy import APP_KEY, DEMO_CLIENT_SECRET, DEMO_JWT, Proxy, jwt_account

EXT = "/restapi/v1.0/account/~/extension/~"
SEEDED_KEY = "seeded-app-key-0123456789"
TOKEN_ENV = "TPX_TEST_ADMIN_TOKEN"
TOKEN = "admin-token-for-tests-0123456789"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WIDTH, HEIGHT = 1200, 900

# --------------------------------------------------------------------------------------------
# a headless Chromium, found or installed


def _install_chromium() -> str | None:
    """``apt-get install chromium`` (as root, or through ``sudo -n``); why not, or None."""
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "-n", "apt-get"]
    if shutil.which(apt[0]) is None:
        return f"{apt[0]} is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*apt, "install", "-y", "-q", "--no-install-recommends", "chromium"]
    result = subprocess.run(install, capture_output=True, text=True, timeout=900, env=env,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:  # a stale package list: update once and try again
        subprocess.run([*apt, "update", "-q"], capture_output=True, timeout=600, env=env,
                       stdin=subprocess.DEVNULL)
        result = subprocess.run(install, capture_output=True, text=True, timeout=900, env=env,
                                stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        return f"{' '.join(install)} failed: {(result.stderr or result.stdout)[-500:]}"
    return None


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    browser = find_chromium()
    if browser is None:
        why = _install_chromium()
        browser = find_chromium()
        if browser is None:
            pytest.skip(f"no headless Chromium: neither chromium nor chromium-browser is on "
                        f"PATH and installing the Debian package did not work ({why})")
    return browser


def run_chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--no-proxy-server", "--disable-dev-shm-usage", "--hide-scrollbars",
               "--disable-extensions", "--disable-background-networking",
               f"--user-data-dir={profile}", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180,
                            stdin=subprocess.DEVNULL, env={**os.environ, "HOME": str(profile)})
    assert result.returncode == 0, f"{command}: {result.returncode}\n{result.stderr[-2000:]}"
    return result


# --------------------------------------------------------------------------------------------
# the dumped DOM, as a small tree


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.texts: list[str] = []

    @property
    def text(self) -> str:
        parts = list(self.texts) + [c.text for c in self.children]
        return " ".join(p for p in parts if p)

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        return [n for n in self.walk() if (tag is None or n.tag == tag)
                and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def find(self, tag: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]


VOID = {"meta", "link", "br", "hr", "img", "input", "col", "area", "base", "source", "wbr"}


class TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#document", {}, None)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.current.texts.append(data.strip())


def parse(html: str) -> Node:
    builder = TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE, data[:16]
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def bar_width(bar: Node) -> float:
    fill = next(n for n in bar.walk() if "fill" in n.attrs.get("class", "").split())
    match = re.search(r"width:\s*([\d.]+)%", fill.attrs.get("style", ""))
    return float(match.group(1)) if match else 0.0


# --------------------------------------------------------------------------------------------
# the scenario


async def with_subscribed_socket(proxy: Proxy, then: Any) -> Any:
    """Run ``then()`` (in a thread) while an app of ``main`` holds a subscribed WebSocket."""
    headers = {"Authorization": f"Bearer {APP_KEY}"}
    async with httpx.AsyncClient(base_url=proxy.url, headers=headers, timeout=30) as http, \
            aiohttp.ClientSession() as session:
        ws, _ = await connect(session, await ws_token(http))
        await ws.send_str(subscribe_frame("s1", [PRESENCE]))
        assert (await answer_to(ws, "s1"))[0]["status"] == 200

        async def read() -> None:  # keep reading: pings answered, notifications dropped
            while not ws.closed:
                await ws.receive()

        reader = asyncio.get_running_loop().create_task(read())
        try:
            return await asyncio.to_thread(then)
        finally:
            reader.cancel()
            await ws.close()


@pytest.mark.timeout(1200)  # may install chromium first; Chromium starts slowly on 2 cores
def test_status_page_in_a_headless_browser(emulator_factory, proxy_factory, chromium: str,
                                           tmp_path: Path) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    seeded = {"name": "seeded", "client_id": "demo-client-id",
              "client_secret": DEMO_CLIENT_SECRET, "grant": "refresh_token",
              "refresh_token": emulator.user2_refresh_token()}
    proxy = proxy_factory(emulator.url, accounts=[jwt_account(), seeded],
                          clients=[{"name": "app", "account": "main", "key": APP_KEY},
                                   {"name": "seeded-app", "account": "seeded",
                                    "key": SEEDED_KEY}])
    with proxy.http(APP_KEY) as main, proxy.http(SEEDED_KEY) as other:
        for _ in range(3):  # some traffic: rate-limit groups seen, tokens in use
            assert main.get(EXT).status_code == 200
            assert other.get(EXT).status_code == 200
        emulator.revoke_all()
        assert main.get(EXT).status_code == 200  # JWT: logs in again, replays
        response = other.get(EXT)  # refresh_token grant: a person must authorize
        assert response.status_code == 503
        assert response.json()["errorCode"] == "TPX-REAUTH-REQUIRED"
    assert proxy.admin_url
    page = httpx.get(proxy.admin_url + "/", timeout=10, trust_env=False)
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Cache-Control"] == "no-store"

    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    shot = tmp_path / "status-page.png"

    def browse() -> tuple[str, float, float]:
        started = time.monotonic()
        dom = run_chromium(chromium, profile, "--dump-dom", proxy.admin_url + "/").stdout
        dumped = time.monotonic() - started
        started = time.monotonic()
        run_chromium(chromium, profile, f"--screenshot={shot}",
                     f"--window-size={WIDTH},{HEIGHT}", proxy.admin_url + "/")
        return dom, dumped, time.monotonic() - started

    dom, dump_seconds, shot_seconds = asyncio.run(with_subscribed_socket(proxy, browse))
    doc = parse(dom)

    assert "tokenproxy" in doc.find("title").text
    refresh = doc.find("meta", http_equiv="refresh")
    assert refresh.attrs["content"] == "5"  # auto-refreshing
    summary = doc.find("header", id="summary")
    assert summary.attrs["data-healthy"] == "false"
    assert "1 of 2 account(s) need attention" in doc.find(id="overall").text

    table = doc.find("table", id="account-table")
    bad = table.find("tr", data_account="seeded")
    assert bad.attrs["data-state"] == "reauth_required"
    badge = bad.find(data_role="state")
    assert badge.text == "reauth_required"
    assert "state-reauth_required" in badge.attrs["class"].split()
    assert "refresh token dead" in bad.find(data_role="error").text
    assert "tokenproxy authorize seeded" in bad.find(data_role="hint").text
    for role in ("access", "refresh"):  # no usable token: an empty or a greyed bar
        bar = bad.find(data_role=role)
        assert bar.attrs["data-seconds"] == "" or "unusable" in bar.attrs["class"].split(), \
            bar.attrs
        assert bar.find(None, **{"class": "left"}).text in ("-", "unusable")
    assert re.fullmatch(r"[01]/1", bad.find(data_role="sessions").text)

    good = table.find("tr", data_account="main")
    # a token renewed ahead of its expiry passes through "refreshing": routine
    assert good.attrs["data-state"] in ("healthy", "refreshing"), good.attrs
    assert good.find(data_role="state").text == good.attrs["data-state"]
    access, refresh_bar = good.find(data_role="access"), good.find(data_role="refresh")
    assert 0 < int(access.attrs["data-seconds"]) <= 3600
    assert re.fullmatch(r"\d+m\d+s|\d+s|1h0m", access.find(None, **{"class": "left"}).text)
    assert bar_width(access) > 50  # a fresh 1 h token: more than half the bar
    assert int(refresh_bar.attrs["data-seconds"]) > 0 and bar_width(refresh_bar) > 0
    assert good.find_all(data_role="hint") == []  # nothing to do for a healthy account
    assert good.find(data_role="sessions").text == "1/1"
    assert good.find(data_role="last-refresh").text.endswith("ago")

    budgets = doc.find("table", data_account="main")
    groups = {n.attrs["data-group"].lower() for n in budgets.find_all("tr")
              if "data-group" in n.attrs}
    assert "light" in groups, dom[-3000:]
    assert re.fullmatch(r"\d+/\d+", budgets.find_all(data_role="used")[0].text)
    sockets = doc.find("section", id="websockets")
    assert sockets.find(data_role="app-sockets-total").text == "1"
    row = sockets.find("tr", data_account="main")
    assert row.find(data_role="app-sockets").text == "1"
    assert int(row.find(data_role="filters").text) >= 1
    # the processes sharing the store (issue 19.7): this one alone, with what it served
    (me,) = doc.find("table", id="process-table").find_all("tr", data_self="true")
    assert f":{proxy.proc.pid}:" in me.attrs["data-process"]
    assert int(me.find(data_role="process-served").text) >= 8
    assert doc.find_all("script") == []  # no script at all
    for secret in (DEMO_JWT, DEMO_CLIENT_SECRET, APP_KEY, SEEDED_KEY, seeded["refresh_token"]):
        assert secret not in dom

    data = shot.read_bytes()
    assert png_size(data) == (WIDTH, HEIGHT)
    assert len(data) > 20_000, len(data)  # a rendered page, not a blank one
    if keep := os.environ.get("TOKENPROXY_STATUS_PAGE_PNG"):
        shutil.copyfile(shot, keep)
    print(f"figures status page: DOM {len(dom)} chars in {dump_seconds:.1f} s, screenshot "
          f"{len(data)} bytes in {shot_seconds:.1f} s")


def test_status_page_needs_the_admin_token(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory()
    proxy = proxy_factory(emulator.url, admin_token_env=TOKEN_ENV, env={TOKEN_ENV: TOKEN})
    assert proxy.admin_url
    with proxy.http() as app:
        assert app.get(EXT).status_code == 200
    for authorization in (None, f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN):
        headers = {"Authorization": authorization} if authorization else {}
        refused = httpx.get(proxy.admin_url + "/", headers=headers, timeout=10,
                            trust_env=False)
        assert refused.status_code == 401, (authorization, refused.status_code)
        assert refused.headers["Content-Type"] == "text/html; charset=utf-8"
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert "admin_token_env" in refused.text and 'data-account="main"' not in refused.text
    page = httpx.get(proxy.admin_url + "/", headers={"Authorization": f"Bearer {TOKEN}"},
                     timeout=10, trust_env=False)
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    table = parse(page.text).find("table", id="account-table")
    assert table.find("tr", data_account="main").attrs["data-state"] == "healthy"
    assert TOKEN not in page.text and TOKEN not in proxy.logs()


def snapshot(name: str, **extra: Any) -> dict[str, Any]:
    return {"account": name, "grant": "jwt", "state": "healthy", "state_since": 1.0e9,
            "access_expires_in": 250.0, "refresh_expires_in": None, "live_sessions": 1,
            "max_live_tokens": 1, "last_refresh": 1.0e9, "last_error": None, "hint": None,
            **extra}


def test_every_value_is_escaped() -> None:
    evil = '<script>alert("x")</script>'
    status = {"time": 1.0e9 + 10, "healthy": False, "accounts": [
        snapshot(evil, rate_limits=[{"group": "<b>Heavy</b>", "limit": 10, "window": 60,
                                     "used": 1, "remaining": None, "queued": 0,
                                     "penalty_left": 12.5}]),
        snapshot('a"b', state="reauth_required", last_error="<img src=x onerror=alert(1)>",
                 hint="run `tokenproxy authorize a\"b` & retry")],
        "events": {"app_sockets": 0, "accounts": {evil: {
            "app_sessions": 1, "app_sockets": 0, "upstream_sockets": 1,
            "subscribed_filters": 2}}}}
    html = render_status_page(status)
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    doc = parse(html)
    table = doc.find("table", id="account-table")
    assert table.find("tr", data_account=evil).attrs["data-state"] == "healthy"
    bad = table.find("tr", data_account='a"b')
    assert bad.find(data_role="error").text == "<img src=x onerror=alert(1)>"
    assert bad.find(data_role="hint").text == 'run `tokenproxy authorize a"b` & retry'
    # the account needing attention comes first; the healthy one has a 4m10s bar
    rows = doc.find_all("tr", **{"class": "account attention"})
    assert [r.attrs["data-account"] for r in rows] == ['a"b']
    assert table.find("tr", data_account=evil).find(data_role="access").text == "4m10s"
    assert doc.find("tr", data_group="<b>Heavy</b>")
    assert doc.find("section", id="websockets").find("tr", data_account=evil)
    assert "Bearer" in render_unauthorized_page() and "<script" not in render_unauthorized_page()
