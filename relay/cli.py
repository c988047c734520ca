"""The `outbox-relay` command: one small `add_X` / `cmd_X` pair per subcommand.

To add a subcommand, write `add_X(subparsers)` (one `add_parser` block ending in
`set_defaults(func=cmd_X)`) and `cmd_X(args) -> int`, and list `add_X` in SUBCOMMANDS.
Commands raise RelayError subclasses; only `main` turns them into exit codes (sysexits.h).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from relay import __version__
from relay.audit import AuditLog
from relay.config import Config, describe, load_config
from relay.engine import (
    ExampleFailure,
    RuleSet,
    load_bundled_rules,
    load_configured_rules,
    load_rules,
)
from relay.errors import ConfigError, QuarantineError, RelayError, RuleError, UpstreamError
from relay.model import Verdict
from relay.quarantine import (
    STATES,
    Outcome,
    QuarantineStore,
    delete,
    parse_time,
    purge,
    release,
    select,
)

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
    from relay.supervisor import serve

    config = load_config(args.config)  # invalid config: exit 78 before listening
    try:
        return serve(config)  # one relay process, or listen.workers of them
    except OSError as exc:
        host, port = config.listen.host, config.listen.port
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"outbox-relay: cannot listen on {host}:{port}: {reason}", file=sys.stderr)
        return EX_OSERR


# --- check-config -----------------------------------------------------------------------------


def add_hash_password(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "hash-password",
        help="print a password hash for auth.users",
        description="Read a password (prompted twice on a terminal, else the first line of "
        "standard input) and print its scrypt hash for auth.users.NAME.password_hash.",
    )
    parser.set_defaults(func=cmd_hash_password)


def cmd_hash_password(args: argparse.Namespace) -> int:
    from relay.access import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("outbox-relay: the two passwords differ", file=sys.stderr)
            return EX_DATAERR
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        print("outbox-relay: empty password", file=sys.stderr)
        return EX_DATAERR
    print(hash_password(password))
    return EX_OK


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


# --- quarantine -------------------------------------------------------------------------------

EX_TEMPFAIL = 75
DEFAULT_CONFIG = "/etc/outbox-relay/relay.yaml"


def add_quarantine(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "quarantine",
        help="list, show, release, delete or purge held messages",
        description="Review the messages the relay held. Every action that changes the "
        "quarantine writes an audit line (quarantine.release, .delete, .purge).",
    )
    actions = parser.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")

    def action(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(
            name, help=help_text, description=description
        )
        sub.add_argument(
            "--config",
            metavar="FILE",
            default=os.environ.get("OUTBOX_RELAY_CONFIG", DEFAULT_CONFIG),
            help=f"the relay's YAML config (default: $OUTBOX_RELAY_CONFIG or {DEFAULT_CONFIG})",
        )
        return sub

    listing = action("list", "list held messages", "A table (or --json) of quarantined mail.")
    listing.add_argument("--json", action="store_true", help="one JSON array of objects")
    listing.add_argument("--category", metavar="C", help="only messages with this category")
    listing.add_argument(
        "--since", metavar="DATE", type=_since, help="ISO date/time (UTC) or an age like 2h, 7d"
    )
    listing.add_argument("--state", choices=STATES, help="only messages in this state")
    listing.set_defaults(func=cmd_quarantine_list)

    show = action("show", "explain one held message", "Envelope, hits, headers and text.")
    show.add_argument("id", metavar="ID")
    show.set_defaults(func=cmd_quarantine_show)

    release_cmd = action(
        "release",
        "send a held message on",
        "Re-send the original bytes with the original envelope through the configured "
        "upstream. Succeeds only when the upstream accepted it; exit 75 when it is down or "
        "deferred, 69 when it refused, 65 when the message is not held.",
    )
    release_cmd.add_argument("id", metavar="ID")
    release_cmd.add_argument("--reason", required=True, metavar="TEXT", help="why (recorded)")
    release_cmd.set_defaults(func=cmd_quarantine_release)

    delete_cmd = action("delete", "discard a held message", "Discard without sending.")
    delete_cmd.add_argument("id", metavar="ID")
    delete_cmd.add_argument("--reason", required=True, metavar="TEXT", help="why (recorded)")
    delete_cmd.set_defaults(func=cmd_quarantine_delete)

    purge_cmd = action(
        "purge",
        "remove old messages (retention)",
        "Remove every message, in any state, received longer ago than --older-than.",
    )
    purge_cmd.add_argument(
        "--older-than", required=True, metavar="AGE", type=_age, help="e.g. 30d, 12h, 2w"
    )
    purge_cmd.set_defaults(func=cmd_quarantine_purge)


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _age(text: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not an age like 30d, 12h or 2w: {text!r}")
    return timedelta(seconds=int(match.group(1)) * _AGE_UNITS[match.group(2)])


def _since(text: str) -> datetime:
    with contextlib.suppress(argparse.ArgumentTypeError):
        return datetime.now(UTC) - _age(text)
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date (2026-11-01, 2026-11-01T08:00) or an age (7d): {text!r}"
        ) from None


def operator_name() -> str:
    """The person acting: the sudo caller if any, else the login name."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def _store(config: Config) -> QuarantineStore:
    return QuarantineStore(config.quarantine.path)


