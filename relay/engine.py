"""The rule engine: load YAML rule packs, evaluate a message's text parts against them.

`load_rules(paths)` reads and validates every pack (format: rules/README.md) into a frozen
`RuleSet`; `RuleSet.evaluate(scan)` is pure and synchronous and returns a `Verdict`.

Matching never uses a user-written regular expression. All term words of all packs are
compiled into a few trie-shaped regular expressions of literal letters (no nested
quantifiers, so the regex engine cannot backtrack catastrophically) that find candidate
words in one pass; everything after that works on the candidates only, with bounded
look-ahead for phrases and windows. Time is linear in the text size for any pack.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from relay import builtins as builtin_terms
from relay.errors import RuleError
from relay.model import Category, Hit, Part, ScanInput, Severity, Verdict
from relay.normalize import (
    CJK,
    LETTER,
    NUMBER_WORDS,
    PARAGRAPH_BREAK_RE,
    SENTENCE_BREAK_RE,
    TOKEN_RE,
    WORD_START_RE,
    Normalized,
    normalize,
    strip_accents,
)

MAX_GAP = 5
MAX_WITHIN = 100
MIN_PREFIX = 2

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_RULE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_GAP_RE = re.compile(r"^~([0-9]+)$")
_CJK_RE = re.compile(f"[{CJK}]")
_NUMBER_WORDS_SET = frozenset(NUMBER_WORDS)


class Scope(enum.StrEnum):
    """Where all conditions of a clause must hold together."""

    SENTENCE = "sentence"
    PARAGRAPH = "paragraph"
    MESSAGE = "message"


# --- compiled rule objects --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WordPattern:
    """One word of a term: a whole word, a word prefix, or a CJK substring."""

    text: str
    prefix: bool = False
    cjk: bool = False

    @property
    def accented(self) -> bool:
        return not self.cjk and strip_accents(self.text) != self.text

    @property
    def width(self) -> int:
        """How many words it covers (CJK: one per character)."""
        return len(self.text) if self.cjk else 1


@dataclass(frozen=True, slots=True, eq=False)
class Term:
    """A word or phrase; `gaps[i]` is how many words may stand between word i and i + 1."""

    source: str
    words: tuple[WordPattern, ...]
    gaps: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Item:
    """An entry of `all`, `any` or `none`: a term-list reference or an inline term."""

    source: str
    terms: tuple[Term, ...] = ()
    builtins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Clause:
    """Conditions that must hold together inside one scope unit."""

    scope: Scope = Scope.SENTENCE
    all: tuple[Item, ...] = ()
    any: tuple[Item, ...] = ()
    none: tuple[Item, ...] = ()
    within: int | None = None
    ordered: bool = False
    any_first: bool = False
    """True when `any:` is written before `all:`; `ordered` then expects its match first."""


@dataclass(frozen=True, slots=True)
class Example:
    """A message a rule must (or must not) match: a subject and/or a plain-text body."""

    subject: str = ""
    body: str = ""

    def as_scan(self) -> ScanInput:
        parts = []
        if self.subject:
            parts.append(Part("subject", self.subject))
        if self.body:
            parts.append(Part("text", self.body))
        return ScanInput(subject=self.subject, parts=tuple(parts))

    def __str__(self) -> str:
        if self.subject and self.body:
            return f"subject: {self.subject!r}, body: {self.body!r}"
        return repr(self.subject or self.body)


@dataclass(frozen=True, slots=True)
class Rule:
    """One detection rule as written in a pack, compiled."""

    id: str
    category: Category
    severity: Severity
    description: str
    hint: str
    clause: Clause
    requires: tuple[Clause, ...] = ()
    match_examples: tuple[Example, ...] = ()
    no_match_examples: tuple[Example, ...] = ()
    file: str = ""
    line: int = 0


@dataclass(frozen=True, slots=True)
class ExampleFailure:
    """An embedded example that did not behave as its rule says."""

    rule: Rule
    example: Example
    expected_match: bool

    def __str__(self) -> str:
        wanted = "should match but did not" if self.expected_match else "matched but should not"
        return f"{self.rule.file}:{self.rule.line}: {self.rule.id}: {wanted}: {self.example}"


# --- occurrences and per-part context ------------------------------------------------


@dataclass(slots=True)
class _Occ:
    """Where one item matched: character span, first word index, sentence and paragraph."""

    start: int
    end: int
    word: int = 0
    last_word: int = 0
    sentence: int = 0
    paragraph: int = 0


class _Part:
    """Everything known about one normalized part while rules are evaluated on it.

    The scan leaves raw `(start, end)` candidates in `atoms`; only the patterns of rules that
    can still match are then placed (word index, sentence, paragraph) as `_Occ`s, because
    mail is full of candidates for common words ("you", "order") that most rules never need.
    """

    def __init__(self, ruleset: RuleSet, norm: Normalized) -> None:
        self.ruleset = ruleset
        self.norm = norm
        self.atoms: dict[int, list[tuple[int, int]]] = {}
        self.occs: dict[int, list[_Occ]] = {}
        self.builtin_occs: dict[str, list[_Occ]] = {}
        self._term_occs: dict[int, list[_Occ]] = {}
        self._item_occs: dict[int, list[_Occ]] = {}
        self._possible: set[int] | None = None
        self._by_word: dict[tuple[int, int], _Occ] = {}

    # Word indices, sentences and paragraphs are computed once, for the positions that
    # matter (starts and ends of candidates). Few positions: count segment by segment from
    # left to right; many: list every word start and break once and look positions up.
    def place(self, pids: Iterable[int]) -> None:
        occs: list[_Occ] = []
        for pid in pids:
            raw = self.atoms.get(pid)
            if raw:
                placed = self.occs[pid] = [_Occ(start, end) for start, end in raw]
                occs.extend(placed)
        occs += [o for lst in self.builtin_occs.values() for o in lst]
        if not occs:
            return
        positions = sorted({p for o in occs for p in (o.start, o.end)})
        text = self.norm.text
        if len(positions) * 48 > len(text):
            at = self._place_dense(text, positions)
        else:
            at = self._place_sparse(text, positions)
        for o in occs:
            o.word, o.sentence, o.paragraph = at[o.start]
            o.last_word = max(o.word, at[o.end][0] - 1)
        for pid, placed in self.occs.items():
            for o in placed:
                self._by_word.setdefault((pid, o.word), o)

    def _place_sparse(self, text: str, positions: list[int]) -> dict[int, tuple[int, int, int]]:
        cap = self.ruleset.distance_cap
        need_paragraphs = self.ruleset.uses_paragraphs
        word = sentence = paragraph = prev = 0
        at: dict[int, tuple[int, int, int]] = {}
        for pos in positions:
            if pos > prev:
                word += _count_words(text, prev, pos, cap)
                if _has_break(SENTENCE_BREAK_RE, text, prev, pos):
                    sentence += 1
                    if need_paragraphs and _has_break(PARAGRAPH_BREAK_RE, text, prev, pos):
                        paragraph += 1
            at[pos] = (word, sentence, paragraph)
            prev = pos
        return at

    def _place_dense(self, text: str, positions: list[int]) -> dict[int, tuple[int, int, int]]:
        words = [m.start() for m in WORD_START_RE.finditer(text)]
        sentences = [m.start() for m in SENTENCE_BREAK_RE.finditer(text)]
        paragraphs = (
            [m.start() for m in PARAGRAPH_BREAK_RE.finditer(text)]
            if self.ruleset.uses_paragraphs
            else []
        )
        left = bisect.bisect_left
        return {
            pos: (left(words, pos), left(sentences, pos), left(paragraphs, pos))
            for pos in positions
        }

    def term_occs(self, term_id: int) -> list[_Occ]:
        found = self._term_occs.get(term_id)
        if found is None:
            found = self._match_term(term_id)
            self._term_occs[term_id] = found
        return found

    def _match_term(self, term_id: int) -> list[_Occ]:
        compiled = self.ruleset.compiled_terms[term_id]
        first = self.occs.get(compiled[0][0], [])
        if len(compiled) == 1 or not first:
            return first
        lists = [self.occs.get(pid) for pid, _ in compiled]
        if not all(lists):
            return []
        offsets = self.ruleset.phrase_offsets[term_id]
        if offsets is not None:
            return self._match_phrase(compiled, offsets, lists)
        result: list[_Occ] = []
        for occ in first:
            # Reachable ends after each word; gaps are bounded, so the frontier stays small.
            frontier = [occ]
            for pattern_id, gap in compiled[1:]:
                following: dict[int, _Occ] = {}
                for prev in frontier:
                    for w in range(prev.last_word + 1, prev.last_word + 2 + gap):
                        nxt = self._atom_at(pattern_id, w)
                        if nxt is not None and nxt.sentence == occ.sentence:
                            following[w] = nxt
                frontier = list(following.values())
                if not frontier:
                    break
            if frontier:
                last = min(frontier, key=lambda o: o.end)
                result.append(
                    _Occ(occ.start, last.end, occ.word, last.last_word, occ.sentence, occ.paragraph)
                )
        return result

    def _match_phrase(
        self,
        compiled: tuple[tuple[int, int], ...],
        offsets: tuple[int, ...],
        lists: list[list[_Occ] | None],
    ) -> list[_Occ]:
        """Words in a row: start from the rarest word and look the others up by position."""
        anchor = min(range(len(lists)), key=lambda i: len(lists[i] or ()))
        result: list[_Occ] = []
        by_word = self._by_word
        for occ in lists[anchor] or ():
            base = occ.word - offsets[anchor]
            words = []
            for (pid, _), offset in zip(compiled, offsets, strict=True):
                found = by_word.get((pid, base + offset))
                if found is None or found.sentence != occ.sentence:
                    break
                words.append(found)
            else:
                head, tail = words[0], words[-1]
                result.append(
                    _Occ(head.start, tail.end, head.word, tail.last_word, head.sentence,
                         head.paragraph)
                )  # fmt: skip
        result.sort(key=_start)
        return result

    def _atom_at(self, pattern_id: int, word: int) -> _Occ | None:
        return self._by_word.get((pattern_id, word))

    def item_occs(self, item: Item) -> list[_Occ]:
        plan = self.ruleset.item_plans[id(item)]
        found = self._item_occs.get(plan.index)
        if found is None:
            found = []
            for term_id in plan.term_ids:
                found.extend(self.term_occs(term_id))
            for name in plan.builtins:
                found.extend(self.builtin_occs.get(name, ()))
            if len(plan.term_ids) + len(plan.builtins) > 1:
                found.sort(key=_start)
            self._item_occs[plan.index] = found
        return found

    def item_possible(self, item: Item) -> bool:
        """Cheap check before any positions are computed: could the item match at all?"""
        if self._possible is None:
            self._possible = self.ruleset.index.possible_items(self)
        return self.ruleset.item_plans[id(item)].index in self._possible


def _start(occ: _Occ) -> int:
    return occ.start


class _ItemIndex:
    """Which items can match, from the candidate words a part has: one lookup per word."""

    def __init__(self, plans: Iterable[_ItemPlan], compiled: Sequence[tuple[tuple[int, int], ...]]):
        self.single: dict[int, list[int]] = {}
        self.multi: dict[int, list[tuple[frozenset[int], int]]] = {}
        self.builtins: dict[str, list[int]] = {}
        for plan in plans:
            for term_id in plan.term_ids:
                steps = compiled[term_id]
                if len(steps) == 1:
                    self.single.setdefault(steps[0][0], []).append(plan.index)
                else:
                    pids = frozenset(pid for pid, _ in steps)
                    self.multi.setdefault(steps[0][0], []).append((pids, plan.index))
            for name in plan.builtins:
                self.builtins.setdefault(name, []).append(plan.index)

    def possible_items(self, part: _Part) -> set[int]:
        possible: set[int] = set()
        atoms = part.atoms
        for pid in atoms:
            possible.update(self.single.get(pid, ()))
            for pids, index in self.multi.get(pid, ()):
                if index not in possible and pids <= atoms.keys():
                    possible.add(index)
        for name, occs in part.builtin_occs.items():
            if occs:
                possible.update(self.builtins.get(name, ()))
        return possible


@dataclass(frozen=True, slots=True)
class _ItemPlan:
    """An item compiled to pattern and term numbers, for fast checks per part."""

    index: int
    term_ids: tuple[int, ...]
    builtins: tuple[str, ...]


def _count_words(text: str, start: int, end: int, cap: int) -> int:
    """Word starts in `[start, end)`, exact up to `cap`, otherwise any number above it."""
    window = 16 * (cap + 1)
    count = 0
    pos = start
    while pos < end:
        stop = min(end, pos + window)
        count += len(WORD_START_RE.findall(text, pos, stop))
        if count > cap:
            return cap + 1
        pos = stop
    return count


def _has_break(pattern: re.Pattern[str], text: str, start: int, end: int) -> bool:
    # One character of look-ahead past `end` so "shop.com" is not a sentence end at "shop.".
    match = pattern.search(text, start, min(len(text), end + 1))
    return match is not None and match.start() < end


# --- clause evaluation ----------------------------------------------------------------


def _unit(occ: _Occ, scope: Scope) -> int:
    if scope is Scope.SENTENCE:
        return occ.sentence
    if scope is Scope.PARAGRAPH:
        return occ.paragraph
    return 0


def _clause_possible(part: _Part, clause: Clause) -> bool:
    if not all(part.item_possible(item) for item in clause.all):
        return False
    return not clause.any or any(part.item_possible(item) for item in clause.any)


def _match_clause(part: _Part, clause: Clause) -> tuple[int, int] | None:
    """The span of the first place in the part where the clause holds, or None."""
    if not _clause_possible(part, clause):
        return None
    lists = [part.item_occs(item) for item in clause.all]
    if clause.any:
        merged = sorted((o for item in clause.any for o in part.item_occs(item)), key=_start)
        if clause.any_first:
            lists.insert(0, merged)
        else:
            lists.append(merged)
    if any(not lst for lst in lists):
        return None
    blocked = {_unit(o, clause.scope) for item in clause.none for o in part.item_occs(item)}
    by_unit: dict[int, list[list[_Occ]]] = {}
    for index, lst in enumerate(lists):
        for occ in lst:
            unit = _unit(occ, clause.scope)
            if unit in blocked:
                continue
            slots = by_unit.get(unit)
            if slots is None:
                if index > 0:
                    continue  # the first list has nothing in this unit
                slots = by_unit[unit] = [[] for _ in lists]
            slots[index].append(occ)
    for unit in sorted(by_unit):
        chosen = _choose(by_unit[unit], clause.within, clause.ordered)
        if chosen is not None:
            return min(o.start for o in chosen), max(o.end for o in chosen)
    return None


def _choose(lists: list[list[_Occ]], within: int | None, ordered: bool) -> list[_Occ] | None:
    """One occurrence per list, within the word window and order asked for, or None."""
    if any(not lst for lst in lists):
        return None
    if not ordered and within is None:
        return [lst[0] for lst in lists]
    if ordered:
        return _choose_ordered(lists, within)
    return _choose_window(lists, within if within is not None else MAX_WITHIN)


def _choose_ordered(lists: list[list[_Occ]], within: int | None) -> list[_Occ] | None:
    starts = [[o.word for o in lst] for lst in lists]
    for first in lists[0]:
        chain = [first]
        for index in range(1, len(lists)):
            k = bisect.bisect_right(starts[index], chain[-1].word)
            if k == len(lists[index]):
                return None  # later starting points cannot do better
            chain.append(lists[index][k])
        if within is None or chain[-1].word - first.word <= within:
            return chain
    return None


def _choose_window(lists: list[list[_Occ]], within: int) -> list[_Occ] | None:
    tagged = sorted(((o.word, index, o) for index, lst in enumerate(lists) for o in lst), key=_key)
    counts = [0] * len(lists)
    missing = len(lists)
    left = 0
    for right, (word, index, _) in enumerate(tagged):
        if counts[index] == 0:
            missing -= 1
        counts[index] += 1
        while missing == 0:
            if word - tagged[left][0] <= within:
                window = tagged[left : right + 1]
                return [next(o for w, i, o in window if i == n) for n in range(len(lists))]
            counts[tagged[left][1]] -= 1
            if counts[tagged[left][1]] == 0:
                missing += 1
            left += 1
    return None


def _key(entry: tuple[int, int, _Occ]) -> tuple[int, int]:
    return entry[0], entry[1]


# --- the rule set -----------------------------------------------------------------------


@dataclass(frozen=True)
class RuleSet:
    """Loaded, validated rules plus the matchers compiled from them."""

    rules: tuple[Rule, ...]
    version: str
    term_lists: Mapping[str, tuple[Term, ...]] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    # Filled by `_compile`:
    patterns: tuple[WordPattern, ...] = ()
    term_ids: Mapping[Term, int] = field(default_factory=dict)
    compiled_terms: tuple[tuple[tuple[int, int], ...], ...] = ()
    distance_cap: int = MAX_GAP + 1
    uses_paragraphs: bool = False
    scanner: _Scanner | None = None
    builtins_used: frozenset[str] = frozenset()
    item_plans: Mapping[int, _ItemPlan] = field(default_factory=dict)
    index: _ItemIndex = field(default_factory=lambda: _ItemIndex((), ()))
    rule_patterns: Mapping[int, frozenset[int]] = field(default_factory=dict)
    phrase_offsets: tuple[tuple[int, ...] | None, ...] = ()

    def evaluate(self, scan: ScanInput) -> Verdict:
        """Every rule against every part: at most one hit per rule and part (the first)."""
        return self._evaluate(scan, self.rules)

    def evaluate_rule(self, rule: Rule, scan: ScanInput) -> Verdict:
        """One rule alone against a message (what `rules test` checks)."""
        return self._evaluate(scan, (rule,))

    def _evaluate(self, scan: ScanInput, rules: Sequence[Rule]) -> Verdict:
        hits: list[Hit] = []
        seen: dict[str, list[tuple[Rule, str]]] = {}
        for origin, text in _parts_of(scan):
            if not text.strip():
                continue
            # The text and HTML alternatives of a message usually read the same (line breaks
            # aside, which only matter as blank lines): judge the words once.
            key = " ".join(_BLANK_LINE_RE.sub("\x00", text).split())
            found = seen.get(key)
            if found is None:
                found = seen[key] = self._judge_part(text, rules)
            hits.extend(
                Hit(
                    rule=rule.id,
                    category=rule.category,
                    severity=rule.severity,
                    part=origin,
                    excerpt=excerpt,
                    hint=rule.hint,
                    description=rule.description,
                )
                for rule, excerpt in found
            )
        return Verdict(hits=tuple(hits), rules_version=self.version, notes=scan.notes)

    def _judge_part(self, text: str, rules: Sequence[Rule]) -> list[tuple[Rule, str]]:
        """The rules that hit one part's text, each with its excerpt."""
        part = self._prepare(text)
        candidates = [
            rule
            for rule in rules
            if _clause_possible(part, rule.clause)
            and all(_clause_possible(part, extra) for extra in rule.requires)
        ]
        if not candidates:
            return []
        needed: set[int] = set()
        for rule in candidates:
            needed.update(self.rule_patterns[id(rule)])
        part.place(needed)
        found = []
        for rule in candidates:
            span = _match_clause(part, rule.clause)
            if span is None:
                continue
            if not all(_match_clause(part, extra) for extra in rule.requires):
                continue
            found.append((rule, part.norm.excerpt(*span)))
        return found

    def _prepare(self, text: str) -> _Part:
        part = _Part(self, normalize(text))
        if self.scanner is not None:
            self.scanner.scan(part)
        for name in self.builtins_used:
            found = builtin_terms.find(name, part.norm)
            if found:
                part.builtin_occs[name] = [_Occ(s, e) for s, e in found]
        return part

    def check_examples(self, rules: Iterable[Rule] | None = None) -> list[ExampleFailure]:
        """Runs every embedded example; returns those that misbehave."""
        failures: list[ExampleFailure] = []
        for rule in self.rules if rules is None else rules:
            for example in rule.match_examples:
                if not self.evaluate_rule(rule, example.as_scan()).hits:
                    failures.append(ExampleFailure(rule, example, expected_match=True))
            for example in rule.no_match_examples:
                if self.evaluate_rule(rule, example.as_scan()).hits:
                    failures.append(ExampleFailure(rule, example, expected_match=False))
        return failures


