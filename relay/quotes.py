"""Remove the quoted original from a reply, so that only the seller's own words get scanned.

What counts as quoted (in English, German, French, Spanish, Italian and Japanese mailers):
- lines starting with `>` (but not decorations such as `>>> SALE <<<`);
- an attribution line ("On <date>, <name> wrote:", "Am ... schrieb ...:", "Le ... a écrit :",
  "El ... escribió:", "Il ... ha scritto:", "2024年5月1日(水) 10:00 山田 <x@y>:",
  "山田さんは書きました："): followed by `>` lines, only the attribution goes (text after the
  quoted block is the seller's again); followed by unmarked text, everything below it goes;
- a reply separator ("-----Original Message-----" and its translations) or an Outlook header
  block ("From: ... Sent: ..." and De:/Von:/Da:/差出人: forms): everything below it goes.

An attribution must carry a date or an address (a digit or `@`) or be followed by `>` lines,
so a seller's "Here is what our team wrote:" stays. After a forwarding marker ("----------
Forwarded message ---------") and with `forward=True` (the subject says Fwd:), separators and
header blocks introduce what the seller forwards, which is the seller's to answer for: kept.
"""

from __future__ import annotations

import re
from bisect import bisect_left

from relay.htmltext import starts_with_forward_marker

__all__ = ["is_forward_subject", "strip_quotes"]

_COLON = r"\s*[:：]\s*$"
# What an attribution must also carry to cut everything below it when no `>` lines follow.
_NEEDS_DATE_OR_ADDRESS = 1
_NEEDS_ADDRESS = 2
_NEEDS_NOTHING = 3
# Openers and closers of attribution lines; the middle is free (names, dates, addresses).
_ATTRIBUTION_PATTERNS = tuple(
    (re.compile(pattern, re.IGNORECASE), guard)
    for pattern, guard in (
        (r"^on\b.*\bwrote" + _COLON, _NEEDS_DATE_OR_ADDRESS),
        (r".*\bwrote" + _COLON, _NEEDS_DATE_OR_ADDRESS),
        (r"^am\b.*\bschrieb\b.*[:：]\s*$", _NEEDS_DATE_OR_ADDRESS),
        (r".*\bschrieb(\s+am\b.*)?" + _COLON, _NEEDS_DATE_OR_ADDRESS),
        (r".*\ba\s+écrit" + _COLON, _NEEDS_DATE_OR_ADDRESS),
        (r".*\bescribió" + _COLON, _NEEDS_DATE_OR_ADDRESS),
        (r".*\bha\s+scritto" + _COLON, _NEEDS_DATE_OR_ADDRESS),
        (r".*書きました" + _COLON, _NEEDS_NOTHING),
        (r".*(のメッセージ|のメール)" + _COLON, _NEEDS_ADDRESS),
        # Gmail and Apple Mail in Japanese: "2024年5月1日(水) 10:00 山田 <x@y>:"
        (r"^\d{4}\s*年\s*\d{1,2}\s*月\s*\d{1,2}\s*日.*[:：]\s*$", _NEEDS_ADDRESS),
        (r"^\d{4}/\d{1,2}/\d{1,2}.*[:：]\s*$", _NEEDS_ADDRESS),
    )
)
# Lines that open an attribution Gmail may have wrapped over up to three lines.
_ATTRIBUTION_OPENER = re.compile(r"^(on|am|le|el|il)\s|^\d{4}\s*[年/]", re.IGNORECASE)
_MAX_ATTRIBUTION_CHARS = 300

_SEPARATOR = re.compile(
    r"^[-_=*\s]{2,}\s*(original message|ursprüngliche nachricht|originalnachricht|"
    r"message d['’]origine|mensaje original|messaggio originale|元のメッセージ|"
    r"オリジナルメッセージ)\s*[-_=*\s]{2,}$",
    re.IGNORECASE,
)

_FROM_LABELS = frozenset({"from", "de", "von", "da", "van", "差出人", "送信者", "送信元"})
_HEADER_LABELS = frozenset(
    {
        "sent", "date", "to", "cc", "subject",
        "gesendet", "datum", "an", "betreff",
        "envoyé", "envoyé le", "date d'envoi", "à", "objet",
        "enviado", "enviado el", "fecha", "para", "asunto",
        "inviato", "data", "a", "oggetto",
        "送信日時", "日時", "日付", "宛先", "件名",
    }
)  # fmt: skip
_HEADER_LOOKAHEAD = 5

