"""Rule packs: the YAML format of rules/README.md read, validated and compiled to objects.

`read_packs(paths)` loads every pack file (folders: every `*.yaml` below, sorted), checks
everything the format says and raises `RuleError` naming the file, the line (from the YAML
node marks) and the rule id. Terms are parsed and normalized here exactly as message text is
normalized (relay.normalize), so a term matches what a buyer reads. Matching is the
engine's job (relay.engine).
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from relay import builtins as builtin_terms
from relay.errors import RuleError
from relay.model import Category, Part, ScanInput, Severity
from relay.normalize import CJK, NUMBER_WORDS, TOKEN_RE, normalize, strip_accents

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


@dataclass(frozen=True, slots=True)
class Packs:
    """What the pack files hold, validated: rules, term lists, files and their digest."""

    rules: tuple[Rule, ...]
    term_lists: dict[str, tuple[Term, ...]]
    files: tuple[str, ...]
    digest: str


def read_packs(paths: Sequence[Path]) -> Packs:
    """Reads and validates rule packs (files, or folders of `*.yaml` in sorted order)."""
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
    return Packs(
        rules=tuple(rules),
        term_lists=dict(loader.lists),
        files=tuple(str(f) for f in files),
        digest=digest.hexdigest(),
    )
