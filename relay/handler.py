"""The SMTP handler: aiosmtpd hooks that turn each transaction into a decision and a reply.

Every path returns a deliberate reply code; anything unexpected becomes `451 4.3.0` plus an
`error` audit event, never aiosmtpd's default 500. The message's canonical audit line is
written after its final reply. Scanning is an injected callable, run off the event loop;
a scanner that declares itself pure and linear in the message size (`Runtime.inline_scan`)
scans messages up to INLINE_SCAN_SIZE on the loop itself, where the hand-off to a thread and
back cost more CPU than many small scans (limits.run_inline keeps `scan_timeout` honest).
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from relay import audit as events
from relay.access import sender_allowed
from relay.audit import AuditLog
from relay.config import Config
from relay.errors import QuarantineError, UpstreamError
from relay.forwarder import DeliveryFailed, Forwarder
from relay.limits import LimitExceeded, ScanGate, run_inline, run_within
from relay.model import CLEAN, Action, Verdict
from relay.policy import decide, reject_reply, tagged
from relay.quarantine import QuarantineStore

ScanFn = Callable[[bytes], Verdict]

TEMPORARY_FAILURE = "451 4.3.0 Error: internal error, please try again later"
QUARANTINE_FAILURE = "451 4.3.0 Error: cannot hold the message for review, please try again later"
MAX_SUBJECT = 200
# The audit-line fields a quarantined message's sidecar keeps for `quarantine show`/`release`.
QUARANTINE_META_KEYS = (
    "session_id",
    "client",
    "auth_user",
    "mail_from",
    "rcpt_to",
    "message_id",
    "subject",
    "size",
    "verdict",
    "categories",
    "rules_version",
)
SENDER_NOT_ALLOWED = "553 5.7.1 Error: sender address not allowed for this user"
# Largest message scanned on the event loop (when the scanner allows it): 2-3 ms of
# extraction and rules for 50 KB of text+HTML, while a thread would hold the GIL as long.
INLINE_SCAN_SIZE = 64 * 1024


def clean_scan(data: bytes) -> Verdict:
    """The scanner used until the rule engine is wired in: every message is clean."""
    return CLEAN


def new_id() -> str:
    """A short, unique, log-friendly id for a session or a message."""
    return secrets.token_hex(6).upper()


@dataclass(frozen=True)
class Runtime:
    """Everything a transaction needs, swapped as one piece when SIGHUP reloads the config."""

    config: Config
    forwarder: Forwarder
    audit: AuditLog
    scan: ScanFn = clean_scan
    quarantine: QuarantineStore | None = None
    # `scan` is pure, never blocks on I/O and takes time linear in the message size: small
    # messages may be scanned on the event loop (INLINE_SCAN_SIZE).
    inline_scan: bool = False


class RelaySession(Session):
    """aiosmtpd's session plus the id and timing the audit log needs."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.session_id = new_id()
        self.started = time.monotonic()
        self.messages = 0

    @property
    def client(self) -> str | None:
        peer = self.peer
        if isinstance(peer, tuple | list) and peer:
            return str(peer[0])
        return None if peer is None else str(peer)

    @property
    def auth_user(self) -> str | None:
        if not self.authenticated or self.auth_data is None:
            return None
        login = getattr(self.auth_data, "login", self.auth_data)
        return login.decode("utf-8", "replace") if isinstance(login, bytes) else str(login)


def header_summary(data: bytes) -> tuple[str | None, str | None]:
    """Message-ID and Subject (decoded, one line, truncated) for the audit line.

    Plain headers (CRLF lines, no encoded words, a `<left@right>` Message-ID: nearly all
    mail) are read directly, about 20 times faster than the email package's parser; every
    other header block takes that parser (`parsed_header_summary`), so the values are its.
    """
    fast = _plain_header_summary(data)
    return fast if fast is not None else parsed_header_summary(data)


def parsed_header_summary(data: bytes) -> tuple[str | None, str | None]:
    """header_summary() by the email package's parser (policy.default), for any header."""
    # The header parser would decode (copy) the whole body too; it only needs the headers.
    ends = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0]
    head = data[: min(ends) + 1] if ends else data
    try:
        headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(head)
        message_id, subject = headers.get("message-id"), headers.get("subject")
    except Exception:  # a broken header must not cost the message its audit line
        return None, None
    return _summary(str(message_id) if message_id else None, subject)


