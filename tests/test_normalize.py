"""Normalization: evasions folded away, real text left alone, and the way back to the original."""

from __future__ import annotations

import random
import re
import sys

import pytest

from relay import normalize as normalize_module
from relay.normalize import (
    FOLDABLE,
    LATIN,
    LETTER,
    Normalized,
    excerpt,
    normalize,
    sentences,
    strip_accents,
    words,
)


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("Please REVIEW", "please review"),
        ("ｒｅｖｉｅｗ", "review"),  # full-width
        ("𝐫𝐞𝐯𝐢𝐞𝐰", "review"),  # mathematical bold
        ("re\u200bvi\u200cew", "review"),  # zero-width space and non-joiner
        ("re\u00advi\u2060ew", "review"),  # soft hyphen, word joiner
        ("r\ufeffeview", "review"),  # byte order mark
        ("Straße", "strasse"),
        ("ﬁve", "five"),  # ligature
        ("Cafe\u0301", "café"),  # combining accent composed
        ("q\u0303uick", "quick"),  # uncomposable mark on a Latin letter dropped
        ("ｶﾞｲﾄﾞ", "ガイド"),  # half-width katakana with dakuten
        ("か\u3099", "が"),  # combining dakuten composed, never stripped
    ],
)
def test_folds(written: str, read: str) -> None:
    assert normalize(written).text == read


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("rеviеw", "review"),  # Cyrillic е inside a Latin word
        ("ехсеllеnt", "excellent"),  # mostly Cyrillic letters, but Latin ones too
        ("rενiew", "review"),  # Greek
        ("Россия", "россия"),  # a Russian word stays Russian
        ("ελληνικά", "ελληνικά"),  # Greek stays Greek
        ("レビュー", "レビュー"),
        ("Москва rеviеw", "москва review"),
        ("ΝΕW Υes Μoss", "new yes moss"),  # capitals fold by shape: Greek Ν is N
        ("ναlue", "value"),  # while small ν is v
        ("Clιϲk", "click"),  # lunate sigma
        ("leave а review оn it", "leave a review on it"),  # look-alike-only words among Latin
        ("Москва и Россия", "москва и россия"),  # ... but not among Russian
        ("the word сор here", "the word cop here"),
    ],
)
def test_lookalikes_fold_only_in_mixed_words(written: str, read: str) -> None:
    assert normalize(written).text == read


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("★★★★★", "5 stars"),
        ("★★★★☆", "4 stars"),
        ("☆☆☆☆☆", "5 stars"),
        ("⭐⭐⭐⭐⭐", "5 stars"),
        ("⭐️⭐️⭐️", "3 stars"),  # with variation selectors
        ("🌟🌟🌟🌟", "4 stars"),
        ("★ ★ ★ ★ ★", "5 stars"),
        ("5*", "5 stars"),
        ("4,5*", "4.5 stars"),
        ("5/5", "5 stars"),
        ("10/10", "5 stars"),
        ("*****", "5 stars"),
        ("5★", "5 stars"),
        ("★5", "5 stars"),  # the star first, as Japanese sellers write it
        ("☆4.5", "4.5 stars"),
        ("el 5/5", "el 5 stars"),  # "danos el 5/5": a rating, not a date
    ],
)
def test_ratings_become_words(written: str, read: str) -> None:
    assert normalize(f"give us {written} please").text.split() == [
        "give",
        "us",
        *read.split(),
        "please",
    ]


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("a five-star review", "a 5-star review"),
        ("Five Stars", "5 stars"),
        ("five gold stars", "5 gold stars"),
        ("fünf Sterne", "5 sterne"),
        ("cinq étoiles", "5 étoiles"),
        ("cinco estrellas", "5 estrellas"),
        ("cinque stelle", "5 stelle"),
        ("五つ星", "5つ星"),
        ("星五つ", "星5つ"),
        ("fünf\nSterne", "5\nsterne"),  # a hard-wrapped line
    ],
)
def test_number_words_before_star_words_become_digits(written: str, read: str) -> None:
    assert normalize(written).text == read


@pytest.mark.parametrize(
    "text",
    [
        "Our FiveStar blender",  # a product name
        "delivered on 5/5/2026",  # a date
        "see footnote *",
        "5 * 3 = 15",
        "one of the stars",
        "24/7 support",
        "delivered on 5/5",  # a day of the month
        "llegará para el 5/5",
        "5/5にお届け予定です",
        "arriva entro il 4/5",
    ],
)
def test_not_ratings(text: str) -> None:
    assert "stars" not in normalize(text).text.replace("the stars", "")


@pytest.mark.parametrize(
    ("written", "read"),
    [("rɑting", "rating"), ("ɡood ʀeview", "good review"), ("ꜰɪᴠᴇ stars", "5 stars")],
)
def test_latin_lookalikes_from_ipa_and_small_capitals_fold(written: str, read: str) -> None:
    normalized = normalize(written)
    assert normalized.text.strip() == read
    assert normalized.source == written


