"""Receiving DATA in large chunks instead of line by line: the relay's hottest loop.

aiosmtpd reads a message one line at a time (one `readuntil` and a few list operations per
76-byte line), keeps every line as its own object and joins them at the end; profiles of the
relay under load put half its CPU time there, and a 10 MB message costs about three times its
size in memory. `FastDataMixin.smtp_DATA` keeps aiosmtpd's behaviour and replies (354, 552 for
a message over the size limit, 500 for a line over 1000 octets, the terminator only as
CRLF.CRLF so bare-LF smuggling stays impossible) but reads up to 64 KiB per step into one
buffer, undoes dot-stuffing with one `bytes.replace`, and stops buffering as soon as a message
is over the limit while it drains the rest.

It also refuses what aiosmtpd would pass through: a bare CR or LF (the raw material of SMTP
smuggling: `\n.\n` is an end of DATA to some servers and not to others) gets 550 5.5.2 unless
the relay is told to normalize such line endings to CRLF, and a NUL byte gets 550 5.6.0.
Every refusal is reported to `data_refused`, so the relay logs a `message` line for it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import MISSING, syntax

from relay.smtpwire import only_crlf

CHUNK_LIMIT = 64 * 1024
TERMINATOR = b".\r\n"  # the end of DATA when it starts a line
END_OF_DATA = b"\r\n" + TERMINATOR
LINE_TOO_LONG = "500 5.5.2 Error: line too long (RFC 5321 4.5.3.1.6 allows 1000 octets)"
TOO_MUCH_DATA = "552 5.3.4 Error: message exceeds the size limit"
BARE_LINE_ENDING = "550 5.5.2 Error: bare CR or LF in message data (RFC 5321 2.3.8)"
NUL_BYTE = "550 5.6.0 Error: NUL byte in message data"
DATA_TIMEOUT = "421 4.4.2 Error: timeout exceeded while receiving the message"
HEADER_TOO_BIG = "552 5.3.4 Error: message header exceeds the size limit"
_ANY_LINE_ENDING = re.compile(rb"\r\n|\r|\n")


class DataState(enum.Enum):
    NOMINAL = "nominal"
    TOO_MUCH = "too much"
    TOO_LONG = "too long"
    BARE_LINE_ENDING = "bare line ending"
    NUL_BYTE = "nul byte"
    HEADER_TOO_BIG = "header too big"


REFUSALS = {
    DataState.TOO_MUCH: TOO_MUCH_DATA,
    DataState.TOO_LONG: LINE_TOO_LONG,
    DataState.BARE_LINE_ENDING: BARE_LINE_ENDING,
    DataState.NUL_BYTE: NUL_BYTE,
    DataState.HEADER_TOO_BIG: HEADER_TOO_BIG,
}


@dataclass
class ReceivedData:
    """The outcome of reading one DATA payload: its unstuffed bytes, or why it was refused."""

    content: bytes
    state: DataState
    received: int = 0  # bytes on the wire, dot-stuffed, without the terminator


def normalize_line_endings(data: bytes) -> bytes:
    """Every bare CR and bare LF becomes CRLF."""
    return _ANY_LINE_ENDING.sub(b"\r\n", data)


def screen(
    content: bytes, *, normalize: bool, max_header_size: int | None = None
) -> tuple[bytes, DataState]:
    """Refuse NUL bytes, bare CR or LF (unless `normalize` makes them CRLF), huge headers."""
    if b"\0" in content:
        return b"", DataState.NUL_BYTE
    if not only_crlf(content):
        if not normalize:
            return b"", DataState.BARE_LINE_ENDING
        content = normalize_line_endings(content)
    if max_header_size is not None and len(content) > max_header_size:
        # The header block ends at the first empty line (or is the whole message).
        end = content.find(b"\r\n\r\n", 0, max_header_size + 4)
        if end < 0 or end + 2 > max_header_size:
            return b"", DataState.HEADER_TOO_BIG
    return content, DataState.NOMINAL


def unstuff(raw: bytes | bytearray) -> bytes:
    """Undo SMTP dot-stuffing (RFC 5321 4.5.2): drop the first dot of every line."""
    data = bytes(raw)
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n")


def _longest_line(piece: bytes, carried: int) -> tuple[int, int]:
    """(longest line length seen in piece, given `carried` bytes of an open line; new carry)."""
    last_break = piece.rfind(b"\n")
    if last_break < 0:
        return carried + len(piece), carried + len(piece)
    first_break = piece.find(b"\n")
    longest = carried + first_break + 1
    if first_break != last_break:
        longest = max(longest, max(map(len, piece[first_break + 1 : last_break].split(b"\n"))) + 1)
    return longest, len(piece) - last_break - 1


async def _end_follows(reader: asyncio.StreamReader) -> bool:
    """At a line start: True when the stream goes on with ".\r\n", the end of DATA.

    Waits for more data only while the bytes so far could still be that; StreamReader has
    no public peek, so this looks at its buffer (as smtp_DATA below does for its limit).
    """
    buffered: bytearray = reader._buffer  # type: ignore[attr-defined]
    while True:
        head = bytes(buffered[:3])
        if not TERMINATOR.startswith(head):
            return False
        if len(head) == 3:
            return True
        if reader.at_eof() or reader.exception() is not None:
            return False  # the read that follows raises
        await reader._wait_for_data("read_data")  # type: ignore[attr-defined]


async def read_data(
    reader: asyncio.StreamReader,
    size_limit: int | None,
    line_limit: int,
    progress: Callable[[], None] | None = None,
) -> ReceivedData:
    """Read a DATA payload up to and including CRLF.CRLF; raises IncompleteReadError on EOF.

    `size_limit` counts the bytes as received (dot-stuffed), as aiosmtpd does. `progress` is
    called after every piece read (the server re-arms its idle timer there). Pieces end at
    CRLF.CRLF or after about 64 KiB: searching for every ".\r\n" instead (each line ending
    in a period) cost about 60 steps for the average message of the benchmark's mix.
    """
    buffer = bytearray()
    state = DataState.NOMINAL
    received = 0
    line_length = 0  # bytes of the current, unfinished line
    # The end is CRLF.CRLF; only right after a CRLF already taken (where DATA starts, or
    # after a piece that ended in one) can it be a bare ".\r\n" in what is still to come.
    at_line_start = True
    while True:
        if at_line_start and await _end_follows(reader):
            piece, ended = await reader.readexactly(len(TERMINATOR)), True
        else:
            try:
                piece = await reader.readuntil(END_OF_DATA)
            except asyncio.LimitOverrunError as exc:
                # No end within the reader's limit: take what cannot be part of one.
                piece = await reader.readexactly(exc.consumed)
                ended = False
            else:
                ended = True
        payload = piece[:-3] if ended else piece
        received += len(payload)
        if progress is not None:
            progress()
        if state is DataState.NOMINAL and payload:
            longest, line_length = _longest_line(payload, line_length)
            if longest > line_limit:
                state = DataState.TOO_LONG
            elif size_limit and received > size_limit:
                state = DataState.TOO_MUCH
            if state is DataState.NOMINAL:
                buffer += payload
            else:
                buffer = bytearray()  # stop holding a message we are going to refuse
        if ended:
            break
        at_line_start = piece.endswith(b"\r\n")
    return ReceivedData(unstuff(buffer) if state is DataState.NOMINAL else b"", state, received)


class FastDataMixin:
    """Put before aiosmtpd's SMTP in the bases: a drop-in, chunked `smtp_DATA`."""

    # Attributes and methods that aiosmtpd's SMTP provides.
    _reader: asyncio.StreamReader
    _writer: asyncio.StreamWriter
    envelope: Any
    data_size_limit: int | None
    line_length_limit: int
    _decode_data: bool
    _handle_hooks: dict[str, Any]
    check_helo_needed: Any
    check_auth_needed: Any
    push: Any
    _call_handler_hook: Any
    _set_post_data_state: Any
    _reset_timeout: Any
    normalize_line_endings: bool = False
    max_header_size: int | None = None
    data_timeout: float | None = None  # for the whole DATA payload to arrive
    processing_data: bool = False

    def data_refused(self, reply: str, received: int) -> None:
        """A DATA payload was refused before the handler saw it; subclasses log it here."""

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        # aiosmtpd sizes its reader for one command line; DATA is read in bigger steps.
        # StreamReader has no public setter for its limit.
        reader = self._reader
        saved_limit = reader._limit  # type: ignore[attr-defined]
        reader._limit = max(CHUNK_LIMIT, saved_limit)  # type: ignore[attr-defined]
        try:
            # asyncio.timeout rather than wait_for: no task of its own for every message.
            async with asyncio.timeout(self.data_timeout):
                result = await read_data(
                    reader, self.data_size_limit, self.line_length_limit, self._reset_timeout
                )
        except TimeoutError:
            # A client trickling its message to hold a connection slot: give up on it.
            with contextlib.suppress(ConnectionError):
                await self.push(DATA_TIMEOUT)
            self.data_refused(DATA_TIMEOUT, 0)
            # What it had sent so far is message text, not commands to run before the close.
            reader._buffer.clear()  # type: ignore[attr-defined]
            self._writer.close()
            return
        except asyncio.CancelledError:
            # The client went away mid-DATA (aiosmtpd cancels the task): drop the session.
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:
            self._writer.close()
            return
        finally:
            reader._limit = saved_limit  # type: ignore[attr-defined]
        content, state = result.content, result.state
        if state is DataState.NOMINAL:
            content, state = screen(
                content,
                normalize=self.normalize_line_endings,
                max_header_size=self.max_header_size,
            )
        if state is not DataState.NOMINAL:
            reply = REFUSALS[state]
            await self.push(reply)
            self.data_refused(reply, result.received)
            self._set_post_data_state()
            return
        assert not self._decode_data, "the relay handles raw bytes only"
        self.envelope.content = content
        self.envelope.original_content = content
        self.processing_data = True
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            self.processing_data = False
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)
