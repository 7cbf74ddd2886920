"""Command line: ``tokenproxy run | emulator | check-config``.

Entry point of the console script and of ``python -m proxy_addon``. Exit codes: 0 success,
1 runtime failure, 2 bad input (config or arguments).
"""

from __future__ import annotations

import argparse
import sys

from . import __version__, logs
from .config import ConfigError, load_config

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
    run.add_argument("--workers", type=_positive, default=1,
                     help="proxy processes serving the listen address together (SO_REUSEPORT)")
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    run.add_argument("--listen-port", type=int, help=argparse.SUPPRESS)

    check = commands.add_parser("check-config", help="validate a config file and exit",
                                description="Validate the config (file, keys, env vars).")
    check.add_argument("--config", "-c", required=True, help="path of the TOML config file")

    auth = commands.add_parser(
        "authorize", help="re-authorize an account by logging in (authorization code + PKCE)",
        description="Run the authorization-code flow for ACCOUNT: prints a URL to open, "
                    "receives the code on a local callback, stores the new session where "
                    "running proxies pick it up.")
    auth.add_argument("account", help="account name from the config")
    auth.add_argument("--config", "-c", required=True, help="path of the TOML config file")
    auth.add_argument("--redirect-uri", help="loopback callback URL registered for the app "
                                             "(default: the account's redirect_uri)")
    auth.add_argument("--timeout", type=float, default=300.0,
                      help="seconds to wait for the login (default 300)")
    auth.add_argument("--login-hint", help="user to pre-fill on the login page")

    status = commands.add_parser(
        "status", help="show every account's token health",
        description="Read a running proxy's /status and print a table per account. Exit "
                    "code 1 when any account is not healthy, 2 when the proxy is unreachable.")
    status.add_argument("--url", default="http://127.0.0.1:9464",
                        help="the proxy's metrics_listen URL (default http://127.0.0.1:9464)")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")

    commands.add_parser("keygen", help="print a new store encryption key",
                        description="Print a new Fernet key for TOKENPROXY_STORE_KEY.")

    commands.add_parser("emulator", help="run the bundled RingCentral platform emulator",
                        add_help=False,
                        description="Run the platform emulator (see 'tokenproxy emulator -h').")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "emulator":
        from .emulator.server import main as emulator_main

        return emulator_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "keygen":
        from .crypto import generate_key

        print(generate_key())
        return 0
    if args.command == "status":
        from .status import main as status_main

        return status_main(args.url, args.json)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"tokenproxy: config error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.command == "check-config":
        print(f"{args.config}: OK ({len(config.accounts)} account(s), "
              f"{len(config.clients)} client(s), upstream {config.proxy.upstream})")
        return 0
    logs.SECRETS.add(config.secret_values(), fixed=True)
    if args.command == "authorize":
        logs.setup("warning")
        from .authorize import main as authorize_main

        return authorize_main(config, args.account, args.redirect_uri, args.timeout,
                              args.login_hint)
    logs.setup(args.log_level, args.log_format or config.proxy.log_format)
    from .runner import StartupError, run

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
        return run(config, worker=worker)
    except StartupError as exc:
        print(f"tokenproxy: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