_BLANK_LINE_RE = re.compile(r"\n[ \t\r\f\v\u3000]*\n\s*")


def _parts_of(scan: ScanInput) -> list[tuple[str, str]]:
    parts = [(p.origin, p.text) for p in scan.parts]
    if scan.subject and not any(p.origin == "subject" for p in scan.parts):
        parts.insert(0, ("subject", scan.subject))
    return parts


# --- candidate scanning -----------------------------------------------------------------


class _WordTable:
    """Whole words and word prefixes of one kind (with or without diacritics)."""

    def __init__(self, exact: dict[str, list[int]], prefix: dict[str, list[int]]) -> None:
        self.exact = exact
        self.prefix = prefix
        self.lengths = sorted({len(w) for w in prefix})
        words = [*exact, *prefix]
        letters = [w for w in words if not w[0].isdigit()]
        digits = [w for w in words if w[0].isdigit()]
        alternatives = []
        if letters:
            alternatives.append(f"(?<![{LETTER}])(?:{_trie_regex(letters)})[{LETTER}]*")
        if digits:
            alternatives.append(f"(?<![0-9])(?:{_trie_regex(digits)})[0-9]*")
        self.regex = re.compile("|".join(alternatives)) if alternatives else None
        # Which patterns a word satisfies, remembered across messages: mail repeats words.
        self.memo: dict[str, tuple[int, ...]] = {}

    def lookup(self, word: str) -> tuple[int, ...]:
        pids = list(self.exact.get(word, ()))
        for length in self.lengths:
            if length > len(word):
                break
            pids.extend(self.prefix.get(word[:length], ()))
        found = tuple(pids)
        if len(self.memo) >= _Scanner.MEMO_LIMIT:
            self.memo.clear()
        self.memo[word] = found
        return found

    def scan(self, text: str, atoms: dict[int, list[tuple[int, int]]]) -> None:
        if self.regex is None:
            return
        memo = self.memo
        for match in self.regex.finditer(text):
            word = match.group()
            pids = memo.get(word)
            if pids is None:
                pids = self.lookup(word)
            if pids:
                span = match.span()
                for pid in pids:
                    found = atoms.get(pid)
                    if found is None:
                        atoms[pid] = [span]
                    else:
                        found.append(span)


