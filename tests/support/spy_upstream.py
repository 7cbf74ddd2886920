"""A spying upstream for tests: a real TCP relay between the proxy and the emulator that reads
every request head the proxy sends and records what must never leave the proxy.

``SpyUpstream(target_url)`` listens on 127.0.0.1 (``url``), relays each connection to the
target byte for byte (bodies by Content-Length or chunked; answers untouched) and appends to
``violations`` every request whose target is not origin-form, whose path holds a dot-segment
or an encoded ``.``/``/``/``\\``/``%``, whose path (as a lenient front end reads it) is an
OAuth route carrying a Bearer, or that names the emulator's admin routes. ``heads`` keeps the
request lines seen (bounded).
"""

from __future__ import annotations

import re
import socket
import threading
from urllib.parse import unquote

_ENCODED = re.compile(r"%(?:2[eEfF5]|5[cC])")
_MAX_HEAD = 256 * 1024
_MAX_HEADS = 10_000


def _violation(target: str, headers: dict[str, str]) -> str | None:
    if not target.startswith("/"):
        return "not origin-form"
    path = target.partition("?")[0]
    if _ENCODED.search(path):
        return "encoded separator in the path"
    lenient = re.sub(r";[^/]*", "", unquote(re.sub("/{2,}", "/", path)))
    if any(segment in (".", "..") for segment in lenient.split("/")):
        return "dot-segment"
    route = lenient.lower().rstrip("/")
    bearer = headers.get("authorization", "").lower().startswith("bearer")
    if (route == "/restapi/oauth" or route.startswith("/restapi/oauth/")) and bearer:
        return "OAuth route with a Bearer"
    if route == "/_emulator" or route.startswith("/_emulator/"):
        return "emulator admin route"
    return None


class SpyUpstream:
    def __init__(self, target_url: str) -> None:
        host, port = target_url.removeprefix("http://").rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.violations: list[str] = []
        self.heads: list[str] = []
        self.connections = 0  # accepted so far
        self._lock = threading.Lock()
        self._closed = False
        self._open: set[socket.socket] = set()  # live connections, closed by stop()
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            live, self._open = list(self._open), set()
        for sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._open.add(client)
                self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._target, timeout=60)
        except OSError:
            client.close()
            return
        with self._lock:
            self._open.add(upstream)
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        reader = _Reader(client)
        try:
            while True:
                head = reader.head()
                if head is None:
                    break
                self._inspect(head)
                upstream.sendall(head)
                self._relay_body(head, reader, upstream)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._open.difference_update((client, upstream))
            client.close()

    def _inspect(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        target = parts[1] if len(parts) >= 2 else ""
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        problem = _violation(target, headers)
        with self._lock:
            if len(self.heads) < _MAX_HEADS:
                self.heads.append(lines[0])
            if problem is not None:
                self.violations.append(f"{problem}: {lines[0]!r}")

    @staticmethod
    def _relay_body(head: bytes, reader: _Reader, upstream: socket.socket) -> None:
        text = head.decode("latin-1").lower()
        codings = re.findall(r"\r\ntransfer-encoding:([^\r]*)", text)
        if any("chunked" in coding for coding in codings):
            while True:
                size_line = reader.line()
                upstream.sendall(size_line)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (trailer := reader.line()) not in (b"\r\n", b""):
                        upstream.sendall(trailer)
                    upstream.sendall(b"\r\n")
                    return
                _copy(reader, upstream, size + 2)  # the chunk and its CRLF, streamed
        match = re.search(r"\r\ncontent-length:\s*(\d+)", text)
        if match:
            _copy(reader, upstream, int(match.group(1)))


def _copy(reader: _Reader, upstream: socket.socket, size: int) -> None:
    """Relay ``size`` bytes, at most 64 KiB held at a time."""
    while size:
        chunk = reader.some(min(size, 1 << 16))
        upstream.sendall(chunk)
        size -= len(chunk)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""

    def _fill(self) -> None:
        data = self._sock.recv(1 << 16)
        if not data:
            raise OSError("closed")
        self._buf += data

    def head(self) -> bytes | None:
        while b"\r\n\r\n" not in self._buf:
            if len(self._buf) > _MAX_HEAD:
                raise OSError("head too large")
            try:
                self._fill()
            except OSError:
                return None
        head, _, self._buf = self._buf.partition(b"\r\n\r\n")
        return head + b"\r\n\r\n"

    def line(self) -> bytes:
        while b"\r\n" not in self._buf:
            if len(self._buf) > _MAX_HEAD:
                raise OSError("chunk line too long")
            self._fill()
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line + b"\r\n"

    def some(self, most: int) -> bytes:
        if not self._buf:
            self._fill()
        data, self._buf = self._buf[:most], self._buf[most:]
        return data


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        source.close()
