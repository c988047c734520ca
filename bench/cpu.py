"""CPU time a target spends per message: a steadier measure than msg/s on a shared machine.

`python -m bench.cpu [--messages N] [--small] [--variant KEY=VALUE ...]` starts outbox-relay
(and, with `--naive` and `--postfix`, the naive pass-through and a private Postfix) on a
smtp-sink, sends the mix (or, with `--small`, one clean 5 KB message N times) with 20 sessions,
and prints the CPU seconds (user + system) the target's process tree used, per message.
Wall-clock rates on these 2 shared cores swing with whatever else runs; CPU per message does
not, so before/after comparisons use it.
`--variant listen.workers=2 --variant ""` compares relays with and without a setting,
interleaved round by round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

from bench.loadgen import encode, run_load
from bench.sink import SinkProcess
from bench.targets import NaiveTarget, PostfixTarget, RelayTarget, Target
from bench.traffic import make_message, mix
from tests.mta import LOOPBACK, ensure_postfix

_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of pid and every live descendant (and their reaped children)."""
    total = 0.0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            # utime, stime, cutime, cstime are fields 14-17 (1-based) of /proc/PID/stat.
            total += sum(int(v) for v in fields[11:15]) / _TICK
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError, IndexError):
            continue
    return total


class ConfiguredRelay(RelayTarget):
    """outbox-relay with extra top-level YAML keys (`listen.workers=2` style)."""

    def __init__(self, sink_port: int, extra: dict[str, dict[str, str]]) -> None:
        super().__init__(sink_port)
        self.extra = extra

    def config_text(self) -> str:
        text = super().config_text()
        for section, values in self.extra.items():
            inner = ", ".join(f"{k}: {v}" for k, v in values.items())
            prefix = f"{section}: {{"
            lines = text.splitlines()
            for i, line in enumerate(lines):
                if line.startswith(prefix):
                    lines[i] = line[:-1] + f", {inner}}}"
                    break
            else:
                lines.append(f"{section}: {{{inner}}}")
            text = "\n".join(lines) + "\n"
        return text


async def _measure(
    target: Target, sink: SinkProcess, payloads: list[tuple[bytes, bytes, bytes]]
) -> tuple[float, float]:
    pids = target.pids()
    before = sum(tree_cpu_seconds(p) for p in pids)
    started = time.perf_counter()
    result = await run_load(LOOPBACK, target.port, payloads, sessions=20)
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0.5)  # audit lines written after the last reply
    used = sum(tree_cpu_seconds(p) for p in pids) - before
    if result.errors:
        print(
            f"{target.name}: {len(result.errors)} errors, first {result.errors[0]}", file=sys.stderr
        )
    return used / max(1, result.accepted) * 1000, result.accepted / elapsed


def _extra(settings: str) -> dict[str, dict[str, str]]:
    extra: dict[str, dict[str, str]] = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        extra.setdefault(section, {})[name] = value
    return extra


async def main_async(args: argparse.Namespace) -> None:
    ensure_postfix()
    if args.small:
        sample = make_message(random.Random(5), 0, "small", False, 5000)
        payloads = encode([sample] * args.messages)
    else:
        payloads = encode(mix(args.messages))
    warmup = payloads[:40]
    with SinkProcess() as sink:
        targets: list[Target] = []
        if args.naive:
            targets.append(NaiveTarget(sink.port))
        if args.postfix:
            targets.append(PostfixTarget(sink.port))
        for settings in args.variant or [""]:
            relay = ConfiguredRelay(sink.port, _extra(settings))
            relay.name = f"outbox-relay {settings}".strip()
            targets.append(relay)
        for target in targets:
            target.__enter__()
        try:
            for target in targets:
                await run_load(LOOPBACK, target.port, warmup, sessions=20)
            for round_no in range(args.rounds):
                for target in targets:
                    cpu_ms, rate = await _measure(target, sink, payloads)
                    print(
                        f"round {round_no + 1} {target.name}: {cpu_ms:.2f} ms CPU/message, "
                        f"{rate:.1f} msg/s",
                        flush=True,
                    )
        finally:
            for target in targets:
                target.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="one clean 5 KB message, repeated")
    parser.add_argument("--naive", action="store_true", help="measure the naive pass-through too")
    parser.add_argument(
        "--postfix", action="store_true", help="measure Postfix too (its master and children)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="a relay with these config keys (repeatable: relays interleaved); default: as is",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
