"""Limits on parsing and scanning one message: MIME depth and part count, and a deadline.

A message the relay could not read completely is never forwarded: the scanner raises
`LimitExceeded` and the handler holds the message in the quarantine with reason `limits`
(fail closed), where a person can look at it. The deadline runs the scan in a worker thread
and stops waiting for it after `limits.scan_timeout` seconds; the thread cannot be killed,
but the extraction and rule engine are linear in the message size, so it ends on its own.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import TypeVar

from relay.errors import RelayError
from relay.model import ScanInput

T = TypeVar("T")

# The notes relay.extract writes when it stopped reading a message at a depth or part limit.
_LIMIT_NOTE = re.compile(r"more than \d+ MIME parts|nested too deep|nested deeper than \d+")


class LimitExceeded(RelayError):
    """Parsing or scanning a message hit a limit; it must not be forwarded unscanned."""


def check_extracted(scan_input: ScanInput) -> ScanInput:
    """Raise LimitExceeded when extraction left part of the message unread at a limit."""
    for note in scan_input.notes:
        if _LIMIT_NOTE.search(note):
            raise LimitExceeded(f"MIME limit: {note}")
    return scan_input


async def run_within(work: Callable[[], T], deadline: float) -> T:
    """Run `work` in a worker thread; LimitExceeded if it has not finished in `deadline` s."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(work), deadline)
    except TimeoutError:
        raise LimitExceeded(f"parsing and scanning took longer than {deadline:g} seconds") from None
