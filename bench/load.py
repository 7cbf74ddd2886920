"""Steady keep-alive load from many clients, for the ``drain`` and ``chaos`` scenarios.

Runs as its own process (``python -m bench.load ...``) so the load does not share an event loop
or a GIL with the scenario that starts, kills and watches the processes under test. Each client
is one asyncio task with one keep-alive HTTP/1.1 connection (raw sockets: a full HTTP client
library would cost more CPU than the proxies measured on this 2-core machine), sending
``GET PATH`` with its client key every ``--interval`` seconds (the first at a random offset, so
the clients do not fire together). Every client loop is bounded in requests and time; SIGTERM or
SIGINT ends the run after the requests in flight. The result is one JSON document
(:func:`summarize`): outcomes by kind, latency percentiles, per-second counts and the first
``MAX_FAILURE_EVENTS`` failures with their time, for the scenario to match against its events.

Outcome kinds: ``ok`` (2xx); ``HTTP <status> <errorCode>`` for any other answer (the code from the
JSON body, ``errors[0].errorCode`` first, so the platform's ``OAU-…`` and the proxy's ``TPX-…``
codes both show); ``conn refused`` (with ``--failover``: by every target), ``conn reset``,
``conn closed`` (the server closed the connection before a full answer, e.g. a keep-alive
connection to a process that was killed), ``timeout``. With ``--failover`` a client behaves
like one behind a load balancer: a refused connect is retried on the next target at once
(counted in ``redirects``, not a failure) and a new connection after a lost one goes to a random
target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

API_PATH = "/restapi/v1.0/account/~/extension/~"
REQUEST_TIMEOUT = 30.0  # s: longer than the proxy's token wait (10 s) plus a replay
MAX_FAILURE_EVENTS = 200_000  # failures kept with their time (the counts are always complete)
MAX_HEADER_LINES = 200
MAX_BODY = 16 * 1024 * 1024
OK = "ok"


# ---------------------------------------------------------------------------- pure parts
def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers (lower-case names) of an HTTP/1.x response head (without the blank
    line); raises ValueError when it is not one."""
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") \
            or not status_line[1].isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:MAX_HEADER_LINES]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(status_line[1]), headers


