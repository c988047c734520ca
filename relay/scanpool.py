"""Scanning in worker processes, so rule matching uses every core and leaves the loop alone.

Profiles of the relay under the benchmark's mix spend about half its CPU time in extraction
and rule matching, run in a thread: the GIL lets that use one core only, and a 1 MB message
holds the event loop back for as long as it is scanned. With `rules.scan_workers: N` (default
0, off), `PooledScanner` hands each message to one of N processes instead. Each worker loads
the same rule packs itself (compiled rules are not picklable) and checks that it got the same
version as the relay did.

Mail never waits for the workers: until every worker has loaded its rules, after a worker
died, or when a worker found different packs on disk, the message is scanned in the relay's
own process with the rules it loaded, exactly as without workers.

Off by default because it only pays where a core is idle: each scan costs about 1 ms more
(pickling, two process hops), and scans queue in order for the workers instead of sharing the
GIL, so on a busy 2-core machine the relay gained ~18% throughput but its p99 latency rose.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from relay.engine import RuleSet, load_configured_rules
from relay.extract import extract
from relay.limits import check_extracted
from relay.model import Verdict

# The rules a worker process scans with; None when it could not load the relay's version.
_worker_rules: RuleSet | None = None
_worker_limits = (5, 200)


def scan_message(rules: RuleSet, data: bytes, max_depth: int, max_parts: int) -> Verdict:
    """Extract within the MIME limits (LimitExceeded past them), then run every rule."""
    extracted = extract(data, max_depth=max_depth, max_parts=max_parts)
    return rules.evaluate(check_extracted(extracted))


def _init_worker(paths: tuple[Path, ...], version: str, limits: tuple[int, int]) -> None:
    # The relay stops its workers itself; a Ctrl-C or a SIGTERM sent to the whole process
    # group (systemd's default) must not kill them under messages being scanned.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    global _worker_rules, _worker_limits
    _worker_limits = limits
    try:
        rules = load_configured_rules(paths)
    except Exception:  # the relay's own copy of the rules takes over
        return
    if rules.version == version:
        _worker_rules = rules


def _worker_ready() -> bool:
    return _worker_rules is not None


def _worker_scan(data: bytes) -> Verdict | None:
    if _worker_rules is None:
        return None
    return scan_message(_worker_rules, data, *_worker_limits)


class PooledScanner:
    """A ScanFn that scans in worker processes; call it from a thread, never on the loop.

    `ruleset` is the relay's own copy of the packs at `paths`: it was validated there, and it
    scans whatever the workers cannot. A message past the MIME limits raises LimitExceeded,
    from a worker as from the relay. `close()` lets queued scans finish, then stops the
    workers.
    """

    def __init__(
        self,
        ruleset: RuleSet,
        paths: Sequence[Path],
        workers: int,
        *,
        max_depth: int = 5,
        max_parts: int = 200,
    ) -> None:
        self.ruleset = ruleset
        self.paths = tuple(paths)
        self.workers = workers
        self.limits = (max_depth, max_parts)
        # Reentrant: a probe finishing at once runs its callback inside _start_pool.
        self._lock = threading.RLock()
        self._closed = False
        self._ready = False
        self._pool: ProcessPoolExecutor | None = None
        self._start_pool()

    def _start_pool(self) -> None:
        pool = ProcessPoolExecutor(
            max_workers=self.workers,
            # Not fork: the relay has threads (audit writer, scans) whose locks a fork copies.
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.paths, self.ruleset.version, self.limits),
        )
        self._pool, self._ready = pool, False
        # One probe per worker: each submission finding no idle worker starts another one.
        probes = [pool.submit(_worker_ready) for _ in range(self.workers)]
        remaining = [len(probes)]
        all_loaded = [True]

        def probed(future: Future[bool]) -> None:
            with self._lock:
                remaining[0] -= 1
                ok = not future.cancelled() and future.exception() is None and future.result()
                all_loaded[0] = all_loaded[0] and bool(ok)
                if remaining[0] == 0 and self._pool is pool:
                    self._ready = all_loaded[0]

        for probe in probes:
            probe.add_done_callback(probed)

    @property
    def ready(self) -> bool:
        """True once every worker has loaded the rules; until then scans run in-process."""
        return self._ready

    def __call__(self, data: bytes) -> Verdict:
        with self._lock:
            pool = self._pool if self._ready and not self._closed else None
        if pool is not None:
            try:
                verdict = pool.submit(_worker_scan, data).result()
            except BrokenProcessPool:
                # A worker died (killed, out of memory): start fresh ones, scan this one here.
                self._replace(pool)
            except (CancelledError, RuntimeError):  # closed while this scan waited
                pass
            else:
                if verdict is not None:
                    return verdict
        return scan_message(self.ruleset, data, *self.limits)

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is not broken or self._closed:
                return
            broken.shutdown(wait=False, cancel_futures=True)
            self._start_pool()

    def close(self) -> None:
        """Stop the workers once the scans already handed to them are done; never blocks."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)


def close_scanner(scan: object) -> None:
    """Stop a scanner's worker processes, if it has any."""
    if isinstance(scan, PooledScanner):
        scan.close()
