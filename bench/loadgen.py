"""An asyncio SMTP load generator that measures each message's end-of-DATA-to-reply latency.

smtp-source can only send one file for every message, so the realistic mix goes through this
client instead: `sessions` concurrent workers share one list of messages; each worker opens a
connection, sends `per_session` messages on it (RSET between them), and QUITs. The client
speaks plain SMTP with pre-encoded payloads so that it spends as little CPU as possible on a
machine it shares with the target. With `rate`, messages start on an open-loop schedule
(message i at i/rate seconds) instead of as fast as the target answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.traffic import Message, dot_stuff


class SMTPProtocolError(Exception):
    """The server answered a command with an unexpected reply."""


@dataclass
class LoadResult:
    """What one load run saw from the client side."""

    sent: int = 0
    accepted: int = 0
    latencies: list[float] = field(default_factory=list)
    replies: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    started: float = 0.0
    last_reply: float = 0.0


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise SMTPProtocolError("connection closed by server")
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


async def _command(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes, expect: int
) -> None:
    writer.write(line)
    code, text = await _reply(reader)
    if code != expect:
        raise SMTPProtocolError(f"{line.strip()!r} -> {text.strip()!r}")


class _Schedule:
    """Hands out message indexes, optionally paced to a fixed start rate."""

    def __init__(self, total: int, rate: float | None, start: float) -> None:
        self.next = 0
        self.total = total
        self.rate = rate
        self.start = start

    async def take(self) -> int | None:
        if self.next >= self.total:
            return None
        index = self.next
        self.next += 1
        if self.rate:
            delay = self.start + index / self.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        return index


async def _worker(
    host: str,
    port: int,
    payloads: Sequence[tuple[bytes, bytes, bytes]],
    schedule: _Schedule,
    per_session: int,
    result: LoadResult,
    patience: float,
) -> None:
    while True:
        index = await schedule.take()
        if index is None:
            return
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=1 << 20), patience
            )
        except (OSError, TimeoutError) as exc:
            result.errors.append(f"connect: {exc!r}")
            result.sent += 1
            continue
        try:
            await asyncio.wait_for(
                _session(reader, writer, payloads, schedule, index, per_session, result),
                patience * per_session,
            )
        except (OSError, TimeoutError, SMTPProtocolError) as exc:
            result.errors.append(repr(exc))
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _session(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    payloads: Sequence[tuple[bytes, bytes, bytes]],
    schedule: _Schedule,
    first: int,
    per_session: int,
    result: LoadResult,
) -> None:
    code, text = await _reply(reader)
    if code != 220:
        raise SMTPProtocolError(f"greeting {text!r}")
    await _command(reader, writer, b"EHLO loadgen.bench.test\r\n", 250)
    index: int | None = first
    for n in range(per_session):
        if n:
            index = await schedule.take()
            if index is None:
                break
            await _command(reader, writer, b"RSET\r\n", 250)
        assert index is not None
        mail, rcpts, data = payloads[index]
        result.sent += 1
        await _command(reader, writer, mail, 250)
        await _command(reader, writer, rcpts, 250)
        await _command(reader, writer, b"DATA\r\n", 354)
        writer.write(data)
        await writer.drain()
        sent_at = time.perf_counter()
        code, text = await _reply(reader)
        now = time.perf_counter()
        result.last_reply = now
        result.replies[text[:3].decode()] += 1
        if code == 250:
            result.accepted += 1
            result.latencies.append(now - sent_at)
        else:
            result.errors.append(f"DATA -> {text.strip()[:120]!r}")
    writer.write(b"QUIT\r\n")
    with contextlib.suppress(OSError, SMTPProtocolError, TimeoutError):
        await asyncio.wait_for(_reply(reader), 5)


def encode(messages: Sequence[Message]) -> list[tuple[bytes, bytes, bytes]]:
    """Pre-encode MAIL, RCPT and DATA payloads so the timed loop does no formatting."""
    out = []
    for msg in messages:
        if len(msg.rcpt_to) != 1:
            raise ValueError("the load generator sends one recipient per message")
        out.append(
            (
                f"MAIL FROM:<{msg.mail_from}> SIZE={len(msg.data)}\r\n".encode(),
                f"RCPT TO:<{msg.rcpt_to[0]}>\r\n".encode(),
                dot_stuff(msg.data),
            )
        )
    return out


async def run_load(
    host: str,
    port: int,
    payloads: Sequence[tuple[bytes, bytes, bytes]],
    *,
    sessions: int = 20,
    per_session: int = 1,
    rate: float | None = None,
    patience: float = 120.0,
) -> LoadResult:
    """Send every payload through host:port with `sessions` concurrent clients."""
    result = LoadResult()
    result.started = time.perf_counter()
    schedule = _Schedule(len(payloads), rate, result.started)
    await asyncio.gather(
        *(
            _worker(host, port, payloads, schedule, per_session, result, patience)
            for _ in range(sessions)
        )
    )
    return result
