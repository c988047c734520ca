"""Peak resident memory of a target while many sessions each send one 10 MB message."""

from __future__ import annotations

import asyncio
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


class MemoryRelayTarget(RelayTarget):
    """outbox-relay with room for every session: what is measured is memory, not admission.

    100 sessions against the default limits.max_connections of 100 would leave no room for a
    connection a moment early, and the peak would cover fewer messages.
    """

    def config_text(self) -> str:
        text = super().config_text()
        room = "shutdown_timeout: 5, max_connections: 1000}"
        assert "shutdown_timeout: 5}" in text, "bench.targets changed the relay's limits line"
        return text.replace("shutdown_timeout: 5}", room)


# The naive pass-through is left out by default: it doubles the section's run time.
FACTORIES: tuple[type[Target], ...] = (MemoryRelayTarget,)


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


async def _settled_rss_mib(pids: list[int], patience: float = 60.0) -> float:
    """The tree's RSS once it stops growing: every worker process has loaded its rules.

    With listen.workers the port answers as soon as the first worker listens; load sent
    before the others do all lands on that one (and past its share of max_connections).
    """
    deadline = time.monotonic() + patience
    last = sum(_tree_rss_kib(p) for p in pids)
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = sum(_tree_rss_kib(p) for p in pids)
        if abs(now - last) < 1024:
            return now / 1024
        last = now
    return last / 1024


async def _measure(
    target: Target, sessions: int
) -> tuple[float, float, int, int, float, list[float]]:
    """(idle MiB, peak MiB, accepted, errors, seconds, latencies) for one fresh target."""
    message = make_message(random.Random(10), 0, "large", False, MESSAGE_SIZE)
    payloads = encode([message]) * sessions
    pids = target.pids()
    idle = await _settled_rss_mib(pids)
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
        verdict = ""
        if target.name == "outbox-relay":
            verdict = "target <= 1.5 GiB: " + ("met" if peak <= LIMIT_MIB else "MISSED")
            if peak <= LIMIT_MIB and accepted < sessions:
                # Fewer messages held at once than the target is about: not a pass.
                verdict = "target <= 1.5 GiB: NOT MEASURED (not every message was accepted)"
        rows.append(
            f"| {target.name} | {fmt(idle)} | {fmt(peak)} | {accepted}/{sessions} | "
            f"{fmt(seconds)} | {fmt(percentile(latencies, 50))} | "
            f"{fmt(percentile(latencies, 99))} | errors {errors} {verdict} |"
        )
    head = (
        f"Memory: {sessions} concurrent sessions, each sending one 10 MiB message; "
        "RSS of the target's process tree sampled every 20 ms (outbox-relay with the default "
        "listen.workers, limits.max_connections 1000); latency = end of DATA to reply\n\n"
        "| target | idle RSS MiB | peak RSS MiB | accepted | seconds | p50 s | p99 s | notes |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    return head + "\n" + "\n".join(rows)
