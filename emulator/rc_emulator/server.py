"""Command line entry point: parse options, bind, serve until SIGTERM/SIGINT.

Once listening, prints exactly one line to stdout: ``emulator listening on http://HOST:PORT``.
Bad input (option values, listen address, seed file, bind failure) exits 2 with one line on
stderr naming the option or file and the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import sys
from typing import NoReturn
from urllib.parse import urlsplit

from aiohttp import web

from .app import URLS, AccessLogger, build_app
from .policy import (
    API_RATE_MODES,
    AUTH_RATE_KEYS,
    CAP_POLICIES,
    COMPRESSIONS,
    EXPIRED_CODES,
    EXPIRED_ENVELOPES,
    GROUP_CASES,
    GROUP_SOURCES,
    WS_ON_REFRESH,
    WS_ON_REVOKE,
    WS_REPLAYS,
    WS_TOKEN_USES,
    Policy,
    PolicyError,
    WsPolicy,
)
from .seed import DEFAULT_SEED, SeedError, generated, load_seed
from .state import Platform

PROG = "emulator"
WS_FIELDS = tuple(f.name for f in dataclasses.fields(WsPolicy))  # --ws-* options
log = logging.getLogger("rc_emulator")


class UsageError(Exception):
    """Bad command-line input; exits 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="RingCentral platform emulator (test/demo server).")
    d = Policy()
    w = WsPolicy()
    p.add_argument(
        "--listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="address to bind; port 0 picks a free port (default %(default)s)",
    )
    p.add_argument(
        "--access-ttl",
        type=float,
        default=d.access_ttl,
        metavar="S",
        help="access token lifetime when the client asks none (default 3600)",
    )
    p.add_argument(
        "--refresh-ttl",
        type=float,
        default=d.refresh_ttl,
        metavar="S",
        help="refresh token lifetime (default 604800)",
    )
    p.add_argument(
        "--auth-rate",
        type=int,
        default=d.auth_rate,
        metavar="N",
        help="token calls per window per (user, client id) (see --auth-rate-key), "
        "0 = unlimited (default 5)",
    )
    p.add_argument(
        "--auth-window",
        type=float,
        default=d.auth_window,
        metavar="S",
        help="rate-limit window (default 60)",
    )
    p.add_argument(
        "--auth-penalty",
        type=float,
        default=d.auth_penalty,
        metavar="S",
        help="lock-out after exceeding the rate, restarted by each call (default 60)",
    )
    p.add_argument(
        "--auth-rate-key",
        choices=AUTH_RATE_KEYS,
        default=d.auth_rate_key,
        help="count token calls per (user, client id) as the platform does ('user': the user "
        "the grant names, or one 'unknown user' bucket), or per client id ('app') "
        "(default user)",
    )
    p.add_argument(
        "--api-rate",
        choices=API_RATE_MODES,
        default=d.api_rate,
        help="API rate limits per (user, app, group): 'report' counts and sends X-Rate-Limit-* "
        "headers but never refuses; 'enforce' answers 429 CMN-301 over the limit and during the "
        "penalty (default report)",
    )
    p.add_argument(
        "--api-limits",
        default=",".join(f"{g}={n}" for g, n in d.api_limits.items()),
        metavar="GROUP=N,...",
        help="requests per window of each group, names case-insensitive; a group not named "
        "keeps its default (default %(default)s)",
    )
    p.add_argument(
        "--api-window",
        type=float,
        default=d.api_window,
        metavar="S",
        help="API rate window in seconds, sliding, > 0, fractions allowed (default 60)",
    )
    p.add_argument(
        "--api-penalty",
        type=float,
        default=d.api_penalty,
        metavar="S",
        help="API lock-out after exceeding a group's limit, restarted by each request of the "
        "group during it (default 60)",
    )
    p.add_argument(
        "--api-group-source",
        choices=GROUP_SOURCES,
        default=d.api_group_source,
        help="group of a request: 'table' (each operation's x-throttling-group in the published "
        "spec, the heuristic for paths it lacks) or 'heuristic' (downloads and fax Heavy, "
        "reads Light, writes Medium) (default table)",
    )
    p.add_argument(
        "--api-group-case",
        choices=GROUP_CASES,
        default=d.api_group_case,
        help="X-Rate-Limit-Group as the spec writes it ('title': Light) or as the docs' example "
        "('lower': light) (default title)",
    )
    p.add_argument(
        "--api-rate-headers",
        choices=("true", "false"),
        default="true" if d.api_rate_headers else "false",
        help="'false': no X-Rate-Limit-* header on any answer, as when only account-level "
        "limits apply (default true)",
    )
    p.add_argument(
        "--session-cap",
        type=int,
        default=d.session_cap,
        metavar="N",
        help="live sessions per (user, client id) (default 5)",
    )
    p.add_argument(
        "--session-cap-policy",
        choices=CAP_POLICIES,
        default=d.session_cap_policy,
        help="over the cap: evict the oldest session or refuse the login",
    )
    p.add_argument(
        "--refresh-grace",
        type=float,
        default=d.refresh_grace,
        metavar="S",
        help="seconds a used refresh token may be replayed for the same pair",
    )
    p.add_argument(
        "--expired-envelope",
        choices=EXPIRED_ENVELOPES,
        default=d.expired_envelope,
        help="401 body for an expired access token",
    )
    p.add_argument(
        "--expired-code",
        choices=EXPIRED_CODES,
        default=d.expired_code,
        help="error code for an expired access token",
    )
    p.add_argument(
        "--token-delay",
        type=float,
        default=d.token_delay,
        metavar="S",
        help="fault: the token endpoint waits this long before answering",
    )
    p.add_argument(
        "--compress",
        choices=COMPRESSIONS,
        default=d.compress,
        help="compress every answer, error bodies included, as a compressing front end does, "
        "when the client's Accept-Encoding accepts the coding; 'any' picks per request "
        "(q-values honoured, br > zstd > gzip > deflate); streamed recording content only in "
        "gzip or deflate. RingCentral's docs say nothing about response compression "
        "(ringcentral-api-docs docs/basics/formats/objects.md lists the API's headers): a front "
        "end may compress (default off)",
    )
    p.add_argument(
        "--chunk-bytes",
        type=int,
        default=d.chunk_bytes,
        metavar="N",
        help="send every buffered answer chunked in pieces of N bytes (after compression), a "
        "short pause between them, so clients see bodies split anywhere, as over any network "
        "(RFC 9112 section 7.1: chunk boundaries carry no meaning). 0 (default): one piece",
    )
    _ws_options(p, w)
    p.add_argument(
        "--public-url",
        metavar="URL",
        help="base of absolute URLs in API responses (default http://HOST:PORT)",
    )
    p.add_argument(
        "--media-url",
        metavar="URL",
        help="base of recording content URLs (default PUBLIC-URL/media)",
    )
    p.add_argument("--seed-file", metavar="FILE", help="apps and users (TOML or JSON)")
    p.add_argument(
        "--seed-generated",
        type=int,
        default=0,
        metavar="N",
        help="add N generated users, each with an app of its own (client id gen-client-I, "
        "secret gen-secret-I, JWT gen-jwt-I, I = 1..N), to the seed: one app per customer, "
        "for scale benchmarks (default 0)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error", "critical"],
        help="stderr log level (default info; debug adds an access log)",
    )
    return p


