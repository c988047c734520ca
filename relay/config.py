"""Configuration: frozen dataclasses, loaded from YAML and validated completely before start.

The dataclasses below are the schema. Every field is declared with `setting(default, check)`
(or `section(Class)` for a nested block), so adding a key is one line: the loader walks the
fields, rejects keys it does not know, and runs each value through its check. A check turns the
raw YAML value into the typed value or calls `ctx.fail(...)`, which raises a ConfigError naming
the dotted key path and the line in the file. Cross-field rules live in a section's `validate`
method. Relative paths resolve against the folder holding the config file.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml

from relay.errors import ConfigError
from relay.model import Action, Category, Severity

T = TypeVar("T")
KeyPath = tuple[str | int, ...]

# ---------------------------------------------------------------------------------------------
# Validation machinery
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """Where a value sits: its key path, the file, the line table and the base folder."""

    path: KeyPath
    file: Path
    lines: Mapping[KeyPath, int]

    @property
    def base_dir(self) -> Path:
        return self.file.parent

    @property
    def dotted(self) -> str:
        return dotted(self.path)

    def child(self, key: str | int) -> Context:
        return Context((*self.path, key), self.file, self.lines)

    def line(self) -> int | None:
        # A missing key has no line of its own; point at the closest parent that has one.
        path = self.path
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def fail(self, message: str) -> NoReturn:
        raise ConfigError(
            message, key_path=self.dotted or None, file=str(self.file), line=self.line()
        )


def dotted(path: KeyPath) -> str:
    """`("upstream", "port")` -> `upstream.port`; list indexes as `rules.paths[0]`."""
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
    return out


Check = Callable[[Any, Context], Any]
_CHECK = "relay.config.check"
_DOC = "relay.config.doc"


def setting(default: T, check: Check, doc: str = "") -> T:
    """Declare a config key: its default and the check that validates and converts its value."""
    return field(default=default, metadata={_CHECK: check, _DOC: doc})


def section(cls: Callable[[], T], doc: str = "") -> T:
    """Declare a nested block whose keys are the fields of dataclass `cls`."""
    return field(default_factory=cls, metadata={_CHECK: _section_check(cls), _DOC: doc})


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def _section_check(cls: Callable[[], T]) -> Check:
    def check(value: Any, ctx: Context) -> T:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            ctx.fail(f"must be a mapping of keys, got {_type_name(value)}")
        return build_section(cls, value, ctx)

    return check


def build_section(cls: Callable[[], T], raw: Mapping[Any, Any], ctx: Context) -> T:
    """Validate mapping `raw` against dataclass `cls` and return the instance."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    known = [name for name, f in fields.items() if _CHECK in f.metadata]
    for key in raw:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            suggestion = (
                f"; did you mean '{hint[0]}'?" if hint else f"; known keys: {', '.join(known)}"
            )
            ctx.child(str(key)).fail(f"unknown key{suggestion}")
    values: dict[str, Any] = {}
    for name in known:
        if name in raw:
            values[name] = fields[name].metadata[_CHECK](raw[name], ctx.child(name))
    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if validate is not None:
        problem = validate()
        if problem is not None:
            key, message = problem
            (ctx.child(key) if key else ctx).fail(message)
    return instance


# --- checks -----------------------------------------------------------------------------------


def string(value: Any, ctx: Context) -> str:
    if not isinstance(value, str):
        ctx.fail(f"must be a string, got {_type_name(value)}")
    if not value.strip():
        ctx.fail("must not be empty")
    return value


def optional(check: Check) -> Check:
    """Allow null (the key is then as if absent) besides what `check` accepts."""

    def run(value: Any, ctx: Context) -> Any:
        return None if value is None else check(value, ctx)

    return run


def integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    def check(value: Any, ctx: Context) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            ctx.fail(f"must be an integer, got {_type_name(value)}")
        if minimum is not None and value < minimum:
            ctx.fail(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            ctx.fail(f"must be at most {maximum}, got {value}")
        return value

    return check


def port_check(*, allow_zero: bool = False) -> Check:
    low = 0 if allow_zero else 1

    def check(value: Any, ctx: Context) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            ctx.fail(f"must be a port number ({low}-65535), got {_type_name(value)}")
        if not low <= value <= 65535:
            ctx.fail(f"must be a port number ({low}-65535), got {value}")
        return value

    return check


def seconds(value: Any, ctx: Context) -> float:
    """A positive duration in seconds: a number, or a string like `30s`, `5m`, `1h`."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", value)
        if not match:
            ctx.fail(f"must be a number of seconds or a duration like '30s', '5m', got {value!r}")
        scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]
        value = float(match.group(1)) * scale
    if isinstance(value, bool) or not isinstance(value, int | float):
        ctx.fail(f"must be a number of seconds, got {_type_name(value)}")
    if value <= 0:
        ctx.fail(f"must be more than 0 seconds, got {value}")
    return float(value)


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
}


def size(value: Any, ctx: Context) -> int:
    """A positive byte count: an integer, or a string like `10MiB`, `512KiB`, `20MB`."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if not match or unit not in _SIZE_UNITS:
            ctx.fail(f"must be a number of bytes or a size like '10MiB', '20MB', got {value!r}")
        value = int(match.group(1)) * _SIZE_UNITS[unit]
    if isinstance(value, bool) or not isinstance(value, int):
        ctx.fail(f"must be a number of bytes, got {_type_name(value)}")
    if value <= 0:
        ctx.fail(f"must be more than 0 bytes, got {value}")
    return value


def boolean(value: Any, ctx: Context) -> bool:
    if not isinstance(value, bool):
        ctx.fail(f"must be true or false, got {_type_name(value)}")
    return value


def choice(*options: str) -> Check:
    def check(value: Any, ctx: Context) -> str:
        if value not in options:
            ctx.fail(f"must be one of {', '.join(options)}; got {value!r}")
        return str(value)

    return check


E = TypeVar("E", bound=enum.Enum)  # any enum: Action, Category, Severity, ...


def enum_value(enum_cls: type[E]) -> Callable[[Any, Context], E]:
    names = [member.value for member in enum_cls]

    def check(value: Any, ctx: Context) -> E:
        if not isinstance(value, str) or value not in names:
            ctx.fail(f"must be one of {', '.join(names)}; got {value!r}")
        return enum_cls(value)

    return check


def host_check(value: Any, ctx: Context) -> str:
    """An IP address or a DNS name (letters, digits, hyphens, dots)."""
    text = string(value, ctx)
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    label = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
    if len(text) > 253 or not re.fullmatch(rf"{label}(\.{label})*\.?", text):
        ctx.fail(f"must be an IP address or a host name, got {text!r}")
    return text


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def cidr(value: Any, ctx: Context) -> IPNetwork:
    """A network like `127.0.0.0/8` or `::1/128`; a bare address is a network of one host."""
    text = string(value, ctx)
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        ctx.fail(f"must be an IP network like 192.0.2.0/24 or an address, got {text!r}")


def list_of(check: Check, *, min_items: int = 0) -> Check:
    def run(value: Any, ctx: Context) -> tuple[Any, ...]:
        if not isinstance(value, list):
            ctx.fail(f"must be a list, got {_type_name(value)}")
        if len(value) < min_items:
            ctx.fail(f"must list at least {min_items} item{'s' if min_items > 1 else ''}")
        return tuple(check(item, ctx.child(i)) for i, item in enumerate(value))

    return run


def mapping_of(key_check: Check, value_check: Check) -> Check:
    def run(value: Any, ctx: Context) -> Mapping[Any, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            ctx.fail(f"must be a mapping, got {_type_name(value)}")
        out = {}
        for key, item in value.items():
            child = ctx.child(str(key))
            out[key_check(key, child)] = value_check(item, child)
        return _FrozenMap(out)

    return run


class _FrozenMap(dict[Any, Any]):
    """A dict that refuses changes, so a frozen Config stays frozen all the way down."""

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("configuration mappings are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=repr)))


def fs_path(
    *, kind: str = "any", must_exist: bool = False, parent_must_exist: bool = False
) -> Check:
    """A filesystem path resolved against the config folder.

    `kind` is `file`, `dir` or `any`; with `must_exist` the path has to be there (and be
    readable); with `parent_must_exist` only its folder has to exist (files created later).
    An existing path of the wrong kind is always an error.
    """

    def check(value: Any, ctx: Context) -> Path:
        text = string(value, ctx)
        resolved = (ctx.base_dir / Path(text).expanduser()).resolve()
        if resolved.exists():
            if kind == "file" and not resolved.is_file():
                ctx.fail(f"{resolved} is not a file")
            if kind == "dir" and not resolved.is_dir():
                ctx.fail(f"{resolved} is not a folder")
            if must_exist and not os.access(resolved, os.R_OK):
                ctx.fail(f"{resolved} is not readable")
        elif must_exist:
            ctx.fail(f"{resolved} does not exist")
        elif parent_must_exist and not resolved.parent.is_dir():
            ctx.fail(f"folder {resolved.parent} does not exist")
        return resolved

    return check


@dataclass(frozen=True)
class Secret:
    """A secret read from a file; its value never appears in repr, str or error messages."""

    source: Path
    value: str = field(repr=False, compare=False)

    def __str__(self) -> str:
        return f"<secret from {self.source}>"

    def reveal(self) -> str:
        return self.value


def secret_file(value: Any, ctx: Context) -> Secret:
    """A file holding one secret (a password); one trailing line break is ignored."""
    file_path: Path = fs_path(kind="file", must_exist=True)(value, ctx)
    try:
        content = file_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        # Only the error class and path: an exception text could quote the content.
        ctx.fail(f"cannot read {file_path} ({type(exc).__name__})")
    content = content.removesuffix("\n").removesuffix("\r")
    if not content:
        ctx.fail(f"{file_path} is empty")
    if "\n" in content or "\r" in content:
        ctx.fail(f"{file_path} must hold the secret on one line")
    return Secret(file_path, content)


def audit_target(value: Any, ctx: Context) -> Path | None:
    """`-` means stdout (None); anything else is a file path whose folder must exist."""
    if value == "-":
        return None
    resolved: Path = fs_path(kind="file", parent_must_exist=True)(value, ctx)
    if resolved.exists() and not os.access(resolved, os.W_OK):
        ctx.fail(f"{resolved} is not writable")
    if not resolved.exists() and not os.access(resolved.parent, os.W_OK):
        ctx.fail(f"folder {resolved.parent} is not writable")
    return resolved


# ---------------------------------------------------------------------------------------------
# The schema
# ---------------------------------------------------------------------------------------------


def bundled_rules_path() -> Path:
    """The rule packs shipped with outbox-relay (inside the wheel, or `rules/` in a checkout)."""
    here = Path(__file__).resolve().parent
    packaged = here / "_bundled_rules"
    return packaged if packaged.is_dir() else here.parent / "rules"


@dataclass(frozen=True)
class ListenConfig:
    host: str = setting("127.0.0.1", host_check, "address to listen on (needs a restart to change)")
    port: int = setting(10025, port_check(allow_zero=True), "port to listen on; 0 picks a free one")
    hostname: str | None = setting(
        None, optional(host_check), "name in the greeting; default: this machine's FQDN"
    )
    allowed_clients: tuple[IPNetwork, ...] = setting(
        (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        list_of(cidr),
        "client networks (CIDR) that may connect; others get 554 5.7.1; default: loopback",
    )
    bare_line_endings: str = setting(
        "reject",
        choice("reject", "normalize"),
        "a bare CR or LF in DATA: reject (550 5.5.2, blocks smuggling) or normalize to CRLF",
    )

    tls_cert: Path | None = setting(
        None, optional(fs_path(kind="file", must_exist=True)), "certificate (PEM) for STARTTLS"
    )
    tls_key: Path | None = setting(
        None, optional(fs_path(kind="file", must_exist=True)), "private key (PEM) of tls_cert"
    )
    require_tls: bool = setting(False, boolean, "clients must STARTTLS before MAIL (else 530)")
    workers: int = setting(
        0,
        integer(0, 64),
        "relay processes accepting on one port; 0: one per CPU (needs a restart)",
    )

    @property
    def effective_workers(self) -> int:
        """How many relay processes `workers` asks for (0: one per CPU this process may use)."""
        if self.workers:
            return self.workers
        return max(1, len(os.sched_getaffinity(0)))

    def validate(self) -> tuple[str, str] | None:
        if (self.tls_cert is None) != (self.tls_key is None):
            return "tls_cert", "listen.tls_cert and listen.tls_key go together"
        if self.require_tls and self.tls_cert is None:
            return "require_tls", "needs listen.tls_cert and listen.tls_key"
        return None

    def allows(self, address: str | None) -> bool:
        """True when a client at `address` may connect (unknown peers, e.g. sockets, may not)."""
        if address is None:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.allowed_clients)


UPSTREAM_TLS = ("none", "starttls", "tls")


@dataclass(frozen=True)
class UpstreamConfig:
    host: str | None = setting(None, optional(host_check), "the smarthost (or set `maildir`)")
    port: int | None = setting(None, optional(port_check()), "default: 465 for tls, else 587")
    tls: str = setting("starttls", choice(*UPSTREAM_TLS), "none | starttls | tls")
    username: str | None = setting(None, optional(string), "AUTH user at the smarthost")
    password_file: Secret | None = setting(
        None, optional(secret_file), "file holding the AUTH password"
    )
    timeout: float = setting(60.0, seconds, "seconds to wait for each upstream reply")
    verify: bool = setting(True, boolean, "verify the smarthost's TLS certificate")
    ca_file: Path | None = setting(
        None, optional(fs_path(kind="file", must_exist=True)), "CA bundle to verify against"
    )
    maildir: Path | None = setting(
        None, optional(fs_path(kind="dir")), "deliver into this Maildir instead (trials, tests)"
    )

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 465 if self.tls == "tls" else 587

    def validate(self) -> tuple[str, str] | None:
        if self.maildir is not None:
            if self.host is not None:
                return "maildir", "set either upstream.host or upstream.maildir, not both"
            for key in ("port", "username", "password_file", "ca_file"):
                if getattr(self, key) is not None:
                    return key, "has no meaning with upstream.maildir"
            return None
        if self.host is None:
            return "", "needs `host` (the smarthost) or `maildir`"
        if self.username is not None and self.password_file is None:
            return "username", "needs upstream.password_file (the two go together)"
        if self.password_file is not None and self.username is None:
            return "password_file", "needs upstream.username (the two go together)"
        if self.username is not None and self.tls == "none":
            return "username", "AUTH over an unencrypted connection; set tls to starttls or tls"
        return None


def password_hash(value: Any, ctx: Context) -> str:
    """A `scrypt$N$R$P$SALT$HASH` string as `outbox-relay hash-password` prints it."""
    from relay.access import parse_hash

    text = string(value, ctx)
    try:
        parse_hash(text)
    except ValueError as exc:
        ctx.fail(str(exc))
    return text


@dataclass(frozen=True)
class AuthUser:
    password_hash: str = setting("", password_hash, "from `outbox-relay hash-password`")
    allowed_senders: tuple[str, ...] = setting(
        (), list_of(string), "MAIL FROM addresses or @domains this user may use; empty: any"
    )

    def validate(self) -> tuple[str, str] | None:
        if not self.password_hash:
            return "password_hash", "is required for every user"
        return None


@dataclass(frozen=True)
class AuthConfig:
    users: Mapping[str, AuthUser] = setting(
        _FrozenMap(), mapping_of(string, _section_check(AuthUser)), "SMTP AUTH users (TLS only)"
    )
    required: bool = setting(False, boolean, "clients must AUTH before MAIL (else 530 5.7.0)")
    failure_delay: float = setting(2.0, seconds, "wait before answering a failed AUTH")
    max_failures: int = setting(3, integer(1), "failed AUTHs before 421 4.7.0 and disconnect")

    def validate(self) -> tuple[str, str] | None:
        if self.required and not self.users:
            return "required", "needs at least one user in auth.users"
        return None


@dataclass(frozen=True)
class QuarantineConfig:
    path: Path = setting(
        Path("/var/lib/outbox-relay/quarantine"),
        fs_path(kind="dir"),
        "the quarantine Maildir (tmp/, new/, cur/ created when missing)",
    )


@dataclass(frozen=True)
class AuditConfig:
    path: Path | None = setting(None, audit_target, '"-" = stdout (journald), else a file')


@dataclass(frozen=True)
class RulesConfig:
    paths: tuple[Path, ...] = setting(
        (bundled_rules_path(),),
        list_of(fs_path(must_exist=True), min_items=1),
        "rule-pack files or folders; default: the bundled packs",
    )
    scan_workers: int = setting(
        0, integer(0, 64), "processes that scan messages; default 0: a thread of the relay's own"
    )


@dataclass(frozen=True)
class PolicyConfig:
    mode: str = setting("enforce", choice("enforce", "monitor"), "monitor: forward all, log")
    default_action: Action = setting(
        Action.QUARANTINE, enum_value(Action), "action for a category not in `actions`"
    )
    actions: Mapping[Category, Action] = setting(
        _FrozenMap(), mapping_of(enum_value(Category), enum_value(Action)), "per-category action"
    )
    reject_min_severity: Severity = setting(
        Severity.HIGH,
        enum_value(Severity),
        "reject only for hits this severe; a milder hit is quarantined instead",
    )


@dataclass(frozen=True)
class LimitsConfig:
    max_message_size: int = setting(10_240_000, size, "bytes; larger messages get 552 5.3.4")
    max_recipients: int = setting(1000, integer(1), "per message; more get 452 4.5.3")
    shutdown_timeout: float = setting(30.0, seconds, "SIGTERM waits this long for sessions")
    max_connections: int = setting(100, integer(1), "client sessions at once; more get 421 4.7.0")
    idle_timeout: float = setting(
        300.0, seconds, "close a session silent this long between commands (421 4.4.2)"
    )
    command_timeout: float = setting(
        600.0, seconds, "for a message to arrive in full after DATA (421 4.4.2)"
    )
    max_header_size: int = setting(102_400, size, "bytes of header block; more get 552 5.3.4")
    max_mime_depth: int = setting(
        10, integer(1), "attached messages within messages; deeper: quarantined (limits)"
    )
    max_mime_parts: int = setting(500, integer(1), "MIME parts per message; more: quarantined")
    scan_timeout: float = setting(
        30.0, seconds, "deadline to parse and scan one message; then quarantined (limits)"
    )
    max_concurrent_scan_size: int = setting(
        32 * 1024 * 1024,
        size,
        "bytes of messages of 1 MiB and over parsed and scanned at once; others wait their turn",
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration; `source` is the file it came from (None when built in code)."""

    listen: ListenConfig = section(ListenConfig)
    upstream: UpstreamConfig = section(UpstreamConfig)
    quarantine: QuarantineConfig = section(QuarantineConfig)
    audit: AuditConfig = section(AuditConfig)
    rules: RulesConfig = section(RulesConfig)
    policy: PolicyConfig = section(PolicyConfig)
    limits: LimitsConfig = section(LimitsConfig)
    auth: AuthConfig = section(AuthConfig)
    source: Path | None = None

    def validate(self) -> tuple[str, str] | None:
        if self.auth.users and self.listen.tls_cert is None:
            return "auth", "AUTH is offered only over TLS: set listen.tls_cert and listen.tls_key"
        # The upstream block has no usable default: say so at the top level, not per key.
        if self.upstream.host is None and self.upstream.maildir is None:
            return "upstream", "is required: set upstream.host (the smarthost) or upstream.maildir"
        return None


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _line_table(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], ctx: Context) -> None:
    """Record the 1-based line of every key and list item; refuse duplicate keys."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = (*path, key)
            if key in seen:
                Context(child, ctx.file, {child: key_node.start_mark.line + 1}).fail(
                    "duplicate key"
                )
            seen.add(key)
            lines[child] = key_node.start_mark.line + 1
            _line_table(value_node, child, lines, ctx)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, index)
            lines[child] = item.start_mark.line + 1
            _line_table(item, child, lines, ctx)


def load_config(config_path: str | os.PathLike[str]) -> Config:
    """Read, validate and return the configuration in `config_path`; raise ConfigError if bad."""
    file = Path(config_path).expanduser().absolute()
    root = Context((), file, {})
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        root.fail("file not found")
    except IsADirectoryError:
        root.fail("is a folder, not a file")
    except PermissionError:
        root.fail("permission denied")
    except (OSError, UnicodeDecodeError) as exc:
        root.fail(f"cannot read: {exc}")
    return parse_config(text, file)


def parse_config(text: str, file: Path) -> Config:
    """Validate YAML `text` as if read from `file` (relative paths resolve against its folder)."""
    root = Context((), file, {})
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[KeyPath, int] = {}
        if node is not None:
            _line_table(node, (), lines, root)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"not valid YAML: {problem}",
            file=str(file),
            line=mark.line + 1 if mark is not None else None,
        ) from None
    finally:
        loader.dispose()
    if data is None:
        root.fail("is empty; at least `upstream` must be set")
    if not isinstance(data, dict):
        root.fail(f"must be a mapping of sections, got {_type_name(data)}")
    # `source` is no setting (it has no check), so a `source:` key in the file is unknown.
    config = build_section(Config, data, Context((), file, lines))
    return dataclasses.replace(config, source=file)


def _access_summary(config: Config) -> str:
    listen, auth = config.listen, config.auth
    parts = [", ".join(str(network) for network in listen.allowed_clients) or "none"]
    if listen.tls_cert is not None:
        parts.append("STARTTLS required" if listen.require_tls else "STARTTLS")
    if auth.users:
        parts.append(f"AUTH {'required' if auth.required else 'offered'} ({len(auth.users)} users)")
    return ", ".join(parts)


def describe(config: Config) -> list[str]:
    """A short, secret-free summary for `check-config` and the start-up log."""
    up = config.upstream
    if up.maildir is not None:
        upstream = f"maildir {up.maildir}"
    else:
        auth = f", AUTH as {up.username}" if up.username else ""
        upstream = f"{up.host}:{up.effective_port} (tls: {up.tls}{auth})"
    return [
        f"listen     {config.listen.host}:{config.listen.port}",
        f"clients    {_access_summary(config)}",
        f"upstream   {upstream}",
        f"quarantine {config.quarantine.path}",
        f"audit      {config.audit.path or '- (stdout)'}",
        f"rules      {', '.join(str(p) for p in config.rules.paths)}",
        f"policy     mode {config.policy.mode}, default action {config.policy.default_action}",
    ]


__all__: Sequence[str] = (
    "AuditConfig",
    "Config",
    "Context",
    "LimitsConfig",
    "ListenConfig",
    "PolicyConfig",
    "QuarantineConfig",
    "RulesConfig",
    "Secret",
    "UpstreamConfig",
    "build_section",
    "describe",
    "load_config",
    "parse_config",
    "section",
    "setting",
)
