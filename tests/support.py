"""Real SMTP peers and helpers for tests: an upstream sink, a silent server, a sending client.

Everything listens on 127.0.0.1, port 0, inside the test's own event loop. Send with the async
`send()` below (or aiosmtplib): a blocking smtplib call would freeze the loop the relay runs in.
The fixtures that wrap these live in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from relay.config import Config, bundled_rules_path
from relay.engine import RuleSet, load_rules
from relay.handler import ScanFn
from relay.server import RelayServer, RuleScanner

MESSAGE = (
    b"From: Tidy Home Co. <shop@example.com>\r\n"
    b"To: buyer@example.org\r\n"
    b"Subject: Your order has shipped\r\n"
    b"Message-ID: <order-1001@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Hi Sam,\r\n"
    b"\r\n"
    b"your parcel is on its way. Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln!\r\n"
    b".A line that starts with a dot survives dot-stuffing.\r\n"
    b"\r\n"
    b"Tidy Home Co.\r\n"
)


def make_message(subject: str = "Your order has shipped", body: str = "Hello.") -> bytes:
    """A small, valid CRLF message with the given subject and body."""
    return (
        f"From: shop@example.com\r\nTo: buyer@example.org\r\nSubject: {subject}\r\n"
        f"Message-ID: <{abs(hash((subject, body)))}@example.com>\r\n\r\n{body}\r\n"
    ).encode()


VIOLATION = (
    b"From: shop@example.com\r\nTo: buyer@example.org\r\nSubject: Thanks for your order\r\n"
    b"Message-ID: <order-1002@example.com>\r\n\r\n"
    b"Please leave us a 5-star review and we will refund your purchase.\r\n"
)


@functools.cache
def _ruleset(paths: tuple[Path, ...]) -> RuleSet:
    return load_rules(list(paths), name="bundled" if paths == (bundled_rules_path(),) else None)


def cached_rules_scanner(config: Config) -> ScanFn:
    """Like relay.server.rules_scanner, but each set of packs is loaded once per test session.

    Loading the bundled packs takes about a second; tests that change a pack's content and
    reload must use relay.server.rules_scanner instead.
    """
    limits = config.limits
    return RuleScanner(
        _ruleset(tuple(config.rules.paths)), limits.max_mime_depth, limits.max_mime_parts
    )


@dataclass
class SinkMessage:
    """One message as the sink received it: envelope and exact bytes."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]


@dataclass
class SinkHandler:
    """Records what arrives; set the attributes to make the sink misbehave.

    `mail_reply`: reply to MAIL FROM instead of 250; `rcpt_replies`: recipient -> reply to its
    RCPT TO; `data_reply`: reply to the end of DATA (nothing is recorded then); `data_delay`:
    seconds to wait before answering DATA. `data_started` is set when a message's DATA
    arrives, so a test can act while the upstream is busy with it.
    """

    messages: list[SinkMessage] = field(default_factory=list)
    mail_reply: str | None = None
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    data_delay: float = 0.0
    data_started: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.data_started.set()
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.data_reply:
            return self.data_reply
        assert envelope.mail_from is not None and envelope.original_content is not None
        self.messages.append(
            SinkMessage(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                list(envelope.mail_options),
            )
        )
        return f"250 2.0.0 Ok: queued as SINK{len(self.messages)}"


class Sink:
    """A real aiosmtpd server standing in for the seller's smarthost."""

    def __init__(self) -> None:
        self.handler = SinkHandler()
        self.host = "127.0.0.1"
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def messages(self) -> list[SinkMessage]:
        return self.handler.messages

    async def start(self) -> Sink:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self.handler, hostname="sink.test", loop=loop), self.host, self.port
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening: afterwards connections to `port` are refused ("upstream down")."""
        if self._server is not None:
            self._server.close()
            self._server = None

    def upstream(self, **extra: Any) -> dict[str, Any]:
        """The `upstream:` config section pointing at this sink."""
        return {"host": self.host, "port": self.port, "tls": "none", "timeout": 5, **extra}


class SilentServer:
    """Accepts TCP connections and never says a word: an upstream that times out."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> SilentServer:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.append(writer)

        self._server = await asyncio.start_server(hold, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()


class ScriptedServer:
    """A hand-driven SMTP peer: sends `greeting`, then answers each command line with the next
    reply in `replies` and hangs up when they run out. For upstreams that misbehave in ways
    aiosmtpd will not (a 554 greeting, dropping the line mid-transaction)."""

    def __init__(self, greeting: str, replies: Sequence[str] = ()) -> None:
        self.greeting = greeting
        self.replies = list(replies)
        self.commands: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> ScriptedServer:
        async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(self.greeting.encode() + b"\r\n")
            for reply in self.replies:
                line = await reader.readline()
                if not line:
                    break
                self.commands.append(line)
                writer.write(reply.encode() + b"\r\n")
                await writer.drain()
            else:
                self.commands.append(await reader.readline())
            writer.close()

        self._server = await asyncio.start_server(talk, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


REPO = Path(__file__).resolve().parent.parent


async def spawn_serve(
    config: Path,
    *,
    stdout: int = asyncio.subprocess.PIPE,
    env: dict[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """`python -m relay serve --config CONFIG` as a real process, unbuffered, from the repo.

    Tests that need real signals, exit codes or a SIGKILL use this instead of RelayServer.
    """
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "serve",
        "--config",
        str(config),
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def unused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, read and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Reply:
    """The final reply a client got for one transaction."""

    code: int
    text: str

    @property
    def line(self) -> str:
        return f"{self.code} {self.text}"


async def send(
    port: int,
    data: bytes = MESSAGE,
    *,
    mail_from: str = "shop@example.com",
    rcpt_tos: Sequence[str] = ("buyer@example.org",),
    host: str = "127.0.0.1",
) -> Reply:
    """Send one message and return the final reply (the first non-2xx one, or DATA's)."""
    client = aiosmtplib.SMTP(
        hostname=host, port=port, timeout=15, start_tls=False, local_hostname="client.test"
    )
    await client.connect()
    try:
        await client.mail(mail_from)
        for rcpt in rcpt_tos:
            await client.rcpt(rcpt)
        response = await client.data(data)
        return Reply(response.code, response.message)
    except aiosmtplib.SMTPResponseException as exc:
        return Reply(exc.code, exc.message)
    finally:
        if client.is_connected:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()


class RunningRelay:
    """A RelayServer started in the test's loop, with its config file and audit file."""

    def __init__(self, server: RelayServer, config_path: Path) -> None:
        self.server = server
        self.config_path = config_path

    @property
    def port(self) -> int:
        return self.server.port

    async def send(self, data: bytes = MESSAGE, **kwargs: Any) -> Reply:
        return await send(self.port, data, **kwargs)

    async def audit_events(self, event: str | None = None) -> list[dict[str, Any]]:
        """Every audit line written so far, parsed; only those named `event` if given."""
        for _ in range(5):  # lines are queued right after the reply they describe
            await asyncio.sleep(0)
        path = self.server.config.audit.path
        assert path is not None, "audit events are readable only from a file target"
        await asyncio.to_thread(self.server.audit.flush)
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return [line for line in lines if event is None or line["event"] == event]

    async def messages(self) -> list[dict[str, Any]]:
        return await self.audit_events("message")