def _quarantine_failure(exc: QuarantineError, code: int = EX_DATAERR) -> int:
    print(f"outbox-relay: {exc}", file=sys.stderr)
    return code


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    entries = select(
        _store(load_config(args.config)).entries(),
        state=args.state,
        category=args.category,
        since=args.since,
    )
    if args.json:
        print(json.dumps([entry.summary() for entry in entries], ensure_ascii=False, indent=1))
        return EX_OK
    rows = [
        (
            e.id,
            e.received.strftime("%Y-%m-%d %H:%M:%S"),
            e.state,
            e.mail_from or "<>",
            ", ".join(e.rcpt_to),
            str(e.meta.get("subject") or ""),
            ", ".join(e.categories),
        )
        for e in entries
    ]
    header = ("ID", "RECEIVED (UTC)", "STATE", "FROM", "TO", "SUBJECT", "CATEGORIES")
    print(_table(header, rows, limits=(None, None, None, 32, 40, 40, None)))
    print(f"{len(rows)} message{'s' if len(rows) != 1 else ''}")
    return EX_OK


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], limits: Sequence[int | None]
) -> str:
    def cut(text: str, limit: int | None) -> str:
        return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"

    cells = [[cut(c, lim) for c, lim in zip(row, limits, strict=True)] for row in rows]
    widths = [max(len(r[i]) for r in [list(header), *cells]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [list(header), *cells]
    )


def cmd_quarantine_show(args: argparse.Namespace) -> int:
    from relay.extract import extract

    store = _store(load_config(args.config))
    try:
        entry = store.get(args.id)
    except QuarantineError as exc:
        return _quarantine_failure(exc)
    meta = entry.meta
    lines = [
        f"ID:          {entry.id}",
        f"State:       {entry.state}",
        f"Received:    {meta['received']} from {meta.get('client')}"
        + (f" (AUTH {meta['auth_user']})" if meta.get("auth_user") else ""),
        f"MAIL FROM:   <{entry.mail_from}>",
        *(f"RCPT TO:     <{rcpt}>" for rcpt in entry.rcpt_to),
        f"Categories:  {', '.join(entry.categories)}",
        f"Rules:       {meta.get('rules_version')}",
    ]
    for event in meta.get("history", []):
        lines.append(
            f"History:     {event.get('at')} {event.get('action')} by {event.get('operator')}: "
            f"{event.get('reason')}"
            + (f" (upstream: {event['upstream_reply']})" if event.get("upstream_reply") else "")
        )
    lines.append("")
    lines.append(f"Why it was held ({len(meta.get('hits', []))} hits):")
    for hit in meta.get("hits", []):
        lines.append(f"  [{hit['severity']}] {hit['category']}: {hit['rule']} in {hit['part']}")
        if hit.get("description"):
            lines.append(f"      rule:         {hit['description']}")
        lines.append(f"      seller wrote: {hit['excerpt']}")
        if hit.get("hint"):
            lines.append(f"      instead:      {hit['hint']}")
    try:
        data = store.read_message(entry)
    except QuarantineError as exc:
        lines += ["", f"(message not available: {exc})"]
        print("\n".join(lines))
        return EX_OK
    head = re.split(rb"\r?\n\r?\n", data, maxsplit=1)[0]
    lines += ["", "Headers:", *("  " + line for line in _text(head).splitlines())]
    for part in extract(data).parts:
        lines += ["", f"Text ({part.origin}):", *("  " + line for line in part.text.splitlines())]
    print("\n".join(lines))
    return EX_OK


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _quarantine_audit(config: Config) -> AuditLog:
    try:
        return AuditLog(config.audit.path)
    except OSError as exc:
        raise ConfigError(f"cannot open: {exc.strerror}", key_path="audit.path") from exc


def cmd_quarantine_release(args: argparse.Namespace) -> int:
    import socket

    from relay.forwarder import close_idle_connections, make_forwarder

    config = load_config(args.config)
    store = _store(config)
    audit = _quarantine_audit(config)
    hostname = config.listen.hostname or socket.getfqdn()
    forwarder = make_forwarder(config.upstream, local_hostname=hostname)

    async def run() -> Outcome:
        try:
            return await release(
                store,
                args.id,
                forwarder=forwarder,
                audit=audit,
                reason=args.reason,
                operator=operator_name(),
            )
        finally:
            await close_idle_connections(forwarder)

    try:
        outcome = asyncio.run(run())
    except QuarantineError as exc:
        return _quarantine_failure(exc)
    except UpstreamError as exc:
        print(
            f"outbox-relay: release of {args.id} failed, it stays held: {exc.code} {exc.text}",
            file=sys.stderr,
        )
        return EX_UNAVAILABLE if exc.permanent else EX_TEMPFAIL
    finally:
        audit.close()
    print(f"released {outcome.entry.id}: upstream replied {outcome.upstream_reply}")
    for rcpt, reply in (outcome.refused or {}).items():
        print(f"  refused by the upstream: {rcpt}: {reply}")
    return EX_OK


def cmd_quarantine_delete(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    audit = _quarantine_audit(config)
    try:
        delete(_store(config), args.id, audit=audit, reason=args.reason, operator=operator_name())
    except QuarantineError as exc:
        return _quarantine_failure(exc)
    finally:
        audit.close()
    print(f"deleted {args.id}")
    return EX_OK


def cmd_quarantine_purge(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    audit = _quarantine_audit(config)
    age: timedelta = args.older_than
    try:
        removed = purge(
            _store(config),
            before=datetime.now(UTC) - age,
            audit=audit,
            operator=operator_name(),
            reason=f"retention: older than {_age_text(age)}",
        )
    except QuarantineError as exc:
        return _quarantine_failure(exc, EX_OSERR)
    finally:
        audit.close()
    print(f"purged {len(removed)} message{'s' if len(removed) != 1 else ''}")
    return EX_OK


def _age_text(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if seconds % _AGE_UNITS[unit] == 0 and seconds >= _AGE_UNITS[unit]:
            return f"{seconds // _AGE_UNITS[unit]}{unit}"
    return f"{seconds}s"


# --- wiring -----------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[Subparsers], None]] = [
    add_serve,
    add_check_config,
    add_scan,
    add_rules,
    add_quarantine,
    add_hash_password,
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
