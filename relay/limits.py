"""Limits on parsing and scanning one message: MIME depth and part count, and a deadline.

A message the relay could not read completely is never forwarded: the scanner raises
`LimitExceeded` and the handler holds the message in the quarantine with reason `limits`
(fail closed), where a person can look at it. The deadline runs the scan in a worker thread
and stops waiting for it after `limits.scan_timeout` seconds; the thread cannot be killed,
but the extraction and rule engine are linear in the message size, so it ends on its own.
A small message (the handler's INLINE_SCAN_SIZE) is scanned by `run_inline` on the event loop
instead: handing it to a thread and back cost more CPU than many a small scan itself. Such a
scan takes milliseconds and cannot be stopped early; one that nevertheless ran past the
deadline is treated exactly as one the deadline gave up on (LimitExceeded).

`ScanGate` bounds how many large messages are parsed and scanned at the same time: parsing
costs a few times a message's size (a 10 MB message with an attachment peaks at about 28 MiB,
a 10 MB text+HTML one at about 100 MiB with its scan), and with 100 sessions each sending one,
every scanning thread would hold that at once. Messages under `SMALL_MESSAGE` pass freely, so
everyday mail never queues behind large messages; large ones are admitted in arrival order
while their sizes add up to at most the budget (`limits.max_concurrent_scan_size`), and one
larger than the whole budget is scanned alone. The wait is not part of `scan_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from relay.errors import RelayError
from relay.model import ScanInput

T = TypeVar("T")

SMALL_MESSAGE = 1024 * 1024  # bytes; smaller messages never wait for the ScanGate

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


class ScanGate:
    """Admits large messages to parsing and scanning while their sizes fit in `budget` bytes.

    Used from the event loop only. Waiters are served in arrival order, so a large message is
    never starved by a stream of smaller large ones; a message bigger than the budget weighs
    the whole budget and runs alone.
    """

    def __init__(self, budget: int, small: int = SMALL_MESSAGE) -> None:
        self.budget = budget
        self.small = small
        self.in_use = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def weight(self, size: int) -> int:
        """What a message of `size` bytes takes from the budget (0: it never waits)."""
        return 0 if size < self.small else min(size, self.budget)

    @property
    def waiting(self) -> int:
        """Messages waiting for their turn."""
        return sum(1 for _, future in self._waiters if not future.done())

    async def acquire(self, size: int) -> int:
        """Wait until a message of `size` bytes may be scanned; returns its weight to release."""
        weight = self.weight(size)
        if weight == 0:
            return 0
        if not self._waiters and self.in_use + weight <= self.budget:
            self.in_use += weight
            return weight
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((weight, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(weight)  # admitted just as the client went away
            else:
                self._admit()  # it may have been the head of the queue, holding others back
            raise
        return weight

    def resize(self, budget: int) -> None:
        """Take a new budget (a reload); scans already admitted keep their turn."""
        self.budget = budget
        self._admit()

    def release(self, weight: int) -> None:
        """Give back what `acquire` returned, once the scan has really ended."""
        if weight:
            self.in_use -= weight
            self._admit()

    def _admit(self) -> None:
        while self._waiters:
            weight, future = self._waiters[0]
            if future.done():  # cancelled while waiting
                self._waiters.popleft()
                continue
            if self.in_use + weight > self.budget:
                return
            self._waiters.popleft()
            self.in_use += weight
            future.set_result(None)


async def run_within(
    work: Callable[[], T], deadline: float, *, gate: ScanGate | None = None, size: int = 0
) -> T:
    """Run `work` in a worker thread; LimitExceeded if it has not finished in `deadline` s.

    With a `gate`, first wait for a turn for a message of `size` bytes (not counted in the
    deadline); the turn ends when `work` does, even if the deadline gave up on it earlier, so
    an abandoned scan still counts against the budget while it holds its memory.
    """
    if gate is None:
        return await _run_within(work, deadline)
    weight = await gate.acquire(size)
    if weight == 0:
        return await _run_within(work, deadline)
    loop = asyncio.get_running_loop()
    lock = threading.Lock()
    state = {"started": False, "abandoned": False}

    def gated() -> T:
        with lock:
            if state["abandoned"]:  # given up on before a thread took it: nothing to run
                raise LimitExceeded("abandoned before it started")
            state["started"] = True
        try:
            return work()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits anymore
                loop.call_soon_threadsafe(gate.release, weight)

    try:
        return await _run_within(gated, deadline)
    except BaseException:
        with lock:
            state["abandoned"] = True
            started = state["started"]
        if not started:
            gate.release(weight)
        raise


def run_inline(work: Callable[[], T], deadline: float) -> T:
    """Run `work` here and now; LimitExceeded if it took longer than `deadline` seconds.

    For small messages only: the caller is blocked (on the event loop, every session) for as
    long as `work` runs, so its size must bound its time far below any sensible deadline.
    """
    started = time.perf_counter()
    result = work()
    if time.perf_counter() - started > deadline:
        raise _over_deadline(deadline)
    return result


def _over_deadline(deadline: float) -> LimitExceeded:
    return LimitExceeded(f"parsing and scanning took longer than {deadline:g} seconds")


async def _run_within(work: Callable[[], T], deadline: float) -> T:
    try:
        return await asyncio.wait_for(asyncio.to_thread(work), deadline)
    except TimeoutError:
        raise _over_deadline(deadline) from None