def _trie_regex(words: Iterable[str]) -> str:
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


class _Scanner:
    """Finds candidate words of all term patterns in one pass per text variant."""

    MEMO_LIMIT = 200_000

    def __init__(self, patterns: Sequence[WordPattern]) -> None:
        self.plain_exact: dict[str, list[int]] = {}
        self.plain_prefix: dict[str, list[int]] = {}
        self.accented_exact: dict[str, list[int]] = {}
        self.accented_prefix: dict[str, list[int]] = {}
        self.cjk: dict[str, list[int]] = {}
        for pid, pattern in enumerate(patterns):
            if pattern.cjk:
                table = self.cjk
            elif pattern.accented:
                table = self.accented_prefix if pattern.prefix else self.accented_exact
            else:
                table = self.plain_prefix if pattern.prefix else self.plain_exact
            table.setdefault(pattern.text, []).append(pid)
        self.cjk_lengths = sorted({len(w) for w in self.cjk})
        self.plain = _WordTable(self.plain_exact, self.plain_prefix)
        self.accented = _WordTable(self.accented_exact, self.accented_prefix)
        self.cjk_re = re.compile(_trie_regex(self.cjk)) if self.cjk else None

    def scan(self, part: _Part) -> None:
        norm = part.norm
        self.plain.scan(norm.bare, part.atoms)
        if norm.bare is not norm.text:
            # Only text with diacritics can hold a word written with them.
            self.accented.scan(norm.text, part.atoms)
        if self.cjk_re is not None:
            self._cjk(norm.text, part.atoms)

    def _cjk(self, text: str, atoms: dict[int, list[tuple[int, int]]]) -> None:
        assert self.cjk_re is not None
        search = self.cjk_re.search
        pos = 0
        while True:
            match = search(text, pos)
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


