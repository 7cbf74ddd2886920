"""Control plane apart from data plane (issue 16, item 2): a renewal gets through while every
connection of the data plane is busy with API requests that the upstream holds.

The upstream is a real HTTP server on loopback. It answers the token endpoint at once and holds
every API request until the test lets them go. The clients come from ``upstream_clients``, as
``tokenproxy run`` builds them. The test asserts ordering, not timings: the refresh must finish
while the replays are still pending. A single shared client would queue the refresh behind
them until its timeout."""

from __future__ import annotations

import asyncio
import json

from mitmproxy import http

from proxy_addon.config import parse_config
from proxy_addon.gateway.replay_buffer import ReplayBuffer
from proxy_addon.upstream.clients import upstream_clients
from proxy_addon.upstream.replay_sender import Replayer
from proxy_addon.upstream.token_endpoint import TokenEndpoint

TOKENS = json.dumps({"access_token": "fresh-access", "token_type": "bearer",
                     "expires_in": 3600, "refresh_token": "fresh-refresh",
                     "refresh_token_expires_in": 604800}).encode()


class HoldingUpstream:
    """Answers /restapi/oauth/token at once; holds API requests until ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.held = 0  # API requests received and not yet answered
        self.token_calls = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(100):  # keep-alive: bounded requests per connection
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                               if line.lower().startswith("content-length:")), 0)
                await reader.readexactly(length)
                if path.startswith("/restapi/oauth/token"):
                    self.token_calls += 1
                    body = TOKENS
                else:
                    self.held += 1
                    await self.release.wait()
                    self.held -= 1
                    body = b"{}"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def refresh_while_the_data_plane_is_full() -> None:
    upstream = HoldingUpstream()
    await upstream.start()
    config = parse_config({
        "proxy": {"upstream": upstream.url, "upstream_timeout": 30},
        "accounts": [{"name": "main", "client_id": "id", "client_secret": "s", "grant": "jwt",
                      "jwt": "j"}],
        "clients": [{"name": "app", "account": "main", "key": "k" * 24}]}, "test", {})
    account = config.accounts[0]
    try:
        async with upstream_clients(config, data_connections=3) as clients:
            replayer = Replayer(clients.data, ReplayBuffer(1 << 20, 1 << 22))
            request = http.Request.make(
                "GET", upstream.url + "/restapi/v1.0/account/~/extension/~")
            replays = [asyncio.create_task(replayer.send(request, "access")) for _ in range(5)]
            for _ in range(500):  # bounded: until the data plane is full (3 of 5 sent)
                if upstream.held == 3:
                    break
                await asyncio.sleep(0.01)
            assert upstream.held == 3, upstream.held
            endpoint = TokenEndpoint(upstream.url, clients.control)
            # a bound only so that a regression fails instead of hanging; not a timing claim
            tokens = await asyncio.wait_for(endpoint.refresh(account, "old-refresh"), 20)
            assert tokens.access_token == "fresh-access" and upstream.token_calls == 1
            assert not any(task.done() for task in replays)  # the renewal went past them
            assert upstream.held == 3  # with every data connection still busy
            upstream.release.set()
            answers = await asyncio.gather(*replays)
            assert [answer.status_code for answer, _ in answers] == [200] * 5
    finally:
        await upstream.close()


def test_a_renewal_does_not_wait_behind_a_full_data_plane() -> None:
    asyncio.run(refresh_while_the_data_plane_is_full())
