"""Helpers of the events tests: an SDK app process whose JSON lines are collected as they come,
and plain WebSocket apps (aiohttp) that take a ws token from the proxy and subscribe."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx

from tests.support.processes import stop_process

PRESENCE = "/restapi/v1.0/account/~/extension/~/presence"
SMS = "/restapi/v1.0/account/~/extension/~/message-store/instant?type=SMS"
EXT = "/restapi/v1.0/account/~/extension/~"


class AppProcess:
    """A subprocess printing JSON lines; each line is collected by a reader thread."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(command, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict[str, Any]] = []
        self._new: queue.Queue[None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"raw": line.strip()})
            self._new.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)[-3000:]

    def wait_for(self, condition: Callable[[list[dict[str, Any]]], bool], timeout: float,
                 what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.lines):
            if self.proc.poll() is not None:
                time.sleep(0.2)  # the last lines
                if condition(self.lines):
                    return
                raise AssertionError(f"the app exited ({self.proc.returncode}) before {what}: "
                                     f"{self.lines[-5:]} {self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout} s: {self.lines[-5:]} "
                                     f"{self.stderr}")
            try:
                self._new.get(timeout=0.2)
            except queue.Empty:
                pass

    def events(self) -> list[dict[str, Any]]:
        return [line["event"] for line in self.lines if "event" in line]

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        stop_process(self.proc, 5)


def seqs(events: list[dict[str, Any]]) -> list[int]:
    """The ``seq`` of each presence event the test emitted, in the order they came."""
    return [e["body"]["seq"] for e in events
            if isinstance(e.get("body"), dict) and "seq" in e["body"]]


async def ws_token(http: httpx.AsyncClient) -> dict[str, Any]:
    answer = await http.post("/restapi/oauth/wstoken")
    assert answer.status_code == 200, answer.text
    return answer.json()


async def connect(session: aiohttp.ClientSession, token: dict[str, Any],
                  wsc: str | None = None) -> tuple[aiohttp.ClientWebSocketResponse, list]:
    """An app socket and its ConnectionDetails frame."""
    url = f"{token['uri']}?access_token={token['ws_access_token']}"
    if wsc:
        url += f"&wsc={wsc}"
    ws = await session.ws_connect(url, autoping=True)
    first = json.loads((await ws.receive(timeout=15)).data)
    assert first[0]["type"] == "ConnectionDetails", first
    return ws, first


def request_frame(message_id: str, method: str, path: str, body: Any = None) -> str:
    meta = {"type": "ClientRequest", "messageId": message_id, "method": method, "path": path}
    return json.dumps([meta, body] if body is not None else [meta])


def subscribe_frame(message_id: str, filters: list[str], path: str = "/restapi/v1.0/subscription"
                    ) -> str:
    return request_frame(message_id, "POST", path, {
        "eventFilters": filters, "deliveryMode": {"transportType": "WebSocket"}})


async def answer_to(ws: aiohttp.ClientWebSocketResponse, message_id: str,
                    within: float = 30) -> list:
    """The frame answering ``message_id`` (notifications before it are skipped)."""
    deadline = time.monotonic() + within
    while True:
        message = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        assert message.type is aiohttp.WSMsgType.TEXT, (message.type, message.data)
        frame = json.loads(message.data)
        if frame[0].get("messageId") == message_id:
            return frame
