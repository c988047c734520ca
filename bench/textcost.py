"""CPU time of normalize() and the built-in finders, optionally against an older commit.

Measures process time (not wall time: the machines are shared) of `relay.normalize.normalize`
and of the five finders the rule packs use (url, email, phone, top-rating, top-symbol-rating)
on the text part of the benchmark's 50 KB message (21 KB of English) and on every text that
`bench.fingerprint`'s messages hold. With `--against COMMIT`, that commit's normalize.py and
builtins.py are loaded side by side and both are timed alternately in the same run, so the
ratio holds on a busy machine too.

    python -m bench.textcost --against 3f1f186
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.thencode import load_then
from bench.traffic import make_message
from relay import builtins, normalize
from relay.extract import extract

FINDERS = ("url", "email", "phone", "top-rating", "top-symbol-rating")


def _load_old(commit: str, into: Path) -> tuple[ModuleType, ModuleType]:
    """That commit's normalize and builtins modules, importable next to the current ones."""
    modules = load_then(commit, ("normalize", "builtins"), into)
    return modules["normalize"], modules["builtins"]


def _texts() -> dict[str, list[str]]:
    from bench.fingerprint import messages

    data = make_message(random.Random(1), 0, "medium", False, 50_000).data
    every = [part.text for _, raw in messages() for part in extract(raw).parts]
    return {
        "21 KB text part": [extract(data).parts[1].text],
        "fingerprint, ASCII": [t for t in every if t.isascii()],
        "fingerprint, other": [t for t in every if not t.isascii()],
    }


def _cost(norm_mod: Any, find_mod: Any, texts: list[str], reps: int) -> tuple[float, float]:
    normalize_text: Callable[[str], Any] = norm_mod.normalize
    started = time.process_time()
    for _ in range(reps):
        for text in texts:
            normalize_text(text)
    normalized = time.process_time()
    norms = [normalize_text(text) for text in texts]
    found = time.process_time()
    for _ in range(reps):
        for norm in norms:
            for name in FINDERS:
                find_mod.find(name, norm)
    done = time.process_time()
    return (normalized - started) / reps, (done - found) / reps


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.textcost", description=__doc__)
    parser.add_argument("--against", metavar="COMMIT", help="also time this commit's code")
    parser.add_argument("--rounds", type=int, default=5, help="best of this many (default 5)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        versions: list[tuple[str, Any, Any]] = [("now", normalize, builtins)]
        if args.against:
            old_normalize, old_builtins = _load_old(args.against, Path(tmp))
            versions.insert(0, (args.against, old_normalize, old_builtins))
        print("CPU ms (process time, best of rounds; one text: per call, groups: in total)")
        for group, texts in _texts().items():
            reps = 200 if len(texts) == 1 else 1
            best: dict[str, tuple[float, float]] = {}
            for _ in range(args.rounds):
                for label, norm_mod, find_mod in versions:
                    cost = _cost(norm_mod, find_mod, texts, reps)
                    old = best.get(label, cost)
                    best[label] = (min(old[0], cost[0]), min(old[1], cost[1]))
            cells = [
                f"{label}: normalize {n * 1e3:.3f}, builtins {b * 1e3:.3f}"
                for label, (n, b) in best.items()
            ]
            print(
                f"{group} ({len(texts)} texts, {sum(map(len, texts))} chars): " + "; ".join(cells)
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
