"""Test helper: run the bundled RingCentral platform emulator as a subprocess and drive it.

``start_emulator(*args)`` starts ``python -m rc_emulator --listen 127.0.0.1:0 *args``
and returns an :class:`Emulator` whose methods call the ``/_emulator`` admin endpoints.
``recording_sha256`` computes the digest of a recording's content without the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

import httpx

from tests.support.processes import stop_process

_LISTEN_RE = re.compile(r"^emulator listening on (http://\S+)\s*$")
_BLOCK_SIZE = 64 * 1024


@dataclass
class Emulator:
    url: str  # "http://127.0.0.1:PORT"
    proc: subprocess.Popen
    stderr_file: IO[bytes] | None = field(default=None, repr=False)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with httpx.Client(base_url=self.url, timeout=10.0, trust_env=False) as client:
            response = client.request(method, path, **kwargs)
        response.raise_for_status()
        return response

    def counters(self) -> dict:
        return self._request("GET", "/_emulator/counters").json()

    def reset_counters(self) -> None:
        self._request("POST", "/_emulator/reset-counters")

    def revoke_all(self) -> int:
        return int(self._request("POST", "/_emulator/revoke-all").json()["revoked"])

    def expire_now(self, refresh: bool = False) -> None:
        self._request("POST", "/_emulator/expire-now", params={"refresh": "1" if refresh else "0"})

    def outside_login(
        self, count: int = 1, client_id: str = "demo-client-id", owner_id: str = "100001"
    ) -> None:
        self._request(
            "POST",
            "/_emulator/outside-login",
            json={"client_id": client_id, "owner_id": owner_id, "count": count},
        )

    def outside_login_tokens(
        self, count: int = 1, client_id: str = "demo-client-id", owner_id: str = "100001"
    ) -> list[dict]:
        """Like :meth:`outside_login`, returning the token bodies created."""
        body = {"client_id": client_id, "owner_id": owner_id, "count": count}
        return self._request("POST", "/_emulator/outside-login", json=body).json()["tokens"]

    def user2_refresh_token(self) -> str:
        """A refresh token of demo user 100002 (password grant), e.g. to seed an account of
        grant ``refresh_token``."""
        response = self._request(
            "POST", "/restapi/oauth/token", auth=("demo-client-id", "demo-client-secret"),
            data={"grant_type": "password", "username": "+15550100002", "extension": "102",
                  "password": "demo-password-2"})
        return response.json()["refresh_token"]

    def set_policy(self, **policy: Any) -> dict:
        return self._request("POST", "/_emulator/policy", json=policy).json()

    def sessions(self) -> list[dict]:
        return self._request("GET", "/_emulator/sessions").json()

    def rate_penalty(self, group: str, **fields: Any) -> dict:
        """Inject a rate-limit penalty on ``group`` (``POST /_emulator/rate-penalty``): fields
        ``retry_after`` (None sends null: no Retry-After header), ``seconds``, ``code``,
        ``client_id``, ``owner_id``. Returns the penalty as the emulator describes it."""
        body = {"group": group, **fields}
        return self._request("POST", "/_emulator/rate-penalty", json=body).json()

    def reset_rates(self) -> None:
        """Forget every rate window and penalty (token endpoint, API groups, injected)."""
        self._request("POST", "/_emulator/reset-rates")

    # -- WebSocket notifications faults (POST|GET /_emulator/ws/*)
    def ws_drop(self, how: str = "close") -> int:
        """Close every WS connection: ``close`` (close frame 1001) or ``abort`` (TCP abort)."""
        return int(self._request("POST", "/_emulator/ws/drop", json={"how": how}).json()["dropped"])

    def ws_emit(self, event: str, body: dict | None = None, user: str | None = None) -> int:
        """Emit an event to the matching WS subscriptions; returns how many notifications."""
        payload: dict[str, Any] = {"event": event, "body": body or {}}
        if user is not None:
            payload["user"] = user
        answer = self._request("POST", "/_emulator/ws/emit", json=payload).json()
        return int(answer["notifications"])

    def ws_set_policy(self, **policy: Any) -> dict:
        """Change ``ws_*`` options at run time (``POST /_emulator/ws/policy``)."""
        return self._request("POST", "/_emulator/ws/policy", json=policy).json()

    def ws_sessions(self) -> list[dict]:
        return self._request("GET", "/_emulator/ws/sessions").json()

    def ws_expire_tokens(self) -> int:
        return int(self._request("POST", "/_emulator/ws/expire-tokens").json()["expired"])

    def ws_refuse_recovery(self, enabled: bool = True) -> None:
        self._request("POST", "/_emulator/ws/refuse-recovery", json={"enabled": enabled})

    def stderr(self) -> str:
        """Everything the emulator wrote to stderr so far."""
        return _read_file(self.stderr_file)

    def stop(self) -> None:
        """SIGTERM, wait up to 5 s, then kill."""
        stop_process(self.proc, 5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.stderr_file is not None and not self.stderr_file.closed:
            self.stderr_file.close()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_file(f: IO[bytes] | None) -> str:
    if f is None or f.closed:
        return ""
    f.flush()
    with open(f.name, "rb") as again:
        return again.read().decode("utf-8", "replace")


def start_emulator(*args: str, timeout: float = 15.0, compress: str = "off") -> Emulator:
    """Start `python -m rc_emulator --listen 127.0.0.1:0 *args` (sys.executable), wait for
    the 'emulator listening on URL' line (bounded by timeout; on failure raise with the process's
    stderr), return it. ``compress`` other than "off" adds ``--compress COMPRESS`` unless the
    arguments choose a compression themselves."""
    if compress != "off" and "--compress" not in args:
        args = (*args, "--compress", compress)
    # stderr goes to an (auto-deleted) temp file, never a pipe nobody drains.
    stderr_file = tempfile.NamedTemporaryFile(prefix="emulator-", suffix=".log")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rc_emulator", "--listen", "127.0.0.1:0", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr_file,
        env=env,
    )
    assert proc.stdout is not None
    lines: queue.Queue[bytes] = queue.Queue()
    stdout = proc.stdout

    def reader() -> None:
        for _ in range(100):  # bounded: the emulator prints one line
            line = stdout.readline()
            lines.put(line)
            if not line or _LISTEN_RE.match(line.decode("utf-8", "replace")):
                return

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(0.01, remaining))
        except queue.Empty:
            line = None
        if line:
            text = line.decode("utf-8", "replace")
            match = _LISTEN_RE.match(text)
            if match:
                return Emulator(url=match.group(1), proc=proc, stderr_file=stderr_file)
            seen.append(text.rstrip())
            continue
        emulator = Emulator(url="", proc=proc, stderr_file=stderr_file)
        reason = "exited" if line == b"" else f"did not start within {timeout} s"
        if line == b"":
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        stderr = emulator.stderr()
        emulator.stop()
        raise RuntimeError(
            f"emulator {reason} (rc={proc.returncode}); stdout={seen!r}; stderr:\n{stderr}"
        )


def recording_sha256(rec_id: str, size: int) -> str:
    """Hex sha256 of recording ``rec_id``'s content of ``size`` bytes, computed locally.

    Independent of the emulator's code: byte i is block[i % 65536], where the block is the
    concatenation of sha256(sha256(rec_id) + n as 4-byte big-endian) for n = 0..2047.
    """
    seed = hashlib.sha256(rec_id.encode("utf-8")).digest()
    block = b"".join(
        hashlib.sha256(seed + n.to_bytes(4, "big")).digest() for n in range(_BLOCK_SIZE // 32)
    )
    digest = hashlib.sha256()
    full, rest = divmod(size, _BLOCK_SIZE)
    for _ in range(full):
        digest.update(block)
    digest.update(block[:rest])
    return digest.hexdigest()
