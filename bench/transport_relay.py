"""A delaying TCP relay for the ``transport`` scenario's WAN phase: it puts a round trip of
``--rtt`` seconds between a proxy and its upstream, both on loopback.

It stands in for ``tc netem`` on a veth pair when the kernel has no ``sch_netem`` (checked by
:func:`bench.transport.netem_available`). The relay passes bytes through untouched (TLS goes
end to end) and models the two costs of distance:

* connecting costs one round trip: nothing the client sent is read before ``rtt`` has passed
  since the accept (as a SYN/SYN-ACK exchange would delay the client's first bytes), then
  the upstream connection is opened;
* every chunk, either way, is delivered ``rtt / 2`` after it was read, in order.

Run as ``python -m bench.transport_relay --target HOST:PORT --rtt 0.04``; it prints
``relay listening on PORT`` and serves until SIGTERM. Memory per connection is bounded by the
socket buffers plus what arrives within ``rtt / 2`` (the answers here are a few KB).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import signal
import sys


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                one_way: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``one_way`` seconds late, in order; pass the
    end of stream on once everything before it is delivered."""
    loop = asyncio.get_running_loop()
    pending: collections.deque[tuple[float, bytes]] = collections.deque()
    arrived = asyncio.Event()
    done = False

    async def deliver() -> None:
        while True:
            while not pending:
                if done:
                    return
                arrived.clear()
                await arrived.wait()
            due, chunk = pending[0]
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.popleft()
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while chunk := await reader.read(65536):
            pending.append((loop.time() + one_way, chunk))
            arrived.set()
        done = True
        arrived.set()
        await sender
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()
    except (OSError, asyncio.IncompleteReadError):
        sender.cancel()
        writer.close()
    finally:
        if not sender.done():
            sender.cancel()


async def _serve(target: tuple[str, int], rtt: float, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(rtt)  # the TCP handshake's round trip
    try:
        up_reader, up_writer = await asyncio.open_connection(*target)
    except OSError:
        writer.close()
        return
    try:
        await asyncio.gather(_pump(reader, up_writer, rtt / 2), _pump(up_reader, writer, rtt / 2),
                             return_exceptions=True)
    finally:
        for w in (writer, up_writer):
            with contextlib.suppress(Exception):
                w.close()


async def main(target: tuple[str, int], rtt: float, port: int) -> None:
    server = await asyncio.start_server(
        lambda r, w: _serve(target, rtt, r, w), "127.0.0.1", port, backlog=4096)
    print(f"relay listening on {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.transport_relay")
    parser.add_argument("--target", required=True, help="HOST:PORT to relay to")
    parser.add_argument("--rtt", type=float, default=0.04, help="round trip, seconds")
    parser.add_argument("--port", type=int, default=0, help="loopback port (0: any)")
    args = parser.parse_args()
    host, _, port_text = args.target.rpartition(":")
    if not 0 <= args.rtt <= 1:
        sys.exit("--rtt must be between 0 and 1 s")
    asyncio.run(main((host, int(port_text)), args.rtt, args.port))
