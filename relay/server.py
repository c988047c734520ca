"""Server lifecycle: listen on the running event loop, reload on SIGHUP, stop gracefully.

`RelayServer` runs in whatever loop starts it, so tests run a real relay in-process on port 0
and read the bound port from `.port`. SIGTERM (and SIGINT) stop accepting, answer idle sessions
`421`, give transactions in flight `limits.shutdown_timeout` seconds, then close the rest.
SIGHUP reloads the config file and reopens the audit log; a broken new config is logged and the
old one stays in force. The listening address needs a restart to change.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import mmap
import os
import re
import signal
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from relay import audit as events
from relay.access import server_tls_context, verify_password
from relay.audit import AuditLog
from relay.config import Config, load_config
from relay.engine import RuleSet, load_configured_rules
from relay.errors import ConfigError, RelayError
from relay.extract import extract
from relay.forwarder import MaildirForwarder, close_idle_connections, make_forwarder
from relay.handler import RelayHandler, RelaySession, Runtime, ScanFn, clean_scan
from relay.limits import check_extracted
from relay.model import Verdict
from relay.quarantine import QuarantineStore
from relay.scanpool import PooledScanner, close_scanner
from relay.smtpdata import FastDataMixin

IDENT = "outbox-relay ESMTP"
SHUTDOWN_REPLY = "421 4.3.2 Service shutting down, please try again later"
REFUSED_CLIENT = "554 5.7.1 Error: this client may not relay through this server"
TOO_MANY_CONNECTIONS = "421 4.7.0 Error: too many connections, please try again later"
_PENDING = "credentials not checked yet"
# Checked when the user is unknown too, so a reply's timing does not tell which users exist.
_DUMMY_HASH = (
    "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
)
CONTROL_IN_COMMAND = "501 5.5.2 Error: control character in command"
CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# `<local@domain>` in its plainest form (dot-atoms only): what nearly every client sends.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
PLAIN_PATH = re.compile(rf"<((?:{_ATEXT}\.)*{_ATEXT})@((?:[A-Za-z0-9-]+\.)*[A-Za-z0-9-]+)>")
TOO_MANY_AUTH_FAILURES = "421 4.7.0 Error: too many failed authentications, goodbye"
IDLE_TIMEOUT = "421 4.4.2 Error: timeout exceeded, closing the connection"

ScannerFactory = Callable[[Config], ScanFn]
# Set by relay.supervisor for the relay processes it starts: "INDEX/COUNT/FD,FD...".
WORKER_ENV = "OUTBOX_RELAY_WORKER"
# The queue of connections waiting for a worker: asyncio's own default for create_server(),
# as a single relay process listens.
LISTEN_BACKLOG = 100
# How many waiting connections a worker takes at once. On the mix (20 sessions, one message
# per connection, 4 interleaved rounds of 600) 8 did best: median 457 msg/s, against 398
# taking one at a time and 373 taking up to 100.
ACCEPT_BATCH = 8
SESSIONS_ENV = "OUTBOX_RELAY_SESSIONS"
# A worker's note to its supervisor, next to READY=1 after a reload: 1 reloaded, 0 failed.
RELOADED = "X_OUTBOX_RELAY_RELOADED"
# A supervisor's signal to its workers: reopen the audit log, without reloading.
REOPEN_SIGNAL = signal.SIGUSR1


@dataclass(frozen=True)
class WorkerRole:
    """This relay is worker `index` of `count`, accepting on its supervisor's sockets.

    A worker accepts connections from the listening sockets its supervisor opened (their file
    descriptors `fds`, inherited), appends its audit lines to `audit.path` (or writes them to
    standard output, a pipe the supervisor merges into its own), counts its sessions on the
    supervisor's session board `board` (its share of `limits.max_connections` without one),
    and stops when its standard input closes (the supervisor is gone).
    """

    index: int
    count: int
    # The supervisor's session board (see SessionBoard), from SESSIONS_ENV.
    board: str | None = None
    fds: tuple[int, ...] = ()

    def to_env(self) -> str:
        return f"{self.index}/{self.count}/{','.join(map(str, self.fds))}"

    @classmethod
    def from_env(cls) -> WorkerRole | None:
        text = os.environ.get(WORKER_ENV)
        if not text:
            return None
        index, count, fds = text.split("/")
        return cls(
            int(index),
            int(count),
            os.environ.get(SESSIONS_ENV) or None,
            tuple(int(fd) for fd in fds.split(",") if fd),
        )

    def share(self, limit: int) -> int:
        """This worker's part of a limit the config sets for the whole relay."""
        return max(1, math.ceil(limit / self.count))


