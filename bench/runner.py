"""`make bench`: the whole benchmark, printed as Markdown tables.

Sections, all measured in the same run on the same machine:
1. the realistic mix through each target (naive pass-through, a private Postfix, outbox-relay)
   into Postfix's smtp-sink, 20 concurrent sessions, targets interleaved, several rounds:
   messages/s until the sink has every message, p50/p99 end-of-DATA-to-reply latency;
2. pure throughput with Postfix's own smtp-source sending one 5 KB message over and over;
3. latency at half of outbox-relay's peak rate (open-loop), and what it adds over the naive
   pass-through;
4. scan cost per message (extract + normalize + match) and rule-pack load time;
5. peak RSS while many sessions each send a 10 MB message.
Medians over rounds; ratios against the baselines of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.loadgen import LoadResult, encode, run_load
from bench.memory import measure_peak_rss
from bench.scan import scan_rows
from bench.sink import SinkProcess
from bench.stats import fmt, median, percentile, ratio
from bench.targets import (
    REPO,
    NaiveTarget,
    PostfixTarget,
    RelayTarget,
    Target,
    TargetUnavailable,
)
from bench.traffic import make_message, mix
from tests.mta import LOOPBACK, SMTP_SOURCE, ensure_postfix

TARGETS: tuple[tuple[str, Callable[[int], Target]], ...] = (
    ("naive", NaiveTarget),
    ("postfix", PostfixTarget),
    ("relay", RelayTarget),
)


@dataclass
class Run:
    """One load run against one target."""

    rate: float
    p50: float
    p99: float
    errors: int
    accepted: int
    quarantined: int


@dataclass
class Row:
    name: str
    runs: list[Run] = field(default_factory=list)
    skipped: str = ""

    def median(self, attr: str) -> float:
        return median([getattr(run, attr) for run in self.runs])


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def timed_run(
    target: Target,
    sink: SinkProcess,
    payloads: Sequence[tuple[bytes, bytes, bytes]],
    *,
    sessions: int,
    rate: float | None = None,
) -> Run:
    """Send payloads through target; time until the sink has every message it should get."""
    before_sink = sink.count
    before_held = target.quarantined()
    result: LoadResult = await run_load(
        LOOPBACK, target.port, payloads, sessions=sessions, rate=rate
    )
    held = target.quarantined() - before_held
    expected = before_sink + result.accepted - held
    reached = await asyncio.to_thread(sink.wait_for, expected, 120.0)
    errors = len(result.errors) + (0 if reached is not None else 1)
    if result.errors:
        log(f"{target.name}: {len(result.errors)} errors, first: {result.errors[0]}")
    if reached is None:
        log(f"{target.name}: sink has {sink.count - before_sink} of {expected - before_sink}")
        reached = time.perf_counter()
    elapsed = max(reached, result.last_reply) - result.started
    return Run(
        rate=result.accepted / elapsed if elapsed > 0 else math.nan,
        p50=percentile(result.latencies, 50) * 1000,
        p99=percentile(result.latencies, 99) * 1000,
        errors=errors,
        accepted=result.accepted,
        quarantined=held,
    )


def smtp_source_run(target: Target, sink: SinkProcess, count: int, sessions: int, eml: Path) -> Run:
    """Postfix's smtp-source sending one file `count` times; messages/s until the sink has all."""
    before = sink.count
    started = time.perf_counter()
    done = subprocess.run(
        [
            str(SMTP_SOURCE),
            "-s",
            str(sessions),
            "-m",
            str(count),
            "-F",
            str(eml),
            "-f",
            "support@shop.example",
            "-t",
            "buyer@marketplace.example",
            "-M",
            "loadgen.bench.test",
            f"{LOOPBACK}:{target.port}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    reached = sink.wait_for(before + count, 120.0)
    errors = 0 if done.returncode == 0 and reached is not None else 1
    if errors:
        log(f"smtp-source -> {target.name}: exit {done.returncode} {done.stderr[-300:]}")
    end = reached if reached is not None else time.perf_counter()
    return Run(
        rate=count / (end - started),
        p50=math.nan,
        p99=math.nan,
        errors=errors,
        accepted=count,
        quarantined=0,
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join([line, rule, *body])


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    ensure_postfix()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}",
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
    }
    messages = mix(args.messages)
    payloads = encode(messages)
    warmup = encode(mix(40, seed=99))
    factories = dict(TARGETS)
    if args.relay_workers is not None:
        factories["relay"] = lambda port: RelayTarget(port, workers=args.relay_workers)
    rows = {key: Row(key) for key, _ in TARGETS}
    with SinkProcess() as sink, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        targets: dict[str, Target] = {}
        try:
            for key, factory in factories.items():
                target = factory(sink.port)
                rows[key].name = target.name
                try:
                    targets[key] = target.__enter__()
                    log(f"started {target.name} on port {target.port}")
                except TargetUnavailable as exc:
                    rows[key].skipped = str(exc)
                    log(f"{target.name}: {exc}")
            for target in targets.values():
                await timed_run(target, sink, warmup, sessions=args.sessions)

            # 1. The mix, interleaved: each round starts with a different target.
            order = list(targets)
            for round_no in range(args.rounds):
                for key in order[round_no % len(order) :] + order[: round_no % len(order)]:
                    run = await timed_run(targets[key], sink, payloads, sessions=args.sessions)
                    rows[key].runs.append(run)
                    log(
                        f"round {round_no + 1} {targets[key].name}: {run.rate:.1f} msg/s, "
                        f"p50 {run.p50:.1f} ms, p99 {run.p99:.1f} ms, errors {run.errors}"
                    )
            report["mix"] = _mix_table(rows, args)

            # 2. smtp-source, pure throughput on one clean 5 KB message.
            eml = Path(tmp) / "clean-5k.eml"
            sample = make_message(__import__("random").Random(5), 0, "small", False, 5000)
            eml.write_bytes(sample.data.replace(b"\r\n", b"\n"))
            src_rows = {key: Row(rows[key].name, skipped=rows[key].skipped) for key in rows}
            for round_no in range(args.rounds):
                for key in order[round_no % len(order) :] + order[: round_no % len(order)]:
                    run = await asyncio.to_thread(
                        smtp_source_run,
                        targets[key],
                        sink,
                        args.source_messages,
                        args.sessions,
                        eml,
                    )
                    src_rows[key].runs.append(run)
                    name = targets[key].name
                    log(f"smtp-source round {round_no + 1} {name}: {run.rate:.1f} msg/s")
            report["smtp_source"] = _source_table(src_rows, args)

            # 3. Latency at half of outbox-relay's peak rate (or the naive one's, if no relay).
            peak_key = "relay" if rows["relay"].runs else "naive"
            peak = rows[peak_key].median("rate")
            half = peak / 2
            lat_rows = {key: Row(rows[key].name, skipped=rows[key].skipped) for key in rows}
            lat_payloads = payloads[: max(50, min(len(payloads), int(half * args.latency_seconds)))]
            for round_no in range(args.rounds):
                for key in order[round_no % len(order) :] + order[: round_no % len(order)]:
                    run = await timed_run(
                        targets[key], sink, lat_payloads, sessions=args.sessions, rate=half
                    )
                    lat_rows[key].runs.append(run)
                    log(
                        f"latency round {round_no + 1} {targets[key].name}: "
                        f"p50 {run.p50:.1f} ms, p99 {run.p99:.1f} ms"
                    )
            report["latency"] = _latency_table(lat_rows, half, peak_key, len(lat_payloads))
        finally:
            for target in targets.values():
                target.stop()

    # 4. Scan cost (in this process: the pure extract + match path, no SMTP).
    log("scan cost")
    report["scan"] = scan_rows(quick=args.quick)

    # 5. Memory: fresh processes, many concurrent 10 MB messages.
    log(f"memory: {args.memory_sessions} sessions x 10 MB")
    report["memory"] = await measure_peak_rss(args.memory_sessions)
    return report


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _mix_table(rows: dict[str, Row], args: argparse.Namespace) -> str:
    naive = rows["naive"].median("rate")
    postfix = rows["postfix"].median("rate")
    out = []
    for row in rows.values():
        if row.skipped:
            out.append([row.name, "SKIPPED", "", "", "", "", "", "", row.skipped])
            continue
        rate = row.median("rate")
        rates = [run.rate for run in row.runs]
        out.append(
            [
                row.name,
                fmt(rate),
                f"{fmt(min(rates))}-{fmt(max(rates))}",
                fmt(ratio(rate, naive), 2) + "x",
                fmt(ratio(rate, postfix), 2) + "x",
                fmt(row.median("p50")),
                fmt(row.median("p99")),
                str(sum(r.errors for r in row.runs)),
                f"held {sum(r.quarantined for r in row.runs)}/{sum(r.accepted for r in row.runs)}",
            ]
        )
    title = (
        f"Mix: {args.messages} messages per round (70% 2-10 KB, 25% 50 KB text+html, "
        f"5% 0.3-1 MB attachment; 5% violating), {args.sessions} sessions, "
        f"{args.rounds} rounds interleaved, medians; latency = end of DATA to reply"
    )
    return (
        title
        + "\n\n"
        + table(
            [
                "target",
                "msg/s",
                "rounds' range",
                "vs naive",
                "vs Postfix",
                "p50 ms",
                "p99 ms",
                "errors",
                "notes",
            ],
            out,
        )
    )


def _source_table(rows: dict[str, Row], args: argparse.Namespace) -> str:
    naive = rows["naive"].median("rate")
    postfix = rows["postfix"].median("rate")
    out = []
    for row in rows.values():
        if row.skipped:
            out.append([row.name, "SKIPPED", "", "", row.skipped])
            continue
        rate = row.median("rate")
        out.append(
            [
                row.name,
                fmt(rate),
                fmt(ratio(rate, naive), 2) + "x",
                fmt(ratio(rate, postfix), 2) + "x",
                f"errors {sum(r.errors for r in row.runs)}",
            ]
        )
    title = (
        f"smtp-source: {args.source_messages} copies of one clean 5 KB message, "
        f"-s {args.sessions}, a new connection per message, {args.rounds} rounds, medians"
    )
    return title + "\n\n" + table(["target", "msg/s", "vs naive", "vs Postfix", "notes"], out)


def _latency_table(rows: dict[str, Row], rate: float, peak_key: str, count: int) -> str:
    naive99 = rows["naive"].median("p99")
    naive50 = rows["naive"].median("p50")
    out = []
    for row in rows.values():
        if row.skipped:
            out.append([row.name, "SKIPPED", "", "", row.skipped])
            continue
        p50, p99 = row.median("p50"), row.median("p99")
        out.append(
            [
                row.name,
                fmt(p50),
                fmt(p99),
                f"{fmt(p50 - naive50)} / {fmt(p99 - naive99)}",
                f"errors {sum(r.errors for r in row.runs)}",
            ]
        )
    title = (
        f"Latency at {rate:.1f} msg/s (half of {rows[peak_key].name}'s peak), open loop, "
        f"{count} messages of the mix per round, medians"
    )
    return (
        title
        + "\n\n"
        + table(["target", "p50 ms", "p99 ms", "added vs naive p50 / p99 ms", "notes"], out)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages, same sections")
    parser.add_argument("--rounds", type=int, default=0, help="default 7, --quick 3")
    parser.add_argument("--messages", type=int, default=0, help="mix messages per round")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--source-messages", type=int, default=0)
    parser.add_argument("--latency-seconds", type=float, default=0)
    parser.add_argument("--memory-sessions", type=int, default=0)
    parser.add_argument(
        "--relay-workers",
        type=int,
        default=None,
        metavar="N",
        help="run outbox-relay with listen.workers: N (default: the config default)",
    )
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "latest.json")
    args = parser.parse_args(argv)
    # Sized so that `make bench` stays under 10 minutes on a shared 2-core machine. Rounds of
    # the mix last a few seconds and Postfix's delivery swings between rounds (qmgr timing:
    # 240 or 490 msg/s in one run), so the full run takes seven and shows the spread.
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.messages = args.messages or (200 if args.quick else 1000)
    args.source_messages = args.source_messages or (500 if args.quick else 1000)
    args.latency_seconds = args.latency_seconds or (4 if args.quick else 5)
    args.memory_sessions = args.memory_sessions or (25 if args.quick else 100)
    started = time.monotonic()
    report = asyncio.run(bench(args))
    report["duration_s"] = round(time.monotonic() - started)
    print(f"# outbox-relay benchmark, {report['date']}")
    print(
        f"Machine: {report['machine']}. Command: `{report['command']}`. "
        f"Took {report['duration_s']} s.\n"
    )
    for key in ("mix", "smtp_source", "latency", "scan", "memory"):
        print(report[key], end="\n\n")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    return 0
