"""A real ``redis-server`` (Debian package) on a free loopback port, for tests.

``make test`` installs the package when it is missing; started here with its own directory,
append-only file (fsync always: a test may restart it and expect the data) and, optionally, a
password and TLS with a throwaway CA (:mod:`tests.support.certs`).
"""

from __future__ import annotations

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


@dataclass
class RedisServer:
    port: int
    directory: Path
    password: str | None = None
    tls_ca: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

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
                tls: bool = False) -> RedisServer:
    if not Path(REDIS_SERVER).exists():
        raise RuntimeError("redis-server is not installed: `make test` installs it "
                           "(Debian package redis-server)")
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_tls_files(directory) if tls else None
    for _ in range(5):  # the free port may be taken between probe and bind
        server = RedisServer(free_port(), directory, password, ca)
        try:
            server.start()
            return server
        except RuntimeError:
            server.stop()
    raise RuntimeError("could not start redis-server on a free loopback port")
