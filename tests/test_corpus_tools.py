"""The corpus tooling: items load strictly, variants build what they claim, metrics add up."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from relay.extract import extract
from relay.model import Category, Hit, Severity
from tests.corpus import build as corpus_build
from tests.corpus.build import (
    CORPUS_DIR,
    VARIANTS,
    CorpusError,
    Item,
    build,
    load_corpus,
    load_file,
)
from tests.corpus.evaluate import (
    Counts,
    Outcome,
    Report,
    check_floors,
    format_report,
    load_floors,
)

SAMPLE = CORPUS_DIR / "_sample.yaml"
ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
LATIN_OF = {glyph: latin for latin, glyphs in corpus_build._HOMOGLYPHS.items() for glyph in glyphs}


@pytest.fixture(scope="module")
def samples() -> list[Item]:
    items = load_file(SAMPLE)
    assert {item.language for item in items} >= {"en", "de", "ja"}
    return items


def seller_text(item: Item) -> str:
    """The item's own words as a reader sees them (HTML bodies rendered)."""
    if not item.html:
        return item.body.strip()
    from relay.htmltext import html_to_text

    return html_to_text(item.body)


def body_parts(raw: bytes) -> dict[str, str]:
    return {part.origin: part.text for part in extract(raw).parts}


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# Loading ---------------------------------------------------------------------------------------


def test_sample_items_load(samples: list[Item]) -> None:
    first = samples[0]
    assert first.id == "sample-en-positive"
    assert first.labels == ("positive-review-request",)
    assert first.quoted and "1 star" in first.quoted
    assert any(item.html for item in samples)
    assert any(not item.labels for item in samples)


def test_corpus_folders_load_with_unique_ids() -> None:
    items = load_corpus()
    assert len({item.id for item in items}) == len(items)
    assert all(item.source.startswith(str(CORPUS_DIR)) for item in items)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- id: x\n  labels: [made-up]\n  subject: s\n  body: b\n", "unknown category"),
        ("- id: x\n  subject: s\n  body: b\n", "'labels' must be a list"),
        ("- id: x\n  labels: []\n  body: b\n", "'subject' must be a string"),
        ("- id: x\n  labels: []\n  subject: s\n  body: b\n  colour: red\n", "unknown keys"),
        ("- id: x\n  labels: []\n  subject: s\n  body: b\n  html: maybe\n", "'html' must be"),
        ("id: x\n", "expected a list"),
        ("- [1, 2]\n", "expected a mapping"),
        ("- id: x\n  labels: [\n", "cannot read"),
    ],
)
def test_malformed_items_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "en" / "bad.yaml"
    path.parent.mkdir()
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CorpusError, match=message) as caught:
        load_corpus(tmp_path)
    assert str(path) in str(caught.value)


def test_duplicate_ids_across_files_are_refused(tmp_path: Path) -> None:
    item = "- id: dup\n  labels: []\n  subject: s\n  body: b\n"
    for language in ("en", "de"):
        (tmp_path / language).mkdir()
        (tmp_path / language / "a.yaml").write_text(item, encoding="utf-8")
    with pytest.raises(CorpusError, match="duplicate id 'dup'"):
        load_corpus(tmp_path)


def test_language_comes_from_the_folder(tmp_path: Path) -> None:
    (tmp_path / "fr").mkdir()
    (tmp_path / "fr" / "a.yaml").write_text(
        "- id: a\n  labels: [review-gating, review-gating]\n  subject: s\n  body: b\n",
        encoding="utf-8",
    )
    (item,) = load_corpus(tmp_path)
    assert (item.language, item.labels) == ("fr", ("review-gating",))


# Variants --------------------------------------------------------------------------------------


def test_builds_are_deterministic(samples: list[Item]) -> None:
    for item in samples:
        for variant in VARIANTS:
            assert build(item, variant) == build(item, variant)
    assert build(samples[0], "zero-width") != build(samples[0], "homoglyph")


def test_unknown_variant_is_refused(samples: list[Item]) -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        build(samples[0], "rot13")


