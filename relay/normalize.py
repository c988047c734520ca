"""Text normalization: read a message the way a buyer (and Amazon's scanner) reads it.

`normalize(text)` folds away the evasions listed in CATEGORIES.md while keeping a map back to
the original, so a hit's excerpt shows what the seller actually wrote:

- Unicode NFKC and case folding (full-width letters, math alphabets, ligatures, `ß`);
- zero-width and other format characters (category Cf), soft hyphens, variation selectors
  and emoji modifiers removed;
- combining marks composed with their base letter; marks NFKC cannot compose onto a Latin
  letter are dropped (Japanese dakuten and marks on other scripts are kept);
- look-alike Cyrillic, Greek and Armenian letters folded to Latin, but only inside words that
  mix scripts, so a Russian or Greek word written as such stays intact;
- star ratings (`★★★★☆`, `⭐⭐⭐⭐⭐`, `5*`, `5/5`, `****`) rewritten as the words `N stars`,
  and number words before a star word (`five-star`, `fünf Sterne`, `五つ星`) as digits.

Whitespace runs collapse to one space, one line break or one blank line (terms match words
whatever stands between them; blank lines end paragraphs). Sentence and paragraph breaks are
found on the normalized text. `bare`
is the normalized text with Latin diacritics removed, character for character, for
accent-insensitive matching. Everything here is linear in the text size: a fast path handles
text that `str.lower()` already normalizes, the slow path only touches unusual characters.
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate

# --- character classes shared with the engine -------------------------------------------

LATIN = "a-z\u00aa\u00b5\u00ba\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff\u2c60-\u2c7f"
FOLDABLE = "\u0370-\u03ff\u1f00-\u1fff\u0400-\u052f\u0531-\u058f"  # Greek, Cyrillic, Armenian
MARKS = "\u0300-\u036f"
LETTER = "A-Z" + LATIN + FOLDABLE + MARKS
"""Characters of space-separated words (the scripts whose words are matched whole)."""
CJK = (
    "\u3041-\u3096\u3099-\u309f\u30a0-\u30fa\u30fc-\u30ff\u31f0-\u31ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\u3005\U00020000-\U0002fa1f"
)
SYMBOLS = "\u2190-\u21ff\u2300-\u23ff\u25a0-\u27bf\u2900-\u2bff\u3200-\u32ff\U0001f000-\U0001faff"
"""Pictographs such as ☎, ✉ and 📞 (star symbols never get here: they become `N stars`)."""
CJK += SYMBOLS
"""Characters matched as substrings: each one counts as one word."""

TOKEN_RE = re.compile(f"[{LETTER}]+|[0-9]+|[{CJK}]+")
"""A word (letter run or digit run; `5star` is two words) or a run of CJK characters."""
WORD_START_RE = re.compile(f"(?<![{LETTER}])[{LETTER}]|(?<![0-9])[0-9]|[{CJK}]")
"""One match per word, and one per CJK character: counting matches counts words."""
SENTENCE_BREAK_RE = re.compile(
    r"[.!?\u2026]+(?=[\s\"'\u201d\u2019)\]\u00bb\u300d\u300f" + CJK + r"]|$)"
    r"|[\u3002\uff61]"
    r"|\n[ \t\r\f\v\u3000]*\n"
    r"|\n[ \t\u3000]*(?:[-*\u2022\u00b7\u25aa\u2023\u25e6\u25cb\u25cf\u25a0\u25a1\u27a2\u27a4"
    r"\u25ba\u2713\u2714\u30fb]|[0-9]{1,2}[.)])[ \t]"
)
"""Where a sentence ends: `.`, `!`, `?` before a space, `。`, a blank line, a bullet."""
PARAGRAPH_BREAK_RE = re.compile(r"\n[ \t\r\f\v\u3000]*\n")

# --- per-character folding ----------------------------------------------------------------

_REMOVED = frozenset(
    [*range(0xFE00, 0xFE10), 0x20E3, 0x034F, *range(0x1F3FB, 0x1F400), *range(0xE0100, 0xE01F0)]
)
"""Variation selectors, the keycap mark, the grapheme joiner and skin tones: invisible glue."""
_EXTRA = {"\u2028": "\n", "\u2029": "\n", "\x0b": "\n", "\x0c": "\n", "\u0130": "i"}


@functools.lru_cache(maxsize=8192)
def _fold_char(char: str) -> tuple[str, bool]:
    """What one character becomes (`''` = removed), and whether it combines with the previous."""
    if char in _EXTRA:
        return _EXTRA[char], False
    code = ord(char)
    category = unicodedata.category(char)
    if code in _REMOVED or category == "Cf":
        return "", False
    if category.startswith("M"):
        return char, True
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", char).casefold())
    if folded and unicodedata.combining(folded[0]):
        return folded, True
    return folded, False


def _is_simple(char: str) -> bool:
    """True when `str.lower()` gives exactly what full normalization gives, one for one."""
    if char in _EXTRA or char == "\u03a3":  # lower() makes a final sigma out of Σ
        return False
    category = unicodedata.category(char)
    if category == "Cf" or category.startswith("M") or ord(char) in _REMOVED:
        return False
    lowered = char.lower()
    return (
        len(lowered) == 1
        and lowered == char.casefold()
        and unicodedata.normalize("NFKC", char) == char
        and unicodedata.normalize("NFKC", lowered) == lowered
    )


def _simple_class() -> str:
    ranges: list[tuple[int, int]] = []
    scanned = [(0x00, 0x7F), (0xA0, 0x058F), (0x1E00, 0x1FFF), (0x2000, 0x2BFF), (0x3000, 0x30FF)]
    for low, high in scanned:
        for code in range(low, high + 1):
            if _is_simple(chr(code)):
                if ranges and ranges[-1][1] == code - 1:
                    ranges[-1] = (ranges[-1][0], code)
                else:
                    ranges.append((code, code))
    ranges += [(0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF)]
    ranges += [(0x20000, 0x2A6DF)]

    def esc(code: int) -> str:
        return f"\\U{code:08x}"

    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges)


# Patterns here open with a plain character class where they can ("[x][x]*", not "[x]+", nor a
# lookbehind or an alternation): re then skips to the next character of that class in a
# tight C loop instead of starting a match attempt at every position (2-3x faster).
_SPECIAL = f"[^{_simple_class()}]"
_SPECIAL_RE = re.compile(_SPECIAL + _SPECIAL + "*")
"""Runs of characters that `str.lower()` alone does not normalize."""

_LATIN_BASE_RE = re.compile(f"[{LATIN}]")

# --- look-alike letters ---------------------------------------------------------------

_CONFUSABLES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "е": "e", "ё": "ë", "г": "r", "к": "k", "м": "m", "н": "h",
        "о": "o", "п": "n", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s",
        "і": "i", "ї": "ï", "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ѵ": "v", "ь": "b",
        "ӏ": "l", "һ": "h", "ɡ": "g", "ү": "y", "ԍ": "g", "ӧ": "ö", "ӓ": "ä", "ҽ": "e",
        # Greek
        "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v",
        "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ς": "s", "μ": "u",
        "ζ": "z", "ϲ": "c", "σ": "c", "ϳ": "j", "ί": "i", "ό": "o", "ύ": "u", "ά": "a",
        "έ": "e", "ϊ": "ï", "ϋ": "ü",
        # Armenian
        "օ": "o", "ս": "u", "հ": "h", "ո": "n", "ց": "g", "ք": "p", "ա": "w", "զ": "q",
    }
)  # fmt: skip
_CAPITAL_CONFUSABLES = {
    # Capitals fold by shape before case folding: Greek Ν is N, while its small ν is v.
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C",
    "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ү": "Y", "Ԛ": "Q", "Ԝ": "W",
    "Һ": "H", "Ӏ": "I", "Ԁ": "D", "Ь": "b",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N",
    "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "Ϲ": "C", "Ϳ": "J", "Ϝ": "F",
}  # fmt: skip
_CASED_CONFUSABLES = {**_CONFUSABLES, **str.maketrans(_CAPITAL_CONFUSABLES)}
_MIXED_SEAM_RE = re.compile(
    f"[{LATIN}{FOLDABLE}](?:(?<=[{LATIN}])[{FOLDABLE}]|(?<=[{FOLDABLE}])[{LATIN}])"
)
_CASED_LATIN = "A-Z" + LATIN
_CASED_SEAM_RE = re.compile(
    f"[{_CASED_LATIN}{FOLDABLE}]"
    f"(?:(?<=[{_CASED_LATIN}])[{FOLDABLE}]|(?<=[{FOLDABLE}])[{_CASED_LATIN}])"
)
_FOLDABLE_RE = re.compile(f"[{FOLDABLE}]")
_WORD_END_RE = re.compile(f"[{LETTER}]*")

# --- ratings ----------------------------------------------------------------------------

_FILLED = "★⭐🌟✪✫✬✭✮✯✰⭑🌠"
_EMPTY = "☆✩⭒"
_STARS = _FILLED + _EMPTY
_NUM = r"[0-9](?:[.,][0-9])?"
NUMBER_WORDS = {
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "ein": "1", "eine": "1", "einen": "1", "zwei": "2", "drei": "3", "vier": "4", "fünf": "5",
    "un": "1", "une": "1", "deux": "2", "trois": "3", "quatre": "4", "cinq": "5",
    "uno": "1", "una": "1", "dos": "2", "tres": "3", "cuatro": "4", "cinco": "5",
    "due": "2", "tre": "3", "quattro": "4", "cinque": "5",
    "一": "1", "二": "2", "三": "3", "四": "4", "五": "5",
}  # fmt: skip
_LATINNUMBER_WORDS = "|".join(k for k in NUMBER_WORDS if k.isascii() or k == "fünf")
_STAR_WORD = r"(?:star|stern|étoile|etoile|estrell|stell)"
# Each expression starts with a character class, so the regex engine skips ahead to the
# few places where a rating can begin instead of trying every position.
_SYMBOL_RATING_RE = re.compile(
    rf"[0-9{_STARS}*](?:"
    # One star symbol then the number, as Japanese sellers write it: ★5, ☆4.5.
    rf"(?<=[{_STARS}])(?<![{_STARS}].)[ \t]?[1-5](?:[.,][0-9])?(?![0-9]|[ \t]?[{_STARS}])"
    rf"|(?<=[{_STARS}])(?:[ \t]?[{_STARS}])*"
    r"|(?<=\*)(?<![*\w]\*)\*{2,4}(?![*\w])"
    r"|(?<=[0-9])(?<![0-9a-z*.,/][0-9])(?:(?<=1)0(?=[ \t]?/))?(?:[.,][0-9])?"
    rf"(?:[ \t]?[{_STARS}](?:[ \t]?[{_STARS}])*|\*(?![*0-9a-z])"
    r"|[ \t]?/[ \t]?(?:5|10)(?![0-9]|[/.,][0-9])))"
)
_NUMBER_WORD_RE = re.compile(
    rf"(?<![{LETTER}])(?:{_LATINNUMBER_WORDS})"
    # A hard-wrapped line may put the number word and the star word on two lines.
    rf"(?=[ \t\n\-\u2010\u2011\u2013]+(?:[{LETTER}]+[ \t\n\-]+)?{_STAR_WORD})"
)
_JA_NUMBER_RE = re.compile(r"[一二三四五](?:(?=つ?星)|(?<=星.))")
_LEADING_NUMBER_RE = re.compile(r"[0-9]+(?:[.,][0-9])?")
# A literal prefix lets the regex engine jump between the few places "st" occurs; an
# alternation of the star words would be tried at every position (10x slower).
_ST_WORD_RE = re.compile("st(?:ar|ern|ell|rell)")


def may_have_star_word(text: str) -> bool:
    """False when `text` surely holds none of the star words (`star`, `stern`, `étoile`...).

    Every star word contains `star`, `stern`, `stell`, `strell` or `toile`; True may be a
    false alarm (`toile` alone), which only costs the caller a regex that finds nothing.
    """
    return "toile" in text or _ST_WORD_RE.search(text) is not None


_OUT_OF_RE = re.compile("/[ \t]?(?:5|10)")


def _may_have_symbol_rating(text: str) -> bool:
    """False when _SYMBOL_RATING_RE surely finds nothing: no `*`, star symbol, `/5` or `/10`.

    A link's slashes alone (`https://shop.example/help`) no longer cost a scan of every digit.
    """
    return "*" in text or any(star in text for star in _STARS) or bool(_OUT_OF_RE.search(text))


def _may_have_rating(text: str) -> bool:
    """False when `text` surely holds no rating to rewrite: no star symbol, `*`, `/` or word.

    Symbol ratings need a star symbol, `*` or `/`; number words need a star word; Japanese
    ones need 星. Single characters are found with memchr, far faster than a regex scan.
    """
    return (
        "*" in text
        or "/" in text
        or "星" in text
        or any(star in text for star in _STARS)
        or may_have_star_word(text)
    )


# --- accents ----------------------------------------------------------------------------


def _strip_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for code in list(range(0xC0, 0x250)) + list(range(0x1E00, 0x1F00)):
        char = chr(code)
        base = "".join(
            c for c in unicodedata.normalize("NFD", char) if not unicodedata.combining(c)
        )
        if len(base) == 1 and base != char and base.isascii():
            table[code] = base
    table.update({ord("ø"): "o", ord("ł"): "l", ord("đ"): "d", ord("ı"): "i", ord("ħ"): "h"})
    return table


_STRIP = _strip_table()
_ACCENTED = "[" + "".join(re.escape(chr(c)) for c in sorted(_STRIP)) + "]"
_ACCENTED_RE = re.compile(_ACCENTED + _ACCENTED + "*")


def strip_accents(text: str) -> str:
    """Latin letters without their diacritics, one character for one (`für` -> `fur`)."""
    return _ACCENTED_RE.sub(lambda m: m.group().translate(_STRIP), text)


# --- offset maps ------------------------------------------------------------------------


class OffsetMap:
    """Maps positions in a rewritten string back to the string it was made from.

    Segments cover the output in order; a linear segment copies its source one for one, a
    constant segment is a replacement (every output position maps to its whole source span).
    """

    __slots__ = ("_linear", "_out", "_src", "_src_len")

    def __init__(self) -> None:
        self._out: list[int] = []
        self._src: list[int] = []
        self._src_len: list[int] = []
        self._linear: list[bool] = []

    @classmethod
    def of_copies(
        cls, out_starts: list[int], src_starts: list[int], lengths: list[int]
    ) -> OffsetMap:
        """The map of copied pieces only: the same as one `add(..., linear=True)` for each."""
        offset_map = cls()
        offset_map._out, offset_map._src, offset_map._src_len = out_starts, src_starts, lengths
        offset_map._linear = [True] * len(lengths)
        return offset_map

    def add(self, out_start: int, src_start: int, src_len: int, *, linear: bool) -> None:
        self._out.append(out_start)
        self._src.append(src_start)
        self._src_len.append(src_len)
        self._linear.append(linear)

    def start(self, pos: int) -> int:
        """Source position of the output character at `pos`."""
        if not self._out:
            return pos
        k = max(bisect.bisect_right(self._out, pos) - 1, 0)
        if self._linear[k]:
            return self._src[k] + (pos - self._out[k])
        return self._src[k]

    def forward(self, pos: int) -> int:
        """Output position of source position `pos` (which must not lie inside a replacement)."""
        k = bisect.bisect_right(self._src, pos) - 1
        if k < 0:
            return pos
        if self._linear[k]:
            return self._out[k] + min(pos - self._src[k], self._src_len[k])
        return self._out[k]

    def end(self, pos: int) -> int:
        """Source position just after the output character at `pos - 1`."""
        if not self._out:
            return pos
        if pos <= 0:
            return self.start(0)
        k = max(bisect.bisect_right(self._out, pos - 1) - 1, 0)
        if self._linear[k]:
            return self._src[k] + (pos - self._out[k])
        return self._src[k] + self._src_len[k]


class _Builder:
    """Collects output pieces and the offset map while rewriting a string left to right."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.length = 0
        self.map = OffsetMap()

    def copy(self, text: str, src_start: int) -> None:
        if text:
            self.map.add(self.length, src_start, len(text), linear=True)
            self.pieces.append(text)
            self.length += len(text)

    def replace(self, text: str, src_start: int, src_len: int) -> None:
        if text:
            self.map.add(self.length, src_start, src_len, linear=False)
            self.pieces.append(text)
            self.length += len(text)

    def last_char(self) -> str:
        return self.pieces[-1][-1] if self.pieces else ""

    def set_last_char(self, char: str) -> None:
        self.pieces[-1] = self.pieces[-1][:-1] + char

    def text(self) -> str:
        return "".join(self.pieces)


