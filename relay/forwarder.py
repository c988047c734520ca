"""Hands accepted mail to the upstream: a smarthost over SMTP, or a local Maildir for trials.

Both deliver the original bytes with the original envelope and either return a Delivery (the
upstream accepted the message, perhaps refusing some recipients) or raise DeliveryFailed,
which carries the exact reply the relay's client should get:

- upstream unreachable, timed out or disconnected: `451 4.4.1`, so the client retries;
- upstream answering 4xx, or failing in the greeting, STARTTLS or AUTH (a problem with the
  relay's own link, not with the message): `451 4.3.0`, so the client retries;
- upstream answering 5xx to MAIL FROM, to every RCPT TO, or to DATA: that reply, code and text;
- upstream refusing only some recipients: a Delivery whose `refused` names each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiosmtplib

from relay import smtpwire
from relay.config import UpstreamConfig
from relay.durable import fsync_dir, write_synced
from relay.errors import UpstreamError

smtpwire.install()

# Longest upstream text passed back to a client or logged; replies are single lines.
MAX_REPLY_TEXT = 400


@dataclass(frozen=True)
class Delivery:
    """The upstream accepted the message for at least one recipient."""

    upstream_reply: str
    refused: dict[str, str] = field(default_factory=dict)


class DeliveryFailed(UpstreamError):
    """The upstream did not take the message; `code`/`text` is the reply for our client.

    `upstream_reply` is what the upstream itself answered (None when it never answered),
    `refused` the per-recipient refusals when every recipient was refused.
    """

    def __init__(
        self,
        code: int,
        text: str,
        *,
        permanent: bool = False,
        upstream_reply: str | None = None,
        refused: dict[str, str] | None = None,
    ) -> None:
        super().__init__(code, text, permanent=permanent)
        self.upstream_reply = upstream_reply
        self.refused = refused or {}

    @property
    def reply(self) -> str:
        return f"{self.code} {self.text}"


class Forwarder(Protocol):
    """Anything that can deliver one message upstream."""

    async def deliver(
        self, mail_from: str, rcpt_tos: Sequence[str], data: bytes, mail_options: Sequence[str]
    ) -> Delivery: ...


def one_line(text: str) -> str:
    """Collapse a (possibly multi-line) reply text into one safe line for an SMTP reply."""
    flat = " ".join(text.replace("\r", "\n").split())
    return flat[:MAX_REPLY_TEXT]


def _reply(code: int, message: str) -> str:
    return f"{code} {one_line(message)}".rstrip()


def _from_response(
    code: int, message: str, *, refused: dict[str, str] | None = None
) -> DeliveryFailed:
    """Map an upstream error reply: 5xx passes through as it is; anything else becomes 451."""
    upstream = _reply(code, message)
    if 500 <= code <= 599:
        text = one_line(message) or "5.0.0 rejected upstream"
        return DeliveryFailed(code, text, permanent=True, upstream_reply=upstream, refused=refused)
    text = f"4.3.0 upstream deferred: {upstream}"[:MAX_REPLY_TEXT]
    return DeliveryFailed(451, text, upstream_reply=upstream, refused=refused)


def _body_options(mail_options: Sequence[str], client: aiosmtplib.SMTP) -> list[str]:
    # SIZE is recomputed by aiosmtplib; BODY=8BITMIME only where the upstream announced it.
    return [
        option
        for option in mail_options
        if option.upper() == "BODY=8BITMIME" and client.supports_extension("8bitmime")
    ]


def _reverse_path(mail_from: str) -> str:
    # aiosmtpd hands over the null sender (bounces, autoreplies) as "<>"; aiosmtplib wraps
    # what it gets in angle brackets, so it needs "" to send MAIL FROM:<> again.
    return "" if mail_from == "<>" else mail_from


# Idle upstream connections kept for the next message, and for how long: well under the
# idle timeouts of common smarthosts (Postfix smtpd_timeout 300 s, Exchange 600 s).
POOL_SIZE = 16
POOL_IDLE_SECONDS = 20.0


class SMTPForwarder:
    """Delivers through the smarthost with aiosmtplib, reusing idle connections.

    Opening a connection costs a TCP handshake, the greeting, EHLO (and STARTTLS and AUTH)
    and a QUIT; reusing one costs nothing more. A connection goes back to the pool only after
    a transaction the upstream accepted; every failure hangs up, exactly as a one-shot
    connection would. One that sat idle longer than POOL_IDLE_SECONDS is dropped; one that
    turns out dead at MAIL FROM (disconnected, timed out, or answering 421) is dropped and
    the transaction starts again on a fresh one: nothing of the message was sent yet.
    """

    def __init__(self, config: UpstreamConfig, *, local_hostname: str | None = None) -> None:
        assert config.host is not None
        self.config = config
        self.local_hostname = local_hostname
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []

    def _client(self) -> aiosmtplib.SMTP:
        cfg = self.config
        return smtpwire.StreamingSMTP(
            hostname=cfg.host,
            port=cfg.effective_port,
            timeout=cfg.timeout,
            use_tls=cfg.tls == "tls",
            start_tls=cfg.tls == "starttls",
            validate_certs=cfg.verify,
            cert_bundle=str(cfg.ca_file) if cfg.ca_file else None,
            username=cfg.username,
            password=cfg.password_file.reveal() if cfg.password_file else None,
            local_hostname=self.local_hostname,
        )

    async def _checkout(self) -> tuple[aiosmtplib.SMTP, bool]:
        """A connection, and whether it is a pooled one (whose MAIL FROM may find it dead)."""
        while self._idle:
            client, since = self._idle.pop()
            if time.monotonic() - since > POOL_IDLE_SECONDS or not client.is_connected:
                client.close()
                continue
            return client, True
        client = self._client()
        try:
            await _connect(client)
        except BaseException:
            client.close()
            raise
        return client, False

    def _checkin(self, client: aiosmtplib.SMTP) -> bool:
        if not client.is_connected or len(self._idle) >= POOL_SIZE:
            return False
        self._idle.append((client, time.monotonic()))
        return True

    async def close(self) -> None:
        """Say QUIT on every idle connection (at shutdown or when a reload replaces us)."""
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_hang_up(client) for client, _ in idle))

    async def deliver(
        self, mail_from: str, rcpt_tos: Sequence[str], data: bytes, mail_options: Sequence[str]
    ) -> Delivery:
        client, pooled = await self._checkout()
        accepted = False
        try:
            try:
                while True:
                    try:
                        await _mail(client, mail_from, data, mail_options)
                        break
                    except _STALE as exc:
                        if not pooled or not _stale(exc):
                            raise
                    # Nothing was sent yet that the upstream could have taken: start afresh.
                    client.close()
                    client, pooled = await self._checkout()
                errors, message = await _send(client, rcpt_tos, data)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                refused = {r.recipient: _reply(r.code, r.message) for r in exc.recipients}
                first = exc.recipients[0]
                if all(500 <= r.code <= 599 for r in exc.recipients):
                    raise _from_response(first.code, first.message, refused=refused) from exc
                temporary = next(r for r in exc.recipients if not 500 <= r.code <= 599)
                raise _from_response(temporary.code, temporary.message, refused=refused) from exc
            except aiosmtplib.SMTPResponseException as exc:  # MAIL FROM, DATA
                raise _from_response(exc.code, exc.message) from exc
            except (aiosmtplib.SMTPTimeoutError, TimeoutError) as exc:
                raise DeliveryFailed(451, "4.4.1 upstream timed out") from exc
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                raise DeliveryFailed(451, "4.4.1 upstream connection lost") from exc
            except aiosmtplib.SMTPException as exc:
                raise DeliveryFailed(451, f"4.3.0 upstream error: {one_line(str(exc))}") from exc
            accepted = True
            return Delivery(
                upstream_reply=_reply(250, message),
                refused={rcpt: _reply(r.code, r.message) for rcpt, r in errors.items()},
            )
        except asyncio.CancelledError:
            # Our client left (or we are shutting down): abort, so the upstream drops the
            # half-sent message instead of delivering what our client will send again.
            client.close()
            raise
        finally:
            if not (accepted and self._checkin(client)):
                await _hang_up(client)


# How a pooled connection that the upstream has given up on answers MAIL FROM.
_STALE = (
    aiosmtplib.SMTPServerDisconnected,
    ConnectionError,
    aiosmtplib.SMTPTimeoutError,
    TimeoutError,
    aiosmtplib.SMTPResponseException,
)


def _stale(exc: BaseException) -> bool:
    """True for a dead connection (or one the upstream is closing: 421), not a refusal."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code == 421
    return True