@pytest.mark.parametrize("variant", ["plain", "base64", "qp", "html-split"])
def test_lossless_variants_extract_to_the_seller_text(samples: list[Item], variant: str) -> None:
    for item in samples:
        parts = body_parts(build(item, variant))
        assert parts["subject"] == item.subject
        (origin,) = [origin for origin in parts if origin != "subject"]
        assert origin == ("html" if item.html or variant == "html-split" else "text")
        assert squash(parts[origin]) == squash(seller_text(item))


def test_plain_form_quotes_the_buyer_as_a_real_reply(samples: list[Item]) -> None:
    for item in samples:
        raw = build(item, "plain").decode("utf-8")
        assert item.quoted
        first_quoted_line = item.quoted.splitlines()[0]
        if item.html:
            assert "<blockquote" in raw
        else:
            assert f"> {first_quoted_line}" in raw
            assert corpus_build._ATTRIBUTION[item.language] in raw
        assert first_quoted_line not in " ".join(body_parts(raw.encode()).values())


def test_encoded_variants_really_encode(samples: list[Item]) -> None:
    item = next(item for item in samples if item.language == "de")
    b64 = build(item, "base64").decode("ascii")
    assert "Content-Transfer-Encoding: base64" in b64
    assert "Subject: =?utf-8?B?" in b64
    assert "Bewertung" not in b64
    qp = build(item, "qp").decode("ascii")
    assert "Content-Transfer-Encoding: quoted-printable" in qp
    assert "Subject: =?utf-8?Q?" in qp
    assert "=C3=BC" in qp


def test_html_split_really_splits_words(samples: list[Item]) -> None:
    for item in samples:
        raw = build(item, "html-split").decode("utf-8")
        assert "Content-Type: text/html" in raw
        assert "text/plain" not in raw
        assert re.search(r"\w</?(b|i|span|strong|em|font|u)\b[^>]*>\w", raw)
        assert re.search(r"&#x?[0-9a-f]+;", raw)


def test_zero_width_variant_hides_characters_inside_words(samples: list[Item]) -> None:
    for item in samples:
        raw = build(item, "zero-width")
        parts = body_parts(raw)
        text = next(text for origin, text in parts.items() if origin != "subject")
        assert text != seller_text(item)
        assert squash(text.translate(ZERO_WIDTH)) == squash(seller_text(item))
        assert parts["subject"].translate(ZERO_WIDTH) == item.subject
        assert re.search(r"\w[\u200b\u200c\u200d\u2060\ufeff\u00ad]+\w", text)


def test_homoglyph_variant_swaps_latin_letters_only(samples: list[Item]) -> None:
    for item in samples:
        parts = body_parts(build(item, "homoglyph"))
        text = next(text for origin, text in parts.items() if origin != "subject")
        restored = "".join(LATIN_OF.get(char, char) for char in text)
        assert squash(restored) == squash(seller_text(item))
        assert "".join(LATIN_OF.get(char, char) for char in parts["subject"]) == item.subject
        if item.language != "ja":
            assert any(char in LATIN_OF for char in text)
        japanese = [char for char in text if "CJK" in unicodedata.name(char, "")]
        assert japanese == [char for char in seller_text(item) if char in japanese]


def test_attachment_variant_moves_the_text_into_a_note(samples: list[Item]) -> None:
    for item in samples:
        parts = body_parts(build(item, "attachment"))
        name = corpus_build._ATTACHMENT_NAME[item.language]
        extension = "html" if item.html else "txt"
        assert squash(parts[f"attachment:{name}.{extension}"]) == squash(seller_text(item))
        assert parts["text"] == corpus_build._SEE_ATTACHED[item.language]