def error_code(body: bytes) -> str:
    """The error code a JSON error body carries (``errors[0].errorCode``, else ``errorCode``,
    else ``error``), or ``-`` when there is none."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "-"
    if not isinstance(data, dict):
        return "-"
    errors = data.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict) \
            and isinstance(errors[0].get("errorCode"), str):
        return errors[0]["errorCode"]
    for key in ("errorCode", "error"):
        if isinstance(data.get(key), str):
            return data[key]
    return "-"


def outcome_kind(status: int, body: bytes) -> str:
    if 200 <= status < 300:
        return OK
    return f"HTTP {status} {error_code(body)}"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values; NaN when empty."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


@dataclass
class Tally:
    """What the clients saw, as they see it."""

    started: float = field(default_factory=time.time)  # wall clock, to match scenario events
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)  # of every answered request
    per_second: dict[int, list[int]] = field(default_factory=dict)  # second -> [ok, failed]
    failures: list[tuple[float, str]] = field(default_factory=list)  # (wall time, kind)
    by_target: Counter[str] = field(default_factory=Counter)
    redirects: int = 0  # refused connects retried on another target (not failures)

    def record(self, kind: str, latency_ms: float | None, target: str,
               when: float | None = None) -> None:
        when = time.time() if when is None else when
        self.outcomes[kind] += 1
        self.by_target[target] += 1
        if latency_ms is not None:
            self.latencies_ms.append(latency_ms)
        bucket = self.per_second.setdefault(int(when - self.started), [0, 0])
        if kind == OK:
            bucket[0] += 1
        else:
            bucket[1] += 1
            if len(self.failures) < MAX_FAILURE_EVENTS:
                self.failures.append((round(when, 3), kind))


def summarize(tally: Tally, ended: float) -> dict:
    """The JSON document the load process writes."""
    latencies = sorted(tally.latencies_ms)
    return {
        "started": tally.started,
        "ended": ended,
        "requests": sum(tally.outcomes.values()),
        "outcomes": dict(tally.outcomes),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else float("nan"),
        "per_second": {str(k): v for k, v in sorted(tally.per_second.items())},
        "failures": tally.failures,
        "failures_truncated": sum(tally.outcomes.values()) - tally.outcomes.get(OK, 0)
        > len(tally.failures),
        "by_target": dict(tally.by_target),
        "redirects": tally.redirects,
    }


def failures_by_kind(outcomes: dict[str, int]) -> dict[str, int]:
    """Every outcome but ``ok``, most frequent first."""
    bad = [(k, v) for k, v in outcomes.items() if k != OK and v]
    return dict(sorted(bad, key=lambda kv: (-kv[1], kv[0])))


def failure_window(failures: Iterable[tuple[float, str]], start: float,
                   end: float) -> tuple[int, float | None, float | None]:
    """(count, first, last) of the failures with ``start <= time < end``; times relative to
    ``start`` (None when there is none)."""
    times = [t for t, _ in failures if start <= t < end]
    if not times:
        return 0, None, None
    return len(times), min(times) - start, max(times) - start


# ------------------------------------------------------------------------------ clients
class Answer(Exception):
    """A request that did not end with a full answer; ``kind`` says how."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> tuple[bytes, bool]:
    """The body, and whether the connection can be reused."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        size_total = 0
        for _ in range(1_000_000):
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers expected
                break
            size_total += size
            if size_total > MAX_BODY:
                raise Answer("body too large")
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return b"".join(parts), headers.get("connection", "").lower() != "close"
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > MAX_BODY:
            raise Answer("body too large")
        body = await reader.readexactly(length)
        return body, headers.get("connection", "").lower() != "close"
    return await reader.read(MAX_BODY), False


class Client:
    """One app: one keep-alive connection, a request every ``interval`` seconds."""

    def __init__(self, targets: Sequence[str], index: int, key: str, path: str,
                 failover: bool, rng: random.Random | None = None,
                 per_connection: int = 0) -> None:
        self.targets = list(targets)
        self.target = index % len(self.targets)
        self.key = key
        self.path = path
        self.failover = failover
        self.rng = rng or random.Random(index)
        self.redirects = 0  # refused connects retried on another target (failover)
        self.per_connection = per_connection  # requests before a new connection; 0: no limit
        self.on_connection = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @property
    def url(self) -> str:
        return self.targets[self.target]

    async def close(self) -> None:
        if self.failover and self.writer is not None:
            # a lost connection: the next one goes where a load balancer would send it
            self.target = self.rng.randrange(len(self.targets))
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 1)
        self.reader = self.writer = None

    async def _connect(self) -> None:
        """Open a connection; with ``failover``, a refused connect (the request never left)
        is retried on the other targets, as a load balancer does."""
        attempts = len(self.targets) if self.failover else 1
        for attempt in range(attempts):
            parts = urlsplit(self.url)
            try:
                self.reader, self.writer = await asyncio.open_connection(
                    parts.hostname, parts.port, limit=1 << 20)
                self.on_connection = 0
                return
            except ConnectionRefusedError:
                if attempt + 1 == attempts:
                    raise Answer("conn refused") from None
                self.redirects += 1
                self.target = (self.target + 1) % len(self.targets)
            except OSError as exc:
                raise Answer(f"conn error {type(exc).__name__}") from None

    async def once(self) -> tuple[int, bytes]:
        if self.writer is None:
            await self._connect()
        assert self.reader is not None and self.writer is not None
        host = urlsplit(self.url).netloc
        request = (f"GET {self.path} HTTP/1.1\r\nHost: {host}\r\n"
                   f"Authorization: Bearer {self.key}\r\nAccept: application/json\r\n\r\n")
        try:
            self.writer.write(request.encode("latin-1"))
            await self.writer.drain()
            head = await self.reader.readuntil(b"\r\n\r\n")
            status, headers = parse_head(head[:-4])
            body, reusable = await _read_body(self.reader, headers)
        except asyncio.IncompleteReadError:
            await self.close()
            raise Answer("conn closed") from None
        except (ConnectionResetError, BrokenPipeError):
            await self.close()
            raise Answer("conn reset") from None
        except (OSError, ValueError, asyncio.LimitOverrunError) as exc:
            await self.close()
            raise Answer(f"conn error {type(exc).__name__}") from None
        self.on_connection += 1
        if not reusable or 0 < self.per_connection <= self.on_connection:
            await self.close()
        return status, body


async def _client_loop(client: Client, tally: Tally, stop: asyncio.Event, interval: float,
                       deadline: float, max_requests: int, rng: random.Random) -> None:
    loop = asyncio.get_running_loop()
    next_at = loop.time() + rng.uniform(0, interval)
    for _ in range(max_requests):
        wait = next_at - loop.time()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
        if stop.is_set() or loop.time() >= deadline:
            break
        next_at = max(next_at + interval, loop.time())
        started = loop.time()
        target = client.url
        try:
            status, body = await asyncio.wait_for(client.once(), REQUEST_TIMEOUT)
            tally.record(outcome_kind(status, body), (loop.time() - started) * 1000, target)
        except Answer as exc:
            tally.record(exc.kind, None, target)
        except TimeoutError:
            await client.close()
            tally.record("timeout", None, target)
    await client.close()


async def run_load(targets: Sequence[str], keys: Sequence[str], clients: int, interval: float,
                   duration: float, max_requests: int, path: str = API_PATH,
                   failover: bool = False, seed: int = 15, per_connection: int = 0) -> dict:
    """``clients`` clients spread round-robin over ``targets`` and ``keys``; ends after
    ``duration`` s, ``max_requests`` requests per client, or SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    tally = Tally()
    deadline = loop.time() + duration
    rng = random.Random(seed)
    all_clients = [Client(targets, i, keys[i % len(keys)], path, failover,
                          random.Random(seed * 100_003 + i), per_connection)
                   for i in range(clients)]
    tasks = [asyncio.create_task(_client_loop(c, tally, stop, interval, deadline,
                                              max_requests, rng)) for c in all_clients]
    await asyncio.wait(tasks, timeout=duration + REQUEST_TIMEOUT + 10)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    tally.redirects = sum(c.redirects for c in all_clients)
    return summarize(tally, time.time())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load",
                                     description="steady keep-alive load (drain, chaos)")
    parser.add_argument("--target", action="append", required=True, metavar="URL")
    parser.add_argument("--key", action="append", required=True, metavar="CLIENT_KEY")
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                        help="seconds between one client's requests")
    parser.add_argument("--duration", type=float, required=True, metavar="S")
    parser.add_argument("--max-requests", type=int, default=100_000,
                        help="per client")
    parser.add_argument("--failover", action="store_true",
                        help="on a refused connection, move to the next target")
    parser.add_argument("--requests-per-connection", type=int, default=0, metavar="N",
                        help="then a new connection (with --failover: to a random target); "
                             "0: keep it")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 5000 or not 0.01 <= args.interval <= 60 \
            or not 1 <= args.duration <= 7200:
        parser.error("--clients 1..5000, --interval 0.01..60, --duration 1..7200")
    result = asyncio.run(run_load(args.target, args.key, args.clients, args.interval,
                                  args.duration, args.max_requests, failover=args.failover,
                                  per_connection=args.requests_per_connection))
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(args.out)
    print(f"load: {result['requests']} requests, {result['outcomes']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