def test_whitespace_collapses_but_paragraphs_stay() -> None:
    norm = normalize("Hi  Sam,\t\r\n\n \n Thanks\u00a0\u00a0a lot\nbye  ")
    assert norm.text == "hi sam,\n\nthanks a lot\nbye "
    start = norm.text.index("thanks")
    assert norm.source[slice(*norm.source_span(start, start + 12))] == "Thanks\u00a0\u00a0a lot"


def test_bare_strips_latin_accents_only() -> None:
    norm = normalize("Für Évaluation, ガイド, Ελλάδα")
    assert norm.bare == "fur evaluation, ガイド, ελλάδα"
    assert len(norm.bare) == len(norm.text)
    assert strip_accents("niño garçon") == "nino garcon"


def test_words_split_digits_from_letters_and_keep_cjk_runs() -> None:
    assert words("Give 5star, e-mail us! レビューを書いて") == [
        "give", "5", "star", "e", "mail", "us", "レビューを書いて",
    ]  # fmt: skip


def test_sentences_and_paragraphs() -> None:
    text = normalize(
        "Hi Sam!\n\nThanks for your order. Visit our-shop.com today?\nYes\n- a bullet\n"
        "ありがとうございます。レビューをお願いします"
    ).text
    assert sentences(text) == [
        "hi sam",
        "thanks for your order",
        "visit our-shop.com today",
        "yes",
        "a bullet\nありがとうございます",  # a single line break does not end a sentence
        "レビューをお願いします",
    ]


def test_excerpt_maps_back_to_the_original_after_removals_and_folding() -> None:
    original = "Hello!\n\nPlеase  leave us a ★★★★★ re\u200bvi\u00adew,\tthanks a lot."
    norm = normalize(original)
    start = norm.text.index("5 stars")
    end = norm.text.index("review") + len("review")
    assert original[slice(*norm.source_span(start, end))] == "★★★★★ re\u200bvi\u00adew"
    shown = norm.excerpt(start, end)
    assert "\n" not in shown and "\t" not in shown
    assert "Plеase leave us a ★★★★★ re\u200bvi\u00adew, thanks a lot." in shown


def test_excerpt_after_nfkc_expansion_and_composition() -> None:
    original = "ﬁve ﬁve Cafe\u0301 reviews"
    norm = normalize(original)
    assert norm.text == "five five café reviews"
    start = norm.text.index("café")
    assert original[slice(*norm.source_span(start, start + 4))] == "Cafe\u0301"
    start = norm.text.index("five", 1)
    assert original[slice(*norm.source_span(start, start + 4))] == "ﬁve"


def test_excerpt_is_bounded_and_on_one_line() -> None:
    source = ("word " * 100) + "MATCH" + (" more" * 100)
    start = source.index("MATCH")
    shown = excerpt(source, start, start + 5)
    assert "MATCH" in shown
    assert 60 <= len(shown) <= 120
    assert shown.startswith("…") and shown.endswith("…")
    long = excerpt("x" * 500, 0, 500)
    assert len(long) <= 121


def test_long_text_is_normalized_in_one_pass() -> None:
    text = ("Plеase lеave a ★★★★★ re\u200bview für uns. " * 2000) + "ｅｎｄ"
    norm = normalize(text)
    assert norm.text.count("please leave a 5 stars review für uns.") == 2000
    assert norm.text.endswith("end")
    last = norm.text.rindex("review")
    assert text[slice(*norm.source_span(last, last + 6))] == "re\u200bview"


# --- fast paths: each gives exactly what the full work gives ----------------------------

_FRAGMENTS = (
    " ", "  ", "\n", "\n\n", "\n\n\n", " \n", "\n ", "\t", "\r\n", "\x0b", "\x0c", "\x1c", "\x85",
    "\u00a0", "\u2003", "\u2028", "\u3000", "review", "Star", "stars", "Sterne", "étoile",
    "estrellas", "stella", "toile", "five", "fünf", "5", "4,5", "10", "/", "*", "**", "***", ".",
    "★", "☆", "⭐", "\ufe0f", "星", "五", "つ", "rеviеw", "Ѕhop", "Ν", "ν", "ɑ", "µ", "ß", "İ",
    "\u00ad", "\u200b", "\u2060", "\ufeff", "\u0301", "ｒｅｖｉｅｗ", "１２３", "ｶﾞ", "on ",
)  # fmt: skip


def _generated_texts(count: int = 3000, seed: int = 6) -> list[str]:
    """Strings stitched from the fragments the fast paths must tell apart, deterministically."""
    rng = random.Random(seed)
    return [
        "".join(rng.choice(_FRAGMENTS) for _ in range(rng.randrange(1, 14))) for _ in range(count)
    ]


def _everything(norm: Normalized) -> tuple[object, ...]:
    spans = [norm.source_span(s, e) for s in range(len(norm.text) + 1) for e in (s, s + 1)]
    return (norm.text, norm.bare, norm.bare is norm.text, norm.symbol_ratings, spans)


