"""An HTTP/2-only TLS upstream for tests (ALPN ``h2``, on loopback, its own thread and loop),
built on the ``h2`` library (a mitmproxy dependency). It answers ``…/big`` with a generated
body of ``big_size`` bytes (flow control honoured) and anything else with a small JSON, and
records, per TCP connection, the streams it served.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import h2.config
import h2.connection
import h2.events

from tests.support.loop_server import LoopServer
from tests.support.scripted_upstream import generated_body


class H2Upstream(LoopServer):
    def __init__(self, cert_dir: Path, big_size: int = 4 * 1024 * 1024) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_dir / "server.pem", cert_dir / "server.key")
        context.set_alpn_protocols(["h2"])
        super().__init__(context)
        self.big = generated_body(big_size)
        self.streams: list[tuple[int, str, str]] = []  # (connection, method, path)
        self.connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        window_open = asyncio.Event()
        requests: dict[int, tuple[str, str]] = {}
        senders: set[asyncio.Task[None]] = set()

        async def answer(stream_id: int, method: str, path: str) -> None:
            body = self.big if path.endswith("/big") else b'{"ok": true}'
            conn.send_headers(stream_id, [(":status", "200"), ("content-type",
                                                              "application/octet-stream"
                                                              if path.endswith("/big") else
                                                              "application/json"),
                                          ("content-length", str(len(body)))])
            sent = 0
            for _ in range(1_000_000):  # bounded
                if sent >= len(body):
                    break
                room = min(conn.local_flow_control_window(stream_id),
                           conn.max_outbound_frame_size, len(body) - sent)
                if room <= 0:
                    window_open.clear()
                    writer.write(conn.data_to_send())
                    await writer.drain()
                    await window_open.wait()
                    continue
                conn.send_data(stream_id, body[sent:sent + room])
                sent += room
                writer.write(conn.data_to_send())
                await writer.drain()
            conn.end_stream(stream_id)
            writer.write(conn.data_to_send())
            await writer.drain()

        try:
            for _ in range(100_000):  # bounded
                data = await reader.read(65536)
                if not data:
                    return
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = {k.decode() if isinstance(k, bytes) else k:
                                   v.decode() if isinstance(v, bytes) else v
                                   for k, v in event.headers}
                        requests[event.stream_id] = (headers[":method"], headers[":path"])
                    elif isinstance(event, h2.events.StreamEnded):
                        method, path = requests.pop(event.stream_id)
                        self.streams.append((number, method, path))
                        task = asyncio.get_running_loop().create_task(
                            answer(event.stream_id, method, path))
                        senders.add(task)
                        task.add_done_callback(senders.discard)
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length,
                                                       event.stream_id)
                    elif isinstance(event, h2.events.WindowUpdated):
                        window_open.set()
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
