"""Shared value types: what extraction produces, what rules find, what policy decides.

Every module that passes scan results around uses these, so they are small, frozen and free
of I/O. Category names are a contract (see ../shared/policy/CATEGORIES.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Category(enum.StrEnum):
    """The seven violation categories; their values appear verbatim in logs and CLI output."""

    POSITIVE_REVIEW_REQUEST = "positive-review-request"
    REVIEW_GATING = "review-gating"
    INCENTIVIZED_REVIEW = "incentivized-review"
    REVIEW_CHANGE_REMOVAL = "review-change-removal"
    REVIEW_INFLUENCE = "review-influence"
    HELPFULNESS_VOTES = "helpfulness-votes"
    OFF_PLATFORM_CONTACT = "off-platform-contact"


class Severity(enum.StrEnum):
    """How serious a rule's finding is; the policy may act on it."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class Action(enum.StrEnum):
    """What the relay does with a message."""

    FORWARD = "forward"
    QUARANTINE = "quarantine"
    REJECT = "reject"
    TAG = "tag"


@dataclass(frozen=True, slots=True)
class Part:
    """One piece of the seller's own text, with where it came from.

    `origin` names the source for the audit line: `subject`, `text`, `html`,
    `attachment:NAME`, or a nested form such as `message:1>text` (the first attached
    message). `text` is what a reader sees (HTML already rendered, quoted replies already
    removed), not yet normalized.
    """

    origin: str
    text: str


@dataclass(frozen=True, slots=True)
class ScanInput:
    """Everything the rule engine looks at for one message.

    `headers` holds the few decoded header values the audit line and CLI show (subject,
    message-id, from, to); `notes` records what extraction had to give up on (a part over the
    depth limit, an undecodable charset), for the audit line.
    """

    subject: str
    parts: tuple[Part, ...]
    message_id: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Hit:
    """One rule matching in one part; `excerpt` is a short slice of the original text."""

    rule: str
    category: Category
    severity: Severity
    part: str
    excerpt: str
    hint: str = ""
    description: str = ""

    def as_log(self) -> dict[str, str]:
        """Shape used on the audit line (the contract's five fields)."""
        return {
            "rule": self.rule,
            "category": self.category.value,
            "severity": self.severity.value,
            "part": self.part,
            "excerpt": self.excerpt,
        }

    def as_report(self) -> dict[str, str]:
        """Shape used by `scan --format json`: the audit fields plus the hint."""
        return {**self.as_log(), "hint": self.hint}


@dataclass(frozen=True, slots=True)
class Verdict:
    """The rule engine's answer for one message."""

    hits: tuple[Hit, ...] = ()
    rules_version: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def is_violation(self) -> bool:
        return bool(self.hits)

    @property
    def label(self) -> str:
        """`violation` or `clean`, as written in logs and CLI output."""
        return "violation" if self.hits else "clean"

    @property
    def categories(self) -> tuple[Category, ...]:
        """Sorted, unique categories of all hits."""
        return tuple(sorted({hit.category for hit in self.hits}, key=lambda c: c.value))


CLEAN = Verdict()
