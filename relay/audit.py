"""The audit log: one JSON object per line, rendered by structlog, written off the event loop.

Callers on the event loop only render a line and put it on a queue; one background thread does
every write and flush, so a slow disk or a full pipe to journald never stalls SMTP sessions. A
file target survives logrotate: the writer reopens it on `reopen()` (SIGHUP) and whenever the
path no longer points at the file it has open (rotated away by rename or deletion).

A file is opened with O_APPEND and every batch of whole lines goes out in one write(2), so
several processes (the relay workers of `listen.workers` and their supervisor) append to the
one file without their lines ever interleaving: on a local filesystem the kernel moves to the
end and writes under the file's lock, whatever the size (not so on NFS).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import sys
import threading
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

# How long lines queued on the event loop wait to go to the writer thread with others.
HAND_OVER_DELAY = 0.01
# How often the writer thread checks whether logrotate moved the file away.
INODE_CHECK_INTERVAL = 1.0

EVENT_MESSAGE = "message"
EVENT_SESSION_CONNECT = "session.connect"
EVENT_SESSION_DISCONNECT = "session.disconnect"
EVENT_SESSION_REFUSED = "session.refused"
EVENT_ERROR = "error"
EVENT_CONFIG_RELOAD = "config.reload"
EVENT_CONFIG_RELOAD_FAILED = "config.reload_failed"


def _stamped(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """`ts` (ISO-8601, UTC, as structlog's TimeStamper writes it) and `event` lead the line.

    One dict for both: they read well in `tail -f`. (TimeStamper plus a reordering step
    built three dicts a line.)
    """
    event_dict.pop("ts", None)
    stamp = datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")
    return {"ts": stamp, "event": event_dict.pop("event"), **event_dict}


def _fallback(value: Any) -> Any:
    """What structlog's JSONRenderer writes for a value JSON has no form for."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


# One encoder for every line: json.dumps() with options builds a new one each call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=_fallback)


def _rendered(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> str:
    """The line, exactly as structlog's JSONRenderer(ensure_ascii=False) renders it."""
    return _ENCODER.encode(event_dict)


class _Barrier:
    """Queued behind pending lines; set once everything before it has been written."""

    def __init__(self) -> None:
        self.done = threading.Event()


class _Reopen:
    pass


class _Stop:
    pass


class _LineWriter:
    """The structlog 'logger': takes rendered lines and hands them to the writer thread."""

    def __init__(self, target: Path | None) -> None:
        self.target = target
        self._queue: queue.SimpleQueue[list[str] | _Barrier | _Reopen | _Stop] = queue.SimpleQueue()
        # Lines queued on the event loop, handed to the thread together HAND_OVER_DELAY later.
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._checked = 0.0
        self._reported_failure = False
        if target is not None:
            self._open()  # fail now, at start, rather than silently in the thread
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    # Called on the event loop: never blocks.
    def msg(self, line: str) -> None:
        """Queue a line; on an event loop, with the others of the next HAND_OVER_DELAY s.

        Each hand-off wakes the writer thread, and it then takes the GIL from the loop and
        gives it back: on the benchmark's mix (three lines a message) that cost more than
        rendering the lines. flush(), reopen() and close() hand over what waits at once.
        """
        with self._lock:
            if self._pending:
                self._pending.append(line)
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # a thread without a loop (the CLI, a test)
                self._queue.put([line])
                return
            self._pending.append(line)
        loop.call_later(HAND_OVER_DELAY, self._hand_over)

    info = warning = error = msg

    def _hand_over(self, then: _Barrier | _Reopen | _Stop | None = None) -> None:
        with self._lock:
            if self._pending:
                self._queue.put(self._pending)
                self._pending = []
            if then is not None:
                self._queue.put(then)

    def reopen(self) -> None:
        self._hand_over(_Reopen())

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Block until every line queued so far is written; True unless it timed out."""
        barrier = _Barrier()
        self._hand_over(barrier)
        return barrier.done.wait(timeout)

    def close(self, timeout: float | None = 5.0) -> None:
        if self._thread.is_alive():
            self._hand_over(_Stop())
            self._thread.join(timeout)

    # The writer thread.
    def _open(self) -> None:
        assert self.target is not None
        fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        stat = os.fstat(fd)
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._inode = fd, (stat.st_dev, stat.st_ino)
        self._checked = time.monotonic()

    def _rotated(self) -> bool:
        now = time.monotonic()
        if now - self._checked < INODE_CHECK_INTERVAL:
            return False
        self._checked = now
        try:
            stat = os.stat(self.target)  # type: ignore[arg-type]
        except FileNotFoundError:
            return True
        return (stat.st_dev, stat.st_ino) != self._inode

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            # Drain what else is waiting so one flush covers a burst of lines.
            while len(batch) < 1000:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            lines: list[str] = []
            for entry in batch:
                if isinstance(entry, list):
                    lines.extend(entry)
                    continue
                self._write(lines)
                lines = []
                if isinstance(entry, _Reopen) and self.target is not None:
                    self._safely(self._open)
                elif isinstance(entry, _Barrier):
                    entry.done.set()
                elif isinstance(entry, _Stop):
                    if self._fd is not None:
                        os.close(self._fd)
                        self._fd = None
                    return
            self._write(lines)

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        text = "".join(line + "\n" for line in lines)
        if self.target is None:
            self._safely(lambda: (sys.stdout.write(text), sys.stdout.flush()))
            return
        if self._rotated():
            self._safely(self._open)
        fd = self._fd
        if fd is not None:
            self._safely(lambda: _write_all(fd, text.encode("utf-8")))

    def _safely(self, action: Any) -> None:
        try:
            action()
            self._reported_failure = False
        except (OSError, ValueError) as exc:
            # Keep running: mail must still flow. Say so once per failure streak.
            if not self._reported_failure:
                print(f"outbox-relay: audit log write failed: {exc}", file=sys.stderr)
                self._reported_failure = True


def _write_all(fd: int, data: bytes) -> None:
    """One write(2) of data; only an error (a full disk) can leave part of it for another."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class AuditLog:
    """Writes audit events as JSON lines to stdout (`target` None) or to a file.

    `emit(event, **fields)` is cheap and safe to call from the event loop. `ts` (ISO-8601,
    UTC) and `event` lead every line. Call `close()` at shutdown to write what is queued.
    """

    def __init__(self, target: Path | None) -> None:
        self.target = target
        self._writer = _LineWriter(target)
        self._log = structlog.BoundLogger(
            self._writer,
            processors=[_stamped, _rendered],
            context={},
        )

    def emit(self, event: str, **fields: Any) -> None:
        self._log.msg(event, **fields)

    def write_line(self, line: str) -> None:
        """Queue a line rendered elsewhere (by a worker process) as it is, without its newline."""
        self._writer.msg(line)

    def reopen(self) -> None:
        """Reopen the file (after logrotate); a no-op for stdout."""
        self._writer.reopen()

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Wait until queued lines are written (blocking: tests and shutdown only)."""
        return self._writer.flush(timeout)

    def close(self) -> None:
        self._writer.close()
