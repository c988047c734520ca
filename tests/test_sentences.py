"""Sentence names found paragraph by paragraph agree with one pass over the whole text."""

from __future__ import annotations

import bisect
import random

import pytest

from relay.engine import load_bundled_rules
from relay.model import Part, ScanInput
from relay.normalize import PARAGRAPH_BREAK_RE, SENTENCE_BREAK_RE, normalize
from relay.sentences import Sentences, sentence_starts
from tests.corpus.build import load_corpus

PIECES = [
    "a", "bc", " ", "\n", "\n\n", ". ", "!", "?", "...", "?!\n", "\u3002", "- ", "\n- ", "\n1. ",
    "\n \n", "\n\n\n", "\t", "\u3000", "x.y", '"', ")", "\u2026", "\u30c6\u30b9\u30c8",
]  # fmt: skip


def _random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40))) for _ in range(count)]


def _corpus_texts() -> list[str]:
    return [normalize(t).text for item in load_corpus() for t in (item.body, item.quoted or "")]


def _check(text: str) -> None:
    starts = [m.start() for m in SENTENCE_BREAK_RE.finditer(text)]
    paragraphs = [m.start() for m in PARAGRAPH_BREAK_RE.finditer(text)]
    assert set(paragraphs) <= set(starts), repr(text)

    def name(position: int) -> int:  # the break ending the sentence, as one pass finds it
        index = bisect.bisect_left(starts, position)
        return starts[index] if index < len(starts) else len(text)

    positions = list(range(len(text) + 1))
    expected = [name(p) for p in positions]
    # One at a time, in text order; then all at once, backwards; on fresh objects each.
    assert [Sentences(text, paragraphs).of(p) for p in positions] == expected, repr(text)
    sentences = Sentences(text, paragraphs)
    assert sentences.of_each(positions[::-1]) == expected[::-1], repr(text)
    for named in set(expected):
        index = bisect.bisect_left(starts, named)
        assert sentences.bounds(named) == (starts[index - 1] if index else -1, named)


@pytest.mark.parametrize("whole_below", [0, Sentences.WHOLE_BELOW])
def test_names_agree_with_one_pass(monkeypatch: pytest.MonkeyPatch, whole_below: int) -> None:
    monkeypatch.setattr(Sentences, "WHOLE_BELOW", whole_below)
    for text in _random_texts(4000, seed=whole_below) + _corpus_texts():
        _check(text)


def test_paragraphs_are_looked_at_only_where_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Sentences, "WHOLE_BELOW", 0)
    text = "\n\n".join(f"Paragraph {i}. It has two sentences." for i in range(10))
    paragraphs = [m.start() for m in PARAGRAPH_BREAK_RE.finditer(text)]
    sentences = Sentences(text, paragraphs)
    inside_third = text.index("Paragraph 3") + 4
    assert sentences.of(inside_third) == text.index(". It has", inside_third)
    assert not sentences.complete
    sentences.of_each(range(len(text)))  # most paragraphs: every break in one pass
    assert sentences.complete
    assert sentences.of_each([inside_third]) == [sentences.of(inside_third)]


def test_fast_starts_match_the_pattern() -> None:
    for text in _random_texts(2000, seed=11):
        assert sentence_starts(text) == [m.start() for m in SENTENCE_BREAK_RE.finditer(text)]


def test_verdicts_do_not_depend_on_how_breaks_are_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """Long corpus-like texts: every break at once, or paragraph by paragraph."""
    ruleset = load_bundled_rules()
    items = load_corpus()
    rng = random.Random(5)
    texts = []
    for _ in range(40):
        chosen = rng.sample(items, 12)
        texts.append("\n\n".join(item.body for item in chosen))
    scans = [ScanInput(subject="", parts=(Part("text", t),)) for t in texts]
    at_once = [ruleset.evaluate(scan).hits for scan in scans]
    monkeypatch.setattr(Sentences, "WHOLE_BELOW", 0)
    assert [ruleset.evaluate(scan).hits for scan in scans] == at_once
    assert sum(map(bool, at_once)) > 20