def _ws_options(p: argparse.ArgumentParser, d: WsPolicy) -> None:
    """WebSocket notifications (ringcentral-api-docs docs/notifications/websockets/*.md)."""
    p.add_argument("--ws-token-ttl", type=float, default=d.ws_token_ttl, metavar="S",
                   help="lifetime of a ws token from POST /restapi/oauth/wstoken, its "
                   "expires_in (default 600, the SDKs' reading; the docs' sample says 30)")
    p.add_argument("--ws-token-use", choices=WS_TOKEN_USES, default=d.ws_token_use,
                   help="'single': a ws token opens one connection ever (the docs); "
                   "'reusable': any number until it expires (the SDKs reconnect with it) "
                   "(default single)")
    p.add_argument("--ws-public-uri", default=d.ws_public_uri, metavar="URL",
                   help="the wstoken answer's uri (ws:// or wss://; default the emulator's "
                   "own ws://HOST:PORT/ws)")
    p.add_argument("--ws-max-connections", type=int, default=d.ws_max_connections,
                   metavar="N", help="open WebSocket connections per (user, client id), "
                   "maxConnectionsPerSession; beyond: the upgrade answers 429 WSG-105 "
                   "(default 50)")
    p.add_argument("--ws-recovery-timeout", type=float, default=d.ws_recovery_timeout,
                   metavar="S", help="how long a WS session outlives its connection and can "
                   "be recovered with &wsc= (default 180)")
    p.add_argument("--ws-recovery-buffer", type=int, default=d.ws_recovery_buffer,
                   metavar="N", help="notifications kept per WS session for a recovery, "
                   "oldest dropped (default 100)")
    p.add_argument("--ws-replay", choices=WS_REPLAYS, default=d.ws_replay,
                   help="a successful recovery replays the events never sent ('missed') or "
                   "the whole buffer, already-sent ones included ('buffer': clients must "
                   "dedupe by uuid) (default missed)")
    p.add_argument("--ws-ping-interval", type=float, default=d.ws_ping_interval,
                   metavar="S", help="seconds between the server's ping frames, 0 = none "
                   "(default 30)")
    p.add_argument("--ws-pong-timeout", type=float, default=d.ws_pong_timeout, metavar="S",
                   help="a connection that does not pong within S seconds is dropped "
                   "(default 10)")
    p.add_argument("--ws-idle-timeout", type=float, default=d.ws_idle_timeout, metavar="S",
                   help="no frame from the client for S seconds: Error WSG-902 then close "
                   "(default 1800)")
    p.add_argument("--ws-absolute-timeout", type=float, default=d.ws_absolute_timeout,
                   metavar="S", help="connection age limit: Error WSG-903 then close "
                   "(default 86400)")
    p.add_argument("--ws-on-revoke", choices=WS_ON_REVOKE, default=d.ws_on_revoke,
                   help="POST /_emulator/revoke-all closes the WS connections of the revoked "
                   "sessions ('drop') or leaves them open ('keep') (default drop)")
    p.add_argument("--ws-on-refresh", choices=WS_ON_REFRESH, default=d.ws_on_refresh,
                   help="a refresh rotation leaves the session's WS connections open ('keep') "
                   "or closes them ('drop') (default keep)")


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → (host, port)."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not host or not port_s.isdigit():
        raise UsageError(f"--listen: expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_s)
    if port > 65535:
        raise UsageError(f"--listen: port {port} out of range")
    return host, port


def _check_url(option: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise UsageError(f"{option}: expected an http(s) URL without query, got {value!r}")
    return value.rstrip("/")


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--listen: cannot resolve {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"--listen: cannot bind {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _configure(args: argparse.Namespace
               ) -> tuple[Platform, str, str | None, str | None, WsPolicy]:
    try:
        policy = Policy().updated(
            {
                "access_ttl": args.access_ttl,
                "refresh_ttl": args.refresh_ttl,
                "auth_rate": args.auth_rate,
                "auth_window": args.auth_window,
                "auth_penalty": args.auth_penalty,
                "session_cap": args.session_cap,
                "session_cap_policy": args.session_cap_policy,
                "refresh_grace": args.refresh_grace,
                "expired_envelope": args.expired_envelope,
                "expired_code": args.expired_code,
                "token_delay": args.token_delay,
                "compress": args.compress,
                "chunk_bytes": args.chunk_bytes,
                "auth_rate_key": args.auth_rate_key,
                "api_rate": args.api_rate,
                "api_limits": args.api_limits,
                "api_window": args.api_window,
                "api_penalty": args.api_penalty,
                "api_group_case": args.api_group_case,
                "api_group_source": args.api_group_source,
                "api_rate_headers": args.api_rate_headers,
            }
        )
        ws_policy = WsPolicy().updated({name: getattr(args, name) for name in WS_FIELDS})
    except PolicyError as exc:
        raise UsageError(f"--{exc.field.replace('_', '-')}: {exc.reason}") from None
    try:
        seed = load_seed(args.seed_file) if args.seed_file else DEFAULT_SEED
        if args.seed_generated:
            seed = generated(args.seed_generated, seed)
    except SeedError as exc:
        raise UsageError(str(exc)) from None
    public = _check_url("--public-url", args.public_url) if args.public_url else None
    media = _check_url("--media-url", args.media_url) if args.media_url else None
    return Platform(seed, policy), args.listen, public, media, ws_policy


async def _serve(
    platform: Platform, sock: socket.socket, public: str | None, media: str | None,
    ws_policy: WsPolicy,
) -> None:
    app = build_app(platform, ws_policy=ws_policy)
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    base = f"http://{url_host}:{port}"
    app[URLS].public = public or base
    app[URLS].media = media or f"{app[URLS].public}/media"
    runner = web.AppRunner(
        app, handle_signals=False, access_log_class=AccessLogger, shutdown_timeout=0.5
    )
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    log.info("public url %s, media url %s", app[URLS].public, app[URLS].media)
    with contextlib.suppress(BrokenPipeError, OSError):
        print(f"emulator listening on {base}", flush=True)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Run the emulator; returns the exit status (0 on a clean stop, 2 on bad input)."""
    try:
        args = _parser().parse_args(argv)
        platform, listen, public, media, ws_policy = _configure(args)
        host, port = parse_listen(listen)
        sock = _bind(host, port)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(args.log_level.upper())
    try:
        asyncio.run(_serve(platform, sock, public, media, ws_policy))
    except KeyboardInterrupt:
        pass
    return 0