# --- terms ------------------------------------------------------------------------------


class _TermSyntaxError(ValueError):
    pass


def parse_term(source: str) -> Term:
    """Compiles a term as written in a pack (`leave ~2 review*`) into a `Term`."""
    chunks = source.split()
    if not chunks:
        raise _TermSyntaxError("empty term")
    words_: list[str] = []
    gaps_after: list[int] = []
    prefix_flags: list[bool] = []
    pending_gap: int | None = None
    for piece in chunks:
        gap = _GAP_RE.match(piece)
        if gap:
            if not words_ or pending_gap is not None:
                raise _TermSyntaxError(f"'{piece}' must stand between two words")
            value = int(gap.group(1))
            if value > MAX_GAP:
                raise _TermSyntaxError(f"'{piece}': at most ~{MAX_GAP} words may be skipped")
            pending_gap = value
            continue
        if piece.startswith("~"):
            raise _TermSyntaxError(f"'{piece}': write a gap as ~N with N from 0 to {MAX_GAP}")
        prefix = piece.endswith("*")
        body = piece[:-1] if prefix else piece
        if "*" in body:
            raise _TermSyntaxError(f"'{piece}': '*' is only allowed at the end of a word")
        if not body:
            raise _TermSyntaxError("'*' must follow a word")
        if words_:
            gaps_after.append(pending_gap or 0)
        pending_gap = None
        words_.append(body)
        prefix_flags.append(prefix)
    if pending_gap is not None:
        raise _TermSyntaxError(f"term ends with a gap: {source!r}")

    tokens = _simple_tokens(words_)
    if tokens is None:
        tokens = _normalized_tokens(words_)
    covered = {chunk for _, chunk in tokens}
    for index, word in enumerate(words_):
        if index not in covered:
            raise _TermSyntaxError(f"'{word}' has no letters or digits to match")
    patterns: list[WordPattern] = []
    gaps: list[int] = []
    last_of_chunk: dict[int, int] = {}
    for position, (text, chunk) in enumerate(tokens):
        if position:
            previous = tokens[position - 1][1]
            gaps.append(gaps_after[chunk - 1] if chunk != previous else 0)
        patterns.append(WordPattern(text, cjk=_CJK_RE.match(text) is not None))
        last_of_chunk[chunk] = position
    # A trailing '*' applies to the last token of its chunk.
    for chunk, is_prefix in enumerate(prefix_flags):
        if not is_prefix:
            continue
        position = last_of_chunk[chunk]
        pattern = patterns[position]
        if pattern.cjk:
            continue  # CJK words match as substrings anyway
        if len(pattern.text) < MIN_PREFIX:
            raise _TermSyntaxError(
                f"'{words_[chunk]}*': a prefix needs at least {MIN_PREFIX} characters"
                " (for star ratings use @builtin.rating or '5 star*')"
            )
        patterns[position] = WordPattern(pattern.text, prefix=True)
    return Term(source=source, words=tuple(patterns), gaps=tuple(gaps))