async def _mail(
    client: aiosmtplib.SMTP, mail_from: str, data: bytes, options: Sequence[str]
) -> None:
    """EHLO (or HELO) if needed, then MAIL FROM as aiosmtplib's sendmail() sends it.

    The pool used to RSET a pooled connection first to prove it alive; a transaction the
    upstream accepted has reset it already, and a dead connection fails MAIL FROM just as
    well, before anything of the message was sent: one round trip fewer per message.
    (sendmail() also checks every address first; the relay refused any that would fail.)
    """
    if client.is_ehlo_or_helo_needed:
        # Learn the extensions; a HELO-only upstream gets HELO below.
        with contextlib.suppress(aiosmtplib.SMTPHeloError):
            await client.ehlo()
    await client._ehlo_or_helo_if_needed()
    mail_options = _body_options(options, client)
    if client.supports_extension("size"):
        # RFC 1870: the octets as sent after DATA, CRLF pairs included (as sendmail() counts).
        if isinstance(client, smtpwire.StreamingSMTP):
            size = len(client.normalized(data))  # DATA uses it again
        else:
            size = len(smtpwire.normalize_message_line_endings(data))
        mail_options.insert(0, f"size={size}")
    try:
        await client.mail(_reverse_path(mail_from), options=mail_options, encoding="ascii")
    except aiosmtplib.SMTPResponseException:
        await _reset(client)
        raise


