"""Policy: turns a verdict into what the relay does with the message.

Rules detect, policy acts. Everything here is pure, so it unit-tests without a server.

- Each category of the verdict maps to an action: `policy.actions[category]`, else
  `policy.default_action`. When a message has several categories the strictest action wins:
  reject > quarantine > tag > forward.
- A category is rejected only when at least one of its hits is at least
  `policy.reject_min_severity` (default `high`); milder hits are quarantined instead, so a
  low-confidence finding never bounces mail back to its author unless the operator asks for it.
- In monitor mode every message is forwarded unchanged and `would_action` records what enforce
  mode would have done.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from relay.config import PolicyConfig
from relay.model import Action, Category, Hit, Severity, Verdict

# Strictest last: the action of a message is the max over its categories.
STRICTNESS = (Action.FORWARD, Action.TAG, Action.QUARANTINE, Action.REJECT)
SEVERITY_ORDER = (Severity.LOW, Severity.MEDIUM, Severity.HIGH)

HEADER_VERDICT = "X-Outbox-Relay-Verdict"
HEADER_CATEGORIES = "X-Outbox-Relay-Categories"
HEADER_RULES_VERSION = "X-Outbox-Relay-Rules-Version"

MAX_EXCERPT = 80
MAX_REPLY = 450  # RFC 5321 allows 512 octets per reply line, code and CRLF included


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one message; `would_action` is set in monitor mode only.

    `reason` is the hit that decided a reject (it goes into the 550 reply), else None.
    """

    action: Action
    would_action: Action | None = None
    reason: Hit | None = None


def _at_least(severity: Severity, minimum: Severity) -> bool:
    return SEVERITY_ORDER.index(severity) >= SEVERITY_ORDER.index(minimum)


def category_action(category: Category, hits: list[Hit], policy: PolicyConfig) -> Action:
    """The configured action for one category, with rejects limited to severe enough hits."""
    action = policy.actions.get(category, policy.default_action)
    if action is Action.REJECT and not any(
        _at_least(hit.severity, policy.reject_min_severity) for hit in hits
    ):
        return Action.QUARANTINE
    return action


def enforce_decision(verdict: Verdict, policy: PolicyConfig) -> Decision:
    """What enforce mode does with `verdict`: the strictest action over its categories."""
    if not verdict.is_violation:
        return Decision(Action.FORWARD)
    by_category: dict[Category, list[Hit]] = {}
    for hit in verdict.hits:
        by_category.setdefault(hit.category, []).append(hit)
    actions = {cat: category_action(cat, hits, policy) for cat, hits in by_category.items()}
    action = max(actions.values(), key=STRICTNESS.index)
    if action is not Action.REJECT:
        return Decision(action)
    # Explain the reject with its most severe hit among the rejected categories.
    candidates = [
        hit
        for cat, hits in by_category.items()
        if actions[cat] is Action.REJECT
        for hit in hits
        if _at_least(hit.severity, policy.reject_min_severity)
    ]
    reason = max(candidates, key=lambda hit: SEVERITY_ORDER.index(hit.severity))
    return Decision(action, reason=reason)


def enforce_action(verdict: Verdict, policy: PolicyConfig) -> Action:
    """The action enforce mode takes for `verdict`."""
    return enforce_decision(verdict, policy).action


def decide(verdict: Verdict, policy: PolicyConfig) -> Decision:
    """The decision for `verdict` under `policy`, honouring monitor mode."""
    decision = enforce_decision(verdict, policy)
    if policy.mode == "monitor":
        return Decision(Action.FORWARD, would_action=decision.action)
    return decision


# --- reject -------------------------------------------------------------------------------------


_ASCII_FOLD = str.maketrans(
    {"ß": "ss", "★": "*", "☆": "*", "⭐": "*", "‘": "'", "’": "'", "“": '"', "”": '"', "–": "-"}
)
_NOT_ASCII_RUN = re.compile(r"[^ -~]+")


def _ascii_line(text: str) -> str:
    """One line of printable ASCII: SMTP replies without SMTPUTF8 carry nothing else.

    Accents are dropped (é -> e); each run of characters with no ASCII form becomes one `?`.
    """
    folded = unicodedata.normalize("NFKD", " ".join(text.split()).translate(_ASCII_FOLD))
    kept = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return _NOT_ASCII_RUN.sub("?", kept)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def reject_reply(hit: Hit) -> str:
    """`550 5.7.1` with the category, the rule's description and a short excerpt, one line.

    The sending application shows this text to the author, so it says what to fix. Non-ASCII
    letters are folded (é -> e, ★ -> *); text with no ASCII form shows as `?` (the audit line
    keeps the exact excerpt).
    """
    description = _ascii_line(hit.description or hit.rule).rstrip(".")
    excerpt = _short(_ascii_line(hit.excerpt).replace('"', "'"), MAX_EXCERPT)
    reply = f'550 5.7.1 Rejected by policy ({hit.category.value}): {description}: "{excerpt}"'
    if len(reply) > MAX_REPLY:
        room = MAX_REPLY - len(reply) + len(description)
        reply = (
            f"550 5.7.1 Rejected by policy ({hit.category.value}): "
            f'{_short(description, max(room, 20))}: "{excerpt}"'
        )
    return reply[:MAX_REPLY]


# --- tag ----------------------------------------------------------------------------------------


def tag_headers(verdict: Verdict, newline: bytes = b"\r\n") -> bytes:
    """The X-Outbox-Relay-* header lines that `tag` prepends, in the message's line ending."""
    fields = (
        (HEADER_VERDICT, verdict.label),
        (HEADER_CATEGORIES, ", ".join(c.value for c in verdict.categories)),
        (HEADER_RULES_VERSION, verdict.rules_version or "none"),
    )
    return b"".join(
        f"{name}: {_ascii_line(value)}".encode("ascii") + newline for name, value in fields
    )


def tagged(data: bytes, verdict: Verdict) -> bytes:
    """`data` with the tag headers prepended; every original byte follows unchanged."""
    first_line_end = data.find(b"\n")
    crlf = first_line_end <= 0 or data[first_line_end - 1 : first_line_end] == b"\r"
    return tag_headers(verdict, b"\r\n" if crlf else b"\n") + data