# --- the stages -------------------------------------------------------------------------


def _fold_chars(text: str) -> tuple[str, OffsetMap | None]:
    """NFKC + casefold + removal of invisible characters, with a map when lengths change."""
    if text.isascii() or not _SPECIAL_RE.search(text):
        return text.lower(), None
    pieces = _SPECIAL_SPLIT_RE.split(text)  # ordinary, special, ordinary, ..., ordinary
    if all(_fold_char(char) == ("", False) for char in set("".join(pieces[1::2]))):
        return _drop_invisible(pieces)
    return _fold_special(text)


def _fold_special(text: str) -> tuple[str, OffsetMap]:
    """_fold_chars() for any text: each special character folded on its own."""
    out = _Builder()
    pos = 0
    for match in _SPECIAL_RE.finditer(text):
        out.copy(text[pos : match.start()].lower(), pos)
        pos = match.end()
        for offset, char in enumerate(match.group()):
            src = match.start() + offset
            folded, combining = _fold_char(char)
            if not folded:
                continue
            if combining:
                base = out.last_char()
                if base:
                    composed = unicodedata.normalize("NFKC", base + folded).casefold()
                    if len(composed) == 1:
                        out.set_last_char(composed)
                        continue
                    if _LATIN_BASE_RE.match(base):
                        continue  # an uncomposable mark on a Latin letter: read it bare
                elif unicodedata.category(char).startswith("M"):
                    continue
            if len(folded) == 1 and folded == char:
                out.copy(folded, src)
            else:
                out.replace(folded, src, 1)
    out.copy(text[pos:].lower(), pos)
    return out.text(), out.map