_SIMPLE_WORD_RE = re.compile(r"[a-z]+|[\u3041-\u3096\u30a1-\u30fa\u30fc\u4e00-\u9fff]+")
_NOT_SIMPLE = frozenset("星一二三四五")


def _simple_tokens(words: list[str]) -> list[tuple[str, int]] | None:
    """Tokens of a term whose words normalization would leave alone (most of them), or None."""
    tokens = []
    for index, word in enumerate(words):
        lowered = word.lower()
        if (
            not _SIMPLE_WORD_RE.fullmatch(lowered)
            or lowered in _NUMBER_WORDS_SET
            or not _NOT_SIMPLE.isdisjoint(lowered)
        ):
            return None
        tokens.append((lowered, index))
    return tokens


def _normalized_tokens(words: list[str]) -> list[tuple[str, int]]:
    """Tokens of a term after full normalization, each with the written word it came from.

    The words are normalized together (a rating such as "five star" spans two words).
    """
    joined = ""
    starts: list[int] = []
    for word in words:
        if joined:
            joined += " "
        starts.append(len(joined))
        joined += word
    norm = normalize(joined)
    return [
        (m.group(), bisect.bisect_right(starts, norm.source_span(m.start(), m.end())[0]) - 1)
        for m in TOKEN_RE.finditer(norm.text)
    ]