def _summary(message_id: str | None, subject: str | None) -> tuple[str | None, str | None]:
    subject_text = " ".join(str(subject).split())[:MAX_SUBJECT] if subject is not None else None
    return (message_id.strip() or None) if message_id else None, subject_text


# What the email package's feed parser takes for a header line: a name, then a colon.
_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]*:")
# A Message-ID whose parse is its own text: dot-atoms without `=` (no encoded word) around @.
_ATOM = rb"[A-Za-z0-9!#$%&'*+/?^_`{|}~-]+"
_PLAIN_MESSAGE_ID = re.compile(
    rb"[ \t]*<" + _ATOM + rb"(?:\." + _ATOM + rb")*@" + _ATOM + rb"(?:\." + _ATOM + rb")*>[ \t]*"
)


def _plain_header_summary(data: bytes) -> tuple[str | None, str | None] | None:
    """header_summary() for headers whose parse is plain text; None for any other header.

    Follows the feed parser's reading of a header block: lines up to the first empty one or
    the first that is neither a header nor a continuation; of a repeated field, the first.
    A value's parse (policy.default) is its text with the line breaks removed and, for the
    Subject, undecodable UTF-8 replaced; what could parse otherwise (encoded words, a
    Message-ID in another form, a leading `From ` line, a stray continuation or colon, bare
    CR or LF) is left to the email package.
    """
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        return None
    fields: dict[bytes, bytes] = {}
    name: bytes | None = None
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if name is None:
                return None  # a continuation with no header before it
            if name in fields:
                fields[name] += line
            continue
        if line.startswith(b"From "):
            return None
        match = _HEADER_LINE.match(line)
        if match is None:
            break  # the header block ends here (an empty line or body text)
        if match.end() == 1:
            return None  # a colon with no name: the parser carries on oddly
        name = line[: match.end() - 1].lower()
        if name in (b"message-id", b"subject") and name not in fields:
            fields[name] = line[match.end() :].lstrip(b" \t")
        else:
            name = b""  # continuations of other fields (or of repeats) are not needed
    message_id = fields.get(b"message-id")
    if message_id is not None and _PLAIN_MESSAGE_ID.fullmatch(message_id) is None:
        return None
    subject = fields.get(b"subject")
    if subject is not None and b"=?" in subject:
        return None
    return _summary(
        message_id.decode("ascii") if message_id else None,
        subject.decode("utf-8", "replace") if subject is not None else None,
    )


def _inspect(scan: ScanFn, data: bytes) -> tuple[tuple[str | None, str | None], Verdict]:
    return header_summary(data), scan(data)


