"""``tokenproxy check-config``, the local half: the result line every check prints, and the
checks that need no platform (the listen ports, the store).

Role: :mod:`.check` runs these first, then asks the platform; both print :class:`Result` lines.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..config import Config, HostPort
from ..ops.logs import SECRETS
from ..store import StoreError, StoreKeyMismatch, TokenStore
from ..store.factory import StoreConfigError, open_store

OK, FAIL, WARN, SKIP = "OK", "FAIL", "WARN", "SKIP"
LOCAL_TIMEOUT = 3.0  # s to identify what holds a local port


@dataclass(frozen=True)
class Result:
    status: str  # OK | FAIL | WARN | SKIP
    name: str
    detail: str
    hint: str = ""

    def line(self) -> str:
        text = f"{self.status:<4} {self.name}: {self.detail}"
        if self.hint:
            text += f" — hint: {self.hint}"
        return SECRETS.redact(text)



def check_port(name: str, where: HostPort, identify: str, token: str | None = None) -> Result:
    """Can the proxy bind ``where``? ``identify``: "status" (metrics) or "proxy" (listen);
    ``token``: the admin token ``/status`` requires, if any."""
    if where.port == 0:
        return Result(OK, name, f"{where}: port 0, the OS picks a free port at start")
    try:
        infos = socket.getaddrinfo(where.host, where.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return Result(FAIL, name, f"cannot resolve {where.host!r}: {exc.strerror}",
                      f"use an IP address of this host in [proxy] {name}")
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                who = _identify(where, identify, token)
                if who:
                    return Result(OK, name, f"{where} is in use by {who}")
                return Result(FAIL, name, f"{where} is in use by another program",
                              f"stop it, or choose another port for [proxy] {name}")
            if exc.errno == errno.EADDRNOTAVAIL:
                return Result(FAIL, name, f"{where.host} is not an address of this host",
                              f"use one of this host's addresses in [proxy] {name}")
            if exc.errno == errno.EACCES:
                return Result(FAIL, name, f"binding {where} is not permitted",
                              "ports below 1024 need privileges: use a higher port")
            return Result(FAIL, name, f"cannot bind {where}: {exc.strerror or exc}")
    return Result(OK, name, f"{where} is free")


def _identify(where: HostPort, kind: str, token: str | None = None) -> str:
    """A running tokenproxy on ``where``, in words, or "" if it is something else."""
    base = f"http://{where}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(timeout=LOCAL_TIMEOUT, trust_env=False, headers=headers) as client:
            if kind == "status":
                body = client.get(base + "/status").json()
                names = [a["account"] for a in body["accounts"]]
                return f"a running tokenproxy (accounts: {', '.join(names)})"
            response = client.get(base + "/")
            if "x-tokenproxy-error" in response.headers:
                return "a running tokenproxy"
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        pass
    return ""


def _sqlite_missing(config: Config) -> Result | None:
    """A SQLite file that does not exist yet is not created by a check."""
    if config.store.backend != "sqlite":
        return None
    path = Path(config.store.path)
    if path.exists():
        return None
    parent = path.parent.absolute()
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return Result(FAIL, "store", f"sqlite {path} does not exist and {parent} is not "
                                     "writable by this user",
                      "create the directory for [store] path, owned by the proxy's user")
    return Result(OK, "store", f"sqlite {path} does not exist yet: created (mode 0600) on the "
                               f"first start; the key in {config.store.key_env} is well-formed")


async def check_store(config: Config) -> tuple[Result, TokenStore | None]:
    """The store check; returns the opened store for the account checks (or None)."""
    sc = config.store
    try:
        store = open_store(sc)
    except StoreConfigError as exc:
        return Result(FAIL, "store", str(exc),
                      "`tokenproxy run` refuses to start without a usable key"), None
    missing = _sqlite_missing(config)
    if missing is not None:
        return missing, None
    redis = f"redis (prefix {sc.prefix})"
    if sc.sentinels:
        redis = (f"redis sentinel service {sc.sentinel_service!r} via "
                 f"{','.join(str(s) for s in sc.sentinels)} (prefix {sc.prefix}, "
                 f"min_replicas_ack {sc.min_replicas_ack})")
    elif sc.cluster:
        redis = f"redis cluster (prefix {sc.prefix})"
    where = {"sqlite": f"sqlite {sc.path}", "memory": "memory (nothing persists: tests only)",
             "redis": redis}.get(sc.backend, sc.backend)
    try:
        await store.open()
    except StoreKeyMismatch as exc:
        await close_store(store)
        return Result(FAIL, "store", f"{where}: {exc}",
                      f"{sc.key_env} must hold the key the store was written with (during a "
                      "rotation \"new,old\"); if that key is lost, move the store away: jwt/"
                      "password accounts log in again, the others need `tokenproxy "
                      "authorize`"), None
    except StoreError as exc:
        await close_store(store)
        return Result(FAIL, "store", f"{where}: {exc}",
                      "the store is unreachable: check [store] path/url (or sentinels) and "
                      "permissions"), None
    keyed = (f"opens with the key in {sc.key_env}" if store.codec.cipher.encrypts
             else "opens UNENCRYPTED ([store] allow_plaintext)")
    return Result(OK, "store", f"{where} {keyed}"), store


async def close_store(store: TokenStore) -> None:
    with contextlib.suppress(Exception):
        await store.close()
