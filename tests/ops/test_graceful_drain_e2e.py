"""A graceful stop under load (issue 19, item 2). On SIGTERM ``/readyz`` turns 503 at once; new
connections are served for ``drain_grace`` (the load balancer's time to notice); requests in
flight finish — here each takes 0.8 s at the platform — and the process exits 0 within
``drain_grace`` + the longest request. The apps act as a load balancer would: they keep opening
connections until half the grace has passed, then stop. Nothing they sent fails."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import httpx

from tests.support.proxy import APP_KEY, start_proxy
from tests.support.scripted_upstream import Answer, ScriptedUpstream, Seen

EXT = "/restapi/v1.0/account/~/extension/~"
APPS = 20
GRACE = 2.0
SLOW = 0.8


def slow(_: Seen) -> Answer:
    return Answer(delay=SLOW)


def one_request(port: int) -> int:
    """A new connection, one request (the app's own connection per request); its status."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {EXT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {APP_KEY}\r\n"
                     "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else -1


def test_sigterm_under_load_drains_without_failing_a_request(tmp_path: Path) -> None:
    with ScriptedUpstream(slow) as upstream:
        proxy = start_proxy(tmp_path, upstream.url, drain_grace=GRACE, shutdown_timeout=10)
        port = int(proxy.url.rsplit(":", 1)[1])
        results: list[tuple[float, int]] = []  # (started, status)
        stop_starting = threading.Event()

        def app() -> None:
            for _ in range(200):  # bounded
                if stop_starting.is_set():
                    return
                started = time.monotonic()
                results.append((started, one_request(port)))

        threads = [threading.Thread(target=app) for _ in range(APPS)]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        signalled = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        ready = httpx.get(proxy.admin_url + "/readyz", timeout=5)
        time.sleep(GRACE / 2)
        stop_starting.set()  # the load balancer took this replica out
        code = proxy.proc.wait(GRACE + SLOW + 10)
        exited = time.monotonic() - signalled
        for thread in threads:
            thread.join(30)
    after = [status for started, status in results if started >= signalled]
    statuses = [status for _, status in results]
    print(f"figures drain: {len(statuses)} requests ({len(after)} started after SIGTERM), "
          f"statuses {sorted(set(statuses))}, /readyz {ready.status_code} right after SIGTERM, "
          f"exit {code} after {exited:.2f} s")
    assert ready.status_code == 503 and ready.json()["draining"] is True
    assert after and all(status == 200 for status in statuses), statuses
    assert code == 0
    assert exited <= GRACE + SLOW + 3.0
    log = proxy.logs()
    assert "draining" in log and "drained in" in log
