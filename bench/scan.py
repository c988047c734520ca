"""Scan cost: extraction + normalization + matching per message, and rule-pack load time.

Runs in the benchmark process on the pure, synchronous core (`relay.extract.extract` then
`RuleSet.evaluate`, which normalizes each part and matches every rule), no SMTP, on messages
shaped like the mix: 2 KB plain text, 50 KB text+html, 1 MB text+html (the linearity check:
the same kind of text, 20x longer) and 1 MB with a binary attachment.
"""

from __future__ import annotations

import importlib
import importlib.util
import random
import statistics
import time
from pathlib import Path
from typing import Any

from bench.stats import fmt, percentile
from bench.targets import REPO
from bench.traffic import make_message

# (label, kind, size, distinct messages, timed scans in a full run)
SHAPES = (
    ("2 KB plain text", "small", 2_000, 20, 2000),
    ("50 KB text+html", "medium", 50_000, 20, 600),
    ("1 MB text+html", "medium", 1_000_000, 5, 40),
    ("1 MB with attachment", "large", 1_000_000, 5, 60),
)


def _samples(kind: str, size: int, count: int) -> list[bytes]:
    rng = random.Random(size)
    # Every fifth sample breaks the policy, so matching does real work on hits too.
    return [make_message(rng, i, kind, i % 5 == 0, size).data for i in range(count)]


def scan_rows(quick: bool) -> str:
    """The scan-cost table, or a visible SKIPPED line while the engine is not on main."""
    missing = [m for m in ("relay.extract", "relay.engine") if importlib.util.find_spec(m) is None]
    if missing:
        return f"Scan cost: SKIPPED: TODO(issue 6): {', '.join(missing)} not on main yet"
    extract: Any = importlib.import_module("relay.extract").extract
    load_rules: Any = importlib.import_module("relay.engine").load_rules
    rules_dir: Path = REPO / "rules"

    loads = []
    for _ in range(3):
        started = time.perf_counter()
        ruleset = load_rules([rules_dir])
        loads.append(time.perf_counter() - started)
    load_s = statistics.median(loads)

    rows = []
    p50s: dict[str, float] = {}
    for label, kind, size, distinct, runs in SHAPES:
        samples = _samples(kind, size, distinct)
        runs = max(distinct, runs // 5) if quick else runs
        for data in samples[:3]:  # warm caches the way a running relay has them warm
            ruleset.evaluate(extract(data))
        times = []
        hits = 0
        for i in range(runs):
            data = samples[i % len(samples)]
            started = time.perf_counter()
            verdict = ruleset.evaluate(extract(data))
            times.append((time.perf_counter() - started) * 1000)
            hits += bool(verdict.hits)
        p50, p99 = percentile(times, 50), percentile(times, 99)
        p50s[label] = p50
        actual = statistics.median(len(d) for d in samples)
        rows.append((label, actual, runs, p50, p99, hits))

    base = p50s["50 KB text+html"]
    lines = [
        f"Scan cost: extract + normalize + match, one message at a time, {ruleset_size(ruleset)}; "
        f"rule packs load in {load_s * 1000:.0f} ms (target <= 1000 ms: "
        f"{'met' if load_s <= 1 else 'MISSED'})",
        "",
        "| message | bytes | scans | p50 ms | p99 ms | p50 vs 50 KB | violations found | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, actual, runs, p50, p99, hits in rows:
        target = ""
        if label == "50 KB text+html":
            met = p50 <= 2 and p99 <= 10
            target = f"p50 <= 2, p99 <= 10: {'met' if met else 'MISSED'}"
        elif label.startswith("1 MB"):
            target = f"<= 25x: {'met' if p50 <= 25 * base else 'MISSED'}"
        lines.append(
            f"| {label} | {actual:.0f} | {runs} | {fmt(p50, 2)} | {fmt(p99, 2)} | "
            f"{fmt(p50 / base, 1)}x | {hits}/{runs} | {target} |"
        )
    return "\n".join(lines)


def ruleset_size(ruleset: Any) -> str:
    rules = getattr(ruleset, "rules", None)
    version = getattr(ruleset, "version", None) or getattr(ruleset, "rules_version", None)
    parts = []
    if rules is not None:
        parts.append(f"{len(rules)} rules")
    if version:
        parts.append(f"version {version}")
    return ", ".join(parts) or "the bundled rule packs"
