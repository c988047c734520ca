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

import re
from typing import Any

import aiosmtplib.protocol as _protocol

_original_normalize = _protocol.normalize_message_line_endings
_original_period_regex: re.Pattern[bytes] = _protocol.PERIOD_REGEX


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
    _protocol.PERIOD_REGEX = PeriodQuoter()  # type: ignore[assignment]


def installed() -> bool:
    return (
        _protocol.normalize_message_line_endings is normalize_message_line_endings
        and isinstance(_protocol.PERIOD_REGEX, PeriodQuoter)
    )
