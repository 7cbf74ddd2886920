"""A real ``redis-server`` (Debian package) on a free loopback port, for tests.

``make test`` installs the package when it is missing; started here with its own directory,
append-only file (fsync always: a test may restart it and expect the data) and, optionally, a
password and TLS with a throwaway CA (:mod:`tests.support.certs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.support.certs import make_tls_files
from tests.support.processes import stop_process

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_SENTINEL = shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


@dataclass
class RedisServer:
    port: int
    directory: Path
    password: str | None = None
    tls_ca: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()  # e.g. --replicaof, --cluster-enabled

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls_ca else "redis"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        extra = {"ssl_ca_certs": str(self.tls_ca)} if self.tls_ca else {}
        return redis.Redis.from_url(self.url, socket_timeout=5, **extra)

    def start(self) -> None:
        args = [REDIS_SERVER, "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                "--daemonize", "no", "--logfile", str(self.directory / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls_ca:
            d = self.directory
            args += ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", str(d / "server.pem"),
                     "--tls-key-file", str(d / "server.key"),
                     "--tls-ca-cert-file", str(self.tls_ca), "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        args += list(self.extra_args)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}: "
                                   f"{(self.directory / 'redis.log').read_text()[-2000:]}")
            try:
                if self.client().ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            stop_process(self.proc, 10)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections hang, as with a dead host."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def raw_dump(self) -> bytes:
        """Every key and value as stored, plus the append-only files on disk."""
        client = self.client()
        parts: list[bytes] = []
        for key in client.scan_iter(count=1000):
            parts.append(key)
            kind = client.type(key)
            if kind == b"hash":
                for field, value in client.hgetall(key).items():
                    parts += [field, value]
            elif kind == b"string":
                parts.append(client.get(key) or b"")
        for path in self.directory.rglob("*.aof*"):
            if path.is_file():
                parts.append(path.read_bytes())
        return b"\n".join(parts)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(directory: Path, *, password: str | None = None,
                tls: bool = False, extra_args: tuple[str, ...] = ()) -> RedisServer:
    if not Path(REDIS_SERVER).exists():
        raise RuntimeError("redis-server is not installed: `make test` installs it "
                           "(Debian package redis-server)")
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_tls_files(directory) if tls else None
    for _ in range(5):  # the free port may be taken between probe and bind
        server = RedisServer(free_port(), directory, password, ca, extra_args=extra_args)
        try:
            server.start()
            return server
        except RuntimeError:
            server.stop()
    raise RuntimeError("could not start redis-server on a free loopback port")


class ReplyDelayer:
    """A TCP relay on loopback in front of a redis-server (asyncio, in the test's loop) that
    can hold back the server's *reply* to one command: ``arm(b"EVALSHA", 1.5)`` delays the
    bytes answering the next request containing ``EVALSHA`` by 1.5 s; the command itself
    reaches the server at once (so it runs; only its answer is late, as on a slow network)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._armed: tuple[bytes, float] | None = None
        self.delayed = 0  # replies held back so far
        self.connections = 0

    def arm(self, marker: bytes, delay: float) -> None:
        self._armed = (marker, delay)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, client_r: asyncio.StreamReader,
                     client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        hold: list[float] = []  # delay for the next reply chunk, set by the request side

        async def upstream() -> None:
            for _ in range(1_000_000):  # bounded
                data = await client_r.read(65536)
                if not data:
                    break
                if self._armed is not None and self._armed[0] in data:
                    hold.append(self._armed[1])
                    self._armed = None
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def downstream() -> None:
            for _ in range(1_000_000):  # bounded
                data = await server_r.read(65536)
                if not data:
                    break
                if hold:
                    self.delayed += 1
                    await asyncio.sleep(hold.pop())
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:  # a relay dies with either side
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for writer in (client_w, server_w):
                with contextlib.suppress(Exception):
                    writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)


# -- Sentinel ---------------------------------------------------------------------------------

SERVICE = "tpx-primary"