# Every check below needs one of these on the line: a quote mark, the first character of a
# separator or marker (all at the start of the line), a marker's trailing dash, or the colon that
# ends an attribution or a header label (anywhere). A line without them is always kept, so it
# need not be looked at alone.
_LINE_OPENERS = (">", "-", "_", "=", "*")
_COLONS = (":", "：")
_SIGNIFICANT = _LINE_OPENERS + _COLONS
# What strip_quotes drops from the end: blank lines and the rule above an Outlook header block.
_TAIL = " \t_-=*"
# An attribution may be wrapped over up to three lines, the last one ending with its colon.
_ATTRIBUTION_REACH = 2

_FORWARD_SUBJECT = re.compile(
    r"^\s*(fwd?|fw|wg|tr|enc|rv|i|転送)\s*[:：]", re.IGNORECASE
)  # Fwd:, FW:, WG: (de), TR: (fr), RV: (es), I: (it), 転送:


def is_forward_subject(subject: str) -> bool:
    """Whether the subject marks the message as a forward (Fwd:, FW:, WG:, TR:, RV:, I:...)."""
    return bool(_FORWARD_SUBJECT.match(subject))


def strip_quotes(text: str, *, forward: bool = False) -> str:
    """Return `text` without quoted reply lines, attribution lines and the quoted original."""
    candidates = _candidate_lines(text)
    if not candidates:
        return _without_tail(text)
    return _strip(text, candidates, forward=forward)


def _strip(text: str, candidates: list[int], *, forward: bool) -> str:
    """`strip_quotes`, checking only the lines whose indexes are in the sorted `candidates`."""
    lines = text.split("\n")
    kept: list[str] = []
    in_forward = forward
    index = 0
    while index < len(lines):
        position = bisect_left(candidates, index)
        plain_until = candidates[position] if position < len(candidates) else len(lines)
        if plain_until > index:
            kept.extend(lines[index:plain_until])  # none of the checks below can fire on these
            index = plain_until
            continue
        line = lines[index]
        stripped = line.strip()
        if _is_quote_line(stripped):
            index += 1
            continue
        if _looks_like_marker(stripped) and starts_with_forward_marker(stripped):
            in_forward = True
        elif not in_forward and (_SEPARATOR.match(stripped) or _is_header_block(lines, index)):
            break
        else:
            span = _attribution_span(lines, index)
            if span:
                after = _next_nonblank(lines, index + span)
                if after is not None and _is_quote_line(lines[after].strip()):
                    index += span
                    continue
                if _cuts_below(" ".join(line.strip() for line in lines[index : index + span])):
                    break
        kept.append(line)
        index += 1
    while kept and not kept[-1].strip(_TAIL):
        kept.pop()  # the rule above an Outlook header block, trailing blank lines
    return "\n".join(kept)


def _without_tail(text: str) -> str:
    """`text` without the trailing lines that strip_quotes drops (blank, or a rule of `-`...)."""
    content_end = len(text.rstrip(_TAIL + "\n"))
    if not content_end:
        return ""
    line_end = text.find("\n", content_end)
    return text if line_end < 0 else text[:line_end]


