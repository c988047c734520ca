"""The `outbox-relay` command: one small `add_X` / `cmd_X` pair per subcommand.

To add a subcommand, write `add_X(subparsers)` (one `add_parser` block ending in
`set_defaults(func=cmd_X)`) and `cmd_X(args) -> int`, and list `add_X` in SUBCOMMANDS.
Commands raise RelayError subclasses; only `main` turns them into exit codes (sysexits.h).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from relay import __version__
from relay.config import describe, load_config
from relay.engine import (
    ExampleFailure,
    RuleSet,
    load_bundled_rules,
    load_configured_rules,
    load_rules,
)
from relay.errors import ConfigError, RelayError, RuleError
from relay.model import Verdict

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


# --- scan ---------------------------------------------------------------------------------------

SCAN_CLEAN, SCAN_VIOLATION, SCAN_ERROR = 0, 1, 2


def add_scan(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "scan",
        help="scan .eml files with the rule packs",
        description="Scan messages as the relay would. PATH is an .eml file, a folder (every "
        "*.eml below it) or - for stdin. Exit 0 when all are clean, 1 when any is a "
        "violation, 2 on errors (unreadable files are named on stderr; the rest are scanned).",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="use this config's rules.paths (default: bundled packs)"
    )
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="json: one object per line"
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help=".eml file, folder or -")
    parser.set_defaults(func=cmd_scan)


def _configured_rules(config_file: str | None) -> RuleSet:
    if config_file is None:
        return load_bundled_rules()
    return load_configured_rules(load_config(config_file).rules.paths)


def _messages(paths: Sequence[str]) -> Iterator[tuple[str, bytes | OSError]]:
    """Each message as (path as given or found, its bytes or the error reading it)."""
    for given in paths:
        if given == "-":
            yield "-", sys.stdin.buffer.read()
            continue
        path = Path(given)
        if path.is_dir():
            try:
                found = sorted(p for p in path.rglob("*.eml") if p.is_file())
            except OSError as exc:
                yield given, exc
                continue
            for file in found:
                yield str(file), _read(file)
        else:
            yield given, _read(path)


def _read(path: Path) -> bytes | OSError:
    try:
        return path.read_bytes()
    except OSError as exc:
        return exc


def cmd_scan(args: argparse.Namespace) -> int:
    from relay.extract import extract

    try:
        ruleset = _configured_rules(args.config)
    except (ConfigError, RuleError) as exc:
        print(f"outbox-relay: {exc}", file=sys.stderr)
        return SCAN_ERROR
    errors = violations = 0
    for path, data in _messages(args.paths):
        if isinstance(data, OSError):
            reason = data.strerror or str(data)
            print(f"outbox-relay: cannot read {path}: {reason}", file=sys.stderr)
            errors += 1
            continue
        try:
            verdict = ruleset.evaluate(extract(data))
        except RelayError as exc:
            print(f"outbox-relay: cannot scan {path}: {exc}", file=sys.stderr)
            errors += 1
            continue
        violations += verdict.is_violation
        if args.format == "json":
            print(json.dumps(scan_report(path, verdict), ensure_ascii=False), flush=True)
        else:
            print(format_scan(path, verdict), flush=True)
    if errors:
        return SCAN_ERROR
    return SCAN_VIOLATION if violations else SCAN_CLEAN


def scan_report(path: str, verdict: Verdict) -> dict[str, object]:
    """The `scan --format json` object for one message (CONTRACTS.md)."""
    return {
        "path": path,
        "verdict": verdict.label,
        "categories": [c.value for c in verdict.categories],
        "hits": [hit.as_report() for hit in verdict.hits],
        "rules_version": verdict.rules_version,
    }


def format_scan(path: str, verdict: Verdict) -> str:
    if not verdict.is_violation:
        return f"{path}: clean"
    categories = ", ".join(c.value for c in verdict.categories)
    lines = [f"{path}: VIOLATION ({categories})"]
    for hit in verdict.hits:
        lines.append(f"  [{hit.severity.value}] {hit.category.value}: {hit.rule} in {hit.part}")
        lines.append(f"      seller wrote: {hit.excerpt}")
        if hit.hint:
            lines.append(f"      instead: {hit.hint}")
    return "\n".join(lines)


# --- rules ----------------------------------------------------------------------------------------


def add_rules(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "rules",
        help="test or list rule packs",
        description="Work with rule packs (default: the bundled packs).",
    )
    actions = parser.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    test = actions.add_parser(
        "test",
        help="run every rule's embedded examples",
        description="Load the packs (validating them) and check that every rule matches its "
        "`match` examples and none of its `no_match` examples. Exit 1 on any failure, "
        "2 when a pack does not load.",
    )
    test.add_argument("paths", nargs="*", metavar="PATH", help="pack file or folder")
    test.set_defaults(func=cmd_rules_test)
    listing = actions.add_parser("list", help="list rules: id, category, severity, description")
    listing.add_argument("paths", nargs="*", metavar="PATH", help="pack file or folder")
    listing.set_defaults(func=cmd_rules_list)


def _rules_from(paths: Sequence[str]) -> RuleSet:
    if not paths:
        return load_bundled_rules()
    return load_rules([Path(p) for p in paths])


def cmd_rules_test(args: argparse.Namespace) -> int:
    try:
        ruleset = _rules_from(args.paths)
    except RuleError as exc:
        print(f"outbox-relay: rule error: {exc}", file=sys.stderr)
        return SCAN_ERROR
    failures = ruleset.check_examples()
    by_rule: dict[str, list[ExampleFailure]] = {}
    for failure in failures:
        by_rule.setdefault(failure.rule.id, []).append(failure)
    for rule_id, rule_failures in by_rule.items():
        rule = rule_failures[0].rule
        print(f"FAIL {rule_id} ({rule.file}:{rule.line})")
        for failure in rule_failures:
            wanted = "should match" if failure.expected_match else "should not match"
            print(f"  {wanted}: {failure.example}")
    examples = sum(len(r.match_examples) + len(r.no_match_examples) for r in ruleset.rules)
    print(
        f"{ruleset.version}: {len(ruleset.rules)} rules, {examples} examples, "
        f"{len(failures)} failed ({len(by_rule)} rules)"
    )
    return 1 if failures else 0


def cmd_rules_list(args: argparse.Namespace) -> int:
    try:
        ruleset = _rules_from(args.paths)
    except RuleError as exc:
        print(f"outbox-relay: rule error: {exc}", file=sys.stderr)
        return SCAN_ERROR
    for rule in ruleset.rules:
        print(f"{rule.id}\t{rule.category.value}\t{rule.severity.value}\t{rule.description}")
    return EX_OK


# --- wiring -----------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[Subparsers], None]] = [
    add_serve,
    add_check_config,
    add_scan,
    add_rules,
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
