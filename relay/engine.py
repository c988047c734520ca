"""The rule engine: evaluate a message's text parts against loaded rule packs.

`load_rules(paths)` reads and validates every pack (relay.rulepack, format: rules/README.md)
into a frozen `RuleSet`; `RuleSet.evaluate(scan)` is pure and synchronous and returns a
`Verdict`.

Matching never uses a user-written regular expression: candidate words are found by table
lookups of a part's runs of letters and digits and by a trie regex of literal CJK terms
(relay.wordscan). A scan runs in two rounds: first the part's distinct words are counted and
every rule that cannot match is dropped, the rest narrowed to the sentences or paragraphs
where it can (relay.anchors); then the words of the rules left are placed there, with word,
sentence and paragraph numbers, and each rule's clauses are judged. Time is linear in the
text size for any pack.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from relay import builtins as builtin_terms
from relay.anchors import Anchor, Regions, anchor_of
from relay.model import Hit, ScanInput, Verdict
from relay.normalize import (
    CJK,
    LETTER,
    PARAGRAPH_BREAK_RE,
    SENTENCE_BREAK_RE,
    WORD_START_RE,
    Normalized,
    normalize,
)
from relay.rulepack import (
    MAX_GAP,
    MAX_WITHIN,
    Clause,
    Example,
    Item,
    Rule,
    Scope,
    Term,
    WordPattern,
    parse_term,
    read_packs,
)
from relay.sentences import Sentences
from relay.wordscan import Census, Scanner

__all__ = [
    "Clause",
    "Example",
    "ExampleFailure",
    "Item",
    "Rule",
    "RuleSet",
    "Scope",
    "Term",
    "WordPattern",
    "bundled_rules_path",
    "load_bundled_rules",
    "load_configured_rules",
    "load_rules",
    "parse_term",
]


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
        self.alive: list[Rule] = []
        self._sentences: Sentences | None = None
        self._paragraph_starts: list[int] | None = None
        # From the anchor round: rules whose `requires` clauses wait (see Regions.of).
        self.deferred: dict[int, tuple[tuple[Scope, set[int]] | None, ...]] = {}
        self.regions: Regions | None = None
        # Where candidates were looked for (the whole text unless the anchors narrowed it).
        self.ranges: Sequence[tuple[int, int]] = ((0, len(norm.text)),)

    def sentences(self) -> Sentences:
        """Names the sentence of a position (its breaks found where positions ask)."""
        if self._sentences is None:
            self._sentences = Sentences(self.norm.text, self.paragraph_starts())
        return self._sentences

    def share_breaks(self, other: _Part) -> None:
        """Use the breaks `other`, a part of the same text, has found (and will find)."""
        self._paragraph_starts = other.paragraph_starts()
        self._sentences = other.sentences()

    def paragraph_starts(self) -> list[int]:
        """Where each paragraph break of the text starts, in order (computed once)."""
        if self._paragraph_starts is None:
            text = self.norm.text
            self._paragraph_starts = [m.start() for m in PARAGRAPH_BREAK_RE.finditer(text)]
        return self._paragraph_starts

    # Word indices, sentences and paragraphs are computed once, for the positions that
    # matter (starts and ends of candidates). Few positions: count segment by segment from
    # left to right; many: list every word start and break once and look positions up.
    def place(
        self,
        pids: Iterable[int],
        partial: Iterable[int] = (),
        sentences: set[int] | None = None,
    ) -> None:
        """Places every candidate of `pids`, and those of `partial` inside `sentences` only.

        `sentences` are named as `Sentences` names them: the rules that need `partial` can
        only match inside those sentences.
        """
        occs: list[_Occ] = []
        for pid in pids:
            raw = self.atoms.get(pid)
            if raw:
                placed = self.occs[pid] = [_Occ(start, end) for start, end in raw]
                occs.extend(placed)
        if sentences:
            right = bisect.bisect_right
            named = self.sentences()
            # A sentence holds the starts s with low < s <= high.
            bounds = sorted(named.bounds(name) for name in sentences)
            for pid in partial:
                raw = self.atoms.get(pid)
                if not raw:
                    continue
                if len(raw) <= 4 * len(bounds):
                    of = named.of
                    placed = [_Occ(s, e) for s, e in raw if of(s) in sentences]
                else:  # many candidates, few sentences: cut the sorted list at the bounds
                    placed = []
                    for low, high in bounds:
                        first = right(raw, (low, _END))
                        placed += [_Occ(s, e) for s, e in raw[first : right(raw, (high, _END))]]
                if placed:
                    self.occs[pid] = placed
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
        # Word numbers only ever compare inside one sentence or paragraph, and every unit
        # that holds a candidate lies wholly inside one of the scanned ranges: counting the
        # words of those ranges only keeps every such difference exact. Ranges start at a
        # unit's start, never inside a word, so the starts of whole runs are the word starts
        # (and twice as fast to find as WORD_START_RE's look-behinds at every letter).
        finditer = _WORD_RE.finditer
        words = [m.start() for begin, end in self.ranges for m in finditer(text, begin, end)]
        paragraphs = self.paragraph_starts() if self.ruleset.uses_paragraphs else []
        # map() over bisect keeps the loop in C: thousands of positions in a long part.
        left = bisect.bisect_left
        numbers = zip(
            map(partial(left, words), positions),
            self.sentences().of_each(positions),
            map(partial(left, paragraphs), positions),
            strict=True,
        )
        return dict(zip(positions, numbers, strict=True))

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
            occs = self.occs
            present = [i for pid, terms in plan.by_first.items() if pid in occs for i in terms]
            present.sort()  # the written order: ties in the sort below stay as they were
            term_ids = plan.term_ids
            for i in present:
                found.extend(self.term_occs(term_ids[i]))
            for name in plan.builtins:
                found.extend(self.builtin_occs.get(name, ()))
            if len(plan.term_ids) + len(plan.builtins) > 1:
                found.sort(key=_start)
            self._item_occs[plan.index] = found
        return found

    def item_possible(self, item: Item) -> bool:
        """Cheap check before any positions are computed: could the item match at all?"""
        return self.ruleset.item_plans[id(item)].index in self.possible()

    def set_possible(self, possible: set[int]) -> None:
        self._possible = possible

    def possible(self) -> set[int]:
        """The indices of the items that could match, from the candidate words alone."""
        if self._possible is None:
            self._possible = self.ruleset.index.possible_items(self.atoms.keys(), self.builtin_occs)
        return self._possible


# One match per word as WORD_START_RE counts them (a CJK character is a word).
_WORD_RE = re.compile(f"[{LETTER}]+|[0-9]+|[{CJK}]")
_END = 1 << 62  # larger than any position: (p, _END) sorts after every span starting at p


def _start(occ: _Occ) -> int:
    return occ.start


class _ItemIndex:
    """Which items can match, from the candidate words a part has: one lookup per word."""

    def __init__(
        self,
        plans: Iterable[_ItemPlan],
        compiled: Sequence[tuple[tuple[int, int], ...]],
        patterns: Sequence[WordPattern],
    ):
        self.single: dict[int, list[int]] = {}
        self.multi: dict[int, list[tuple[frozenset[int], int]]] = {}
        self.builtins: dict[str, list[int]] = {}
        for plan in plans:
            for term_id in plan.term_ids:
                steps = compiled[term_id]
                if len(steps) == 1:
                    self.single.setdefault(steps[0][0], []).append(plan.index)
                else:
                    # Filed under its longest word, usually the rarest: common first words
                    # ("please", "your") start hundreds of terms.
                    pids = frozenset(pid for pid, _ in steps)
                    key = max(pids, key=lambda pid: (len(patterns[pid].text), pid))
                    self.multi.setdefault(key, []).append((pids, plan.index))
            for name in plan.builtins:
                self.builtins.setdefault(name, []).append(plan.index)

    def possible_items(self, present: Set[int], builtin_occs: Mapping[str, list[_Occ]]) -> set[int]:
        """Items all of whose words of some term are `present` (a set or a dict's keys)."""
        if not isinstance(present, (set, frozenset)):
            present = set(present)  # a set's subset test is a third faster than a keys view's
        possible: set[int] = set()
        single, multi = self.single, self.multi
        for pid in present:
            items = single.get(pid)
            if items is not None:
                possible.update(items)
            terms = multi.get(pid)
            if terms is not None:
                for pids, index in terms:
                    if index not in possible and pids <= present:
                        possible.add(index)
        for name, occs in builtin_occs.items():
            if occs:
                possible.update(self.builtins.get(name, ()))
        return possible


@dataclass(frozen=True, slots=True)
class _ItemPlan:
    """An item compiled to pattern and term numbers, for fast checks per part."""

    index: int
    term_ids: tuple[int, ...]
    builtins: tuple[str, ...]
    # The first word's pattern of each term -> the terms' positions in term_ids: a part
    # holds few of an item's first words, and items of generated lists have hundreds of terms.
    by_first: Mapping[int, tuple[int, ...]] = field(default_factory=dict)


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


class _SentenceFilter:
    """Drops rules whose sentence-scope clauses have no sentence holding all their items.

    Placing candidates (word indices, sentences) is the costly step, and in a long message
    common words ("you", "page", "order") make many rules possible somewhere in the part. A
    sentence number per candidate is cheap (one bisect), and a clause with `scope: sentence`
    can only hold in a sentence where every `all` item and one `any` item occur. Every word of
    a term's match stands in the match's sentence (phrases and gaps never cross a sentence
    end), so the sentences holding candidates of all of a term's words are a superset.
    `none` items and word distances are left to the full evaluation: this only skips rules that
    could never match.
    """

    def __init__(self, part: _Part) -> None:
        self.part = part
        self.ruleset = part.ruleset
        self.sentences = part.sentences()
        self._by_pattern: dict[int, set[int]] = {}
        self._by_item: dict[int, set[int]] = {}
        # Per kept rule: the sentences it may match in; None when a clause is not sentence-scope.
        self.where: dict[int, set[int] | None] = {}

    def keep(self, rules: list[Rule], deferred: Mapping[int, object]) -> list[Rule]:
        """The rules that may hold in some sentence (the first clause alone, for those in
        `deferred`: their other clauses are looked at elsewhere)."""
        kept = []
        for rule in rules:
            where: set[int] | None = set()
            clauses = (rule.clause,) if id(rule) in deferred else (rule.clause, *rule.requires)
            for clause in clauses:
                found = self._sentences(clause)
                if found is None:
                    where = None
                elif not found:
                    break
                elif where is not None:
                    where |= found
            else:
                self.where[id(rule)] = where
                kept.append(rule)
        return kept

    def _sentences(self, clause: Clause) -> set[int] | None:
        """The sentences where a clause may hold (None: it is not sentence-scope)."""
        if clause.scope is not Scope.SENTENCE:
            return None
        common: set[int] | None = None
        for item in clause.all:
            found = self._item(item)
            common = set(found) if common is None else common & found
            if not common:
                return set()
        if clause.any:
            anywhere: set[int] = set()
            for item in clause.any:
                anywhere |= self._item(item)
            common = anywhere if common is None else common & anywhere
        return common or set()

    def _item(self, item: Item) -> set[int]:
        plan = self.ruleset.item_plans[id(item)]
        found = self._by_item.get(plan.index)
        if found is None:
            found = set()
            compiled = self.ruleset.compiled_terms
            atoms = self.part.atoms
            for first, terms in plan.by_first.items():
                if first not in atoms:
                    continue
                for i in terms:
                    steps = compiled[plan.term_ids[i]]
                    sentences = self._pattern(first)
                    for pid, _ in steps[1:]:
                        if not sentences:
                            break
                        sentences = sentences & self._pattern(pid)
                    found |= sentences
            of = self.sentences.of
            for name in plan.builtins:
                occs = self.part.builtin_occs.get(name, ())
                found.update(of(occ.start) for occ in occs)
            self._by_item[plan.index] = found
        return found

    def _pattern(self, pid: int) -> set[int]:
        found = self._by_pattern.get(pid)
        if found is None:
            starts = [start for start, _ in self.part.atoms.get(pid, ())]
            found = self._by_pattern[pid] = set(self.sentences.of_each(starts))
        return found


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
    scanner: Scanner | None = None
    builtins_used: frozenset[str] = frozenset()
    item_plans: Mapping[int, _ItemPlan] = field(default_factory=dict)
    index: _ItemIndex = field(default_factory=lambda: _ItemIndex((), (), ()))
    rule_patterns: Mapping[int, frozenset[int]] = field(default_factory=dict)
    # Per rule: the items every clause needs and, per clause with `any`, the items of which one
    # must occur; the first test of every rule on every part, so two set operations.
    rule_needs: Mapping[int, tuple[frozenset[int], tuple[frozenset[int], ...]]] = field(
        default_factory=dict
    )
    phrase_offsets: tuple[tuple[int, ...] | None, ...] = ()
    # Per rule: the rare words (or built-ins) one of which every match holds; see Anchor.
    anchors: Mapping[int, Anchor] = field(default_factory=dict)
    # rule_needs and rule_patterns of each rule's first clause alone.
    first_needs: Mapping[int, tuple[frozenset[int], tuple[frozenset[int], ...]]] = field(
        default_factory=dict
    )
    first_patterns: Mapping[int, frozenset[int]] = field(default_factory=dict)
    clause_patterns: Mapping[int, frozenset[int]] = field(default_factory=dict)
    # Item index -> positions in `rules` of the rules that cannot match without that item
    # (one such item, or one `any` group, per rule): most mail makes few items possible.
    rule_keys: Mapping[int, tuple[int, ...]] = field(default_factory=dict)

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
            key = _alternative_key(text)
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
        part = self._prepare(text, rules)
        if part is None:
            return []
        deferred = part.deferred  # these rules' `requires` wait until their first clause holds
        candidates = self._candidates(part.alive, part.possible(), deferred)
        if not candidates:
            return []
        sentence_filter = _SentenceFilter(part)
        candidates = sentence_filter.keep(candidates, deferred)
        if not candidates:
            return []
        # Rules whose clauses are all sentence-scope need their candidates placed only in
        # the sentences where they may hold: a long message has many sentences.
        needed: set[int] = set()
        partial: set[int] = set()
        sentences: set[int] = set()
        for rule in candidates:
            where = sentence_filter.where[id(rule)]
            patterns = (self.first_patterns if id(rule) in deferred else self.rule_patterns)[
                id(rule)
            ]
            if where is None:
                needed.update(patterns)
            else:
                partial.update(patterns)
                sentences |= where
        part.place(needed, partial - needed, sentences)
        held = []
        for rule in candidates:
            span = _match_clause(part, rule.clause)
            if span is not None:
                held.append((rule, span))
        found = []
        for rule, span in held:
            if id(rule) in deferred:
                holds = all(
                    self._holds_somewhere(part, extra, units)
                    for extra, units in zip(rule.requires, deferred[id(rule)], strict=True)
                )
            else:
                holds = all(_match_clause(part, extra) for extra in rule.requires)
            if holds:
                found.append((rule, part.norm.excerpt(*span)))
        return found

    def _candidates(
        self, rules: Sequence[Rule], possible: set[int], deferred: Mapping[int, object]
    ) -> list[Rule]:
        """The rules all of whose needed items are possible (of the first clause only for
        the rules in `deferred`)."""
        if rules is self.rules and not deferred:
            positions: set[int] = set()
            for item in possible:
                positions.update(self.rule_keys.get(item, ()))
            rules = [rules[position] for position in sorted(positions)]
        candidates = []
        for rule in rules:
            needs = self.first_needs if id(rule) in deferred else self.rule_needs
            every, some = needs[id(rule)]
            if every <= possible and all(not group.isdisjoint(possible) for group in some):
                candidates.append(rule)
        return candidates

    def _prepare(self, text: str, rules: Sequence[Rule]) -> _Part | None:
        """Normalizes and scans a part; None when no rule can match it.

        The scan runs in two rounds. The first counts the part's distinct words (one C-level
        pass, no positions): a rule with a needed word missing from the whole part cannot
        match, and in most mail every rule has one. The second finds every candidate word
        with its position, but only where the rules left can match: the sentences or
        paragraphs holding their rarest needed words, or the whole part when one of them can
        match anywhere.
        """
        part = _Part(self, normalize(text))
        for name in self.builtins_used:
            found = builtin_terms.find(name, part.norm)
            if found:
                part.builtin_occs[name] = [_Occ(s, e) for s, e in found]
        scanner = self.scanner
        census = (
            scanner.census(part.norm, part.atoms)
            if scanner is not None
            else Census(part.norm, part.atoms)
        )
        present = self.index.possible_items(census.counts.keys(), part.builtin_occs)
        candidates = self._candidates(rules, present, {})
        if not candidates:
            return None
        regions = Regions(part, census)
        plan = regions.of(candidates, self.anchors)
        if not plan.rules:
            return None
        part.alive = plan.rules
        part.deferred = plan.deferred
        part.regions = regions
        if plan.ranges is not None:
            part.ranges = plan.ranges
        if scanner is not None:
            scanner.scan_words(part.norm, part.atoms, part.ranges)
        if plan.ranges is None:
            # Placed in the whole text, the part has the very words it counted.
            part.set_possible(present)
        return part

    def _holds_somewhere(
        self, part: _Part, clause: Clause, units: tuple[Scope, set[int]] | None
    ) -> bool:
        """Whether a put-off `requires` clause holds in one of its units of the part.

        The units are scanned in batches of 1, 2, 4... from the start of the text, each in a
        part of its own (word numbers are counted per scanned range), and the search stops
        at the first batch where the clause holds: where a gating rule's first clause holds,
        its second usually does too, early.
        """
        assert part.regions is not None
        text = part.norm.text
        if units is None:
            batches: list[list[tuple[int, int]]] = [[(0, len(text))]]
        else:
            scope, found = units
            ordered = sorted(found)
            batches = []
            start, size = 0, 1
            while start < len(ordered):
                batch = set(ordered[start : start + size])
                batches.append(part.regions.ranges({scope: batch}))
                start, size = start + size, size * 2
        patterns = self.clause_patterns[id(clause)]
        for ranges in batches:
            later = _Part(self, part.norm)
            later.share_breaks(part)
            later.builtin_occs = {
                name: [_Occ(o.start, o.end) for o in occs]
                for name, occs in part.builtin_occs.items()
            }
            later.atoms = dict(part.regions.census.cjk_atoms)
            later.ranges = ranges
            if self.scanner is not None:
                self.scanner.scan_words(later.norm, later.atoms, ranges)
            later.place(patterns)
            if _match_clause(later, clause) is not None:
                return True
        return False

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
# The characters str.split() splits ASCII text at, to a space.
_ASCII_SPACES = str.maketrans(dict.fromkeys("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f", " "))


def _alternative_key(text: str) -> str:
    """The words of `text` with one space between them and NUL for each blank line.

    Two alternatives of a message with the same key read the same. Splitting a long part into
    words costs an object per word; ASCII text whose spaces are single already (most mail) gets
    the same key from one C-level translate.
    """
    marked = _BLANK_LINE_RE.sub("\x00", text)
    if marked.isascii():
        spaced = marked.translate(_ASCII_SPACES)
        if "  " not in spaced:
            return spaced.strip(" ")
    return " ".join(marked.split())


def _parts_of(scan: ScanInput) -> list[tuple[str, str]]:
    parts = [(p.origin, p.text) for p in scan.parts]
    if scan.subject and not any(p.origin == "subject" for p in scan.parts):
        parts.insert(0, ("subject", scan.subject))
    return parts


def load_rules(paths: Sequence[Path], *, name: str | None = None) -> RuleSet:
    """Loads and validates rule packs (files, or folders of `*.yaml` in sorted order)."""
    paths = [Path(p) for p in paths]
    packs = read_packs(paths)
    if name is None:
        name = "+".join(p.name if p.is_dir() else p.stem for p in paths) or "empty"
    return _compile(
        rules=packs.rules,
        version=f"{name}@{packs.digest[:12]}",
        term_lists=packs.term_lists,
        files=packs.files,
    )


def _compile(
    *,
    rules: tuple[Rule, ...],
    version: str,
    term_lists: Mapping[str, tuple[Term, ...]],
    files: tuple[str, ...],
) -> RuleSet:
    patterns: dict[tuple[str, bool, bool], int] = {}  # plain tuples hash fast
    pattern_objects: list[WordPattern] = []
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
            key = (word.text, word.prefix, word.cjk)
            pid = patterns.get(key, -1)
            if pid < 0:
                pid = patterns[key] = len(pattern_objects)
                pattern_objects.append(word)
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
                by_first: dict[int, list[int]] = {}
                for position, term_id in enumerate(ids):
                    by_first.setdefault(compiled[term_id][0][0], []).append(position)
                plans[id(item)] = plan_by_item[item] = _ItemPlan(
                    index=len(plan_by_item),
                    term_ids=ids,
                    builtins=item.builtins,
                    by_first={pid: tuple(terms) for pid, terms in by_first.items()},
                )
    for terms in term_lists.values():
        for term in terms:
            add_term(term)
    pattern_list = tuple(pattern_objects)
    term_steps = {term: compiled[term_id] for term, term_id in term_ids.items()}
    anchors = {id(rule): anchor_of(rule, term_steps) for rule in rules}

    def needs(clauses: Sequence[Clause]) -> tuple[frozenset[int], tuple[frozenset[int], ...]]:
        every = frozenset(plans[id(item)].index for clause in clauses for item in clause.all)
        some = tuple(
            frozenset(plans[id(item)].index for item in clause.any)
            for clause in clauses
            if clause.any
        )
        return every, some

    def patterns_of(clauses: Sequence[Clause]) -> frozenset[int]:
        return frozenset(
            pid
            for clause in clauses
            for item in (*clause.all, *clause.any, *clause.none)
            for term in item.terms
            for pid, _ in compiled[term_ids[term]]
        )

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
        scanner=Scanner(enumerate(pattern_list)) if pattern_list else None,
        anchors=anchors,
        builtins_used=frozenset(builtins_used),
        item_plans=plans,
        index=_ItemIndex(plan_by_item.values(), compiled, pattern_list),
        phrase_offsets=tuple(_phrase_offsets(steps, pattern_list) for steps in compiled),
        rule_needs={id(rule): needs((rule.clause, *rule.requires)) for rule in rules},
        rule_patterns={id(rule): patterns_of((rule.clause, *rule.requires)) for rule in rules},
        first_needs={id(rule): needs((rule.clause,)) for rule in rules},
        first_patterns={id(rule): patterns_of((rule.clause,)) for rule in rules},
        clause_patterns={
            id(clause): patterns_of((clause,)) for rule in rules for clause in rule.requires
        },
        rule_keys=_rule_keys(rules, [needs((rule.clause, *rule.requires)) for rule in rules]),
    )


def _rule_keys(
    rules: Sequence[Rule], needs: Sequence[tuple[frozenset[int], tuple[frozenset[int], ...]]]
) -> dict[int, tuple[int, ...]]:
    """Files each rule under one item it needs, or under every item of one `any` group."""
    keys: dict[int, list[int]] = {}
    for position, (every, some) in enumerate(needs):
        if every:
            filed_under: Iterable[int] = (min(every),)
        elif some:
            filed_under = some[0]
        else:
            raise ValueError(f"rule {rules[position].id} needs no item at all")
        for item in filed_under:
            keys.setdefault(item, []).append(position)
    return {item: tuple(positions) for item, positions in keys.items()}


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
