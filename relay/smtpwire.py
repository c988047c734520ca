"""Faster, byte-for-byte equivalent versions of aiosmtplib's DATA encoding.

aiosmtplib prepares every message for DATA with two regular-expression passes over the whole
message (line endings to CRLF, then dot-stuffing), each making a full copy. For the 10 MB
messages of a busy relay those two passes were over half of the relay's CPU time, and they run
on the event loop. Mail that reaches the forwarder almost always has CRLF line endings
already (it arrived over SMTP); for such a message the line-ending pass has nothing to do and
dot-stuffing is one `bytes.replace`. `install()` swaps these fast paths into aiosmtplib; any
message with a bare CR or LF still takes aiosmtplib's own code, so the bytes sent are the
same as before in every case (tests/test_smtpwire.py compares both on random input).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiosmtplib
import aiosmtplib.protocol as _protocol
import aiosmtplib.smtp as _smtp
from aiosmtplib.typing import Default, SMTPStatus

_original_normalize = _protocol.normalize_message_line_endings
_original_period_regex: re.Pattern[bytes] = _protocol.PERIOD_REGEX
_original_quote_address = _smtp.quote_address  # type: ignore[attr-defined]

# `local@domain` in its plainest form (dot-atoms only): what nearly every envelope holds.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
PLAIN_ADDRESS = re.compile(rf"(?:{_ATEXT}\.)*{_ATEXT}@(?:[A-Za-z0-9-]+\.)*[A-Za-z0-9-]+")


def quote_address(address: str) -> str:
    """aiosmtplib's `<address>` for MAIL FROM and RCPT TO, without its parser for plain ones.

    aiosmtplib runs the email package's address parser (about 20 us) on every sender and
    recipient; a plain address parses as itself, anything else still goes to that parser.
    """
    if PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>"
    result: str = _original_quote_address(address)
    return result


def only_crlf(message: bytes) -> bool:
    """True when every CR and every LF in message is part of a CRLF pair."""
    pairs = message.count(b"\r\n")
    return message.count(b"\r") == pairs and message.count(b"\n") == pairs


def normalize_message_line_endings(message: bytes) -> bytes:
    """aiosmtplib's normalization, without the regex pass when lines already end in CRLF."""
    if only_crlf(message):
        return message if message.endswith(b"\r\n") else message + b"\r\n"
    return _original_normalize(message)


class PeriodQuoter:
    """Stands in for aiosmtplib's `(?m)^\\.` pattern: `sub(b"..", message)` dot-stuffs."""

    def sub(self, repl: bytes, string: bytes, count: int = 0) -> bytes:
        if repl != b".." or count:
            return _original_period_regex.sub(repl, string, count)
        # `(?m)^` matches at the start and right after every "\n", whatever precedes it.
        stuffed = string.replace(b"\n.", b"\n..")
        return b"." + stuffed if stuffed.startswith(b".") else stuffed

    def __getattr__(self, name: str) -> Any:
        return getattr(_original_period_regex, name)


def install() -> None:
    """Use the fast paths in aiosmtplib (idempotent)."""
    _protocol.normalize_message_line_endings = normalize_message_line_endings
    # sendmail() normalizes the whole message once more just to count it for SIZE=.
    _smtp.normalize_message_line_endings = normalize_message_line_endings  # type: ignore[attr-defined]
    _protocol.PERIOD_REGEX = PeriodQuoter()  # type: ignore[assignment]
    _smtp.quote_address = quote_address  # type: ignore[attr-defined]


def installed() -> bool:
    return (
        _protocol.normalize_message_line_endings is normalize_message_line_endings
        and _smtp.normalize_message_line_endings is normalize_message_line_endings  # type: ignore[attr-defined]
        and isinstance(_protocol.PERIOD_REGEX, PeriodQuoter)
        and _smtp.quote_address is quote_address
    )


DATA_CHUNK = 64 * 1024


class StreamingSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client, sending the message after DATA in 64 KiB steps.

    aiosmtplib appends the terminator to a copy of the whole message and hands it to the
    transport in one write, and the transport copies whatever the socket did not take at once:
    two more copies of every message for as long as the upstream takes to read it (100
    concurrent 10 MB messages: 2 GB). Here slices of a memoryview go out one after the other,
    each once the transport has drained below its high-water mark, so a message costs its
    own size and a few buffers. Replies, errors and timeouts are those of `SMTP.data`.
    """

    _normalized: tuple[bytes, bytes] | None = None

    def normalized(self, message: bytes) -> bytes:
        """message with CRLF line endings, as DATA sends it and SIZE= counts it.

        Computed once for MAIL FROM's SIZE= and DATA both: checking the line endings of
        a message is three passes over it.
        """
        if self._normalized is None or self._normalized[0] is not message:
            self._normalized = (message, _protocol.normalize_message_line_endings(message))
        return self._normalized[1]

    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: float | Default | None = Default.token,  # noqa: ASYNC109 - overridden API
    ) -> aiosmtplib.SMTPResponse:
        protocol = self.protocol
        if isinstance(message, str) or protocol is None:
            return await super().data(message, timeout=timeout)
        await self._ehlo_or_helo_if_needed()
        wait = self.timeout if timeout is Default.token else timeout
        normalized = self.normalized(message)
        self._normalized = None
        payload = _protocol.PERIOD_REGEX.sub(b"..", normalized)
        try:
            return await _stream_data(protocol, payload, wait)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            self.close()
            raise


async def _stream_data(
    protocol: _protocol.SMTPProtocol, payload: bytes, reply_timeout: float | None
) -> aiosmtplib.SMTPResponse:
    """DATA, the dot-stuffed payload (ending in CRLF) in slices, the terminator, the reply."""
    lock = protocol._command_lock
    if lock is None:
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    async with lock:
        protocol._response_pending = True
        protocol.write(b"DATA\r\n")
        start = await protocol.read_response(timeout=reply_timeout)
        if start.code != SMTPStatus.start_input:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        protocol._response_pending = True
        view = memoryview(payload)
        # The last slice goes out with the terminator: one write (one send) fewer per
        # message, for a copy of at most DATA_CHUNK bytes.
        last = max(0, len(view) - 1) // DATA_CHUNK * DATA_CHUNK
        for offset in range(0, last, DATA_CHUNK):
            # A memoryview slice is written without a copy (SMTPProtocol.write says bytes).
            protocol.write(view[offset : offset + DATA_CHUNK])  # type: ignore[arg-type]
            if protocol._paused or protocol._connection_lost:
                try:
                    await asyncio.wait_for(protocol._drain_helper(), reply_timeout)
                except TimeoutError as exc:
                    raise aiosmtplib.SMTPTimeoutError("Timed out sending the message") from exc
                except ConnectionError as exc:
                    raise aiosmtplib.SMTPServerDisconnected("Connection lost") from exc
        protocol.write(bytes(view[last:]) + b".\r\n")
        response = await protocol.read_response(timeout=reply_timeout)
        if response.code != SMTPStatus.completed:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response
