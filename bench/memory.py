"""Peak resident memory of a target while many sessions each send one 10 MB message."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

from bench.loadgen import encode, run_load
from bench.sink import SinkProcess
from bench.stats import fmt, percentile
from bench.targets import RelayTarget, Target, TargetUnavailable
from bench.traffic import make_message
from tests.mta import LOOPBACK

MESSAGE_SIZE = 10 * 1024 * 1024
LIMIT_MIB = 1.5 * 1024
# The naive pass-through is left out by default: it doubles the section's run time.
FACTORIES: tuple[type[Target], ...] = (RelayTarget,)


def _tree_rss_kib(pid: int) -> int:
    """Resident memory of pid and all its descendants, in KiB (0 when gone)."""
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except (OSError, ValueError):
            continue
    return total


class _Sampler(threading.Thread):
    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.pids = pids
        self.peak_kib = 0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.peak_kib = max(self.peak_kib, sum(_tree_rss_kib(p) for p in self.pids))
            time.sleep(0.02)


async def _measure(
    target: Target, sessions: int
) -> tuple[float, float, int, int, float, list[float]]:
    """(idle MiB, peak MiB, accepted, errors, seconds, latencies) for one fresh target."""
    message = make_message(random.Random(10), 0, "large", False, MESSAGE_SIZE)
    payloads = encode([message]) * sessions
    pids = target.pids()
    idle = sum(_tree_rss_kib(p) for p in pids) / 1024
    sampler = _Sampler(pids)
    sampler.start()
    started = time.perf_counter()
    result = await run_load(LOOPBACK, target.port, payloads, sessions=sessions, patience=600)
    seconds = time.perf_counter() - started
    sampler.stop_flag.set()
    sampler.join()
    peak = sampler.peak_kib / 1024
    return idle, peak, result.accepted, len(result.errors), seconds, result.latencies


async def measure_peak_rss(sessions: int) -> str:
    """The memory table: each target in FACTORIES freshly started."""
    rows = []
    for factory in FACTORIES:
        with SinkProcess() as sink:
            target = factory(sink.port)
            try:
                target.__enter__()
            except TargetUnavailable as exc:
                rows.append(f"| {target.name} | SKIPPED | | | | | | {exc} |")
                continue
            try:
                idle, peak, accepted, errors, seconds, latencies = await _measure(target, sessions)
            finally:
                target.stop()
        verdict = (
            ""
            if target.name != "outbox-relay"
            else ("target <= 1.5 GiB: " + ("met" if peak <= LIMIT_MIB else "MISSED"))
        )
        rows.append(
            f"| {target.name} | {fmt(idle)} | {fmt(peak)} | {accepted}/{sessions} | "
            f"{fmt(seconds)} | {fmt(percentile(latencies, 50))} | "
            f"{fmt(percentile(latencies, 99))} | errors {errors} {verdict} |"
        )
    head = (
        f"Memory: {sessions} concurrent sessions, each sending one 10 MiB message; "
        "RSS of the target's process tree sampled every 20 ms; latency = end of DATA to reply\n\n"
        "| target | idle RSS MiB | peak RSS MiB | accepted | seconds | p50 s | p99 s | notes |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    return head + "\n" + "\n".join(rows)
