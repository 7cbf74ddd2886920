"""A scripted HTTP/1.1 upstream for the shared-pool tests: a real asyncio server on loopback (its
own thread and loop) that answers the token endpoint with a canned token set and every other
request as the test's ``script`` says, and records what arrived on which connection.

``script(request) -> Answer`` decides per request; an :class:`Answer` can be a plain answer,
a body generated on the fly (any size, in bounded memory), a connection dropped without an
answer, an answer whose body is cut off mid-way (a reset), or one held until released.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.support.loop_server import LoopServer

TOKENS = json.dumps({"access_token": "upstream-access-1", "token_type": "bearer",
                     "expires_in": 3600, "refresh_token": "upstream-refresh-1",
                     "refresh_token_expires_in": 604800, "scope": "ReadAccounts",
                     "owner_id": "100001", "endpoint_id": "e1"}).encode()


@dataclass(frozen=True)
class Seen:
    """One request as it arrived."""

    connection: int  # which upstream connection (0, 1, ...)
    index: int  # its position on that connection (0 = first)
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b'{"ok": true}'
    generated: int = 0  # > 0: this many body bytes, generated in 64 KiB pieces (unsized/sized)
    sized: bool = True  # generated bodies: Content-Length (True) or chunked (False)
    drop: bool = False  # close the connection without answering
    cut_after: int = -1  # >= 0: close the connection after this many body bytes
    hold: bool = False  # wait for ``release`` before answering
    close_after: bool = False  # close the connection (idly) right after answering
    delay: float = 0.0  # seconds before answering (a slow platform)


def piece(offset: int, size: int) -> bytes:
    """Bytes of a generated body at ``offset`` (deterministic, so the app can check them)."""
    pattern = bytes(range(256)) * 256  # 64 KiB
    start = offset % len(pattern)
    out = (pattern[start:] + pattern)[:size]
    return out


def generated_body(size: int) -> bytes:
    """A whole generated body, as :class:`ScriptedUpstream` sends it."""
    return b"".join(piece(offset, min(65536, size - offset)) for offset in range(0, size, 65536))


class ScriptedUpstream(LoopServer):
    def __init__(self, script: Callable[[Seen], Answer]) -> None:
        super().__init__()
        self.script = script
        self.seen: list[Seen] = []
        self.connections = 0  # accepted, token endpoint's included
        self.api_connections: set[int] = set()  # connections that carried an API request
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.release.set()  # held answers go out before the shutdown
        super().__exit__(*exc)

    def api(self) -> list[Seen]:
        return [s for s in self.seen if not s.target.startswith("/restapi/oauth/")]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        try:
            for index in range(10_000):  # keep-alive, bounded
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target = lines[0].split(" ")[:2]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                seen = Seen(number, index, method, target, headers, body)
                if len(self.seen) < 100_000:
                    self.seen.append(seen)
                if target.startswith("/restapi/oauth/token"):
                    answer = Answer(body=TOKENS, headers=[("Content-Type", "application/json")])
                else:
                    self.api_connections.add(number)
                    answer = self.script(seen)
                if answer.delay > 0:
                    await asyncio.sleep(answer.delay)
                if answer.hold:
                    await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 30)
                if answer.drop:
                    return
                if not await self._answer(writer, method, answer):
                    return
                if answer.close_after:
                    await asyncio.sleep(0.05)
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, method: str, answer: Answer) -> bool:
        """Write one answer; False when the connection must end (cut off)."""
        head = [f"HTTP/1.1 {answer.status} Status"]
        head += [f"{k}: {v}" for k, v in answer.headers]
        bodiless = method == "HEAD" or answer.status in (204, 304)
        size = answer.generated or len(answer.body)
        if answer.generated and not answer.sized:
            head.append("Transfer-Encoding: chunked")
        elif answer.status not in (204, 304) and \
                not any(k.lower() == "content-length" for k, _ in answer.headers):
            head.append(f"Content-Length: {size}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if bodiless:
            await writer.drain()
            return True
        if not answer.generated:
            body = answer.body if answer.cut_after < 0 else answer.body[:answer.cut_after]
            writer.write(body)
            await writer.drain()
            return answer.cut_after < 0
        sent = 0
        while sent < size:  # bounded by size
            chunk = piece(sent, min(65536, size - sent))
            if 0 <= answer.cut_after <= sent:
                await writer.drain()
                return False
            writer.write(chunk if answer.sized else b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            await writer.drain()
        if not answer.sized:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        return True