_SPECIAL_SPLIT_RE = re.compile(f"({_SPECIAL_RE.pattern})")


def _drop_invisible(pieces: list[str]) -> tuple[str, OffsetMap]:
    """What _fold_chars() makes of a text whose special characters are all invisible glue.

    Zero-width characters, soft hyphens and the like, often hundreds in an HTML mail's
    preheader, are dropped with one join instead of a Python step for each character.
    """
    lengths = [len(piece) for piece in pieces]
    starts = list(accumulate(lengths, initial=0))
    # The ordinary pieces (even indices) are copied one for one; an empty one leaves no trace.
    kept = [n for n in lengths[::2] if n]
    src_starts = [start for start, n in zip(starts[::2], lengths[::2], strict=False) if n]
    out_starts = list(accumulate(kept, initial=0))[:-1]
    offset_map = OffsetMap.of_copies(out_starts, src_starts, kept)
    return "".join(pieces[::2]).lower(), offset_map


_PURE_FOLDABLE_RE = re.compile(f"[{FOLDABLE}](?<![{LETTER}].)[{FOLDABLE}]*(?![{LETTER}])")
_LATIN_LETTER_RE = re.compile(f"[{LATIN}]")
_FOLDS = frozenset(chr(c) for c in _CONFUSABLES)