# --- loading ----------------------------------------------------------------------------

_TOP_KEYS = {"language", "terms", "rules"}
_CLAUSE_KEYS = {"scope", "all", "any", "none", "within", "ordered"}
_RULE_KEYS = _CLAUSE_KEYS | {
    "id",
    "category",
    "severity",
    "description",
    "hint",
    "requires",
    "examples",
}
_EXAMPLE_KEYS = {"subject", "body"}


class _Loader:
    """Turns YAML nodes into rules, raising `RuleError` with file, line and rule id."""

    def __init__(self) -> None:
        self.file = ""
        self.rule_id: str | None = None
        self.raw_lists: dict[str, tuple[str, int, list[tuple[str, int]]]] = {}
        self.pending_rules: list[tuple[str, yaml.MappingNode]] = []
        self.lists: dict[str, tuple[Term, ...]] = {}
        self.term_cache: dict[str, Term] = {}
        self.seen_ids: dict[str, str] = {}

    def error(self, message: str, node: yaml.Node | None) -> RuleError:
        line = node.start_mark.line + 1 if node is not None else None
        return RuleError(message, file=self.file, line=line, rule_id=self.rule_id)

    # YAML helpers -----------------------------------------------------------------
    def mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(f"{what} must be a mapping", node)
        result: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                raise self.error(f"{what}: keys must be strings", key_node)
            if key_node.value in result:
                raise self.error(f"{what}: duplicate key '{key_node.value}'", key_node)
            result[key_node.value] = (key_node, value_node)
        return result

    def string(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
            raise self.error(f"{what} must be a string", node)
        value = str(node.value)
        if not value.strip():
            raise self.error(f"{what} must not be empty", node)
        return value

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(f"{what} must be a list", node)
        if not node.value:
            raise self.error(f"{what} must not be empty", node)
        return list(node.value)

    def check_keys(
        self, keys: dict[str, tuple[yaml.Node, yaml.Node]], allowed: set[str], what: str
    ) -> None:
        for key, (key_node, _) in keys.items():
            if key not in allowed:
                raise self.error(
                    f"unknown key '{key}' in {what} (allowed: {', '.join(sorted(allowed))})",
                    key_node,
                )

    # files --------------------------------------------------------------------------
    def read_file(self, path: Path, text: str) -> None:
        self.file = str(path)
        self.rule_id = None
        try:
            root = yaml.compose(text, Loader=_YamlLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            raise RuleError(f"not valid YAML: {exc}", file=self.file, line=line) from exc
        if root is None:
            raise RuleError("empty rule pack", file=self.file, line=1)
        top = self.mapping(root, "a rule pack")
        self.check_keys(top, _TOP_KEYS, "a rule pack")
        if "language" in top:
            self.string(top["language"][1], "language")
        if "terms" in top:
            for name_node, list_node in self.mapping(top["terms"][1], "terms").values():
                self.read_term_list(name_node, list_node)
        if "rules" in top:
            rules_node = top["rules"][1]
            for rule_node in self.sequence(rules_node, "rules"):
                if not isinstance(rule_node, yaml.MappingNode):
                    raise self.error("each rule must be a mapping", rule_node)
                self.pending_rules.append((self.file, rule_node))

    def read_term_list(self, name_node: yaml.Node, list_node: yaml.Node) -> None:
        name = str(name_node.value)
        if not _NAME_RE.match(name):
            raise self.error(
                f"term list name '{name}' must be lowercase letters, digits, '.', '_' or '-'",
                name_node,
            )
        if name.startswith("builtin."):
            raise self.error(f"term list name '{name}': 'builtin.' is reserved", name_node)
        if name in self.raw_lists:
            other_file, other_line, _ = self.raw_lists[name]
            raise self.error(
                f"duplicate term list '{name}' (first defined at {other_file}:{other_line})",
                name_node,
            )
        entries = []
        for entry in self.sequence(list_node, f"term list '{name}'"):
            entries.append((self.string(entry, f"an entry of term list '{name}'"), entry))
        self.raw_lists[name] = (
            self.file,
            name_node.start_mark.line + 1,
            [(text, node.start_mark.line + 1) for text, node in entries],
        )

    # terms ----------------------------------------------------------------------------
    def term(self, source: str, line: int) -> Term:
        term = self.term_cache.get(source)
        if term is None:
            try:
                term = parse_term(source)
            except _TermSyntaxError as exc:
                raise RuleError(
                    f"malformed term {source!r}: {exc}",
                    file=self.file,
                    line=line,
                    rule_id=self.rule_id,
                ) from None
            self.term_cache[source] = term
        return term

    def resolve_lists(self) -> None:
        resolving: list[str] = []

        def resolve(name: str) -> tuple[Term, ...]:
            if name in self.lists:
                return self.lists[name]
            if name in resolving:
                cycle = " -> ".join([*resolving, name])
                file, line, _ = self.raw_lists[name]
                raise RuleError(f"term lists include each other: {cycle}", file=file, line=line)
            resolving.append(name)
            file, _, entries = self.raw_lists[name]
            terms: list[Term] = []
            for text, line in entries:
                self.file = file
                if text.startswith("@"):
                    ref = text[1:]
                    if ref not in self.raw_lists:
                        raise RuleError(
                            f"term list '{name}' includes undefined '@{ref}'", file=file, line=line
                        )
                    terms.extend(resolve(ref))
                else:
                    terms.append(self.term(text, line))
            resolving.pop()
            unique = tuple(dict.fromkeys(terms))
            self.lists[name] = unique
            return unique

        self.rule_id = None
        for name in self.raw_lists:
            resolve(name)

    # rules ---------------------------------------------------------------------------
    def read_rules(self) -> list[Rule]:
        rules = []
        for file, node in self.pending_rules:
            self.file = file
            self.rule_id = None
            rules.append(self.read_rule(node))
        return rules

    def read_rule(self, node: yaml.MappingNode) -> Rule:
        keys = self.mapping(node, "a rule")
        if "id" not in keys:
            raise self.error("rule without 'id'", node)
        rule_id = self.string(keys["id"][1], "id")
        self.rule_id = rule_id
        if not _RULE_ID_RE.match(rule_id):
            raise self.error(
                f"rule id '{rule_id}' must be letters, digits, '.', '_' or '-'", keys["id"][1]
            )
        if rule_id in self.seen_ids:
            raise self.error(
                f"duplicate rule id (first defined at {self.seen_ids[rule_id]})", keys["id"][1]
            )
        self.seen_ids[rule_id] = f"{self.file}:{node.start_mark.line + 1}"
        self.check_keys(keys, _RULE_KEYS, "a rule")
        for required in ("category", "severity", "description", "hint", "examples"):
            if required not in keys:
                raise self.error(f"missing '{required}'", node)
        category_text = self.string(keys["category"][1], "category")
        try:
            category = Category(category_text)
        except ValueError:
            raise self.error(
                f"unknown category '{category_text}' (one of: "
                + ", ".join(c.value for c in Category)
                + ")",
                keys["category"][1],
            ) from None
        severity_text = self.string(keys["severity"][1], "severity")
        try:
            severity = Severity(severity_text)
        except ValueError:
            raise self.error(
                f"unknown severity '{severity_text}' (one of: low, medium, high)",
                keys["severity"][1],
            ) from None
        description = self.string(keys["description"][1], "description").strip()
        hint = self.string(keys["hint"][1], "hint").strip()
        clause = self.read_clause(node, keys, "rule")
        requires: list[Clause] = []
        if "requires" in keys:
            for extra in self.sequence(keys["requires"][1], "requires"):
                extra_keys = self.mapping(extra, "a required clause")
                self.check_keys(extra_keys, _CLAUSE_KEYS, "a required clause")
                requires.append(self.read_clause(extra, extra_keys, "required clause"))
        matches, no_matches = self.read_examples(keys["examples"][1])
        return Rule(
            id=rule_id,
            category=category,
            severity=severity,
            description=description,
            hint=hint,
            clause=clause,
            requires=tuple(requires),
            match_examples=matches,
            no_match_examples=no_matches,
            file=self.file,
            line=node.start_mark.line + 1,
        )

    def read_clause(
        self, node: yaml.Node, keys: dict[str, tuple[yaml.Node, yaml.Node]], what: str
    ) -> Clause:
        scope = Scope.SENTENCE
        if "scope" in keys:
            text = self.string(keys["scope"][1], "scope")
            try:
                scope = Scope(text)
            except ValueError:
                raise self.error(
                    f"unknown scope '{text}' (sentence, paragraph or message)", keys["scope"][1]
                ) from None
        items = {name: self.read_items(keys[name][1], name) for name in ("all", "any", "none")
                 if name in keys}  # fmt: skip
        if not items.get("all") and not items.get("any"):
            raise self.error(f"a {what} needs 'all' or 'any'", node)
        within = None
        if "within" in keys:
            value_node = keys["within"][1]
            if not (isinstance(value_node, yaml.ScalarNode) and value_node.tag.endswith(":int")):
                raise self.error(
                    f"within must be a whole number from 1 to {MAX_WITHIN}", value_node
                )
            within = int(value_node.value)
            if not 1 <= within <= MAX_WITHIN:
                raise self.error(f"within {within} is out of range (1 to {MAX_WITHIN})", value_node)
        ordered = False
        if "ordered" in keys:
            value_node = keys["ordered"][1]
            if not (isinstance(value_node, yaml.ScalarNode) and value_node.tag.endswith(":bool")):
                raise self.error("ordered must be true or false", value_node)
            ordered = value_node.value.lower() in ("true", "yes", "on")
        any_first = (
            "any" in keys
            and "all" in keys
            and keys["any"][0].start_mark.index < keys["all"][0].start_mark.index
        )
        return Clause(
            scope=scope,
            all=items.get("all", ()),
            any=items.get("any", ()),
            none=items.get("none", ()),
            within=within,
            ordered=ordered,
            any_first=any_first,
        )

    def read_items(self, node: yaml.Node, key: str) -> tuple[Item, ...]:
        items = []
        for entry in self.sequence(node, key):
            text = self.string(entry, f"an entry of '{key}'").strip()
            line = entry.start_mark.line + 1
            if text.startswith("@"):
                name = text[1:]
                if name.startswith("builtin."):
                    if name[len("builtin.") :] not in builtin_terms.NAMES:
                        known = ", ".join("@builtin." + n for n in builtin_terms.NAMES)
                        raise self.error(f"unknown built-in '{text}' (known: {known})", entry)
                    items.append(Item(source=text, builtins=(name[len("builtin.") :],)))
                elif name in self.lists:
                    items.append(Item(source=text, terms=self.lists[name]))
                else:
                    raise self.error(f"undefined term list '{text}'", entry)
            else:
                items.append(Item(source=text, terms=(self.term(text, line),)))
        return tuple(items)

    def read_examples(self, node: yaml.Node) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
        keys = self.mapping(node, "examples")
        self.check_keys(keys, {"match", "no_match"}, "examples")
        result: dict[str, tuple[Example, ...]] = {}
        for name in ("match", "no_match"):
            if name not in keys:
                raise self.error(f"examples need '{name}' (at least one)", node)
            examples = []
            for entry in self.sequence(keys[name][1], f"examples.{name}"):
                if isinstance(entry, yaml.MappingNode):
                    fields = self.mapping(entry, "an example")
                    self.check_keys(fields, _EXAMPLE_KEYS, "an example")
                    if not fields:
                        raise self.error("an example needs 'subject' or 'body'", entry)
                    values = {k: self.string(v, f"example {k}") for k, (_, v) in fields.items()}
                    examples.append(Example(values.get("subject", ""), values.get("body", "")))
                else:
                    examples.append(Example(body=self.string(entry, "an example")))
            result[name] = tuple(examples)
        return result["match"], result["no_match"]


class _YamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The fast C loader when PyYAML has it; only `compose` is used (marks give lines)."""


def _pack_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.yaml") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise RuleError("no such rule pack file or folder", file=str(path))
    return files


def load_rules(paths: Sequence[Path], *, name: str | None = None) -> RuleSet:
    """Loads and validates rule packs (files, or folders of `*.yaml` in sorted order)."""
    paths = [Path(p) for p in paths]
    files = _pack_files(paths)
    loader = _Loader()
    digest = hashlib.sha256()
    for file in files:
        try:
            data = file.read_bytes()
            text = data.decode("utf-8")
        except OSError as exc:
            raise RuleError(f"cannot read: {exc.strerror or exc}", file=str(file)) from None
        except UnicodeDecodeError:
            raise RuleError("not UTF-8 text", file=str(file)) from None
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
        loader.read_file(file, text)
    loader.resolve_lists()
    rules = loader.read_rules()
    if name is None:
        name = "+".join(p.name if p.is_dir() else p.stem for p in paths) or "empty"
    return _compile(
        rules=tuple(rules),
        version=f"{name}@{digest.hexdigest()[:12]}",
        term_lists=dict(loader.lists),
        files=tuple(str(f) for f in files),
    )


def _compile(
    *,
    rules: tuple[Rule, ...],
    version: str,
    term_lists: Mapping[str, tuple[Term, ...]],
    files: tuple[str, ...],
) -> RuleSet:
    patterns: dict[WordPattern, int] = {}
    term_ids: dict[Term, int] = {}
    compiled: list[tuple[tuple[int, int], ...]] = []
    builtins_used: set[str] = set()
    cap = MAX_GAP + 1
    uses_paragraphs = False

    def add_term(term: Term) -> None:
        if term in term_ids:
            return
        term_ids[term] = len(compiled)
        steps = []
        for index, word in enumerate(term.words):
            pid = patterns.setdefault(word, len(patterns))
            steps.append((pid, term.gaps[index - 1] if index else 0))
        compiled.append(tuple(steps))

    plans: dict[int, _ItemPlan] = {}
    plan_by_item: dict[Item, _ItemPlan] = {}
    for rule in rules:
        for clause in (rule.clause, *rule.requires):
            if clause.within is not None:
                cap = max(cap, clause.within + 1)
            uses_paragraphs = uses_paragraphs or clause.scope is Scope.PARAGRAPH
            for item in (*clause.all, *clause.any, *clause.none):
                for term in item.terms:
                    add_term(term)
                builtins_used.update(item.builtins)
                shared = plan_by_item.get(item)
                if shared is not None:
                    plans[id(item)] = shared
                    continue
                ids = tuple(dict.fromkeys(term_ids[term] for term in item.terms))
                plans[id(item)] = plan_by_item[item] = _ItemPlan(
                    index=len(plan_by_item),
                    term_ids=ids,
                    builtins=item.builtins,
                )
    for terms in term_lists.values():
        for term in terms:
            add_term(term)
    pattern_list = tuple(patterns)
    return RuleSet(
        rules=rules,
        version=version,
        term_lists=term_lists,
        files=files,
        patterns=pattern_list,
        term_ids=term_ids,
        compiled_terms=tuple(compiled),
        distance_cap=cap,
        uses_paragraphs=uses_paragraphs,
        scanner=_Scanner(pattern_list) if pattern_list else None,
        builtins_used=frozenset(builtins_used),
        item_plans=plans,
        index=_ItemIndex(plan_by_item.values(), compiled),
        phrase_offsets=tuple(_phrase_offsets(steps, pattern_list) for steps in compiled),
        rule_patterns={
            id(rule): frozenset(
                pid
                for clause in (rule.clause, *rule.requires)
                for item in (*clause.all, *clause.any, *clause.none)
                for term in item.terms
                for pid, _ in compiled[term_ids[term]]
            )
            for rule in rules
        },
    )


def _phrase_offsets(
    steps: tuple[tuple[int, int], ...], patterns: Sequence[WordPattern]
) -> tuple[int, ...] | None:
    """Word offsets of a gap-free phrase's words from its first word (None: it has gaps)."""
    if any(gap for _, gap in steps):
        return None
    offsets = []
    position = 0
    for pid, _ in steps:
        offsets.append(position)
        position += patterns[pid].width
    return tuple(offsets)


def bundled_rules_path() -> Path:
    """The bundled rule packs: inside an installed wheel, or `rules/` of a source checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "_bundled_rules"
    if installed.is_dir():
        return installed
    return package.parent / "rules"


def load_configured_rules(paths: Sequence[Path]) -> RuleSet:
    """The packs a config lists; the default (the bundled folder) is versioned `bundled@...`."""
    bundled = bundled_rules_path().resolve()
    if [Path(p).resolve() for p in paths] == [bundled]:
        return load_rules([bundled], name="bundled")
    return load_rules(paths)


def load_bundled_rules() -> RuleSet:
    """The rule packs shipped with outbox-relay, versioned as `bundled@<hash>`."""
    return load_rules([bundled_rules_path()], name="bundled")
