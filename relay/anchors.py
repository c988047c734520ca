"""The anchor round of a scan: which rules can match a part at all, and where.

Before any word is placed, a part's distinct words are counted (`relay.wordscan`). A clause
holds only in a unit (sentence, paragraph) holding, for each of its groups (an `all` item,
or its `any` items), one term with all its words; so a rule with a group missing from the
part, or whose groups never meet in one unit of its scope, cannot match and is dropped. The
units left give the ranges of text where the engine places words. A rule's `requires`
clauses are put off until its first clause holds (`Plan.deferred`).
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from relay.rulepack import Item, Rule, Scope, Term
from relay.wordscan import Census

if TYPE_CHECKING:
    from relay.engine import _Part

# A group of words of which one must occur wherever a clause holds: per term, the pattern
# numbers of its words (the term occurs only where all of them do), plus built-ins.
Group = tuple[tuple[frozenset[int], ...], frozenset[str]]


@dataclass(frozen=True, slots=True)
class Anchor:
    """Per clause of a rule: its scope and the groups of words a match must hold.

    A clause holds only in a unit (sentence, paragraph) where each `all` item and one `any`
    item occur, and a term occurs only where each of its words does: so each group (the
    terms of an item, or of all `any` items, plus their built-ins) has a term all of whose
    words stand in every unit where the clause holds.
    """

    clauses: tuple[tuple[Scope, tuple[Group, ...]], ...]


def anchor_of(rule: Rule, term_steps: Mapping[Term, tuple[tuple[int, int], ...]]) -> Anchor:
    clauses = []
    for clause in (rule.clause, *rule.requires):
        items: list[tuple[Item, ...]] = [(item,) for item in clause.all]
        if clause.any:
            items.append(clause.any)
        groups = []
        for group in items:
            terms = tuple(
                dict.fromkeys(
                    frozenset(pid for pid, _ in term_steps[term])
                    for item in group
                    for term in item.terms
                )
            )
            names = frozenset(name for item in group for name in item.builtins)
            groups.append((terms, names))
        clauses.append((clause.scope, tuple(groups)))
    return Anchor(tuple(clauses))


@dataclass(slots=True)
class Plan:
    """The outcome of the anchor round for one part (see Regions.of)."""

    rules: list[Rule]
    ranges: list[tuple[int, int]] | None  # None: the whole text
    # Per rule whose `requires` clauses wait until its first clause holds: per clause, its
    # scope and the units where it may hold, or None when it may hold anywhere.
    deferred: dict[int, tuple[tuple[Scope, set[int]] | None, ...]]


class Regions:
    """The stretches of a part's text where the rules that can still match may match.

    A clause of sentence (paragraph) scope holds only in a sentence (paragraph) holding a
    member of each of its groups: the intersection of the groups' units, computed from the
    rarest group up (per term, the units of its rarest word narrowed by those of its other
    words; for sentences, the paragraphs first). A rule with a clause that can hold nowhere
    is dropped; a rule with a message-scope clause needs the whole text.
    """

    def __init__(self, part: _Part, census: Census) -> None:
        # A proxy: the part keeps its Regions (part.regions), and a cycle would keep the part's
        # text and candidates alive until a full garbage collection (+18 MiB of RSS per 10 MB
        # text part scanned, 2.5 GiB with 100 such messages).
        self.part = weakref.proxy(part)
        self.census = census
        self.text = part.norm.text
        # Keyed by id(): groups live as long as the rule set, and hashing them is slow.
        self._units: dict[tuple[Scope, int], set[int]] = {}
        self._present_terms: dict[int, list[list[int]]] = {}
        self._rarest_words: dict[int, frozenset[int]] = {}
        # Per pattern number (or built-in name): where its candidates start, their paragraph
        # numbers, and the set of those.
        self._positions: dict[int | str, list[int]] = {}
        self._numbers: dict[int | str, list[int]] = {}
        self._paragraphs_of: dict[int | str, set[int]] = {}
        self._sentences_of: dict[int | str, set[int]] = {}  # of all of them

    def of(self, rules: Sequence[Rule], anchors: Mapping[int, Anchor]) -> Plan:
        """The rules that may still match, where to look for their words, and what can wait.

        A rule with `requires` clauses needs them only where its first clause holds, which is
        rare: their units are set aside (`Plan.deferred`), unless the whole text is scanned
        anyway.
        """
        wanted: dict[Scope, set[int]] = {}
        deferred: dict[int, tuple[tuple[Scope, set[int]] | None, ...]] = {}
        kept = []
        whole = False
        occs = self.part.builtin_occs

        def size(group: Group) -> int:
            pids = self._rarest(group)
            return sum(self.census.counts[p] for p in pids) + sum(
                len(occs.get(name, ())) for name in group[1]
            )

        for rule in rules:
            clause_units: list[tuple[Scope, set[int]] | None] = []  # None: anywhere
            for scope, groups in anchors[id(rule)].clauses:
                if scope is Scope.MESSAGE:
                    clause_units.append(None)
                    continue
                ordered = sorted(groups, key=size)
                within: set[int] | None = None
                if scope is Scope.SENTENCE and not self.part.sentences().complete:
                    # A sentence lies inside one paragraph: first the paragraphs where every
                    # group meets, then only their sentences (their breaks found then).
                    for group in ordered:
                        found = self._group_units(Scope.PARAGRAPH, group)
                        within = set(found) if within is None else within & found
                        if not within:
                            break
                units: set[int] | None = None
                if within is None or within:
                    for group in ordered:
                        found = self._group_units(scope, group, within)
                        units = set(found) if units is None else units & found
                        if not units:
                            break
                else:
                    units = set()
                if units is not None and not units:
                    break  # this clause holds nowhere: neither does the rule
                # (a clause without words, not written by packs today, may hold anywhere)
                clause_units.append((scope, units) if units is not None else None)
            else:
                kept.append(rule)
                first, *later = clause_units
                if first is None:
                    whole = True
                else:
                    wanted.setdefault(first[0], set()).update(first[1])
                if later:
                    deferred[id(rule)] = tuple(later)
        if whole or not kept:
            return Plan(kept, None, {})
        return Plan(kept, self.ranges(wanted), deferred)

    def ranges(self, *wanted: Mapping[Scope, set[int]]) -> list[tuple[int, int]]:
        """Sorted, disjoint `(start, end)` ranges covering the units asked for."""
        ranges = []
        for units in wanted:
            for scope, found in units.items():
                if scope is Scope.SENTENCE:
                    sentences = self.part.sentences()
                    for name in found:
                        # Sentence `name` holds low < p <= name; its break starts with
                        # punctuation or a line break, so no word runs across the range end.
                        low, high = sentences.bounds(name)
                        ranges.append((low + 1, min(high + 1, len(self.text))))
                    continue
                starts = self.part.paragraph_starts()  # the only other scope with units
                for unit in found:
                    # Unit k holds the positions p with starts[k - 1] < p <= starts[k] (the
                    # way bisect numbers them); a break starts with punctuation or a line
                    # break, so no word runs across the end of a range.
                    begin = starts[unit - 1] + 1 if unit else 0
                    end = starts[unit] + 1 if unit < len(starts) else len(self.text)
                    ranges.append((begin, end))
        ranges.sort()
        merged: list[tuple[int, int]] = []
        for begin, end in ranges:
            if merged and begin <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((begin, end))
        return merged

    def _terms(self, group: Group) -> list[list[int]]:
        """The group's terms found in the part: per term, its words, the rarest first."""
        found = self._present_terms.get(id(group))
        if found is None:
            counts = self.census.counts
            present = counts.keys()
            found = self._present_terms[id(group)] = [
                sorted(pids, key=counts.__getitem__) if len(pids) > 1 else list(pids)
                for pids in group[0]
                if present >= pids
            ]
        return found

    def _rarest(self, group: Group) -> frozenset[int]:
        """Per term of the group found in the part, its word found least often."""
        found = self._rarest_words.get(id(group))
        if found is None:
            found = self._rarest_words[id(group)] = frozenset(w[0] for w in self._terms(group))
        return found

    def _group_units(self, scope: Scope, group: Group, within: set[int] | None = None) -> set[int]:
        """The units of `scope` holding a member of `group`: for sentences, those inside the
        paragraphs `within` only.

        A term's match stands in one sentence, so only in a unit holding each of its words:
        the units of its rarest word, narrowed by those of the others.
        """
        key = (scope, id(group))
        cached = scope is Scope.PARAGRAPH or within is None
        found = self._units.get(key) if cached else None
        if found is not None:
            return found
        found = set()
        for words in self._terms(group):
            units = self._units_of(scope, words[0], within)
            for pid in words[1:]:
                if not units:
                    break
                units = units & self._units_of(scope, pid, within)
            found |= units
        for name in group[1]:
            found |= self._units_of(scope, name, within)
        if cached:
            self._units[key] = found
        return found

    def _units_of(self, scope: Scope, key: int | str, within: set[int] | None) -> set[int]:
        """The units of `scope` holding a candidate of pattern `key` (or built-in `key`)."""
        if scope is Scope.PARAGRAPH:
            found = self._paragraphs_of.get(key)
            if found is None:
                found = self._paragraphs_of[key] = set(self._paragraph_numbers(key))
            return found
        if within is None:
            found = self._sentences_of.get(key)
            if found is None:
                found = self._sentences_of[key] = set(
                    self.part.sentences().of_each(self._places_of(key))
                )
            return found
        numbers = self._paragraph_numbers(key)
        places = self._places_of(key)
        places = [p for p, number in zip(places, numbers, strict=True) if number in within]
        return set(self.part.sentences().of_each(places))

    def _paragraph_numbers(self, key: int | str) -> list[int]:
        found = self._numbers.get(key)
        if found is None:
            starts = self.part.paragraph_starts()
            found = self._numbers[key] = list(
                map(partial(bisect.bisect_left, starts), self._places_of(key))
            )
        return found

    def _places_of(self, key: int | str) -> list[int]:
        """Where the candidates of pattern `key` (or the matches of built-in `key`) start."""
        found = self._positions.get(key)
        if found is None:
            if isinstance(key, str):
                found = [o.start for o in self.part.builtin_occs.get(key, ())]
            else:
                found = self.census.positions(key)
            self._positions[key] = found
        return found