class RelayHandler:
    """aiosmtpd handler; `runtime` is replaced as a whole on reload, never mutated."""

    def __init__(self, runtime: Runtime, *, workers: int = 1) -> None:
        # Shared by every transaction, across reloads: how many large messages scan at once.
        # With several relay processes (listen.workers) each gets its share of the budget.
        self.workers = workers
        self.scan_gate = ScanGate(self._scan_budget(runtime))
        self.runtime = runtime

    def _scan_budget(self, runtime: Runtime) -> int:
        return max(1, math.ceil(runtime.config.limits.max_concurrent_scan_size / self.workers))

    def __dir__(self) -> Iterable[str]:
        # aiosmtpd looks for hooks and AUTH mechanisms with dir() and inspect.getmembers() on
        # every new connection, and a method named auth_* would be offered as a mechanism:
        # it sees the hooks only (evaluating every attribute cost 4% of the relay's CPU).
        return _HOOK_NAMES

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    @runtime.setter
    def runtime(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.scan_gate.resize(self._scan_budget(runtime))

    # --- session events (called by the server's protocol, which aiosmtpd has no hook for) ---

    def session_started(self, session: RelaySession) -> None:
        self.runtime.audit.emit(
            events.EVENT_SESSION_CONNECT,
            session_id=session.session_id,
            client=session.client,
        )

    def session_ended(self, session: RelaySession) -> None:
        self.runtime.audit.emit(
            events.EVENT_SESSION_DISCONNECT,
            session_id=session.session_id,
            client=session.client,
            messages=session.messages,
            duration_ms=round((time.monotonic() - session.started) * 1000),
        )

    def session_refused(self, session: RelaySession, reply: str) -> None:
        """A connection answered with `reply` and closed before its greeting."""
        self.runtime.audit.emit(
            events.EVENT_SESSION_REFUSED,
            session_id=session.session_id,
            client=session.client,
            reply=reply,
        )

    def data_refused(
        self, session: RelaySession, envelope: Envelope, reply: str, received: int
    ) -> None:
        """The message line for a DATA payload the protocol refused before scanning it."""
        session.messages += 1
        record: dict[str, Any] = {
            "session_id": session.session_id,
            "queue_id": new_id(),
            "client": session.client,
            "auth_user": session.auth_user,
            "mail_from": envelope.mail_from,
            "rcpt_to": list(envelope.rcpt_tos),
            "message_id": None,
            "subject": None,
            "size": received,
            "verdict": None,
            "categories": [],
            "hits": [],
            "action": "reject",
            "would_action": None,
            "reply": reply,
            "upstream_reply": None,
            "refused": {},
            "duration_ms": 0,
            "rules_version": None,
        }
        self.runtime.audit.emit(events.EVENT_MESSAGE, **record)

    def sender_allowed(self, session: RelaySession, address: str) -> bool:
        """An authenticated user may use only the senders listed for them (if any)."""
        user = session.auth_user
        if user is None:
            return True
        entry = self.runtime.config.auth.users.get(user)
        return entry is not None and sender_allowed(address, entry.allowed_senders)

    def authentication_failed(self, session: RelaySession, user: str, mechanism: str) -> None:
        """Log a failed AUTH: who and how, never the password."""
        self.runtime.audit.emit(
            events.EVENT_ERROR,
            stage="AUTH",
            error="authentication failed",
            session_id=session.session_id,
            client=session.client,
            user=user,
            mechanism=mechanism,
        )

    # --- aiosmtpd hooks ---

    async def handle_MAIL(
        self,
        server: SMTP,
        session: RelaySession,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if not self.sender_allowed(session, address):
            return SENDER_NOT_ALLOWED
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: RelaySession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= self.runtime.config.limits.max_recipients:
            return "452 4.5.3 Error: too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SMTP, session: RelaySession, envelope: Envelope) -> str:
        runtime = self.runtime  # one config for the whole transaction, even across a reload
        started = time.monotonic()
        data = envelope.original_content or b""
        queue_id = new_id()
        session.messages += 1
        record: dict[str, Any] = {
            "session_id": session.session_id,
            "queue_id": queue_id,
            "client": session.client,
            "auth_user": session.auth_user,
            "mail_from": envelope.mail_from,
            "rcpt_to": list(envelope.rcpt_tos),
            "message_id": None,
            "subject": None,
            "size": len(data),
            "verdict": None,
            "categories": [],
            "hits": [],
            "action": None,
            "would_action": None,
            "reply": None,
            "upstream_reply": None,
            "refused": {},
            "duration_ms": None,
            "rules_version": None,
        }
        try:
            reply = await self._process(runtime, envelope, data, queue_id, record)
        except asyncio.CancelledError:
            # The client went away before its reply: log the message, then let aiosmtpd unwind.
            record["duration_ms"] = round((time.monotonic() - started) * 1000)
            record["error"] = "client disconnected before the reply"
            runtime.audit.emit(events.EVENT_MESSAGE, **record)
            raise
        except Exception as exc:
            runtime.audit.emit(
                events.EVENT_ERROR,
                session_id=session.session_id,
                queue_id=queue_id,
                stage="DATA",
                error=f"{type(exc).__name__}: {exc}",
            )
            reply = TEMPORARY_FAILURE
        record["reply"] = reply
        record["duration_ms"] = round((time.monotonic() - started) * 1000)
        # aiosmtpd sends the reply as soon as this hook returns; the line follows it.
        asyncio.get_running_loop().call_soon(
            lambda: runtime.audit.emit(events.EVENT_MESSAGE, **record)
        )
        return reply

    async def _process(
        self,
        runtime: Runtime,
        envelope: Envelope,
        data: bytes,
        queue_id: str,
        record: dict[str, Any],
    ) -> str:
        deadline = runtime.config.limits.scan_timeout
        try:
            if runtime.inline_scan and len(data) <= INLINE_SCAN_SIZE:
                (message_id, subject), verdict = run_inline(
                    lambda: _inspect(runtime.scan, data), deadline
                )
            else:
                (message_id, subject), verdict = await run_within(
                    lambda: _inspect(runtime.scan, data),
                    deadline,
                    gate=self.scan_gate,
                    size=len(data),
                )
        except LimitExceeded as exc:
            return await self._hold_over_limits(runtime, envelope, data, queue_id, record, exc)
        record.update(
            message_id=message_id,
            subject=subject,
            verdict=verdict.label,
            categories=[category.value for category in verdict.categories],
            hits=[hit.as_log() for hit in verdict.hits],
            rules_version=verdict.rules_version or None,
        )
        decision = decide(verdict, runtime.config.policy)
        record.update(
            action=decision.action.value,
            would_action=decision.would_action.value if decision.would_action else None,
        )
        if decision.action is Action.REJECT:
            assert decision.reason is not None
            return reject_reply(decision.reason)
        if decision.action is Action.QUARANTINE:
            return await self._quarantine(runtime, envelope, data, queue_id, record, verdict)
        if decision.action is Action.TAG:
            data = tagged(data, verdict)
        return await self._forward(runtime, envelope, data, queue_id, record)

    async def _quarantine(
        self,
        runtime: Runtime,
        envelope: Envelope,
        data: bytes,
        queue_id: str,
        record: dict[str, Any],
        verdict: Verdict,
    ) -> str:
        """Hold the message for review; 250 only once it and its metadata are on disk."""
        hits = [{**hit.as_report(), "description": hit.description} for hit in verdict.hits]
        failure = await self._hold(runtime, envelope, data, queue_id, record, {"hits": hits})
        if failure is not None:
            record["error"] = str(failure)
            return QUARANTINE_FAILURE
        return f"250 2.0.0 queued as {queue_id}"

    @staticmethod
    async def _hold(
        runtime: Runtime,
        envelope: Envelope,
        data: bytes,
        queue_id: str,
        record: dict[str, Any],
        extra: dict[str, Any],
    ) -> QuarantineError | None:
        """Write the message and its metadata to the quarantine; the error if that failed."""
        meta = {key: record[key] for key in QUARANTINE_META_KEYS}
        meta.update(mail_options=list(envelope.mail_options), **extra)
        try:
            if runtime.quarantine is None:
                raise QuarantineError("no quarantine store configured")
            await runtime.quarantine.hold(queue_id, data, meta)
        except QuarantineError as exc:
            return exc
        return None

    async def _forward(
        self,
        runtime: Runtime,
        envelope: Envelope,
        data: bytes,
        queue_id: str,
        record: dict[str, Any],
    ) -> str:
        assert envelope.mail_from is not None
        try:
            delivery = await runtime.forwarder.deliver(
                envelope.mail_from, envelope.rcpt_tos, data, envelope.mail_options
            )
        except DeliveryFailed as exc:
            record.update(upstream_reply=exc.upstream_reply, refused=exc.refused)
            return exc.reply
        except UpstreamError as exc:
            return f"{exc.code} {exc.text}"
        record.update(upstream_reply=delivery.upstream_reply, refused=delivery.refused)
        return f"250 2.0.0 queued as {queue_id}"

    async def _hold_over_limits(
        self,
        runtime: Runtime,
        envelope: Envelope,
        data: bytes,
        queue_id: str,
        record: dict[str, Any],
        exc: LimitExceeded,
    ) -> str:
        """Fail closed: a message not read completely is held (reason `limits`), or 451."""
        message_id, subject = header_summary(data)
        record.update(
            message_id=message_id,
            subject=subject,
            action=Action.QUARANTINE.value,
            reason="limits",
            error=str(exc),
        )
        extra = {"hits": record["hits"], "reason": "limits", "limit": str(exc)}
        failure = await self._hold(runtime, envelope, data, queue_id, record, extra)
        if failure is not None:
            record["error"] = f"{exc}; {failure}"
            return QUARANTINE_FAILURE
        return f"250 2.0.0 queued as {queue_id}"

    async def handle_exception(self, error: Exception) -> str:
        """Any exception escaping a command: log it and ask the client to retry later."""
        self.runtime.audit.emit(
            events.EVENT_ERROR, stage="command", error=f"{type(error).__name__}: {error}"
        )
        return TEMPORARY_FAILURE


_HOOK_NAMES = tuple(name for name in dir(RelayHandler) if name.startswith("handle_"))