def _fold_lookalike_words(text: str) -> str:
    """Folds a word made only of look-alikes (`оn`, `аt`) when the words around it are Latin.

    A Russian or Greek word among Russian or Greek words stays as it is; a lone "Cyrillic"
    word in the middle of an English sentence is an evasion.
    """
    if not _FOLDABLE_RE.search(text):
        return text
    pieces: list[str] = []
    pos = 0
    for match in _PURE_FOLDABLE_RE.finditer(text):
        word = match.group()
        if not _FOLDS.issuperset(word):
            continue
        before = _neighbour_letter(text, match.start(), -1)
        after = _neighbour_letter(text, match.end(), 1)
        sides = [c for c in (before, after) if c is not None]
        if len(sides) < (1 if len(word) <= 3 else 2):
            continue  # at the edge of the text only a short word ("оn", "а") is folded
        if all(_LATIN_LETTER_RE.match(c) for c in sides):
            pieces.append(text[pos : match.start()])
            pieces.append(word.translate(_CONFUSABLES))
            pos = match.end()
    if not pieces:
        return text
    pieces.append(text[pos:])
    return "".join(pieces)


def _neighbour_letter(text: str, pos: int, step: int) -> str | None:
    """The nearest letter before (`step` -1) or after (1) `pos` within a few characters."""
    index = pos - 1 if step < 0 else pos
    for _ in range(4):
        if not 0 <= index < len(text):
            return None
        if _is_letter(text[index]):
            return text[index]
        index += step
    return None


