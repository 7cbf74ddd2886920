"""Command line: ``tokenproxy run | check-config | reload | status | authorize | revoke |
keygen | client-key | emulator``.

Entry point of the console script and of ``python -m proxy_addon``. Exit codes: 0 success,
1 runtime failure, 2 bad input (config or arguments).
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..config import ConfigError, load_config
from ..ops import logs

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenproxy",
        description="Reverse proxy that owns the RingCentral OAuth token lifecycle for legacy "
                    "apps: they point their server URL at it and never handle tokens again.")
    parser.add_argument("--version", action="version", version=f"tokenproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="start the proxy",
                              description="Start the proxy with the given config.")
    run.add_argument("--config", "-c", required=True, help="path of the TOML config file")
    run.add_argument("--log-level", default="info",
                     choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", choices=["text", "json"],
                     help="log lines as text or JSON objects (default: [proxy] log_format)")
    run.add_argument("--workers", type=_workers, default="auto",
                     help="proxy processes serving the listen address together (SO_REUSEPORT); "
                          "default 'auto': one per CPU core this process may use (cgroup CPU "
                          "limits included) when the store is shared (sqlite, redis), else 1")
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    run.add_argument("--listen-port", type=int, help=argparse.SUPPRESS)

    check = commands.add_parser(
        "check-config", help="validate a config, then check the store, ports, upstream and "
                             "every account's credentials",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Validate the config file and the environment variables it names (exit "
                    "2 with the file, the key\nand the reason on any problem), then check what "
                    "the file cannot tell by itself, one line per\ncheck, OK or FAIL with a "
                    "hint (WARN and SKIP lines do not fail):\n\n"
                    "  store           the key in [store] key_env opens the store (a SQLite "
                    "file not there yet\n"
                    "                  is not created)\n"
                    "  listen,         free, or held by a running tokenproxy\n"
                    "  metrics_listen\n"
                    "  upstream        reachable, TLS certificate verified\n"
                    "  account NAME    jwt/password: one login with the account's grant; the "
                    "new session is\n"
                    "                  revoked at once, so the 5-session cap is left as it was\n"
                    "  account NAME    refresh_token/authorization_code: the single-use refresh "
                    "token or code\n"
                    "    client        is never spent; the client id/secret are probed with a "
                    "deliberately invalid\n"
                    "                  refresh token (invalid_client vs invalid_grant: no "
                    "session involved)\n"
                    "  account NAME    the stored session: none, live, expired, revoked (needs "
                    "`tokenproxy\n"
                    "    session       authorize NAME`); a live access token is tried with one "
                    "read-only API call\n\n"
                    "Each account check is one call to the token endpoint, counted in the app's "
                    "auth rate limit\n(about 5 a minute per user and app, shared with running "
                    "proxies): the check makes\nat most auth_budget_calls - 1 per user and "
                    "client id. A login while "
                    "the user+app already holds 5 sessions makes the platform evict\nthe "
                    "oldest one. No secret is printed.",
        epilog="exit codes: 0 every check passed, 1 a check failed, 2 the config is invalid\n\n"
               "examples:\n"
               "  tokenproxy check-config --config /etc/tokenproxy/proxy.toml\n"
               "  tokenproxy check-config --config proxy.toml --offline   # no call to the "
               "platform")
    check.add_argument("--config", "-c", required=True, help="path of the TOML config file")
    check.add_argument("--offline", action="store_true",
                       help="no call to the platform: config, store, ports and stored sessions "
                            "only")

    auth = commands.add_parser(
        "authorize", help="re-authorize an account by logging in (authorization code + PKCE)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the authorization-code flow for ACCOUNT: prints a URL to open, "
                    "receives the code on a local\ncallback, stores the new session where "
                    "running proxies pick it up within seconds (no restart).\nFor accounts "
                    "whose session died and that cannot log in by themselves (refresh_token,\n"
                    "authorization_code grants: state reauth_required, apps get 503 "
                    "TPX-REAUTH-REQUIRED), and\nafter `tokenproxy revoke`. The redirect URI "
                    "must be http on loopback and registered for the app.\nNeeds the store key "
                    "([store] key_env) in the environment.",
        epilog="exit codes: 0 authorized and stored, 1 the flow failed (store, refused, "
               "timed out),\n            2 the config is invalid or the account unknown\n\n"
               "examples:\n"
               "  tokenproxy authorize main --config /etc/tokenproxy/proxy.toml\n"
               "  tokenproxy authorize main -c proxy.toml --redirect-uri "
               "http://127.0.0.1:8765/callback \\\n"
               "      --login-hint +15550100001 --timeout 600")
    auth.add_argument("account", help="account name from the config")
    auth.add_argument("--config", "-c", required=True, help="path of the TOML config file")
    auth.add_argument("--redirect-uri", help="loopback callback URL registered for the app "
                                             "(default: the account's redirect_uri, else "
                                             "http://127.0.0.1:<free port>/callback)")
    auth.add_argument("--timeout", type=float, default=300.0,
                      help="seconds to wait for the login (default 300)")
    auth.add_argument("--login-hint", help="user to pre-fill on the login page")

    revoke = commands.add_parser(
        "revoke", help="log the proxies out of an account: revoke its session, clear the store",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Clean logout of the session the proxies hold for ACCOUNT: read its pair "
                    "from the store (needs the\nstore key from [store] key_env), revoke it on "
                    "the platform (POST /restapi/oauth/revoke: the\nwhole session ends), then "
                    "replace it in the store by an empty record of the next generation\n"
                    "(compare-and-set, under the account's renewal lock), so no replica writes "
                    "the old pair back\nand a restarted proxy does not fall back to the "
                    "config's refresh_token or auth_code.\n\n"
                    "Running proxies still hold the revoked token in memory; on their next "
                    "request for the account\nthe platform answers OAU-213 and:\n"
                    "  jwt, password        they log in again by themselves (a new session, "
                    "invisible to apps):\n"
                    "                       stop them first if that must not happen\n"
                    "  refresh_token,       apps get 503 TPX-REAUTH-REQUIRED until someone runs\n"
                    "  authorization_code   `tokenproxy authorize ACCOUNT`\n"
                    "The account's virtual grants (apps that logged in through the proxy) end "
                    "too; apps' client\nkeys are not touched. No token value is printed.\n\n"
                    "With --virtual, ACCOUNT may also be a client id: only the virtual grants "
                    "of that account\n(or of every account of that client id) are listed and "
                    "ended; the account's own session\nstays. --list only lists them.",
        epilog="exit codes: 0 revoked (or nothing to revoke), 1 the platform or the store "
               "failed (the store is\n            left as it was when the platform refused), "
               "2 bad input (unknown account: the known\n            ones are listed; no "
               "--yes without a terminal; invalid config)\n\n"
               "examples:\n"
               "  tokenproxy revoke main --config /etc/tokenproxy/proxy.toml        # asks "
               "first\n"
               "  tokenproxy revoke main --config /etc/tokenproxy/proxy.toml --yes  # scripts\n"
               "  tokenproxy revoke --virtual my-client-id -c proxy.toml --list    # apps' logins")
    revoke.add_argument("account", help="account name from the config (with --virtual: or a "
                                        "client id)")
    revoke.add_argument("--virtual", action="store_true",
                        help="end only the virtual grants of ACCOUNT (or of client id ACCOUNT)")
    revoke.add_argument("--list", action="store_true", dest="list_only",
                        help="with --virtual: list the grants, end nothing")
    revoke.add_argument("--config", "-c", required=True, help="path of the TOML config file")
    revoke.add_argument("--yes", "-y", action="store_true",
                        help="do not ask for confirmation (required when stdin is not a "
                             "terminal)")

    status = commands.add_parser(
        "status", help="show every account's token health",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read a running proxy's /status (on its [proxy] metrics_listen) and print "
                    "one row per account:\nstate (idle, healthy, refreshing, backing_off, "
                    "reauth_required, misconfigured), access and\nrefresh token time left, "
                    "sessions held / max_live_tokens, last renewal, last error, and a hint\n"
                    "for every account that is not healthy. With --workers, each worker has its "
                    "own metrics port\n(metrics_listen port + worker index). Any one process "
                    "answers for all: with a shared store\n(sqlite, redis) a PROCESSES table lists "
                    "every worker and replica that reported within the\nlast minute ([proxy] "
                    "status_report_interval x 6) and the tables sum their figures.",
        epilog="exit codes: 0 every account healthy, 1 an account is not healthy, 2 the proxy "
               "is unreachable\n\n"
               "examples:\n"
               "  tokenproxy status\n"
               "  tokenproxy status --url http://127.0.0.1:9464 --json | jq '.accounts[]'")
    status.add_argument("--url", default="http://127.0.0.1:9464",
                        help="the proxy's metrics_listen URL (default http://127.0.0.1:9464)")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument("--token-env", default="TOKENPROXY_ADMIN_TOKEN", metavar="NAME",
                        help="environment variable holding the admin token, sent when set "
                             "(the proxy's [proxy] admin_token_env; default "
                             "TOKENPROXY_ADMIN_TOKEN)")

    reload = commands.add_parser(
        "reload", help="re-read the config of a running proxy (its clients apply at once)",
        description="Check FILE, then send SIGHUP to the running `tokenproxy run --config FILE` "
                    "(a supervisor passes it to its workers): clients, keys, allow lists and "
                    "rate weights change without a restart; a bad file changes nothing.")
    reload.add_argument("--config", required=True, metavar="FILE")

    commands.add_parser("keygen", help="print a new store encryption key",
                        description="Print a new Fernet key for TOKENPROXY_STORE_KEY.")

    commands.add_parser("client-key", help="print a new client key and its SHA-256",
                        description="Print a new random client key (give it to the app, which "
                                    "sends it as its Bearer) and its SHA-256, for [[clients]] "
                                    "key_sha256: the config then holds no secret.")

    commands.add_parser("emulator", help="run the bundled RingCentral platform emulator",
                        add_help=False,
                        description="Run the platform emulator (see 'tokenproxy emulator -h').")
    return parser


def _workers(text: str) -> int | str:
    return "auto" if text == "auto" else _positive(text)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _run_emulator(args: list[str]) -> int:
    """``tokenproxy emulator ...``: the separate emulator distribution (dev and demo only), run
    as its own process; the product never imports it."""
    import importlib.util
    import os

    if importlib.util.find_spec("rc_emulator") is None:
        print("tokenproxy emulator: the platform emulator is not installed (it is a separate "
              "distribution, emulator/ in the source tree, left out of the production image): "
              "pip install ./emulator, or use the demo image (docker build --target demo)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    os.execv(sys.executable, [sys.executable, "-m", "rc_emulator", *args])


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # the reader of our output left (`tokenproxy status | head`)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0


def _main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "emulator":
        return _run_emulator(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "keygen":
        from ..store.crypto import generate_key

        print(generate_key())
        return 0
    if args.command == "reload":
        from .reload import main as reload_main

        return reload_main(args.config)
    if args.command == "client-key":
        import secrets

        from ..config.model import key_digest

        key = secrets.token_urlsafe(32)
        print(f'key = "{key}"  # the app sends it: Authorization: Bearer <key>')
        print(f'key_sha256 = "{key_digest(key)}"  # in its [[clients]] table instead of key')
        return 0
    if args.command == "status":
        from .status import main as status_main

        return status_main(args.url, args.json, args.token_env)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"tokenproxy: config error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    logs.SECRETS.add(config.secret_values(), fixed=True)
    if args.command == "check-config":
        logs.setup("warning")
        from .check import main as check_main

        return check_main(config, args.offline)
    if args.command == "revoke":
        logs.setup("warning")
        from .revoke import main as revoke_main

        if args.list_only and not args.virtual:
            print("tokenproxy revoke: --list needs --virtual", file=sys.stderr)
            return EXIT_BAD_INPUT
        return revoke_main(config, args.account, args.yes, args.virtual, args.list_only)
    if args.command == "authorize":
        logs.setup("warning")
        from .authorize import main as authorize_main

        known = [a.name for a in config.accounts]
        if args.account not in known:
            print(f"tokenproxy authorize: unknown account {args.account!r}; the config has: "
                  f"{', '.join(known) or 'none'}", file=sys.stderr)
            return EXIT_BAD_INPUT

        return authorize_main(config, args.account, args.redirect_uri, args.timeout,
                              args.login_hint)
    logs.setup(args.log_level, args.log_format or config.proxy.log_format)
    logs.FORMAT_PINNED = bool(args.log_format)
    from .run import StartupError, run
    from .workers import resolve_workers, unshared_store

    args.workers = resolve_workers(args.workers, config, args.worker is not None)
    problem = unshared_store(config, args.workers, args.worker is not None)
    if problem is not None:
        print(f"tokenproxy: config error: {args.config}: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.workers > 1 and args.worker is None:
        from .workers import supervise

        extra = ["--log-level", args.log_level]
        if args.log_format:
            extra += ["--log-format", args.log_format]
        return supervise(config, args.config, args.workers, extra)
    worker = args.worker is not None
    if worker:
        from .workers import for_worker

        config = for_worker(config, args.worker, args.listen_port)
    try:
        return run(config, worker=worker, banner=args.worker in (None, 0),  # the demo's, once
                   worker_index=args.worker)
    except StartupError as exc:
        print(f"tokenproxy: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