def _candidate_lines(text: str) -> list[int]:
    """The sorted indexes of the lines of `text` that a quote, marker or attribution check may hit.

    A search per character and per line holding it, instead of Python checks on every line: in
    most messages only a few lines hold a quote mark, a dash or a colon, and fewer start with
    one (a hyphenated word is no candidate). A line with a colon also makes the lines above it
    candidates, where an attribution wrapped over several lines would start. `str.find` per
    character, not one regex with a character class: the class is tested character by
    character, the plain search skips ahead many times faster.
    """
    has_colon: dict[int, bool] = {}  # line start offset -> whether the line holds a colon
    last = len(text) - 1
    for char in _SIGNIFICANT:
        colon = char in _COLONS
        position = text.find(char)
        while position >= 0:
            if (
                not colon
                and 0 < position < last
                and not text[position - 1].isspace()
                and not text[position + 1].isspace()
            ):
                # Inside a word (Buyer-Seller): neither the first nor the last character of its
                # line, so it cannot make the line a candidate; another one in the line may.
                position = text.find(char, position + 1)
                continue
            line_start = text.rfind("\n", 0, position) + 1
            line_end = text.find("\n", position)
            if colon:
                has_colon[line_start] = True
            elif line_start not in has_colon:
                stripped = text[line_start : line_end if line_end >= 0 else len(text)].strip()
                if stripped.startswith(_LINE_OPENERS) or stripped.endswith("-"):
                    has_colon[line_start] = False
            if line_end < 0:
                break
            position = text.find(char, line_end + 1)
    candidates: set[int] = set()
    line = 0
    counted_from = 0
    for line_start in sorted(has_colon):
        line += text.count("\n", counted_from, line_start)
        counted_from = line_start
        reach = _ATTRIBUTION_REACH if has_colon[line_start] else 0
        candidates.update(range(max(0, line - reach), line + 1))
    return sorted(candidates)


def _is_quote_line(stripped: str) -> bool:
    if not stripped.startswith(">"):
        return False
    return not (stripped.startswith(">>") and stripped.endswith("<<"))  # >>> SALE <<<


def _looks_like_marker(stripped: str) -> bool:
    """A forwarding marker is a short line of its own, not a sentence mentioning forwarding."""
    return len(stripped) < 90 and (
        stripped.startswith(("-", "_", "=", "*")) or stripped.rstrip().endswith((":", "-", "："))
    )


def _attribution_span(lines: list[str], index: int) -> int:
    """How many lines (1 to 3) the attribution starting at `index` spans; 0 if none does."""
    joined = lines[index].strip()
    if _attribution_guard(joined):
        return 1
    if not _ATTRIBUTION_OPENER.match(joined):
        return 0
    for extra in (1, 2):
        if index + extra >= len(lines) or not lines[index + extra].strip():
            return 0
        joined = f"{joined} {lines[index + extra].strip()}"
        if _attribution_guard(joined):
            return extra + 1
    return 0


def _attribution_guard(line: str) -> int:
    """The guard of the first attribution pattern `line` matches; 0 if it is no attribution."""
    if not line or len(line) > _MAX_ATTRIBUTION_CHARS:
        return 0
    if not line.rstrip().endswith((":", "：")):
        return 0  # every pattern ends with a colon: most lines are done here, without a regex
    for pattern, guard in _ATTRIBUTION_PATTERNS:
        if pattern.match(line):
            return guard
    return 0


def _cuts_below(attribution: str) -> bool:
    """Whether an attribution with no `>` lines after it marks the rest as the original."""
    guard = _attribution_guard(attribution)
    if guard == _NEEDS_ADDRESS:
        return "@" in attribution
    if guard == _NEEDS_DATE_OR_ADDRESS:
        return "@" in attribution or any(char.isdigit() for char in attribution)
    return guard == _NEEDS_NOTHING


def _next_nonblank(lines: list[str], start: int) -> int | None:
    for index in range(start, min(len(lines), start + 3)):
        if lines[index].strip():
            return index
    return None


def _label(line: str) -> str | None:
    """The header label of a line such as `*From:* Sam` or `送信日時: 2024/06/03`, if any."""
    if ":" not in line and "：" not in line:
        return None
    stripped = line.strip().lstrip("*").lstrip()
    for position, char in enumerate(stripped[:24]):
        if char in ":：":
            return stripped[:position].strip(" *\t").lower()
    return None


def _is_header_block(lines: list[str], index: int) -> bool:
    """An Outlook-style block: a From line followed by at least two more header lines."""
    if _label(lines[index]) not in _FROM_LABELS:
        return False
    headers = 0
    seen = 0
    for line in lines[index + 1 : index + 1 + 3 * _HEADER_LOOKAHEAD]:
        if not line.strip():
            continue
        seen += 1
        if _label(line) in _HEADER_LABELS:
            headers += 1
            if headers >= 2:
                return True
        if seen >= _HEADER_LOOKAHEAD:
            break
    return False