class SessionBoard:
    """How many sessions each worker has open, in a small file that every worker maps.

    The kernel spreads connections over the workers by a hash, not by load, so a fixed share
    of `limits.max_connections` per worker refused clients while the relay as a whole had
    room. With the board each worker writes only its own slot (no lock needed) and reads the
    others' when a client connects; two workers admitting at the same instant can pass the
    limit by one each, never more.
    """

    _SLOT = struct.Struct("<q")

    def __init__(self, path: str, slot: int, slots: int) -> None:
        with open(path, "r+b") as file:
            self._map = mmap.mmap(file.fileno(), self._SLOT.size * slots)
        self._slot = slot
        self._all = struct.Struct(f"<{slots}q")
        self.publish(0)

    @classmethod
    def create(cls, path: Path, slots: int) -> None:
        """A board of `slots` empty slots at `path` (the supervisor makes it)."""
        path.write_bytes(bytes(cls._SLOT.size * slots))

    @classmethod
    def clear(cls, path: Path, slot: int) -> None:
        """Empties a slot (its worker has died) without mapping the board."""
        with open(path, "r+b") as file:
            file.seek(cls._SLOT.size * slot)
            file.write(bytes(cls._SLOT.size))

    def publish(self, sessions: int) -> None:
        self._SLOT.pack_into(self._map, self._SLOT.size * self._slot, sessions)

    def others(self) -> int:
        """Sessions open in the other workers."""
        counts: tuple[int, ...] = self._all.unpack_from(self._map)
        return sum(counts) - counts[self._slot]


# aiosmtpd answers a few limits itself with bare codes; clients get the enhanced ones.
REPLY_REWRITES = {
    "552 Error: Too much mail data": "552 5.3.4 Error: message exceeds the size limit",
    "552 Error: message size exceeds fixed maximum message size": (
        "552 5.3.4 Error: message exceeds the size limit"
    ),
    "500 Command line too long": "500 5.5.2 Error: command line too long",
    "500 Error: bad syntax": "500 5.5.2 Error: bad syntax",
    "500 Error: strict ASCII mode": "500 5.5.2 Error: non-ASCII command without SMTPUTF8",
}