def test_build_command_writes_eml_files(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "en").mkdir(parents=True)
    (corpus / "en" / "a.yaml").write_text(SAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    out = tmp_path / "out"
    assert corpus_build.main([str(out), "--variants", "plain", "qp", "--corpus", str(corpus)]) == 0
    written = sorted(path.relative_to(out).as_posix() for path in out.rglob("*.eml"))
    assert "en/sample-en-positive.qp.eml" in written
    assert "ja/sample-ja-offplatform.plain.eml" in written
    assert len(written) == 2 * len(load_file(SAMPLE))
    raw = (out / "en" / "sample-en-positive.plain.eml").read_bytes()
    assert raw == build(load_file(SAMPLE)[0], "plain")


# Metrics and floors ----------------------------------------------------------------------------


def item(item_id: str, labels: tuple[str, ...], language: str = "en") -> Item:
    return Item(id=item_id, language=language, labels=labels, subject="s", body="b")


def test_counts_ratios() -> None:
    counts = Counts(tp=8, fp=2, fn=2, tn=18)
    assert (counts.precision, counts.recall, counts.accuracy) == (0.8, 0.8, 26 / 30)
    assert counts.fpr == 0.1
    assert Counts().ratios() == {"precision": 1.0, "recall": 1.0, "fpr": 0.0, "accuracy": 1.0}


def test_report_metrics_per_group() -> None:
    gating = item("v1", ("review-gating",))
    both = item("v2", ("review-gating", "off-platform-contact"), "de")
    clean = item("c1", ())
    hit = Hit("r", Category.OFF_PLATFORM_CONTACT, Severity.MEDIUM, "text", "mail\nus")
    outcomes = [
        Outcome(gating, "plain", ("review-gating",)),
        Outcome(gating, "base64", ()),
        Outcome(both, "plain", ("review-gating",)),
        Outcome(clean, "plain", ()),
        Outcome(clean, "base64", ("off-platform-contact",), (hit,)),
    ]
    report = Report.from_outcomes(outcomes, ("plain", "base64"), "test@1")
    metrics = report.metrics()
    assert metrics["items"] == 3
    assert metrics["messages"] == 5
    assert metrics["variant.plain.recall"] == 1.0
    assert metrics["variant.base64.recall"] == 0.0
    assert metrics["variant.base64.fpr"] == 1.0
    assert metrics["overall.precision"] == 2 / 3
    assert metrics["category.review-gating.recall"] == 2 / 3
    assert metrics["category.off-platform-contact.recall"] == 0.0
    assert metrics["category.off-platform-contact.fpr"] == 0.25
    assert metrics["language.de.accuracy"] == 1.0
    assert metrics["obfuscated.accuracy"] == 0.0
    assert [o.item.id for o in report.misses()] == ["v1", "v2"]
    assert [o.item.id for o in report.false_positives()] == ["c1"]
    text = format_report(report, verbose=True)
    assert "MISS v2 [plain] expected review-gating, off-platform-contact; got review-gating" in text
    assert "FALSE POSITIVE c1 [base64]" in text
    assert "r (off-platform-contact) in text: 'mail us'" in text


def test_floors_file_names_real_metrics() -> None:
    report = Report.from_outcomes([Outcome(item("v", ("review-gating",)), "plain", ())])
    floors = load_floors()
    assert floors["min"]
    # Every pattern matches some metric: a typo in floors.yaml must not pass silently.
    assert not [f for f in check_floors(report.metrics(), floors) if "no such metric" in f]


def test_check_floors_reports_each_miss() -> None:
    metrics = {"variant.plain.recall": 0.5, "variant.qp.recall": 0.95, "variant.qp.fpr": 0.2}
    floors = {
        "min": {"variant.*.recall": 0.9, "language.*.accuracy": 0.9},
        "max": {"variant.*.fpr": 0.03},
    }
    assert check_floors(metrics, floors) == [
        "variant.plain.recall = 0.500, min allowed 0.900",
        "min language.*.accuracy: no such metric",
        "variant.qp.fpr = 0.200, max allowed 0.030",
    ]


def test_malformed_floors_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "floors.yaml"
    path.write_text("min:\n  overall.recall: high\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="must map metric names to numbers"):
        load_floors(path)
    path.write_text("minimum:\n  overall.recall: 0.5\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="only 'min:' and 'max:'"):
        load_floors(path)