def test_ascii_fast_path_is_what_full_folding_gives() -> None:
    samples = [
        "".join(map(chr, range(128))),
        "Please LEAVE a 5* review at www.Shop.com  \t\r\n\x0b\x0c\x1c\x1f end",
        *(text.encode("ascii", "ignore").decode() for text in _generated_texts(500)),
    ]
    for text in samples:
        assert text.isascii()
        assert normalize_module._fold_all(text) == (text.lower(), None)


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("Please leave a review", "please leave a review"),  # ASCII: the fast path
        ("Please leave a rеview", "please leave a review"),  # one Cyrillic letter
        ("Please leave a re\u00adview", "please leave a review"),  # soft hyphen
        ("Please leave a re\u200bview", "please leave a review"),  # zero-width space
        ("give us ５ stars", "give us 5 stars"),  # full-width digit
        ("give us ★★★★★", "give us 5 stars"),
        ("give us 5/5  now", "give us 5 stars now"),
    ],
)
def test_ascii_and_nearly_ascii_texts(written: str, read: str) -> None:
    assert normalize(written).text.strip() == read


def test_odd_spaces_are_all_whitespace_but_space_and_line_break() -> None:
    every = {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    assert set(normalize_module._ODD_SPACES) == every - {" ", "\n"}


def test_collapsed_check_agrees_with_the_whitespace_regex() -> None:
    for text in _generated_texts():
        runs = {m.group() for m in normalize_module._WHITESPACE_RE.finditer(text)}
        assert normalize_module._is_collapsed(text) == (runs <= {"\n\n"}), repr(text)


def test_cheap_checks_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [*_generated_texts(), "".join(_FRAGMENTS), "5/5", "give 10/10 now", "4,5 / 5"]
    fast = [_everything(normalize(text)) for text in texts]
    monkeypatch.setattr(normalize_module, "_may_have_rating", lambda text: True)
    monkeypatch.setattr(normalize_module, "_may_have_symbol_rating", lambda text: True)
    monkeypatch.setattr(normalize_module, "may_have_star_word", lambda text: True)
    monkeypatch.setattr(normalize_module, "_is_collapsed", lambda text: False)
    slow = [_everything(normalize(text)) for text in texts]
    assert fast == slow


# The regexes open with a plain character class so the engine can skip ahead in C; each must
# find exactly what its readable form finds.
_READABLE = {
    "_SPECIAL_RE": normalize_module._SPECIAL + "+",
    "_ACCENTED_RE": normalize_module._ACCENTED + "+",
    "_PURE_FOLDABLE_RE": f"(?<![{LETTER}])[{FOLDABLE}]+(?![{LETTER}])",
    "_MIXED_SEAM_RE": f"[{LATIN}][{FOLDABLE}]|[{FOLDABLE}][{LATIN}]",
    "_CASED_SEAM_RE": f"[A-Z{LATIN}][{FOLDABLE}]|[{FOLDABLE}][A-Z{LATIN}]",
    "_JA_NUMBER_RE": r"[一二三四五](?=つ?星)|(?<=星)[一二三四五]",
}
_WORDY_FRAGMENTS = (
    *_FRAGMENTS, "Москва", "один", "Ελλάδα", "ναlue", "Тhe", "é", "ñ", "Ä", "ç", "ø", "ł", "Ḁ",
    "eine", "zwei", "cinq", "deux", "trois", "uno", "una", "due", "tre", "quattro", "cinque",
    "gold", "-", "\u2011", "五つ星", "星五", "三", "つ", "x", "1", "Ž", "ǅ", "ſ",
)  # fmt: skip


@pytest.mark.parametrize("name", sorted(_READABLE))
def test_fast_regexes_find_what_their_readable_forms_find(name: str) -> None:
    fast = getattr(normalize_module, name)
    readable = re.compile(_READABLE[name])
    rng = random.Random(name)
    texts = [
        "".join(rng.choice(_WORDY_FRAGMENTS) for _ in range(rng.randrange(1, 14)))
        for _ in range(4000)
    ]
    found = 0
    for text in [*texts, *(t.lower() for t in texts)]:
        spans = [m.span() for m in fast.finditer(text)]
        assert spans == [m.span() for m in readable.finditer(text)], repr(text)
        found += len(spans)
    assert found > 10  # the texts exercise the pattern


def test_dropping_invisible_characters_at_once_is_what_folding_each_gives() -> None:
    # Every special character here is invisible glue, so _fold_chars() takes its shortcut.
    invisible = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\ufe0f", "\U000e0101"]
    rng = random.Random(7)
    pieces = [*invisible, "ab", "Ü", "X", " "]
    texts = ["".join(rng.choice(pieces) for _ in range(12)) for _ in range(500)]
    for text in [*texts, *invisible, "".join(invisible), "a" + "".join(invisible) + "b"]:
        fast, fast_map = normalize_module._fold_chars(text)
        slow, slow_map = normalize_module._fold_special(text)
        assert fast == slow
        assert fast_map is not None
        assert _segments(fast_map) == _segments(slow_map), repr(text)


def _segments(offset_map: object) -> tuple[object, ...]:
    return tuple(getattr(offset_map, name) for name in ("_out", "_src", "_src_len", "_linear"))