def sd_notify(*states: str) -> None:
    """Tell systemd about our state (`READY=1`, ...) when it asked via NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # abstract socket namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError as exc:
        print(f"outbox-relay: cannot notify systemd: {exc}", file=sys.stderr)


def _monotonic_usec() -> str:
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


class RuleScanner:
    """A ScanFn: extraction within the MIME limits, then every rule, in the calling thread.

    Pure and linear in the message size, so the handler may run it on the event loop for
    small messages (Runtime.inline_scan).
    """

    def __init__(self, ruleset: RuleSet, max_depth: int, max_parts: int) -> None:
        self.ruleset = ruleset
        self.max_depth = max_depth
        self.max_parts = max_parts

    def __call__(self, data: bytes) -> Verdict:
        extracted = extract(data, max_depth=self.max_depth, max_parts=self.max_parts)
        return self.ruleset.evaluate(check_extracted(extracted))


def rules_scanner(config: Config) -> ScanFn:
    """Scan with the rule packs in `rules.paths`; a broken pack raises RuleError.

    The returned callable is pure and thread-safe (the handler runs it off the event loop):
    extraction, then every rule against every part: in the calling thread (a RuleScanner),
    or in `rules.scan_workers` worker processes (relay.scanpool) when that is above 0.
    """
    ruleset = load_configured_rules(config.rules.paths)
    limits = config.limits
    if config.rules.scan_workers > 0:
        return PooledScanner(
            ruleset,
            config.rules.paths,
            config.rules.scan_workers,
            max_depth=limits.max_mime_depth,
            max_parts=limits.max_mime_parts,
        )
    return RuleScanner(ruleset, limits.max_mime_depth, limits.max_mime_parts)


def clean_scanner(config: Config) -> ScanFn:
    """Every message scans clean: for tests of the mail path that do not need the rules."""
    return clean_scan


class RelaySMTP(FastDataMixin, SMTP):
    """aiosmtpd's protocol with session bookkeeping for the audit log and graceful shutdown."""

    def __init__(self, handler: RelayHandler, relay: RelayServer, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.relay_handler = handler
        self.relay = relay
        self.in_data = False
        self.refusal: str | None = None
        self.auth_failures = 0  # per connection: STARTTLS starts a new aiosmtpd session
        self._reply_lines: list[bytes] = []  # the first lines of a multi-line reply
        self.normalize_line_endings = relay.config.listen.bare_line_endings == "normalize"
        self.max_header_size = relay.config.limits.max_header_size
        self.data_timeout = relay.config.limits.command_timeout

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's MAIL/RCPT address parser, with a fast path for plain `<local@domain>`.

        aiosmtpd builds a class and runs the email package's header parser for every address
        (about 45 us, twice per message). For a plain path the result is the same as its:
        the address, and the rest after the `>` and the spaces (and comments) that follow it;
        anything else (null sender, quoting, comments, routes) takes aiosmtpd's own path.
        """
        match = PLAIN_PATH.match(arg)
        if match is None:
            return super()._getaddr(arg)
        if self.local_part_limit and len(match.group(1)) > self.local_part_limit:
            return None, None
        rest = arg[match.end() :]
        if rest[:1] in (" ", "\t"):
            rest = rest.lstrip()
        if rest[:1] == "(":  # a comment: the email package's rules decide
            return super()._getaddr(arg)
        return f"{match.group(1)}@{match.group(2)}", rest

    def __dir__(self) -> Iterable[str]:
        # aiosmtpd finds the commands and AUTH mechanisms with dir() and inspect.getmembers()
        # on every new connection; evaluating every attribute cost about 0.1 ms each time.
        return _COMMAND_NAMES

    def _create_session(self) -> RelaySession:
        return RelaySession(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        previous = self.session
        super().connection_made(transport)
        session = self.session
        assert isinstance(session, RelaySession)
        if isinstance(previous, RelaySession):
            # STARTTLS starts a fresh aiosmtpd session; it is still the same client connection.
            session.session_id = previous.session_id
            session.started = previous.started
            session.messages = previous.messages
            return
        refusal = self.relay.admission(session)
        if refusal is not None:
            # Answered and closed by _handle_client; never one of the relay's sessions.
            self.refusal = refusal
            self.relay_handler.session_refused(session, refusal)
            return
        self.relay.sessions.add(self)
        self.relay.sessions_changed()
        self.relay_handler.session_started(session)

    async def _handle_client(self) -> None:
        if self.refusal is None:
            await super()._handle_client()
            return
        with contextlib.suppress(ConnectionError):
            await self.push(self.refusal)
        if self.transport is not None:
            self.transport.close()

    def _timeout_cb(self) -> None:
        if self.processing_data:
            # The client waits for our reply to DATA: that is not the client being idle.
            self._reset_timeout()
            return
        if self.transport is not None:
            self._writer.write(IDLE_TIMEOUT.encode() + b"\r\n")
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    # aiosmtpd checks credentials synchronously, on the event loop; scrypt is slow on purpose.
    # So its check only hands the credentials back, and these do the real one in a thread.
    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        return AuthResult(success=False, handled=False, auth_data=auth_data, message=_PENDING)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._check_credentials("PLAIN", await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._check_credentials("LOGIN", await super().auth_LOGIN(_, args))

    async def _check_credentials(self, mechanism: str, result: AuthResult) -> AuthResult:
        if result.message != _PENDING or not isinstance(result.auth_data, LoginPassword):
            return result
        login, password = result.auth_data.login, result.auth_data.password
        user = login.decode("utf-8", "replace")
        auth = self.relay.config.auth
        entry = auth.users.get(user)
        stored = entry.password_hash if entry is not None else _DUMMY_HASH
        valid = await asyncio.to_thread(verify_password, password, stored)
        if entry is not None and valid:
            # Keep the login only: the session must not carry the password around.
            return AuthResult(success=True, auth_data=LoginPassword(login, b""))
        assert isinstance(self.session, RelaySession)
        self.relay_handler.authentication_failed(self.session, user, mechanism)
        await asyncio.sleep(auth.failure_delay)  # slows guessing without blocking others
        self.auth_failures += 1
        if self.auth_failures >= auth.max_failures and self.transport is not None:
            await self.push(TOO_MANY_AUTH_FAILURES)
            self.transport.close()
            return AuthResult(success=False, handled=True)  # answered already
        return AuthResult(success=False, handled=False)

    def data_refused(self, reply: str, received: int) -> None:
        assert isinstance(self.session, RelaySession)
        self.relay_handler.data_refused(self.session, self.envelope, reply, received)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if self in self.relay.sessions:
            self.relay.sessions.discard(self)
            self.relay.sessions_changed()
            assert isinstance(self.session, RelaySession)
            self.relay_handler.session_ended(self.session)
            if not self.relay.sessions:
                self.relay.all_sessions_closed.set()

    async def push(self, status: AnyStr) -> None:
        """aiosmtpd's push, with the lines of a multi-line reply (EHLO's) sent in one write.

        Each write is a send() on the socket (and, on loopback, a wake-up of the client):
        EHLO's six lines cost five more of those per session than its one reply needs.
        """
        if isinstance(status, str):
            status = REPLY_REWRITES.get(status, status)
            response = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        else:
            response = status
        if response[3:4] == b"-":
            # Not the reply's last line, which aiosmtpd pushes right after without waiting.
            self._reply_lines.append(response)
            return
        if self._reply_lines:
            response = b"\r\n".join([*self._reply_lines, response])
            self._reply_lines.clear()
        self._writer.write(response + b"\r\n")
        await self._writer.drain()

    async def smtp_DATA(self, arg: str) -> None:
        self.in_data = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self.in_data = False
        if self.relay.stopping and self.transport is not None:
            await self.push(SHUTDOWN_REPLY)
            self.transport.close()

    @property
    def handler_task(self) -> asyncio.Task[None] | None:
        """The task running this session's commands (aiosmtpd keeps it private)."""
        task: asyncio.Task[None] | None = self._handler_coroutine
        return task

    @property
    def idle(self) -> bool:
        """True between transactions: closing now loses nothing the client thinks was sent."""
        return not self.in_data and (self.envelope is None or self.envelope.mail_from is None)

    def close_idle(self) -> None:
        if self.transport is not None:
            self._writer.write(SHUTDOWN_REPLY.encode() + b"\r\n")
            self.transport.close()