@dataclass
class SentinelGroup:
    """A primary, its replica and three sentinels on loopback, quick to fail over (the primary
    is down after 1 s without answer; a quorum of 2)."""

    primary: RedisServer
    replica: RedisServer
    sentinel_ports: list[int]
    sentinels: list[subprocess.Popen[bytes]]
    directory: Path
    service: str = SERVICE
    sentinel_password: str | None = None  # the sentinels' own requirepass

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.sentinel_ports]

    def sentinel_client(self, index: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.sentinel_ports[index], socket_timeout=2,
                           password=self.sentinel_password)

    def master_address(self) -> tuple[str, int] | None:
        """What the sentinels answer now (the first that answers)."""
        for index in range(len(self.sentinel_ports)):
            try:
                host, port = self.sentinel_client(index).sentinel_get_master_addr_by_name(
                    self.service)
                return (host.decode() if isinstance(host, bytes) else host), int(port)
            except (redis.RedisError, TypeError, ValueError):
                continue
        return None

    def stop(self) -> None:
        for proc in self.sentinels:
            stop_process(proc, 10)
        self.replica.stop()
        self.primary.stop()


def start_sentinel_group(directory: Path, *, down_after_ms: int = 1000,
                         failover_timeout_ms: int = 3000, password: str | None = None,
                         sentinel_password: str | None = None) -> SentinelGroup:
    """``password``: the primary's and replica's requirepass (and masterauth);
    ``sentinel_password``: the sentinels' own."""
    if not Path(REDIS_SENTINEL).exists():
        raise RuntimeError("redis-sentinel is not installed: `make test` installs it "
                           "(Debian package redis-sentinel)")
    auth = ("--masterauth", password) if password else ()
    primary = start_redis(directory / "primary", password=password, extra_args=auth)
    replica = start_redis(directory / "replica", password=password,
                          extra_args=("--replicaof", "127.0.0.1", str(primary.port), *auth))
    group = SentinelGroup(primary, replica, [], [], directory,
                          sentinel_password=sentinel_password)
    secrets = ""
    if password:
        secrets += f"sentinel auth-pass {SERVICE} {password}\n"
    if sentinel_password:
        secrets += f"requirepass {sentinel_password}\nsentinel sentinel-pass {sentinel_password}\n"
    try:
        for index in range(3):
            port = free_port()
            home = directory / f"sentinel-{index}"
            home.mkdir(parents=True, exist_ok=True)
            conf = home / "sentinel.conf"  # sentinel rewrites its own config: writable
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {home}\nlogfile {home / 'sentinel.log'}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n" + secrets)
            group.sentinel_ports.append(port)
            group.sentinels.append(subprocess.Popen(
                [REDIS_SENTINEL, str(conf)], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        # ready when the replica is in sync and every sentinel knows the replica and the
        # two other sentinels (a failover needs the quorum to have met)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if _sentinels_ready(group):
                return group
            time.sleep(0.2)
        raise RuntimeError("sentinels did not discover each other and the replica in 30 s")
    except BaseException:
        group.stop()
        raise


def _sentinels_ready(group: SentinelGroup) -> bool:
    try:
        info = group.replica.client().info("replication")
        if info.get("master_link_status") != "up":
            return False
        for index in range(len(group.sentinel_ports)):
            client = group.sentinel_client(index)
            state = client.sentinel_master(group.service)
            if int(state.get("num-other-sentinels", 0)) < 2 \
                    or int(state.get("num-slaves", 0)) < 1:
                return False
    except (redis.RedisError, OSError, ValueError):
        return False
    return True


# -- Cluster ----------------------------------------------------------------------------------

@dataclass
class ClusterGroup:
    """Three primaries, no replicas, slots spread by ``redis-cli --cluster create``."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(directory: Path, primaries: int = 3) -> ClusterGroup:
    group = ClusterGroup([])
    try:
        for index in range(primaries):
            home = directory / f"node-{index}"
            group.nodes.append(start_redis(home, extra_args=(
                "--cluster-enabled", "yes", "--cluster-config-file", str(home / "nodes.conf"),
                "--cluster-node-timeout", "2000")))
        subprocess.run([REDIS_CLI, "--cluster", "create",
                        *(f"127.0.0.1:{n.port}" for n in group.nodes),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                states = [n.client().cluster("info") for n in group.nodes]
            except redis.RedisError:
                states = []
            if states and all(s.get("cluster_state") == "ok" for s in states):
                return group
            time.sleep(0.2)
        raise RuntimeError("the cluster did not reach cluster_state:ok in 30 s")
    except BaseException:
        group.stop()
        raise