def _fold_lookalikes(text: str, *, cased: bool = False) -> str:
    """Folds Cyrillic/Greek/Armenian look-alikes to Latin inside mixed-script words only.

    Runs twice: on the original (`cased`, where capitals still tell Greek Ν from ν) and on
    the case-folded text, for words that only become mixed once invisible characters are gone.
    """
    if not _FOLDABLE_RE.search(text):
        return text
    seams = _CASED_SEAM_RE if cased else _MIXED_SEAM_RE
    table = _CASED_CONFUSABLES if cased else _CONFUSABLES
    pieces: list[str] = []
    pos = 0
    for seam in seams.finditer(text):
        if seam.start() < pos:
            continue  # inside a word already folded
        start = seam.start()
        while start > pos and _is_letter(text[start - 1]):
            start -= 1
        end_match = _WORD_END_RE.match(text, seam.start())
        end = end_match.end() if end_match else seam.end()
        pieces.append(text[pos:start])
        pieces.append(text[start:end].translate(table))
        pos = end
    if not pieces:
        return text
    pieces.append(text[pos:])
    return "".join(pieces)


_LETTER_CHAR_RE = re.compile(f"[{LETTER}]")


def _is_letter(char: str) -> bool:
    return _LETTER_CHAR_RE.match(char) is not None


