"""Postfix's smtp-sink as the benchmark's final destination, with a live message counter.

`smtp-sink -c` prints `sess=N quit=N mesg=N` each time a message or session ends; a reader
thread keeps the latest count and when each count was first reached, so the runner can time
a run "until the sink has every message".
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from types import TracebackType

from tests.mta import LOOPBACK, SMTP_SINK, free_port, wait_for_port

_COUNTER = re.compile(rb"mesg=(\d+)")


class SinkProcess:
    """smtp-sink on a free 127.0.0.1 port, throwing every message away and counting it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.count = 0
        self._reached: dict[int, float] = {}
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SinkProcess:
        # As root, smtp-sink insists on dropping to an unprivileged user (-u).
        self._proc = subprocess.Popen(
            [
                str(SMTP_SINK),
                "-c",
                "-u",
                "postfix",
                "-m",
                "1000",
                f"{LOOPBACK}:{self.port}",
                "1024",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._thread = threading.Thread(target=self._read, daemon=True, name="smtp-sink")
        self._thread.start()
        wait_for_port(self.port)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            found = _COUNTER.findall(chunk)
            if not found:
                continue
            now = time.perf_counter()
            with self._cond:
                latest = int(found[-1])
                for n in range(self.count + 1, latest + 1):
                    self._reached[n] = now
                self.count = max(self.count, latest)
                self._cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> float | None:
        """perf_counter() time at which the sink had `count` messages; None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.count < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self._reached.get(count, 0.0) if count else 0.0