async def _send(
    client: aiosmtplib.SMTP, rcpt_tos: Sequence[str], data: bytes
) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
    """The rest of aiosmtplib's sendmail() after MAIL FROM: RCPT TO each, then DATA."""
    try:
        refused: list[aiosmtplib.SMTPRecipientRefused] = []
        for address in rcpt_tos:
            try:
                await client.rcpt(address, encoding="ascii")
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused.append(exc)
        if len(refused) == len(rcpt_tos):
            raise aiosmtplib.SMTPRecipientsRefused(refused)
        response = await client.data(data)
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        await _reset(client)
        raise
    errors = {exc.recipient: aiosmtplib.SMTPResponse(exc.code, exc.message) for exc in refused}
    return errors, response.message


async def _reset(client: aiosmtplib.SMTP) -> None:
    """RSET after a refusal, as sendmail() does; a failure there is not the one to report."""
    with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
        await client.rset()


async def _connect(client: aiosmtplib.SMTP) -> None:
    """Open, greet, EHLO (STARTTLS, AUTH); map each failure to the reply our client gets."""
    try:
        await client.connect()
    except aiosmtplib.SMTPConnectResponseError as exc:
        raise DeliveryFailed(
            451,
            f"4.3.0 upstream refused the connection: {_reply(exc.code, exc.message)}",
            upstream_reply=_reply(exc.code, exc.message),
        ) from exc
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise DeliveryFailed(
            451,
            "4.3.0 upstream refused the relay's login",
            upstream_reply=_reply(exc.code, exc.message),
        ) from exc
    except aiosmtplib.SMTPResponseException as exc:  # EHLO, STARTTLS
        raise DeliveryFailed(
            451,
            "4.3.0 upstream session setup failed",
            upstream_reply=_reply(exc.code, exc.message),
        ) from exc
    except (aiosmtplib.SMTPTimeoutError, TimeoutError) as exc:
        raise DeliveryFailed(451, "4.4.1 upstream timed out") from exc
    except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected, OSError) as exc:
        raise DeliveryFailed(451, "4.4.1 upstream unreachable") from exc
    except aiosmtplib.SMTPException as exc:  # e.g. STARTTLS not offered
        raise DeliveryFailed(451, "4.3.0 upstream session setup failed") from exc


async def _hang_up(client: aiosmtplib.SMTP) -> None:
    if not client.is_connected:
        return
    try:
        await client.quit(timeout=5)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        client.close()


class MaildirForwarder:
    """Delivers into a local Maildir (`upstream.maildir`): for trials, tests and `make run`.

    Maildir keeps only the message bytes; the envelope is on the audit line. Each file is
    written to tmp/, fsynced, moved into new/ and the folder fsynced, in a worker thread.
    """

    def __init__(self, path: Path, *, hostname: str | None = None) -> None:
        self.path = path
        self.hostname = (hostname or socket.gethostname()).replace("/", "-").replace(":", "-")
        self._counter = 0

    def ensure_folders(self) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    def _unique_name(self) -> str:
        self._counter += 1
        now = time.time()
        return (
            f"{int(now)}.M{int(now % 1 * 1_000_000)}P{os.getpid()}"
            f"Q{self._counter}R{secrets.token_hex(4)}.{self.hostname}"
        )

    def _write(self, name: str, data: bytes) -> None:
        self.ensure_folders()
        tmp = self.path / "tmp" / name
        final = self.path / "new" / name
        try:
            write_synced(tmp, data)
            os.rename(tmp, final)
            fsync_dir(final.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    async def deliver(
        self, mail_from: str, rcpt_tos: Sequence[str], data: bytes, mail_options: Sequence[str]
    ) -> Delivery:
        name = self._unique_name()
        try:
            await asyncio.to_thread(self._write, name, data)
        except OSError as exc:
            raise DeliveryFailed(
                451, f"4.3.0 cannot write to the Maildir ({exc.strerror or type(exc).__name__})"
            ) from exc
        return Delivery(upstream_reply=f"250 2.0.0 delivered to Maildir as {name}")


async def close_idle_connections(forwarder: Forwarder) -> None:
    """QUIT the forwarder's pooled upstream connections, if it keeps any."""
    if isinstance(forwarder, SMTPForwarder):
        await forwarder.close()


def make_forwarder(config: UpstreamConfig, *, local_hostname: str | None = None) -> Forwarder:
    """The forwarder the config asks for."""
    if config.maildir is not None:
        return MaildirForwarder(config.maildir, hostname=local_hostname)
    return SMTPForwarder(config, local_hostname=local_hostname)
