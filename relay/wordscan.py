"""Candidate words of the rule packs' terms in a part's text: counted, then placed.

Every word of every term is a run of letters or of digits (the pack reader splits terms so)
or a CJK substring. A part's runs are counted in C and each distinct run is looked up once
in tables of whole words and prefixes (`Scanner.census`); where the engine then needs them,
candidates are placed as `(start, end)` spans (`Scanner.scan_words`, `Census.positions`).
CJK terms are found by one trie-shaped regex of literal characters: no nested quantifiers,
so the regex engine cannot backtrack catastrophically. No user-written regex is ever run.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from relay.normalize import CJK, LETTER, Normalized
from relay.rulepack import WordPattern

# The runs of a text that can be words of a pattern: whole, left to right.
RUN_RE = re.compile(f"[{LETTER}]+|[0-9]+")


# ASCII characters that are not part of a run, to spaces.
_ASCII_GAPS = str.maketrans({chr(code): " " for code in range(128) if not chr(code).isalnum()})


def count_runs(text: str) -> Counter[str]:
    """How often each run (`RUN_RE`) occurs in `text`.

    ASCII text (most mail once accents are stripped) takes a faster road: gaps become spaces
    in one C-level translate, the words are counted, and the few that mix letters and digits
    ("5star") are split into their runs.
    """
    if not text.isascii():
        return Counter(RUN_RE.findall(text))
    counts = Counter(text.translate(_ASCII_GAPS).split())
    mixed = [word for word in counts if not word.isalpha() and not word.isdigit()]
    for word in mixed:
        count = counts.pop(word)
        for run in RUN_RE.findall(word):
            counts[run] += count
    return counts


class WordTable:
    """Whole words and word prefixes of one kind (with or without diacritics).

    Every pattern word is a run of letters or of digits (the pack reader splits terms so),
    and a candidate is a whole run of the text that equals a word or starts with a prefix:
    the text's runs are found by one simple regex in C and each distinct run is looked up
    once, remembered across messages (mail repeats words).
    """

    def __init__(self, exact: dict[str, list[int]], prefix: dict[str, list[int]]) -> None:
        for word in (*exact, *prefix):
            if not RUN_RE.fullmatch(word):
                raise ValueError(f"pattern word {word!r} is not a run of letters or digits")
        self.exact = exact
        self.prefix = prefix
        self.lengths = sorted({len(w) for w in prefix})
        self.empty = not exact and not prefix
        self.memo: dict[str, tuple[int, ...]] = {}
        self.word_regexes: dict[str, re.Pattern[str]] = {}

    def lookup(self, word: str) -> tuple[int, ...]:
        pids = list(self.exact.get(word, ()))
        for length in self.lengths:
            if length > len(word):
                break
            pids.extend(self.prefix.get(word[:length], ()))
        found = tuple(pids)
        if len(self.memo) >= Scanner.MEMO_LIMIT:
            self.memo.clear()
        self.memo[word] = found
        return found

    def census(self, text: str, census: Census) -> None:
        """Adds how often each pattern occurs in `text`, from its distinct runs."""
        if self.empty:
            return
        memo = self.memo
        counts = census.counts
        words = census.words
        for word, count in count_runs(text).items():
            pids = memo.get(word)
            if pids is None:
                pids = self.lookup(word)
            for pid in pids:
                counts[pid] = counts.get(pid, 0) + count
                words.setdefault(pid, []).append((self, text, word))

    def starts(self, text: str, word: str) -> list[int]:
        """Where `word` stands as a whole run in `text`."""
        regex = self.word_regexes.get(word)
        if regex is None:
            if len(self.word_regexes) >= Scanner.MEMO_LIMIT // 100:
                self.word_regexes.clear()
            kind = "0-9" if word[0].isdigit() else LETTER
            # The literal first, so the regex engine skips ahead to it like str.find; the
            # look-behind after it checks the character before the word.
            regex = re.compile(
                f"{re.escape(word)}(?![{kind}])(?<![{kind}].{{{len(word)}}})", re.DOTALL
            )
            self.word_regexes[word] = regex
        return [match.start() for match in regex.finditer(text)]

    def scan(
        self,
        text: str,
        atoms: dict[int, list[tuple[int, int]]],
        ranges: Sequence[tuple[int, int]],
    ) -> None:
        """Places every candidate in `ranges` of `text` (no run crosses a range end)."""
        if self.empty:
            return
        # Collect spans per distinct word first (mail repeats "the", "you", "order" hundreds
        # of times), then hand them to the word's patterns: one dict lookup per candidate.
        by_word: dict[str, tuple[tuple[int, ...], list[tuple[int, int]]]] = {}
        memo = self.memo
        finditer = RUN_RE.finditer
        for begin, end in ranges:
            for match in finditer(text, begin, end):
                word = match.group()
                seen = by_word.get(word)
                if seen is not None:
                    seen[1].append(match.span())
                    continue
                pids = memo.get(word)
                if pids is None:
                    pids = self.lookup(word)
                if pids:
                    by_word[word] = (pids, [match.span()])
        merged: list[int] = []
        for pids, spans in by_word.values():
            for pid in pids:
                found = atoms.get(pid)
                if found is None:
                    atoms[pid] = spans  # shared between patterns, never changed in place
                else:
                    atoms[pid] = found + spans
                    merged.append(pid)
        for pid in merged:
            atoms[pid].sort()  # several words of one prefix: back into text order


def trie_regex(words: Iterable[str]) -> str:
    """A regex alternation of literal words shaped as a trie: no backtracking blow-up."""
    root: dict[str, Any] = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        alternatives = [re.escape(c) + emit(node[c]) for c in sorted(k for k in node if k)]
        if not alternatives:
            return ""
        body = alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"
        if "" in node:
            return f"(?:{body})?"
        return body

    return emit(root)


class Census:
    """How often each pattern occurs in a part, and by which words, before any placing."""

    # Finding a word's places with a regex of its own (a literal search in C, about 1/70 of
    # a pass placing every word of the part) pays while few words need places; past this
    # many (a prefix can match thousands of made-up words), one such pass is cheaper, and it
    # keeps the cost bounded for any input.
    WORD_SEARCHES = 96

    def __init__(
        self,
        norm: Normalized,
        atoms: dict[int, list[tuple[int, int]]],
        scanner: Scanner | None = None,
    ) -> None:
        self.norm = norm
        self.atoms = atoms  # the part's candidates: CJK ones are placed while counting
        self.scanner = scanner
        self.counts: dict[int, int] = {}
        self.words: dict[int, list[tuple[WordTable, str, str]]] = {}
        self._searches = 0
        self._placed: dict[int, list[tuple[int, int]]] | None = None
        self.cjk_atoms: dict[int, list[tuple[int, int]]] = {}

    def positions(self, pid: int) -> list[int]:
        """Where the pattern's candidates start (CJK ones are placed already)."""
        found = [start for start, _ in self.atoms.get(pid, ())]
        words = self.words.get(pid, ())
        if not words:
            return found
        if self._placed is None and self._searches + len(words) > self.WORD_SEARCHES:
            assert self.scanner is not None
            self._placed = {}
            whole = ((0, len(self.norm.text)),)
            self.scanner.scan_words(self.norm, self._placed, whole)
        if self._placed is not None:
            return found + [start for start, _ in self._placed.get(pid, ())]
        self._searches += len(words)
        for table, text, word in words:
            found += table.starts(text, word)
        return found


