"""The `outbox-relay` command: one small `add_X` / `cmd_X` pair per subcommand.

To add a subcommand, write `add_X(subparsers)` (one `add_parser` block ending in
`set_defaults(func=cmd_X)`) and `cmd_X(args) -> int`, and list `add_X` in SUBCOMMANDS.
Commands raise RelayError subclasses; only `main` turns them into exit codes (sysexits.h).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from relay import __version__
from relay.config import describe, load_config
from relay.errors import ConfigError, RelayError, RuleError

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_CONFIG = 78

Subparsers = Any  # argparse's _SubParsersAction is private


# --- serve ------------------------------------------------------------------------------------


def add_serve(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the relay",
        description="Run the relay in the foreground. SIGHUP reloads the config, "
        "SIGTERM stops gracefully.",
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="YAML config file")
    parser.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from relay.server import RelayServer, announce

    config = load_config(args.config)  # invalid config: exit 78 before listening
    server = RelayServer(config)
    try:
        asyncio.run(server.serve(ready=announce))
    except OSError as exc:
        host, port = config.listen.host, config.listen.port
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"outbox-relay: cannot listen on {host}:{port}: {reason}", file=sys.stderr)
        return EX_OSERR
    return EX_OK


# --- check-config -----------------------------------------------------------------------------


def add_check_config(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate a config file",
        description="Validate a config file completely. Exit 0 when valid, 78 otherwise.",
    )
    parser.add_argument("file", metavar="FILE", help="YAML config file")
    parser.set_defaults(func=cmd_check_config)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    print(f"{config.source}: OK")
    for line in describe(config):
        print(f"  {line}")
    return EX_OK


# --- wiring -----------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[Subparsers], None]] = [
    add_serve,
    add_check_config,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outbox-relay",
        description="SMTP relay that holds back seller mail breaking Amazon's review policy.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"outbox-relay: config error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except RuleError as exc:  # the configured rule packs are part of the configuration
        print(f"outbox-relay: rule error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except RelayError as exc:
        print(f"outbox-relay: {exc}", file=sys.stderr)
        return EX_SOFTWARE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
