"""The request target, made safe before any routing decision (the guard's first check).

Every decision the proxy takes on a path (login interception, the OAuth guard, the ``/_media``
route, the emulator's admin routes) compares :attr:`Target.route`, computed here once:

* **origin-form only.** The proxy is the origin for its apps, so it accepts the absolute-form
  (RFC 9112 §3.2.2: a server MUST accept it) only when it names the proxy itself, and then sends
  origin-form upstream; a target naming any other authority is refused. Authority-form and
  asterisk-form are refused too (no CONNECT, no ``OPTIONS *``).
* **one spelling per path.** A platform front end may normalise paths (RFC 3986 §6), so
  ``/restapi/v1.0/../oauth/revoke`` could mean ``/restapi/oauth/revoke``. Dot-segments and
  percent-encoded ``.``, ``/``, ``\\``, ``%`` or control characters are refused (400) instead
  of guessed at; runs of ``/`` are collapsed (legacy apps join a base URL ending in ``/`` with a
  path starting with one) and the collapsed path is what goes upstream.
* **routes ignore case and a trailing slash**: ``/RESTAPI/oauth/revoke/`` is the revoke route.

Nothing here reads the body or the store: a refusal costs a string scan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

# Percent-encodings refused in a path: ".", "/", "\", "%" (double encoding), controls, and the
# lead bytes of overlong UTF-8 forms of them (%C0%AE is "." to a lax decoder).
_ENCODED_REFUSED = re.compile(r"%(?:2[eEfF5]|5[cC]|[01][0-9a-fA-F]|7[fF]|[cC][01])")
_BAD_PERCENT = re.compile(r"%(?![0-9a-fA-F]{2})")
# Characters that never belong in a request target's path (RFC 3986 §3.3: pchar; anything
# else must be percent-encoded).
_RAW_REFUSED = re.compile(r"[^\x21-\x7e]|[\\#]")
_PATH_PARAMS = re.compile(r";[^/]*")
_SLASHES = re.compile(r"/{2,}")


class TargetRefused(ValueError):
    """The request target cannot be forwarded; ``str()`` says why (shown to the app)."""


@dataclass(frozen=True, slots=True)
class Target:
    path: str  # what goes upstream: the origin-form path and query (collapsed slashes)
    route: str  # what routing compares: the path without query, lowercase, no trailing "/"


def parse_target(path: str) -> Target:
    """The normalised target of an origin-form ``path`` (with its query); raises
    :class:`TargetRefused` for anything ambiguous."""
    if not path.startswith("/"):
        raise TargetRefused("the request target must be an absolute path starting with '/'")
    raw_path, sep, query = path.partition("?")
    if _RAW_REFUSED.search(raw_path):
        raise TargetRefused("the path holds a space, a control or non-ASCII character, '\\' "
                            "or '#': percent-encode it")
    if _BAD_PERCENT.search(raw_path):
        raise TargetRefused("the path holds a '%' that is not a percent-encoding")
    if _ENCODED_REFUSED.search(raw_path):
        raise TargetRefused("the path holds a percent-encoded '.', '/', '\\', '%' or control "
                            "character: send it unencoded, or not at all")
    collapsed = _SLASHES.sub("/", raw_path)
    # Decisions see the path as a lenient front end would: unreserved characters decoded
    # (RFC 3986 §6.2.2.2: %6F is "o"), ";params" dropped (servlet containers ignore them, so
    # "..;x" is ".." there).
    lenient = _PATH_PARAMS.sub("", unquote(collapsed))
    if any(segment in (".", "..") for segment in lenient.split("/")):
        raise TargetRefused("the path holds a '.' or '..' segment: send the path it stands for")
    if "#" in query:
        raise TargetRefused("the request target holds a fragment ('#')")
    route = lenient.lower().rstrip("/") or "/"
    return Target(collapsed + sep + query if collapsed != raw_path else path, route)


def is_own_authority(authority: str, sockname: tuple[str, int] | None,
                     public_netloc: str | None) -> bool:
    """True when an absolute-form ``authority`` names the proxy itself: its ``public_url``, or
    the address the app connected to (``localhost`` for a loopback one). Case-insensitive;
    default ports optional."""
    names = set()
    if public_netloc:
        names.add(_canonical(public_netloc))
    if sockname is not None:
        host, port = sockname[0], sockname[1]
        names.add(_canonical(f"[{host}]:{port}" if ":" in host else f"{host}:{port}"))
        if host in ("127.0.0.1", "::1"):
            names.add(_canonical(f"localhost:{port}"))
    return _canonical(authority) in names


def _canonical(authority: str) -> str:
    authority = authority.lower()
    for default in (":80", ":443"):
        if authority.endswith(default):
            return authority[: -len(default)]
    return authority