def _refusing_control_characters(method: Any) -> Any:
    """Wrap a command: an argument with a NUL, CR or other control character gets 501."""

    @functools.wraps(method)  # keeps aiosmtpd's syntax notes, which HELP shows
    async def guarded(self: RelaySMTP, arg: str | None) -> None:
        if arg is not None and CONTROL_CHARACTER.search(arg):
            await self.push(CONTROL_IN_COMMAND)
            return
        await method(self, arg)

    return guarded


# Every command, wrapped once for the class instead of once per connection.
for _name in [name for name in dir(RelaySMTP) if name.startswith("smtp_")]:
    setattr(RelaySMTP, _name, _refusing_control_characters(getattr(RelaySMTP, _name)))
_COMMAND_NAMES = tuple(name for name in dir(RelaySMTP) if name.startswith(("smtp_", "auth_")))


class RelayServer:
    """One running relay: listener, handler, forwarder and audit log, for one config.

    `make_scanner(config)` builds the scanning callable, again on every reload; by default
    the rule packs in `rules.paths` (`clean_scanner` skips them, for tests).
    """

    def __init__(
        self,
        config: Config,
        *,
        make_scanner: ScannerFactory = rules_scanner,
        worker: WorkerRole | None = None,
    ) -> None:
        self.config = config
        self.make_scanner = make_scanner
        self.worker = worker
        self.sessions: set[RelaySMTP] = set()
        self.board = (
            SessionBoard(worker.board, worker.index - 1, worker.count)
            if worker is not None and worker.board is not None
            else None
        )
        self.all_sessions_closed = asyncio.Event()
        self.stopping = False
        self.stopped = asyncio.Event()
        self.hostname = config.listen.hostname or ""
        self.port = 0
        self._servers: list[asyncio.Server] = []
        self._runtime: Runtime | None = None
        self._handler: RelayHandler | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._tls_context: ssl.SSLContext | None = None
        self._reload_lock = asyncio.Lock()

    # --- building blocks ---

    @property
    def runtime(self) -> Runtime:
        assert self._runtime is not None, "RelayServer.start() has not run"
        return self._runtime

    @property
    def handler(self) -> RelayHandler:
        assert self._handler is not None, "RelayServer.start() has not run"
        return self._handler

    @property
    def audit(self) -> AuditLog:
        return self.runtime.audit

    def _build_runtime(self, config: Config, audit: AuditLog) -> Runtime:
        """Everything that depends on the config; raises RelayError if any of it is unusable."""
        forwarder = make_forwarder(config.upstream, local_hostname=self.hostname)
        if isinstance(forwarder, MaildirForwarder):
            try:
                forwarder.ensure_folders()
            except OSError as exc:
                raise ConfigError(
                    f"cannot create the Maildir: {exc.strerror}", key_path="upstream.maildir"
                ) from exc
        scan = self.make_scanner(config)
        try:
            quarantine = self._build_quarantine(config)
        except BaseException:
            close_scanner(scan)
            raise
        return Runtime(
            config=config,
            forwarder=forwarder,
            audit=audit,
            scan=scan,
            quarantine=quarantine,
            # A PooledScanner waits for its worker processes: it must stay off the loop.
            inline_scan=isinstance(scan, RuleScanner),
        )

    def _build_quarantine(self, config: Config) -> QuarantineStore:
        """The quarantine store, its folders created now so a bad path stops start or reload."""
        store = QuarantineStore(config.quarantine.path, hostname=self.hostname)
        try:
            store.ensure_folders()
        except OSError as exc:
            raise ConfigError(
                f"cannot create the quarantine Maildir: {exc.strerror}", key_path="quarantine.path"
            ) from exc
        return store

    def _open_audit(self, config: Config) -> AuditLog:
        # Workers too append to `audit.path` themselves, whole lines per write (relay.audit);
        # without one, their standard output is a pipe their supervisor merges.
        try:
            return AuditLog(config.audit.path)
        except OSError as exc:
            raise ConfigError(f"cannot open: {exc.strerror}", key_path="audit.path") from exc

    @staticmethod
    def _load_tls(config: Config) -> ssl.SSLContext | None:
        listen = config.listen
        if listen.tls_cert is None or listen.tls_key is None:
            return None
        return server_tls_context(listen.tls_cert, listen.tls_key)

    def _protocol(self) -> RelaySMTP:
        assert self._handler is not None
        config = self.runtime.config
        return RelaySMTP(
            self._handler,
            self,
            hostname=self.hostname,
            ident=IDENT,
            data_size_limit=config.limits.max_message_size,
            timeout=config.limits.idle_timeout,
            tls_context=self._tls_context,
            require_starttls=config.listen.require_tls,
            auth_required=config.auth.required,
            auth_require_tls=True,
            # No users, no AUTH: aiosmtpd would otherwise offer it and fail every attempt.
            auth_exclude_mechanism=[] if config.auth.users else ["PLAIN", "LOGIN"],
            loop=asyncio.get_running_loop(),
        )

    def admission(self, session: RelaySession) -> str | None:
        """The reply refusing a new connection, or None to let it in."""
        config = self.runtime.config
        if not config.listen.allows(session.client):
            return REFUSED_CLIENT
        limit = config.limits.max_connections
        open_now = len(self.sessions)
        if self.board is not None:
            open_now += self.board.others()
        elif self.worker is not None:
            limit = self.worker.share(limit)
        if open_now >= limit:
            return TOO_MANY_CONNECTIONS
        return None

    def sessions_changed(self) -> None:
        """Tells the other workers how many sessions this one has open."""
        if self.board is not None:
            self.board.publish(len(self.sessions))

    # --- lifecycle ---

    async def start(self) -> None:
        """Listen on `listen.host:listen.port`; afterwards `.port` is the bound port."""
        loop = asyncio.get_running_loop()
        if not self.hostname:
            # getfqdn can wait on DNS: look it up once, off the loop, not per connection.
            self.hostname = await asyncio.to_thread(socket.getfqdn)
        audit = self._open_audit(self.config)
        try:
            self._runtime = self._build_runtime(self.config, audit)
            self._tls_context = self._load_tls(self.config)
        except BaseException:
            audit.close()
            raise
        self._handler = RelayHandler(
            self._runtime, workers=self.worker.count if self.worker is not None else 1
        )
        listen = self.config.listen
        try:
            if self.worker is None:
                self._servers = [await loop.create_server(self._protocol, listen.host, listen.port)]
            else:
                if not self.worker.fds:
                    raise RelayError("a relay worker needs its supervisor's listening sockets")
                # A socket of its own on the supervisor's listening socket: every worker
                # accepts from the same queue, and closing ours leaves the others listening.
                # asyncio accepts up to `backlog` connections each time the socket is ready:
                # a few, or the first worker to wake would take a whole burst (then listen()
                # again, for the queue the supervisor asked for).
                for fd in self.worker.fds:
                    shared = socket.socket(fileno=os.dup(fd))
                    server = await loop.create_server(
                        self._protocol, sock=shared, backlog=ACCEPT_BATCH
                    )
                    self._servers.append(server)
                    shared.listen(LISTEN_BACKLOG)
        except BaseException:
            for server in self._servers:
                server.close()
            close_scanner(self._runtime.scan)
            audit.close()
            raise
        self.port = self._servers[0].sockets[0].getsockname()[1]

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let transactions in flight finish within `grace` seconds, then close.

        `grace` defaults to `limits.shutdown_timeout`.
        """
        if not self._servers:
            return
        if self.stopping:
            await self.stopped.wait()
            return
        self.stopping = True
        sd_notify("STOPPING=1")
        if grace is None:
            grace = self.config.limits.shutdown_timeout
        for server in self._servers:
            server.close()
        for protocol in list(self.sessions):
            if protocol.idle:
                protocol.close_idle()
        if self.sessions:
            self.all_sessions_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_sessions_closed.wait(), grace)
        handlers = [p.handler_task for p in self.sessions if p.handler_task is not None]
        for protocol in list(self.sessions):
            if protocol.transport is not None:
                protocol.transport.close()
        if handlers:
            # Closing cancels each session's task; let them log what they were doing.
            await asyncio.wait(handlers, timeout=5)
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1)
        await close_idle_connections(self.runtime.forwarder)
        close_scanner(self.runtime.scan)
        # Let audit lines scheduled right after a final reply reach the queue.
        for _ in range(3):
            await asyncio.sleep(0)
        await asyncio.to_thread(self.audit.close)
        self.stopped.set()

    async def reload(self) -> bool:
        """Re-read the config file; on any error keep the running config and log why."""
        async with self._reload_lock:  # two quick SIGHUPs reload one after the other
            old = self.runtime
            source = self.config.source
            started = time.monotonic()
            sd_notify("RELOADING=1", _monotonic_usec())
            reloaded = False
            try:
                reloaded = await self._reload(old, source, started)
                return reloaded
            finally:
                if self.worker is None:
                    sd_notify("READY=1")
                else:  # the supervisor logs one config.reload once every worker has
                    sd_notify("READY=1", f"{RELOADED}={int(reloaded)}")

    async def _reload(self, old: Runtime, source: Path | None, started: float) -> bool:
        if source is None:
            old.audit.emit(
                events.EVENT_CONFIG_RELOAD_FAILED, error="config was not loaded from a file"
            )
            return False
        new_audit: AuditLog | None = None
        try:
            config = await asyncio.to_thread(load_config, source)
            if config.audit.path != old.config.audit.path:
                new_audit = self._open_audit(config)
            runtime = await asyncio.to_thread(self._build_runtime, config, new_audit or old.audit)
            tls_context = await asyncio.to_thread(self._load_tls, config)
        except Exception as exc:  # whatever broke, the running config stays in force
            if new_audit is not None:
                new_audit.close()
            old.audit.reopen()
            reason = str(exc) if isinstance(exc, RelayError) else f"{type(exc).__name__}: {exc}"
            old.audit.emit(events.EVENT_CONFIG_RELOAD_FAILED, file=str(source), error=reason)
            return False
        restart_needed = [
            f"listen.{key}"
            for key in ("host", "port", "hostname", "workers")
            if getattr(config.listen, key) != getattr(self.config.listen, key)
        ]
        self.config = config
        self._runtime = runtime
        self._tls_context = tls_context
        assert self._handler is not None
        self._handler.runtime = runtime
        # The old forwarder's pooled upstream connections point at the old upstream.
        self._spawn(lambda: close_idle_connections(old.forwarder))
        close_scanner(old.scan)
        if new_audit is not None:
            await asyncio.to_thread(old.audit.close)
        else:
            runtime.audit.reopen()
        if self.worker is not None:
            return True
        runtime.audit.emit(
            events.EVENT_CONFIG_RELOAD,
            file=str(source),
            restart_needed=restart_needed,
            duration_ms=round((time.monotonic() - started) * 1000),
        )
        return True

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop gracefully, SIGHUP reloads; call once from the serving loop."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._spawn, self.stop)
        loop.add_signal_handler(signal.SIGINT, self._spawn, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._spawn, self.reload)
        if self.worker is not None:
            # From the supervisor, after a SIGHUP it could not reload with (logrotate ran).
            loop.add_signal_handler(REOPEN_SIGNAL, lambda: self.audit.reopen())

    def _watch_supervisor(self) -> None:
        """Stop when standard input (a pipe from the supervisor) closes: it is gone."""
        loop = asyncio.get_running_loop()
        fd = sys.stdin.fileno()

        def readable() -> None:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(fd)
                self._spawn(self.stop)

        loop.add_reader(fd, readable)

    def _spawn(self, action: Callable[[], Any]) -> None:
        task = asyncio.get_running_loop().create_task(action())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def serve(self, *, ready: Callable[[RelayServer], None] | None = None) -> None:
        """Start, handle signals, and return once a signal has stopped the relay."""
        await self.start()
        self.install_signal_handlers()
        if self.worker is not None:
            # Our servers listen on copies; the inherited descriptors would keep the port
            # listening after stop() closed them, queueing connections nobody will answer.
            for fd in self.worker.fds:
                os.close(fd)
            self._watch_supervisor()
        sd_notify("READY=1", f"STATUS=listening on {self.config.listen.host}:{self.port}")
        if ready is not None:
            ready(self)
        await self.stopped.wait()


def announce(server: RelayServer) -> None:
    """Start-up note on stderr (stdout may be the audit log)."""
    print(
        f"outbox-relay: listening on {server.config.listen.host}:{server.port}",
        file=sys.stderr,
        flush=True,
    )