def _stars_word(value: float) -> str:
    number = f"{value:g}"
    return f" {number} stars "


def _symbol_rating(written: str) -> str | None:
    """The `N stars` replacement for a symbol or digit rating (None: not a rating after all)."""
    first = written[0]
    if first in _STARS and written[-1].isdigit():
        return _stars_word(float(written[1:].strip().replace(",", ".")))
    if first in _STARS:
        filled = sum(1 for c in written if c in _FILLED)
        return _stars_word(filled or sum(1 for c in written if c in _EMPTY))
    if first == "*":
        return _stars_word(len(written))
    number = _LEADING_NUMBER_RE.match(written)
    if number is None:
        return None
    value = float(number.group().replace(",", "."))
    rest = written[number.end() :]
    if "/" in rest:
        scale = int(rest.split("/")[-1].strip())
        if value > scale:
            return None
        value = value * 5 / scale
    return _stars_word(value)


_DATE_BEFORE_RE = re.compile(
    # Only words that make the fraction a date; "el 5/5" alone may be a rating ("danos el 5/5").
    r"(?:\b(?:on|by|until|till|from|para el|hasta el|desde el|antes del|después del|despues del"
    r"|le|jusqu'au|dès le|entro il|entro|fino al|dal|am|bis|ab|vom|zum)[ \t]+"
    r"|[0-9][ \t]*[-~〜][ \t]*)$"
)
_DATE_AFTER = ("に", "ま", "頃", "ご", "着", "発", "配", "(", "（", "日", "~", "〜", "-")


def _is_date(text: str, start: int, end: int) -> bool:
    """A fraction such as 5/5 that is a day of the month ("on 5/5", "5/5に着"), not a rating."""
    if "/" not in text[start:end]:
        return False
    after = text[end : end + 1]
    return after.startswith(_DATE_AFTER) or bool(
        _DATE_BEFORE_RE.search(text, max(0, start - 12), start)
    )


