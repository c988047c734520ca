"""Score the rule packs on the labeled corpus: precision, recall and false-positive rate.

Every corpus item is built in every variant (see build.py), run through `extract()` and the
rule engine exactly as the relay does, and compared with its labels. A message counts as
positive when the seller's text breaks the policy (any label); per category, a message counts
only when that category is named. Printed overall, per variant, per language and per category;
`--verbose` lists every miss and false positive with the hits behind it.

    python -m tests.corpus.evaluate [--verbose] [--variants plain base64] [--languages de]
                                    [--rules PATH ...] [--json] [--check]

`evaluate_corpus()` returns the same numbers for tests; `check_floors()` compares them with
floors.yaml (`--check` exits 1 when any floor is missed).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from relay.extract import extract
from relay.model import Hit
from tests.corpus.build import (
    CATEGORIES,
    CORPUS_DIR,
    LANGUAGES,
    OBFUSCATED,
    VARIANTS,
    CorpusError,
    Item,
    build,
    load_corpus,
)

FLOORS_FILE = CORPUS_DIR / "floors.yaml"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the rules said about one item in one variant."""

    item: Item
    variant: str
    predicted: tuple[str, ...]
    hits: tuple[Hit, ...] = ()

    @property
    def expected(self) -> tuple[str, ...]:
        return self.item.labels

    @property
    def correct(self) -> bool:
        return bool(self.predicted) == bool(self.expected)


@dataclass(slots=True)
class Counts:
    """A confusion matrix; ratios with an empty denominator read as perfect (1.0, or 0.0 FPR)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, *, expected: bool, predicted: bool) -> None:
        if expected and predicted:
            self.tp += 1
        elif expected:
            self.fn += 1
        elif predicted:
            self.fp += 1
        else:
            self.tn += 1

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def positives(self) -> int:
        return self.tp + self.fn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def fpr(self) -> float:
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else 0.0

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.total if self.total else 1.0

    def ratios(self) -> dict[str, float]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "fpr": self.fpr,
            "accuracy": self.accuracy,
        }


@dataclass(slots=True)
class Report:
    """All outcomes of one evaluation run and the counts derived from them."""

    outcomes: list[Outcome]
    variants: tuple[str, ...] = VARIANTS
    rules_version: str = ""
    overall: Counts = field(default_factory=Counts)
    obfuscated: Counts = field(default_factory=Counts)
    by_variant: dict[str, Counts] = field(default_factory=dict)
    by_language: dict[str, Counts] = field(default_factory=dict)
    by_category: dict[str, Counts] = field(default_factory=dict)

    @classmethod
    def from_outcomes(
        cls,
        outcomes: Iterable[Outcome],
        variants: Sequence[str] = VARIANTS,
        rules_version: str = "",
    ) -> Report:
        report = cls(list(outcomes), tuple(variants), rules_version)
        report.by_variant = {variant: Counts() for variant in variants}
        report.by_language = {language: Counts() for language in LANGUAGES}
        report.by_category = {category: Counts() for category in CATEGORIES}
        for outcome in report.outcomes:
            expected, predicted = bool(outcome.expected), bool(outcome.predicted)
            report.overall.add(expected=expected, predicted=predicted)
            if outcome.variant != "plain":
                report.obfuscated.add(expected=expected, predicted=predicted)
            report.by_variant[outcome.variant].add(expected=expected, predicted=predicted)
            report.by_language[outcome.item.language].add(expected=expected, predicted=predicted)
            for category, counts in report.by_category.items():
                counts.add(
                    expected=category in outcome.expected, predicted=category in outcome.predicted
                )
        return report

    @property
    def items(self) -> int:
        return len({outcome.item.id for outcome in self.outcomes})

    def metrics(self) -> dict[str, float]:
        """Flat metric names (`variant.base64.recall`), as floors.yaml and `--json` use them."""
        metrics: dict[str, float] = {"items": self.items, "messages": len(self.outcomes)}
        groups: list[tuple[str, Counts]] = [("overall", self.overall)]
        if any(variant != "plain" for variant in self.variants):
            groups.append(("obfuscated", self.obfuscated))
        groups += [(f"variant.{name}", counts) for name, counts in self.by_variant.items()]
        groups += [(f"language.{name}", counts) for name, counts in self.by_language.items()]
        groups += [(f"category.{name}", counts) for name, counts in self.by_category.items()]
        for prefix, counts in groups:
            for name, value in counts.ratios().items():
                metrics[f"{prefix}.{name}"] = value
        return metrics

    def misses(self) -> list[Outcome]:
        """Violations not flagged at all, or flagged without every labelled category."""
        return [o for o in self.outcomes if o.expected and not set(o.expected) <= set(o.predicted)]

    def false_positives(self) -> list[Outcome]:
        """Compliant messages flagged, or violations flagged with a category not labelled."""
        return [o for o in self.outcomes if set(o.predicted) - set(o.expected)]


def evaluate_corpus(
    items: Sequence[Item] | None = None,
    *,
    rules_paths: Sequence[Path] | None = None,
    variants: Sequence[str] = VARIANTS,
) -> Report:
    """Build, extract and judge every item in every variant; the bundled rules by default."""
    from relay.engine import bundled_rules_path, load_rules  # the engine is optional for builds

    ruleset = load_rules(list(rules_paths) if rules_paths else [bundled_rules_path()])
    if items is None:
        items = load_corpus()
    outcomes = []
    for item in items:
        for variant in variants:
            verdict = ruleset.evaluate(extract(build(item, variant)))
            predicted = tuple(category.value for category in verdict.categories)
            outcomes.append(Outcome(item, variant, predicted, verdict.hits))
    return Report.from_outcomes(outcomes, variants, str(ruleset.version))


# Floors --------------------------------------------------------------------------------------


def load_floors(path: Path = FLOORS_FILE) -> dict[str, dict[str, float]]:
    """floors.yaml: `min:` and `max:` maps of metric name patterns to limits."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or set(data) - {"min", "max"}:
        raise CorpusError(f"{path}: expected only 'min:' and 'max:' maps")
    floors: dict[str, dict[str, float]] = {}
    for bound in ("min", "max"):
        entries = data.get(bound) or {}
        if not isinstance(entries, dict) or not all(
            isinstance(value, int | float) and not isinstance(value, bool)
            for value in entries.values()
        ):
            raise CorpusError(f"{path}: '{bound}' must map metric names to numbers")
        floors[bound] = {str(name): float(value) for name, value in entries.items()}
    return floors


