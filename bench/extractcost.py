"""CPU time of extract() per message shape, optionally against an older commit.

Measures process time (not wall time: the machines are shared) of `relay.extract.extract` on
the benchmark's message shapes: 2 KB plain text, 50 KB text+html, 1 MB text+html and 1 MB with
a binary attachment (`bench.traffic.make_message`). With `--against COMMIT`, that commit's
extraction modules (extract, fastparse, mimeparse, htmltext, quotes, model) are loaded side by
side under another package name, both are checked to give the same ScanInput, and both are
timed alternately in the same run, so the ratio holds on a busy machine too. Prints the
median over the rounds.

    python -m bench.extractcost --against cb4b408
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.thencode import load_then
from bench.traffic import make_message
from relay.extract import extract

MODULES = ("extract", "fastparse", "mimeparse", "htmltext", "quotes", "model")
# (label, kind, size, distinct messages), as in bench.scan
SHAPES = (
    ("2 KB plain text", "small", 2_000, 10),
    ("50 KB text+html", "medium", 50_000, 10),
    ("1 MB text+html", "medium", 1_000_000, 3),
    ("1 MB with attachment", "large", 1_000_000, 3),
)


def _load_old(commit: str, into: Path) -> Callable[[bytes], Any]:
    """That commit's extract(), with that commit's extraction modules."""
    extract_then: Callable[[bytes], Any] = load_then(commit, MODULES, into)["extract"].extract
    return extract_then


def _same(scan: Any) -> tuple[object, ...]:
    return (scan.subject, [(p.origin, p.text) for p in scan.parts], scan.notes, scan.message_id)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.extractcost", description=__doc__)
    parser.add_argument("--against", metavar="COMMIT", help="also time this commit's code")
    parser.add_argument("--rounds", type=int, default=20, help="median of this many (default 20)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        versions: list[tuple[str, Callable[[bytes], Any]]] = [("now", extract)]
        if args.against:
            versions.insert(0, (args.against, _load_old(args.against, Path(tmp))))
        print("extract() CPU ms per message (process time, median of rounds, versions alternating)")
        for label, kind, size, distinct in SHAPES:
            rng = random.Random(size)
            samples = [make_message(rng, i, kind, False, size).data for i in range(distinct)]
            for data in samples:
                if len({repr(_same(run(data))) for _, run in versions}) != 1:
                    print(f"{label}: the versions give different results")
                    return 1
            # About 200 KB of mail per round and version, whatever the shape.
            reps = max(1, 200_000 // sum(map(len, samples)))
            times: dict[str, list[float]] = {name: [] for name, _ in versions}
            for round_ in range(args.rounds):
                order = versions if round_ % 2 else versions[::-1]
                for name, run in order:
                    started = time.process_time()
                    for _ in range(reps):
                        for data in samples:
                            run(data)
                    elapsed = time.process_time() - started
                    times[name].append(elapsed * 1000 / (reps * len(samples)))
            medians = {name: statistics.median(values) for name, values in times.items()}
            cells = [f"{name} {ms:.3f}" for name, ms in medians.items()]
            ratio = ""
            if args.against:
                ratio = f" (now/then {medians['now'] / medians[args.against]:.2f})"
            print(f"{label}: " + ", ".join(cells) + ratio)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