def _rewrite_ratings(text: str) -> tuple[str, OffsetMap | None, list[tuple[int, int, float]]]:
    """Ratings as words; also returns where symbol ratings (★★★★★, 5/5) now stand, and N."""
    symbols: list[tuple[int, int, float]] = []
    if not _may_have_rating(text):
        return text, None, symbols
    found: list[tuple[int, int, str]] = []
    for match in _SYMBOL_RATING_RE.finditer(text) if _may_have_symbol_rating(text) else ():
        replacement = _symbol_rating(match.group())
        if replacement is not None and not _is_date(text, match.start(), match.end()):
            found.append((match.start(), match.end(), replacement))
    if may_have_star_word(text):
        found += [
            (m.start(), m.end(), NUMBER_WORDS[m.group()]) for m in _NUMBER_WORD_RE.finditer(text)
        ]
    if "星" in text:
        found += [
            (m.start(), m.end(), NUMBER_WORDS[m.group()]) for m in _JA_NUMBER_RE.finditer(text)
        ]
    if not found:
        return text, None, symbols
    found.sort()
    out = _Builder()
    pos = 0
    for start, end, replacement in found:
        if start < pos:
            continue
        out.copy(text[pos:start], pos)
        if replacement.endswith(" stars "):
            value = float(replacement.split()[0])
            symbols.append((out.length + 1, out.length + len(replacement) - 1, value))
        out.replace(replacement, start, end - start)
        pos = end
    out.copy(text[pos:], pos)
    return out.text(), out.map, symbols


_WHITESPACE_RE = re.compile(r"\s(?:\s+|(?<=[^\S \n]))")


_ODD_SPACES = tuple(chr(c) for c in range(0x3001) if chr(c).isspace() and chr(c) not in " \n")
"""Whitespace other than a space and a line break (a regex's `\\s` is `str.isspace()`)."""
_DOUBLE_SPACE_RE = re.compile("  ")
_ODD_LINE_BREAK_RE = re.compile("\n(?:(?<= \n)| |\n\n)")
"""A line break after or before a space, or three in a row (the engine jumps to each break)."""


def _is_collapsed(text: str) -> bool:
    """True when every whitespace run already is one space, one line break or a blank line.

    The same as `_WHITESPACE_RE` finding only blank lines, but made of memchr searches
    and literal-prefix regexes instead of a regex attempt at every space.
    """
    return not (
        any(space in text for space in _ODD_SPACES)
        or _DOUBLE_SPACE_RE.search(text)
        or _ODD_LINE_BREAK_RE.search(text)
    )


def _collapse_whitespace(text: str) -> tuple[str, OffsetMap | None]:
    """Whitespace runs become one space, one line break, or a blank line (a paragraph end)."""
    if _is_collapsed(text):
        return text, None
    out: _Builder | None = None
    pos = 0
    for match in _WHITESPACE_RE.finditer(text):
        run = match.group()
        breaks = run.count("\n")
        replacement = "\n\n" if breaks > 1 else "\n" if breaks else " "
        if replacement == run:
            continue
        if out is None:
            out = _Builder()
        out.copy(text[pos : match.start()], pos)
        out.replace(replacement, match.start(), len(run))
        pos = match.end()
    if out is None:
        return text, None
    out.copy(text[pos:], pos)
    return out.text(), out.map


# --- the result -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Normalized:
    """A normalized text, its accent-free twin and the way back to the original."""

    source: str
    text: str
    bare: str
    maps: tuple[OffsetMap, ...] = ()
    symbol_ratings: tuple[tuple[int, int, float], ...] = ()
    """Where ratings written with symbols or digits (★★★★★, ⭐⭐⭐, 5*, 5/5) stand, and N."""

    def source_span(self, start: int, end: int) -> tuple[int, int]:
        """The original text's span for the normalized span `[start, end)`."""
        for offset_map in reversed(self.maps):
            start, end = offset_map.start(start), offset_map.end(end)
        if end < start:
            end = start
        # A match ending on a letter whose combining marks or invisible characters were
        # folded away still owns them in the original.
        while end < len(self.source) and _is_glue(self.source[end]):
            end += 1
        return start, end

    def excerpt(self, start: int, end: int, *, width: int = 100) -> str:
        """About `width` characters of the original around a normalized span, on one line."""
        src_start, src_end = self.source_span(start, end)
        return excerpt(self.source, src_start, src_end, width=width)


def _is_glue(char: str) -> bool:
    category = unicodedata.category(char)
    return category == "Cf" or category.startswith("M") or ord(char) in _REMOVED