def check_floors(metrics: dict[str, float], floors: dict[str, dict[str, float]]) -> list[str]:
    """Every floor missed (or naming no metric), as readable lines; empty when all hold."""
    failures = []
    for bound, limits in floors.items():
        for pattern, limit in limits.items():
            names = [name for name in metrics if fnmatch.fnmatchcase(name, pattern)]
            if not names:
                failures.append(f"{bound} {pattern}: no such metric")
            for name in names:
                value = metrics[name]
                if (bound == "min" and value < limit) or (bound == "max" and value > limit):
                    failures.append(f"{name} = {value:.3f}, {bound} allowed {limit:.3f}")
    return failures


# Output --------------------------------------------------------------------------------------


def format_report(report: Report, *, verbose: bool = False) -> str:
    lines = [
        f"rules: {report.rules_version or '?'}   corpus: {report.items} items, "
        f"{len(report.outcomes)} messages",
        "",
        f"{'':34}{'msgs':>6}{'viol':>6}{'prec':>8}{'recall':>8}{'fpr':>8}{'acc':>8}",
    ]

    def row(name: str, counts: Counts) -> str:
        return (
            f"{name:34}{counts.total:6d}{counts.positives:6d}{counts.precision:8.3f}"
            f"{counts.recall:8.3f}{counts.fpr:8.3f}{counts.accuracy:8.3f}"
        )

    lines.append(row("overall", report.overall))
    if report.obfuscated.total:
        lines.append(row("obfuscated (all but plain)", report.obfuscated))
    lines.append("")
    lines += [row(f"variant {name}", counts) for name, counts in report.by_variant.items()]
    lines.append("")
    lines += [
        row(f"language {name}", counts)
        for name, counts in report.by_language.items()
        if counts.total
    ]
    lines.append("")
    lines += [row(f"category {name}", counts) for name, counts in report.by_category.items()]
    misses, false_positives = report.misses(), report.false_positives()
    lines += ["", f"misses: {len(misses)}   false positives: {len(false_positives)}"]
    if verbose:
        for title, outcomes in (("MISS", misses), ("FALSE POSITIVE", false_positives)):
            for outcome in outcomes:
                lines.append(_describe(title, outcome))
    return "\n".join(lines)


def _describe(title: str, outcome: Outcome) -> str:
    expected = ", ".join(outcome.expected) or "clean"
    predicted = ", ".join(outcome.predicted) or "clean"
    text = (
        f"{title} {outcome.item.id} [{outcome.variant}] expected {expected}; got {predicted}"
        f"  ({outcome.item.source})"
    )
    for hit in outcome.hits:
        excerpt = hit.excerpt.replace("\n", " ")
        text += f"\n    {hit.rule} ({hit.category.value}) in {hit.part}: {excerpt!r}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="list misses and FPs")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--languages", nargs="+", choices=LANGUAGES, default=list(LANGUAGES))
    parser.add_argument("--rules", nargs="+", type=Path, help="rule packs (default: bundled)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when a floor is missed")
    args = parser.parse_args(argv)
    try:
        items = [item for item in load_corpus() if item.language in args.languages]
    except CorpusError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        report = evaluate_corpus(items, rules_paths=args.rules, variants=args.variants)
    except ImportError as exc:
        print(f"the rule engine is not available: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.metrics(), indent=2, sort_keys=True))
    else:
        print(format_report(report, verbose=args.verbose))
    if args.check:
        failures = check_floors(report.metrics(), load_floors())
        for failure in failures:
            print(f"below floor: {failure}", file=sys.stderr)
        return 1 if failures else 0
    return 0


__all__ = [
    "OBFUSCATED",
    "Counts",
    "Outcome",
    "Report",
    "check_floors",
    "evaluate_corpus",
    "format_report",
    "load_floors",
]

if __name__ == "__main__":
    sys.exit(main())
