"""Who exists on the emulated platform: apps and users, the default seed and seed-file loading.

A seed file (TOML or JSON) has the shape::

    {"apps":  [{"client_id": str, "client_secret": str (confidential only),
                "public": bool (default false), "grants": [str, ...]}],
     "users": [{"owner_id": str, "username": str, "extension": str,
                "password": str, "jwt": str}]}

Grants: ``jwt`` (or its URN), ``password``, ``refresh_token``, ``authorization_code``.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JWT_GRANT_URN = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GRANTS = ("jwt", "password", "refresh_token", "authorization_code")


@dataclass(frozen=True)
class App:
    client_id: str
    client_secret: str | None
    public: bool
    grants: frozenset[str]


@dataclass(frozen=True)
class User:
    owner_id: str
    username: str
    extension: str
    password: str
    jwt: str


@dataclass(frozen=True)
class Seed:
    apps: tuple[App, ...]
    users: tuple[User, ...]


DEFAULT_SEED = Seed(
    apps=(
        App(
            "demo-client-id",
            "demo-client-secret",
            False,
            frozenset({"jwt", "password", "refresh_token", "authorization_code"}),
        ),
        App("demo-public-client", None, True, frozenset({"authorization_code", "refresh_token"})),
        App(
            "demo-nojwt-client",
            "demo-nojwt-secret",
            False,
            frozenset({"password", "refresh_token"}),
        ),
    ),
    users=(
        User("100001", "+15550100001", "101", "demo-password", "demo-jwt-credential"),
        User("100002", "+15550100002", "102", "demo-password-2", "demo-jwt-credential-2"),
    ),
)


class SeedError(ValueError):
    """A seed file that cannot be used; the message names the file and the key."""


def load_seed(path: str | Path) -> Seed:
    """Read and validate a seed file (``.toml`` → TOML, otherwise JSON)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SeedError(f"seed file {path}: cannot read: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".toml":
            raw: Any = tomllib.loads(data.decode("utf-8"))
        else:
            raw = json.loads(data)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise SeedError(f"seed file {path}: malformed: {exc}") from None
    try:
        return parse_seed(raw)
    except SeedError as exc:
        raise SeedError(f"seed file {path}: {exc}") from None


def _str(obj: dict[str, Any], key: str, where: str, *, optional: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and key in ("owner_id", "extension"):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise SeedError(f"{where}.{key}: must be a non-empty string")
    return value


def _check_keys(obj: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SeedError(f"{where}: must be a table/object")
    for key in obj:
        if key not in allowed:
            raise SeedError(f"{where}.{key}: unknown key")
    return obj


def parse_seed(raw: Any) -> Seed:
    """Validate a decoded seed document; raises SeedError naming the offending key."""
    top = _check_keys(raw, {"apps", "users"}, "seed")
    apps_raw, users_raw = top.get("apps"), top.get("users")
    if not isinstance(apps_raw, list) or not apps_raw:
        raise SeedError("apps: must be a non-empty list")
    apps: list[App] = []
    client_ids: set[str] = set()  # duplicate checks by set: seeds of 10,000 apps (bench)
    for i, item in enumerate(apps_raw):
        where = f"apps[{i}]"
        obj = _check_keys(item, {"client_id", "client_secret", "public", "grants"}, where)
        client_id = _str(obj, "client_id", where)
        public = obj.get("public", False)
        if not isinstance(public, bool):
            raise SeedError(f"{where}.public: must be a boolean")
        secret = _str(obj, "client_secret", where, optional=public)
        grants_raw = obj.get("grants")
        if not isinstance(grants_raw, list) or not grants_raw:
            raise SeedError(f"{where}.grants: must be a non-empty list")
        grants = set()
        for grant in grants_raw:
            name = "jwt" if grant == JWT_GRANT_URN else grant
            if name not in GRANTS:
                raise SeedError(f"{where}.grants: unknown grant {grant!r}")
            grants.add(name)
        if client_id in client_ids:
            raise SeedError(f"{where}.client_id: duplicate {client_id!r}")
        assert client_id is not None
        client_ids.add(client_id)
        apps.append(App(client_id, None if public else secret, public, frozenset(grants)))
    if not isinstance(users_raw, list) or not users_raw:
        raise SeedError("users: must be a non-empty list")
    users: list[User] = []
    seen: dict[str, set[str]] = {"owner_id": set(), "username": set(), "jwt": set()}
    for i, item in enumerate(users_raw):
        where = f"users[{i}]"
        keys = {"owner_id", "username", "extension", "password", "jwt"}
        obj = _check_keys(item, keys, where)
        values = {key: _str(obj, key, where) for key in sorted(keys)}
        for key, known in seen.items():
            if values[key] in known:
                raise SeedError(f"{where}.{key}: duplicate {values[key]!r}")
        for key, known in seen.items():
            known.add(values[key])  # type: ignore[arg-type]
        users.append(User(**values))  # type: ignore[arg-type]
    return Seed(tuple(apps), tuple(users))


GENERATED_MAX = 100_000


def generated(count: int, base: Seed = DEFAULT_SEED) -> Seed:
    """``base`` plus ``count`` generated users, each with an app of its own (JWT and refresh
    grants), as integrators run one app per customer: user ``i`` (1-based) is owner id
    ``300000 + i``, username ``+1555030xxxx``, extension ``i``, password ``gen-password-i``,
    JWT credential ``gen-jwt-i``; its app is ``gen-client-i`` / ``gen-secret-i``."""
    if not 0 <= count <= GENERATED_MAX:
        raise SeedError(f"generated users: must be 0..{GENERATED_MAX}, got {count}")
    grants = frozenset({"jwt", "refresh_token"})
    apps = tuple(App(f"gen-client-{i}", f"gen-secret-{i}", False, grants)
                 for i in range(1, count + 1))
    users = tuple(User(str(300000 + i), f"+1555{300000 + i:07d}", str(i), f"gen-password-{i}",
                       f"gen-jwt-{i}") for i in range(1, count + 1))
    taken = {a.client_id for a in base.apps}
    clash = next((a.client_id for a in apps if a.client_id in taken), None)
    if clash is None:
        known = {(u.owner_id, u.username, u.jwt) for u in base.users}
        owners, names, jwts = (set(column) for column in zip(*known, strict=True)) \
            if known else (set(), set(), set())
        clash = next((u.owner_id for u in users if u.owner_id in owners
                      or u.username in names or u.jwt in jwts), None)
    if clash is not None:
        raise SeedError(f"generated users: {clash!r} is in the seed already")
    return Seed(base.apps + apps, base.users + users)