_SPACE_RUN_RE = re.compile(r"\s+")


def excerpt(source: str, start: int, end: int, *, width: int = 100) -> str:
    """The slice `[start, end)` of `source` with context, whitespace collapsed to one line.

    The match itself is always shown (cut after `width` characters when longer); the context
    on each side is trimmed to whole words and marked with `…` where text was left out.
    """
    if end - start >= width:
        end = start + width
        cut_start, cut_end = start, end
    else:
        room = (width - (end - start)) // 2
        cut_start = max(0, start - room)
        cut_end = min(len(source), end + room)
        if cut_start > 0:
            space = source.find(" ", cut_start, start)
            if space != -1:
                cut_start = space + 1
        if cut_end < len(source):
            space = source.rfind(" ", end, cut_end)
            if space != -1:
                cut_end = space
    text = _SPACE_RUN_RE.sub(" ", source[cut_start:cut_end]).strip()
    if cut_start > 0:
        text = "…" + text
    if cut_end < len(source):
        text += "…"
    return text


# IPA letters and small capitals that pass for Latin ones (rɑting, ʀeview, ꜰɪᴠᴇ): no language
# the relay reads writes them, so they fold everywhere. One character for one keeps offsets.
_LATIN_LOOKALIKES = str.maketrans(
    "ɑɡɩıʏɴʀᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍᴏᴘꜱᴛᴜᴠᴡᴢ",
    "agiiynrabcdefghijklmopstuvwz",
)
_LATIN_LOOKALIKE_RE = re.compile("[ɑɡɩıʏɴʀᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍᴏᴘꜱᴛᴜᴠᴡᴢ]")
_LOOKALIKE_HINT_RE = re.compile(f"[ɑɡɩıʏɴʀᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍᴏᴘꜱᴛᴜᴠᴡᴢ{FOLDABLE}]")


def _fold_all(text: str) -> tuple[str, OffsetMap | None]:
    """Every folding stage: look-alikes, NFKC, case, invisible characters and marks."""
    # One scan tells whether any look-alike stage has work, instead of one scan per stage.
    if _LOOKALIKE_HINT_RE.search(text):
        if _LATIN_LOOKALIKE_RE.search(text):
            text = text.translate(_LATIN_LOOKALIKES)
        text = _fold_lookalikes(text, cased=True)
    folded, char_map = _fold_chars(text)
    if _FOLDABLE_RE.search(folded):  # also made by folding: µ becomes Greek μ
        folded = _fold_lookalike_words(_fold_lookalikes(folded))
    return folded, char_map


def normalize(text: str) -> Normalized:
    """Normalizes `text` for matching; linear in its length."""
    source = text
    if text.isascii():
        # ASCII has no look-alikes, marks or invisible characters, and NFKC + casefold is
        # lower(): _fold_all() would come to the same (a test holds it to that).
        folded, char_map = text.lower(), None
    else:
        folded, char_map = _fold_all(text)
    rated, rating_map, symbols = _rewrite_ratings(folded)
    rated, space_map = _collapse_whitespace(rated)
    if space_map is not None:
        symbols = [(space_map.forward(s), space_map.forward(e), n) for s, e, n in symbols]
    maps = tuple(m for m in (char_map, rating_map, space_map) if m is not None)
    bare = rated if rated.isascii() else strip_accents(rated)
    if bare == rated:
        bare = rated  # the same object tells the engine there are no diacritics
    return Normalized(
        source=source, text=rated, bare=bare, maps=maps, symbol_ratings=tuple(symbols)
    )


def tokens(text: str) -> Iterator[re.Match[str]]:
    """Words of an already normalized text (CJK runs come as one token each)."""
    return TOKEN_RE.finditer(text)


def words(text: str) -> list[str]:
    """The words of `text` after normalization, for tests and term compilation."""
    return [m.group() for m in TOKEN_RE.finditer(normalize(text).text)]


def sentences(text: str) -> list[str]:
    """The sentences of an already normalized text, stripped; for tests and debugging."""
    parts = SENTENCE_BREAK_RE.split(text)
    return [p.strip() for p in parts if p.strip()]