class Scanner:
    """Finds candidate words of all term patterns in one pass per text variant."""

    MEMO_LIMIT = 200_000

    def __init__(self, patterns: Iterable[tuple[int, WordPattern]]) -> None:
        self.plain_exact: dict[str, list[int]] = {}
        self.plain_prefix: dict[str, list[int]] = {}
        self.accented_exact: dict[str, list[int]] = {}
        self.accented_prefix: dict[str, list[int]] = {}
        self.cjk: dict[str, list[int]] = {}
        for pid, pattern in patterns:
            if pattern.cjk:
                table = self.cjk
            elif pattern.accented:
                table = self.accented_prefix if pattern.prefix else self.accented_exact
            else:
                table = self.plain_prefix if pattern.prefix else self.plain_exact
            table.setdefault(pattern.text, []).append(pid)
        self.cjk_lengths = sorted({len(w) for w in self.cjk})
        self.plain = WordTable(self.plain_exact, self.plain_prefix)
        self.accented = WordTable(self.accented_exact, self.accented_prefix)
        self.cjk_re = re.compile(trie_regex(self.cjk)) if self.cjk else None
        # No CJK term can start before the first CJK character (a pattern is CJK because it
        # starts with one): most mail has none, and a class of character ranges is searched
        # much faster than the whole trie.
        self.cjk_first = re.compile(f"[{CJK}]") if self.cjk else None

    def census(self, norm: Normalized, atoms: dict[int, list[tuple[int, int]]]) -> Census:
        """Which patterns occur in a part and how often; CJK candidates go to `atoms`."""
        census = Census(norm, atoms, self)
        self.plain.census(norm.bare, census)
        if norm.bare is not norm.text:
            # Only text with diacritics can hold a word written with them.
            self.accented.census(norm.text, census)
        # A CJK term holds a CJK character, so ASCII text (most mail) holds none.
        first_cjk = (
            self.cjk_first.search(norm.text)
            if self.cjk_first is not None and not norm.text.isascii()
            else None
        )
        if first_cjk is not None:
            # CJK terms are substrings, not words: found with their places, the whole text.
            self._cjk(norm.text, atoms, first_cjk.start(), len(norm.text))
            for pid, spans in atoms.items():
                census.counts[pid] = census.counts.get(pid, 0) + len(spans)
            census.cjk_atoms = dict(atoms)
        return census

    def scan_words(
        self,
        norm: Normalized,
        atoms: dict[int, list[tuple[int, int]]],
        ranges: Sequence[tuple[int, int]],
    ) -> None:
        """Candidate words (not CJK) with their places, in `ranges` of the text, into `atoms`."""
        self.plain.scan(norm.bare, atoms, ranges)
        if norm.bare is not norm.text:
            self.accented.scan(norm.text, atoms, ranges)

    def _cjk(self, text: str, atoms: dict[int, list[tuple[int, int]]], pos: int, end: int) -> None:
        assert self.cjk_re is not None
        search = self.cjk_re.search
        while True:
            match = search(text, pos, end)
            if match is None:
                return
            start = match.start()
            found = match.group()
            for length in self.cjk_lengths:
                if length > len(found):
                    break
                pids = self.cjk.get(found[:length])
                if pids:
                    span = (start, start + length)
                    for pid in pids:
                        atoms.setdefault(pid, []).append(span)
            pos = start + 1  # overlapping terms starting inside this one
