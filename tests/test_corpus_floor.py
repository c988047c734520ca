"""The rule packs keep their corpus scores above the floors in tests/corpus/floors.yaml."""

from __future__ import annotations

from tests.corpus.evaluate import check_floors, evaluate_corpus, format_report, load_floors


def test_corpus_scores_stay_above_floors() -> None:
    report = evaluate_corpus()
    failures = check_floors(report.metrics(), load_floors())
    assert not failures, "\n".join([*failures, "", format_report(report, verbose=True)])
