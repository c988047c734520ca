"""The rule engine: pack validation, term features, scopes, windows, builtins, excerpts."""

from __future__ import annotations

import random
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from relay import builtins
from relay.builtins import find_emails, find_phones, find_urls, is_phone_number
from relay.engine import RuleSet, bundled_rules_path, load_rules, parse_term
from relay.errors import RuleError
from relay.model import Category, Part, ScanInput, Severity
from relay.normalize import normalize

RULE_HEAD = """
  - id: {id}
    category: positive-review-request
    severity: high
    description: Test rule.
    hint: Ask for an honest review.
"""
EXAMPLES = """
    examples:
      match: ["{match}"]
      no_match: ["nothing to see"]
"""


def pack(tmp_path: Path, body: str, name: str = "pack.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body).lstrip("\n"))
    return path


def rule_pack(tmp_path: Path, rule: str, *, terms: str = "", match: str = "x") -> RuleSet:
    """One rule (its conditions written as YAML lines) with examples that always pass."""
    text = "language: en\n"
    if terms:
        text += "terms:\n" + textwrap.indent(textwrap.dedent(terms).strip("\n"), "  ") + "\n"
    text += "rules:" + RULE_HEAD.format(id="t.rule")
    text += textwrap.indent(textwrap.dedent(rule).strip("\n"), "    ") + "\n"
    text += EXAMPLES.format(match=match)
    path = tmp_path / "rule.yaml"
    path.write_text(text)
    return load_rules([path])


def hits(ruleset: RuleSet, text: str, *, subject: str = "") -> list[str]:
    parts = [Part("subject", subject)] if subject else []
    parts.append(Part("text", text))
    verdict = ruleset.evaluate(ScanInput(subject=subject, parts=tuple(parts)))
    return [hit.excerpt for hit in verdict.hits]


def matches(ruleset: RuleSet, text: str) -> bool:
    return bool(hits(ruleset, text))


# --- validation -------------------------------------------------------------------------

VALID = """
language: en
terms:
  en.review: [review*, rating]
rules:
  - id: en.positive.one
    category: positive-review-request
    severity: high
    description: Asks for a positive review.
    hint: Ask for an honest review.
    all: ["positive", "@en.review"]
    examples:
      match: ["a positive review please"]
      no_match: ["a review please"]
"""


@pytest.mark.parametrize(
    ("old", "new", "line", "rule", "message"),
    [
        ("    severity: high", "    severity: huge", 7, "en.positive.one", "unknown severity"),
        ("positive-review-request", "five-stars", 6, "en.positive.one", "unknown category"),
        ('"@en.review"', '"@en.reviews"', 10, "en.positive.one", "undefined term list"),
        ("    hint: Ask", "    hints: Ask", 9, "en.positive.one", "unknown key 'hints'"),
        ("      no_match", "      nomatch", 13, "en.positive.one", "unknown key 'nomatch'"),
        ('      no_match: ["a review please"]\n', "", 12, "en.positive.one", "need 'no_match'"),
        ("[review*, rating]", "[]", 3, None, "must not be empty"),
        ("[review*, rating]", "[review**]", 3, None, "malformed term"),
        ("[review*, rating]", "[r*]", 3, None, "at least 2 characters"),
        ("[review*, rating]", "[leave ~9 review]", 3, None, "at most ~5"),
        ("[review*, rating]", "[~2 review]", 3, None, "between two words"),
        ("[review*, rating]", "[review ~2]", 3, None, "ends with a gap"),
        ("[review*, rating]", "['!!']", 3, None, "no letters or digits"),
        ('all: ["positive", "@en.review"]', 'all: ["positive"]\n    within: 0', 11, None,
         "out of range"),
        ('all: ["positive", "@en.review"]', "none: [x]", 5, "en.positive.one",
         "needs 'all' or 'any'"),
        ("    hint: Ask for an honest review.\n", "", 5, "en.positive.one", "missing 'hint'"),
        ("language: en", "language: en\nlanguage: de", 2, None, "duplicate key"),
        ("language: en", "languages: en", 1, None, "unknown key 'languages'"),
        ("  - id: en.positive.one", "  - id: en positive", 5, "en positive", "must be letters"),
        ('all: ["positive"', 'all: ["@builtin.fax"', 10, "en.positive.one", "unknown built-in"),
        ("    all:", "    scope: chapter\n    all:", 10, "en.positive.one", "unknown scope"),
        ('      match: ["a positive review please"]', "      match: [{title: x}]", 12, None,
         "unknown key 'title'"),
        ("severity: high", "severity: [high]", 7, "en.positive.one", "must be a string"),
        ("rules:", "rules: {}\nx:", 5, None, "unknown key 'x'"),
    ],
)  # fmt: skip
def test_validation_names_file_line_and_rule(
    tmp_path: Path, old: str, new: str, line: int, rule: str | None, message: str
) -> None:
    assert old in VALID
    path = pack(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(RuleError) as caught:
        load_rules([path])
    error = caught.value
    assert message in error.message
    assert error.file == str(path)
    assert error.line == line, str(error)
    if rule is not None:
        assert error.rule_id == rule
        assert f"rule {rule}" in str(error)
    assert str(error).startswith(f"{path}:{line}: ")


def test_duplicates_across_files_name_both_places(tmp_path: Path) -> None:
    folder = tmp_path / "packs"
    folder.mkdir()
    pack(folder, VALID, "a.yaml")
    pack(folder, VALID.replace("en.review:", "en.other:"), "b.yaml")
    with pytest.raises(
        RuleError, match=r"b\.yaml:5: rule en\.positive\.one: duplicate rule id.*a\.yaml:5"
    ):
        load_rules([folder])
    pack(folder, VALID.replace("en.positive.one", "en.positive.two"), "b.yaml")
    with pytest.raises(RuleError, match=r"b\.yaml:3: duplicate term list 'en\.review'.*a\.yaml:3"):
        load_rules([folder])


def test_yaml_syntax_error_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match=r"bad\.yaml:3: not valid YAML"):
        load_rules([pack(tmp_path, "rules:\n  - id: [unclosed\n", "bad.yaml")])
    with pytest.raises(RuleError, match="no such rule pack"):
        load_rules([tmp_path / "nope"])
    with pytest.raises(RuleError, match="empty rule pack"):
        load_rules([pack(tmp_path, "", "empty.yaml")])


def test_term_lists_may_include_other_lists_but_not_cycles(tmp_path: Path) -> None:
    body = VALID.replace(
        "en.review: [review*, rating]", "en.review: [review*, '@en.more']\n  en.more: [rating]"
    )
    ruleset = load_rules([pack(tmp_path, body)])
    assert matches(ruleset, "a positive rating")
    body = body.replace("en.more: [rating]", "en.more: [rating, '@en.review']")
    with pytest.raises(RuleError, match="include each other"):
        load_rules([pack(tmp_path, body)])


def test_version_is_name_and_content_hash(tmp_path: Path) -> None:
    folder = tmp_path / "mypacks"
    folder.mkdir()
    pack(folder, VALID, "a.yaml")
    first = load_rules([folder])
    assert first.version.startswith("mypacks@") and len(first.version.split("@")[1]) == 12
    assert load_rules([folder]).version == first.version
    assert load_rules([folder], name="custom").version.startswith("custom@")
    pack(folder, VALID.replace("rating", "ratings"), "a.yaml")
    assert load_rules([folder]).version != first.version
    assert load_rules([folder / "a.yaml"]).version.startswith("a@")


def test_folders_load_every_yaml_below_in_sorted_order(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    (folder / "z").mkdir(parents=True)
    pack(folder / "z", VALID, "late.yaml")
    pack(
        folder,
        VALID.replace("en.positive.one", "a.first").replace("en.review", "x.review"),
        "b.yaml",
    )
    (folder / "README.md").write_text("not a pack")
    ruleset = load_rules([folder])
    assert [rule.id for rule in ruleset.rules] == ["a.first", "en.positive.one"]


def test_bundled_rules_path_points_at_the_repo_rules() -> None:
    path = bundled_rules_path()
    assert (path / "README.md").is_file()
    assert any(path.rglob("*.yaml"))


# --- terms ---------------------------------------------------------------------------


def test_parse_term_normalizes_like_text() -> None:
    term = parse_term("Five Star*")
    assert [(w.text, w.prefix) for w in term.words] == [("5", False), ("star", True)]
    term = parse_term("leave ~2 e-mail ~1 rеview")
    assert [w.text for w in term.words] == ["leave", "e", "mail", "review"]
    assert term.gaps == (2, 0, 1)
    assert [w.cjk for w in parse_term("レビュー 5つ星").words] == [True, False, True]


@pytest.mark.parametrize(
    ("term", "text", "expected"),
    [
        ("review*", "Reviews help", True),
        ("review*", "preview", False),
        ("review", "reviews", False),
        ("review", "REVIEW!", True),
        ("five star*", "a five-star rating", True),
        ("5 star*", "a five-star rating", True),
        ("5 star*", "⭐⭐⭐⭐⭐ please", True),
        ("5 star*", "5/5 please", True),
        ("5 star*", "5* please", True),
        ("5 star*", "5star please", True),
        ("5 star*", "5. Stars are nice", False),  # a phrase stays inside one sentence
        ("leave ~2 review", "leave us a review", True),
        ("leave ~2 review", "leave us a nice review", False),
        ("leave ~2 review", "leave review", True),
        ("leave us", "leave, us", True),
        ("fur", "für uns", True),  # an accent-less term matches accented text
        ("für", "fur", False),  # but not the reverse
        ("évaluation", "Évaluation", True),
        ("evaluation*", "évaluations", True),
        ("レビュー", "ぜひレビューを", True),
        ("レビュー ~3 お願い", "レビューをぜひお願い", True),
        ("レビュー ~1 お願い", "レビューをぜひお願い", False),
        ("amazonの", "Amazonのレビュー", True),
        ("☎", "☎ 0800", True),
        ("e-mail", "email", False),
        ("e-mail", "E-Mail", True),
        ("don't", "dont", False),
        ("don't", "don’t", True),
        ("20%", "20 % off", True),
    ],
)
def test_term_features(tmp_path: Path, term: str, text: str, expected: bool) -> None:
    ruleset = rule_pack(tmp_path, f"all: [{term!r}]", match=text if expected else "x")
    assert matches(ruleset, text) is expected


# --- scopes and windows -------------------------------------------------------------------


def test_sentence_scope(tmp_path: Path) -> None:
    ruleset = rule_pack(tmp_path, 'all: ["positive", "review"]')
    assert matches(ruleset, "A positive review helps.")
    assert not matches(ruleset, "Positive news! Your review is online.")
    assert not matches(ruleset, "Positive news\n\nreview")
    assert not matches(ruleset, "positive news\n- review")
    assert matches(ruleset, "positive news\nreview")  # one line break is no sentence end
    assert matches(ruleset, "Visit positive.example and review")  # a dot inside a name


def test_paragraph_and_message_scope(tmp_path: Path) -> None:
    para = rule_pack(tmp_path, 'scope: paragraph\nall: ["positive", "review"]')
    assert matches(para, "Positive news! Your review is online.")
    assert not matches(para, "Positive news!\n\nYour review is online.")
    message = rule_pack(tmp_path, 'scope: message\nall: ["positive", "review"]')
    assert matches(message, "Positive news!\n\nYour review is online.")
    assert not matches(message, "Positive news!") and not hits(message, "", subject="review")


def test_parts_are_separate(tmp_path: Path) -> None:
    ruleset = rule_pack(tmp_path, 'scope: message\nall: ["positive", "review"]')
    assert not hits(ruleset, "a review", subject="positive")
    assert hits(ruleset, "hello", subject="a positive review")


def test_alternatives_that_read_the_same_share_one_key() -> None:
    """The translate shortcut gives the words-and-blank-lines key exactly, or is not taken."""
    from relay.engine import _BLANK_LINE_RE, _alternative_key

    def split_key(text: str) -> str:
        return " ".join(_BLANK_LINE_RE.sub("\x00", text).split())

    assert _alternative_key("Hello  there,\r\nbuyer.\n \nBye ") == "Hello there, buyer.\x00Bye"
    assert _alternative_key("Hello there, buyer.\n\nBye") == "Hello there, buyer.\x00Bye"
    pieces = ["a", "bc", " ", "  ", "\n", "\t", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x00"]
    pieces += ["\u3000", "\xa0", "\x85", "é", ".", " \n\n ", "\n \n"]
    rng = random.Random(7)
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        assert _alternative_key(text) == split_key(text), repr(text)


def test_within(tmp_path: Path) -> None:
    ruleset = rule_pack(tmp_path, 'all: ["positive", "review"]\nany: ["leave", "give"]\nwithin: 3')
    assert matches(ruleset, "please leave a positive review")
    assert matches(ruleset, "a positive review, leave it")
    assert not matches(ruleset, "please leave us a very positive review")
    assert not matches(ruleset, "leave a review, be positive about it")
    assert matches(ruleset, "leave a review, positive one, give a positive review")


def test_within_counts_cjk_characters_as_words(tmp_path: Path) -> None:
    ruleset = rule_pack(tmp_path, 'all: ["高評価", "お願い"]\nwithin: 6')
    assert matches(ruleset, "高評価をお願いします")
    assert not matches(ruleset, "高評価についてのご案内とお願い")


def test_ordered_follows_the_written_order(tmp_path: Path) -> None:
    ruleset = rule_pack(tmp_path, 'all: ["leave", "review"]\nordered: true')
    assert matches(ruleset, "leave a review")
    assert not matches(ruleset, "review and leave")
    assert matches(ruleset, "review and leave a review")
    any_first = rule_pack(tmp_path, 'any: ["please"]\nall: ["review"]\nordered: true')
    assert matches(any_first, "please review")
    assert not matches(any_first, "review please")
    any_last = rule_pack(tmp_path, 'all: ["review"]\nany: ["please"]\nordered: true')
    assert matches(any_last, "review please")
    assert not matches(any_last, "please review")
    windowed = rule_pack(tmp_path, 'all: ["leave", "review"]\nordered: true\nwithin: 2')
    assert matches(windowed, "leave it. leave a review")
    assert not matches(windowed, "leave a nice review")


def test_none(tmp_path: Path) -> None:
    ruleset = rule_pack(tmp_path, 'all: ["review"]\nnone: ["honest", "@builtin.url"]')
    assert matches(ruleset, "Please review us.")
    assert matches(ruleset, "Please review us honestly.")  # "honest" is a whole word
    assert not matches(ruleset, "Please leave an honest review.")
    assert matches(ruleset, "Be honest. Then review us.")  # none is per sentence
    assert not matches(ruleset, "Review us at our-shop.com")
    message = rule_pack(tmp_path, 'scope: message\nall: ["review"]\nnone: ["honest"]')
    assert not matches(message, "Be honest. Then review us.")


def test_requires(tmp_path: Path) -> None:
    ruleset = rule_pack(
        tmp_path,
        """
        all: ["happy", "review"]
        requires:
          - scope: message
            all: ["not", "contact us"]
        """,
    )
    gating = "Happy with it, leave a review!\n\nNot happy? Contact us first."
    assert hits(ruleset, gating) == ["Happy with it, leave a review! Not happy? Contact us first."]
    assert not matches(ruleset, "Happy with it, leave a review!")
    assert not matches(ruleset, "Happy with it? Leave a review!\n\nNot happy? Contact us first.")
    assert not matches(ruleset, "Not happy? Contact us.")


def test_one_hit_per_rule_and_part_with_description_and_hint(tmp_path: Path) -> None:
    ruleset = rule_pack(tmp_path, 'all: ["review"]')
    verdict = ruleset.evaluate(
        ScanInput(
            subject="review",
            parts=(Part("subject", "review"), Part("text", "review. review. review.")),
        )
    )
    assert [(h.part, h.excerpt) for h in verdict.hits] == [
        ("subject", "review"),
        ("text", "review. review. review."),
    ]
    hit = verdict.hits[0]
    assert hit.category is Category.POSITIVE_REVIEW_REQUEST and hit.severity is Severity.HIGH
    assert hit.description == "Test rule." and hit.hint == "Ask for an honest review."
    assert verdict.rules_version == ruleset.version and verdict.label == "violation"


def test_subject_without_a_subject_part_is_scanned(tmp_path: Path) -> None:
    ruleset = rule_pack(tmp_path, 'all: ["review"]')
    verdict = ruleset.evaluate(ScanInput(subject="Review us", parts=(Part("text", "hi"),)))
    assert [h.part for h in verdict.hits] == ["subject"]


# --- evasions and excerpts --------------------------------------------------------------


def test_excerpt_shows_the_sellers_original_text(tmp_path: Path) -> None:
    ruleset = rule_pack(tmp_path, 'all: ["@positive", "review"]', terms="positive: [5 star*]")
    text = "Hello Sam,\n\nthanks!  Please leave a ⭐️⭐️⭐️⭐️⭐️ rе\u200bvi\u00adеw\ttoday. Bye"
    assert hits(ruleset, text) == [
        "Hello Sam, thanks! Please leave a ⭐️⭐️⭐️⭐️⭐️ rе\u200bvi\u00adеw today. Bye"
    ]


def test_excerpt_of_a_long_message_is_short(tmp_path: Path) -> None:
    ruleset = rule_pack(tmp_path, 'all: ["positive review"]')
    text = (
        "Filler words here. " * 50 + "Please leave a ｐｏｓｉｔｉｖｅ review now. " + "More. " * 50
    )
    (excerpt,) = hits(ruleset, text)
    assert "ｐｏｓｉｔｉｖｅ review" in excerpt
    assert 60 <= len(excerpt) <= 122 and "\n" not in excerpt


# --- builtins ---------------------------------------------------------------------------

PHONES = [
    "+49 30 1234567",
    "+1 555 0100",
    "+44 20 7946 0958",
    "0049 30 1234567",
    "(555) 010-0100",
    "555-010-0100",
    "1-800-555-0100",
    "0800 123 456",
    "030 1234567",
    "0171/1234567",
    "03-1234-5678",
    "090-1234-5678",
    "0120-123-456",
    "01 23 45 67 89",
    "912 345 678",
    "347 123 4567",
    "02 1234 5678",
    "07700 900123",
    "91 765 43 21",  # Spanish landline
    "333 12 34 567",  # Italian mobile
]
NOT_PHONES = [
    "114-1234567-1234567",  # Amazon order id
    "D01-1234567-1234567",
    "2026-11-27",
    "27.11.2026",
    "11/27/2026",
    "1.299,00",
    "EUR 1299.00",
    "9400 1000 0000 0000 0000 00",  # tracking number
    "1Z 999 AA1 01 2345 6784",
    "4006381333931",  # EAN
    "978-3-16-148410-0",  # ISBN
    "XR-2000-300",
    "10115 Berlin",
    "2019-2024",
    "#0123456789",
    "DE89 3704 0044 0532 0130 00",
    "〒100-0001",
    "1234 5678 9012",
    "v2.3.4.5678",
    "12:30-14:00",
    "10:30 1234567",
]


@pytest.mark.parametrize("number", PHONES)
def test_phone_numbers(number: str) -> None:
    text = normalize(f"Call {number} now").text
    found = find_phones(text)
    assert [text[s:e] for s, e in found] == [number.lower()]


@pytest.mark.parametrize("label", ["tel:", "TEL：", "Tel.:", "電話："])
def test_phone_number_right_after_a_label_and_colon(label: str) -> None:
    text = normalize(f"{label}03-1234-5678").text
    assert [text[s:e] for s, e in find_phones(text)] == ["03-1234-5678"]


@pytest.mark.parametrize("text", NOT_PHONES)
def test_not_phone_numbers(text: str) -> None:
    assert find_phones(normalize(f"Ref {text} ok").text) == []
    assert not is_phone_number(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mail support@our-shop.example today", "support@our-shop.example"),
        ("Mail Jane.Doe+x@Mail.Shop.de.", "jane.doe+x@mail.shop.de"),
        ("info [at] shop [dot] com", "info [at] shop [dot] com"),
        ("info(at)shop.de", "info(at)shop.de"),
        ("x@marketplace.amazon.de", None),
        ("x@amazon.co.jp", None),
        ("user@localhost", None),
        ("price @ 5 EUR", None),
        ("@ourshop on Instagram", None),
        ("write to info (at) shop-name\n(dot) com today", "info (at) shop-name\n(dot) com"),
    ],
)
def test_emails(text: str, expected: str | None) -> None:
    norm = normalize(text).text
    found = [norm[s:e] for s, e in find_emails(norm)]
    assert found == ([expected] if expected else [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Go to https://our-shop.example/help?x=1.", "https://our-shop.example/help?x=1"),
        ("see www.tidyhome.example for tips", "www.tidyhome.example"),
        ("visit our-shop.com/reviews, thanks", "our-shop.com/reviews"),
        ("trustpilot.com", "trustpilot.com"),
        ("shop.co.uk", "shop.co.uk"),
        ("https://www.amazon.de/review/create-review?asin=B0", None),
        ("amazon.com", None),
        ("sellercentral.amazon.co.uk", None),
        ("https://amzn.to/3abc", None),
        ("https://www.dhl.de/track?id=1", None),
        ("e.g. the No.5", None),
        ("i.e. this", None),
        ("Thanks.It works", None),
        ("version 2.0 and manual.pdf", None),
        ("mail me at a@b-shop.de", None),  # an e-mail address, not a link
        ("price 12.99 de", None),
        ("details at garagegear dot co dot uk slash register", "garagegear dot co dot uk"),
        ("see shop [dot] de", "shop [dot] de"),
        ("en este punto es necesario", None),
        ("we dot the i's", None),
        ("join t.me/ourshop", "t.me/ourshop"),
        ("bit.ly/abc123", "bit.ly/abc123"),
        ("linktr.ee/shop", "linktr.ee/shop"),
        ("wa.me/4915112345", "wa.me/4915112345"),
        ("https://m.media-amazon.com/images/I/x.jpg", None),
        ("images-na.ssl-images-amazon.com/x.png", None),
        ("https://www.mondialrelay.fr/suivi", None),
        ("gls-italy.com/track", None),
        ("www.post.ch/track", None),
        ("post.myshop.com", "post.myshop.com"),  # "post" alone is not a carrier
        ("Thanks.Me and my team", None),
    ],
)
def test_urls(text: str, expected: str | None) -> None:
    norm = normalize(text)
    found = [norm.text[s:e] for s, e in find_urls(norm)]
    assert found == ([expected.lower()] if expected else [])


@pytest.mark.parametrize(
    ("text", "rating", "top"),
    [
        ("★★★★★", True, True),
        ("★★★☆☆", True, False),
        ("⭐⭐⭐⭐", True, True),
        ("5*", True, True),
        ("4,5/5", True, True),
        ("3/5", True, False),
        ("five-star", True, True),
        ("five gold stars", True, True),
        ("one star", True, False),
        ("5 Sterne", True, True),
        ("fünf Sterne", True, True),
        ("cinq étoiles", True, True),
        ("5 estrellas", True, True),
        ("cinque stelle", True, True),
        ("5つ星", True, True),
        ("星5つ", True, True),
        ("星を5つ", True, True),
        ("FiveStar blender", False, False),
        ("the stars of our range", False, False),
        ("24/7", False, False),
        ("100 stars", False, False),
    ],
)
def test_ratings(tmp_path: Path, text: str, rating: bool, top: bool) -> None:
    any_rating = rule_pack(tmp_path, 'all: ["@builtin.rating"]')
    assert matches(any_rating, f"please {text} today") is rating
    top_rating = rule_pack(tmp_path, 'all: ["@builtin.top-rating"]')
    assert matches(top_rating, f"please {text} today") is top


@pytest.mark.parametrize(
    ("text", "symbol", "top"),
    [
        ("★★★★★ for us?", True, True),
        ("⭐⭐⭐ would be fine", True, False),
        ("Rate us 5/5", True, True),
        ("give  us   5* please", True, True),
        ("*****", True, True),
        ("rated 5 stars by thousands", False, False),  # words, not symbols
        ("Five stars for effort", False, False),
        ("a five-star hotel", False, False),
    ],
)
def test_symbol_ratings(tmp_path: Path, text: str, symbol: bool, top: bool) -> None:
    any_symbol = rule_pack(tmp_path, 'all: ["@builtin.symbol-rating"]')
    assert matches(any_symbol, text) is symbol
    top_symbol = rule_pack(tmp_path, 'all: ["@builtin.top-symbol-rating"]')
    assert matches(top_symbol, text) is top
    if symbol:
        (excerpt,) = hits(any_symbol, text)
        assert excerpt == " ".join(text.split())


_BUILTIN_FRAGMENTS = (
    " ", " ", "\n", "@", "(at)", "[at]", "{ at }", " dot ", "[dot]", "(dot)", "(punkt)", "t]",
    "://", "http", "https://", "ftp://", "www.", "ww", ".com", ".de", ".co", "shop", "x", "5",
    "0171", "1234567", "+49", "(", ")", "-", "/", "star", "stars", "sterne", "étoile",
    "estrellas", "stella", "toile", "星", "つ", "を", "4.5", "amazon.de", ":", ".", "Thanks.It",
    "★★★★★", "5/5", "***", "com", "de", "9",
)  # fmt: skip


def test_cheap_checks_in_builtins_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(6)
    texts = [
        "".join(rng.choice(_BUILTIN_FRAGMENTS) for _ in range(rng.randrange(1, 16)))
        for _ in range(3000)
    ]
    spelled = ["shop dot com", "shop[dot]de", "shop(dot)co(dot)uk", "our-shop (punkt) de"]
    norms = [normalize(text) for text in [*texts, *PHONES, *spelled, "999 999 999"]]

    def found() -> dict[str, list[list[tuple[int, int]]]]:
        return {name: [builtins.find(name, norm) for norm in norms] for name in builtins.NAMES}

    fast = found()
    assert all(any(spans) for spans in fast.values())  # every finder finds something
    gates = ("_may_have_email", "_may_have_scheme", "_has_digit")
    for gate in (*gates, "_may_have_rating", "may_have_star_word"):
        monkeypatch.setattr(builtins, gate, lambda text: True)
    assert found() == fast
    # This one is a deliberate choice of forms, not a proof: "(punkt)" alone is not looked at.
    spelled_forms = (" dot ", "dot]", "dot)", "t]")
    for text in [*texts, *spelled]:
        expected = any(form in text for form in spelled_forms)
        assert builtins._may_have_spelled_dot(text) == expected


# --- linear time --------------------------------------------------------------------------


def count_calls(func: Callable[[], Any]) -> int:
    """Python-level function calls made while running `func` (deterministic, not timed)."""
    calls = 0

    def profiler(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(profiler)
    try:
        func()
    finally:
        sys.setprofile(None)
    return calls


def adversarial(size: int) -> Iterator[str]:
    yield "leave review positive " * size
    yield "review " * size + "positive"
    yield "a" * (size * 10) + " review"
    yield "5 " * size + "0" * size
    yield "@a." * size
    yield "x.com " * size
    yield "★" * size + "*" * size
    yield "レビュー" * size
    yield "rеvіеw " * size


def test_work_grows_linearly_with_message_size(tmp_path: Path) -> None:
    ruleset = rule_pack(
        tmp_path,
        """
        scope: message
        all: ["leave ~5 review", "positive", "@builtin.phone"]
        any: ["@builtin.email", "@builtin.url", "@builtin.rating", "レビュー"]
        none: ["honest"]
        within: 40
        ordered: true
        """,
    )
    for small, large in zip(adversarial(200), adversarial(800), strict=True):
        scan_small = ScanInput(subject="", parts=(Part("text", small),))
        scan_large = ScanInput(subject="", parts=(Part("text", large),))
        small_calls = count_calls(lambda s=scan_small: ruleset.evaluate(s))  # type: ignore[misc]
        large_calls = count_calls(lambda s=scan_large: ruleset.evaluate(s))  # type: ignore[misc]
        assert large_calls <= 5 * small_calls + 500, (small[:20], small_calls, large_calls)


@pytest.mark.parametrize(
    "unit",
    [
        "see https://shop.example/x or ",
        "our-shop dot com and https://www.shop.example/y ",
        "mail info@shop.example or call +49 30 1234567 ",
        "give us 5 stars or ★★★★★ or 5/5 ",
    ],
)
def test_builtins_grow_linearly_with_text_size(unit: str) -> None:
    small, large = normalize(unit * 200), normalize(unit * 800)
    for name in builtins.NAMES:
        small_calls = count_calls(lambda: builtins.find(name, small))  # noqa: B023
        large_calls = count_calls(lambda: builtins.find(name, large))  # noqa: B023
        assert large_calls <= 5 * small_calls + 500, (name, small_calls, large_calls)


@pytest.mark.parametrize(
    "words",
    [["Leave", "us"], ["review"], ["レビュー", "お願い"], ["Five", "star"], ["fünf"], ["五つ星"]],
)
def test_simple_term_fast_path_agrees_with_full_normalization(words: list[str]) -> None:
    from relay.rulepack import _normalized_tokens, _simple_tokens

    fast = _simple_tokens(words)
    assert fast is None or fast == _normalized_tokens(words)


def test_bundled_rules_are_found_inside_an_installed_package(tmp_path: Path) -> None:
    """The wheel force-includes rules/ as relay/_bundled_rules; that copy wins when present."""
    import shutil
    import subprocess

    package = Path(__file__).resolve().parent.parent / "relay"
    installed = tmp_path / "site" / "relay"
    shutil.copytree(package, installed, ignore=shutil.ignore_patterns("__pycache__"))
    (installed / "_bundled_rules").mkdir()
    pack(installed / "_bundled_rules", VALID, "only.yaml")
    code = (
        "from relay.engine import bundled_rules_path, load_bundled_rules;"
        "r = load_bundled_rules(); print(bundled_rules_path(), r.version, len(r.rules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=True,
    )
    path, version, count = result.stdout.split()
    assert path == str(installed / "_bundled_rules")
    assert version.startswith("bundled@") and count == "1"


def test_dense_and_sparse_placement_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many candidates are placed in one pass, few segment by segment: same verdicts."""
    from relay.engine import _Part, load_bundled_rules

    ruleset = load_bundled_rules()
    texts = [
        "Hi Sam,\n\nif you are happy, please leave us a 5-star review! If not, contact us "
        "first at help@our-shop.example.\n\nThanks, your team",
        "Bitte bewerten Sie uns mit fünf Sternen. Wir erstatten Ihnen den Betrag nach der "
        "Bewertung. Rufen Sie uns an: 0800 123 456.",
        "ご満足いただけましたら、★5のレビューをお願いします。レビュー後に返金いたします。",
        "Your order shipped. " * 40 + "Please change your review to five stars, thank you.",
    ]
    scans = [ScanInput(subject="", parts=(Part("text", t),)) for t in texts]
    modes = {"dense": _Part._place_dense, "sparse": _Part._place_sparse}
    results = {}
    for name, place in modes.items():
        monkeypatch.setattr(_Part, "_place_dense", place)
        monkeypatch.setattr(_Part, "_place_sparse", place)
        results[name] = [ruleset.evaluate(scan).hits for scan in scans]
    assert results["dense"] == results["sparse"]
    assert all(results["dense"])


def test_rules_missing_a_needed_word_are_skipped_before_any_placing(tmp_path: Path) -> None:
    from relay.engine import _Part

    ruleset = rule_pack(tmp_path, 'all: ["positive", "review"]')
    # "review" is nowhere: the part is not even placed.
    assert ruleset._prepare("A positive outlook. " * 50, ruleset.rules) is None
    # Both words, but never in one sentence: dropped by the sentences of the rarer word.
    assert ruleset._prepare("Positive! " * 50 + "Review.", ruleset.rules) is None
    prepared = ruleset._prepare("Hello. " * 50 + "A positive review.", ruleset.rules)
    assert isinstance(prepared, _Part)
    ((begin, end),) = prepared.ranges
    assert prepared.norm.text[begin:end].strip() == "a positive review."


def test_a_clause_that_can_hold_nowhere_drops_its_rule(tmp_path: Path) -> None:
    ruleset = rule_pack(
        tmp_path,
        """
        all: ["happy", "review"]
        requires:
          - scope: paragraph
            all: ["not", "contact"]
        """,
    )
    text = "Happy? Leave a review!\n\nNot today.\n\nContact us any time."
    assert ruleset._prepare(text, ruleset.rules) is None
    assert matches(ruleset, "Happy? Leave a review!\n\nNot happy? Contact us.") is False
    assert matches(ruleset, "Happy with it, leave a review!\n\nNot happy? Contact us.")


def test_a_phrase_whose_words_never_share_a_sentence_drops_its_rule(tmp_path: Path) -> None:
    """Every word of a term, not only its rarest, must stand in a unit the clause holds in."""
    ruleset = rule_pack(tmp_path, 'all: ["find us on", "instagram"]')
    # "find" is the phrase's rarest word, and it does share a sentence with "instagram".
    apart = "Find the Instagram link below. Write to us on Monday. Call us on Friday."
    assert ruleset._prepare(apart, ruleset.rules) is None
    assert not matches(ruleset, apart)
    assert matches(ruleset, "You can find us on Instagram.")
    paragraphs = "Find us here.\n\nOn Instagram, as always."
    assert not matches(ruleset, paragraphs)


def test_word_distances_hold_in_a_narrowed_sentence(tmp_path: Path) -> None:
    ruleset = rule_pack(tmp_path, 'all: ["positive", "review"]\nany: ["leave"]\nwithin: 3')
    filler = "Leave it. A positive day. Your review arrived. " * 30
    assert matches(ruleset, filler + "Please leave a positive review.")
    assert not matches(ruleset, filler + "Please leave us a very, very positive review.")


def test_narrowing_to_units_changes_no_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundled packs on mixed texts: with units narrowed, and with every word placed."""
    from relay.anchors import Plan, Regions
    from relay.engine import load_bundled_rules

    ruleset = load_bundled_rules()
    filler = "Your order left our warehouse today and the invoice is on the order page. "
    texts = [
        filler * 20 + "If you are happy, please leave us a 5-star review!\n\n"
        "If not, contact us first.\n\n" + filler * 5,
        filler * 10 + "\n\nWe will refund you in full once you leave a positive review.",
        "Bitte bewerten Sie uns mit fünf Sternen. " + "Ihre Bestellung ist unterwegs. " * 30,
        "ご注文ありがとうございます。" * 20 + "★5のレビューをお願いします。返金いたします。",
        filler * 15 + "Could you delete your negative review now that it is solved? "
        "Follow us on Instagram too.",
        "Write to us at help@our-shop.example or call +1 555 0100. " + filler * 5,
    ]
    scans = [ScanInput(subject="", parts=(Part("text", t),)) for t in texts]
    narrowed = [ruleset.evaluate(scan).hits for scan in scans]

    def everything(self: Regions, rules: Any, anchors: Any) -> Plan:
        return Plan(list(rules), None, {})

    monkeypatch.setattr(Regions, "of", everything)
    assert [ruleset.evaluate(scan).hits for scan in scans] == narrowed
    assert all(narrowed)


def test_word_tables_take_whole_runs_only() -> None:
    from relay.wordscan import WordTable

    table = WordTable({"our": [0], "5": [1]}, {})
    assert table.starts("our your hour, (our) ours\nour", "our") == [0, 16, 26]
    assert table.starts("5 15 5a a5 55 5", "5") == [0, 5, 9, 14]
    with pytest.raises(ValueError, match="not a run"):
        WordTable({"e-mail": [0]}, {})


@pytest.mark.parametrize(
    "text",
    [
        "One. Two! Three? Four… five",
        "Wait... what?! Yes.\nNo",
        "shop.example and v1.2 and a.b.c",
        "Line\n\nParagraph\n \t\nAnother",
        "Items:\n- one\n* two\n• three\n1. four\n12) five\n123. six",
        "ご注文ありがとうございます。レビューをお願いします｡以上",
        '"Quoted." (Parens.) «Fr.» 「ja。」 end.',
        "ends with a dot.",
        "ends with a dot.\n",
        "",
        "\n\n\n",
    ],
)
def test_sentence_starts_agree_with_the_break_pattern(text: str) -> None:
    from relay.normalize import SENTENCE_BREAK_RE
    from relay.sentences import sentence_starts as _sentence_starts

    norm = normalize(text).text
    assert _sentence_starts(norm) == [m.start() for m in SENTENCE_BREAK_RE.finditer(norm)]


def test_sentence_starts_and_runs_agree_on_every_corpus_body() -> None:
    from collections import Counter

    from relay.normalize import SENTENCE_BREAK_RE
    from relay.sentences import sentence_starts as _sentence_starts
    from relay.wordscan import RUN_RE, count_runs
    from tests.corpus.build import load_corpus

    for item in load_corpus():
        for text in (item.body, item.quoted or ""):
            norm = normalize(text).text
            expected = [m.start() for m in SENTENCE_BREAK_RE.finditer(norm)]
            assert _sentence_starts(norm) == expected, item.id
            bare = normalize(text).bare
            assert count_runs(bare) == Counter(RUN_RE.findall(bare)), item.id


def test_a_part_placed_whole_keeps_the_items_its_census_found() -> None:
    """Placed in the whole text, a part's words are those it counted: no second lookup."""
    from tests.corpus.build import load_corpus

    ruleset = load_rules([bundled_rules_path()])
    checked = 0
    for item in load_corpus():
        part = ruleset._prepare(item.body, ruleset.rules)
        if part is None or part.ranges != ((0, len(part.norm.text)),):
            continue
        recomputed = ruleset.index.possible_items(set(part.atoms), part.builtin_occs)
        assert part.possible() == recomputed, item.id
        checked += 1
    assert checked > 50


def test_made_up_words_of_a_prefix_are_placed_in_one_pass(tmp_path: Path) -> None:
    """Thousands of distinct words of one prefix cannot cost a regex each."""
    from itertools import product

    from relay.wordscan import Census

    ruleset = rule_pack(tmp_path, 'all: ["review*", "positive"]')
    words = ["review" + "".join(letters) for letters in product("abcdefgh", repeat=4)]
    text = " ".join(f"{word} positive." for word in words[:3000])
    assert matches(ruleset, text)
    assert ruleset.scanner is not None
    assert len(ruleset.scanner.plain.word_regexes) <= Census.WORD_SEARCHES


@pytest.mark.parametrize(
    "text",
    [
        "plain words, and 5star or a5 and 10/10! x2y3z e-mail_x",
        "tabs\tand\nlines\r\nand\x0bform\x0cfeeds\x1c\x1d\x1e\x1f end",
        "",
        "   ",
        "only 123 456",
        "naïve café déjà",  # not ASCII: the general road
    ],
)
def test_counting_runs_agrees_with_the_run_pattern(text: str) -> None:
    from collections import Counter

    from relay.wordscan import RUN_RE, count_runs

    assert count_runs(text) == Counter(RUN_RE.findall(text))
