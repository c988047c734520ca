"""Policy: verdict to action (pure), the reject reply and the tag headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import PolicyConfig, parse_config
from relay.errors import ConfigError
from relay.model import CLEAN, Action, Category, Hit, Severity, Verdict
from relay.policy import Decision, decide, reject_reply, tag_headers, tagged

INCENTIVE = Category.INCENTIVIZED_REVIEW
CONTACT = Category.OFF_PLATFORM_CONTACT


def hit(
    category: Category = INCENTIVE,
    severity: Severity = Severity.HIGH,
    excerpt: str = "leave us a 5-star review and we will refund you",
    description: str = "Offers a benefit for a review.",
) -> Hit:
    return Hit(
        rule=f"test.{category.value}.{severity.value}",
        category=category,
        severity=severity,
        part="text",
        excerpt=excerpt,
        hint="Ask for an honest review.",
        description=description,
    )


def verdict(*hits: Hit) -> Verdict:
    return Verdict(hits=hits, rules_version="test@0123456789ab")


def policy(**kwargs: object) -> PolicyConfig:
    return PolicyConfig(**kwargs)  # type: ignore[arg-type]


def test_clean_is_forwarded_and_a_violation_quarantined_by_default() -> None:
    assert decide(CLEAN, policy()) == Decision(Action.FORWARD)
    assert decide(verdict(hit()), policy()).action is Action.QUARANTINE


def test_per_category_actions_and_the_strictest_one_wins() -> None:
    actions = {INCENTIVE: Action.TAG, CONTACT: Action.FORWARD}
    both = verdict(hit(INCENTIVE), hit(CONTACT))

    assert decide(verdict(hit(CONTACT)), policy(actions=actions)).action is Action.FORWARD
    assert decide(both, policy(actions=actions)).action is Action.TAG
    assert decide(both, policy(actions={CONTACT: Action.REJECT})).action is Action.REJECT
    assert (
        decide(both, policy(default_action=Action.FORWARD, actions={CONTACT: Action.QUARANTINE}))
    ).action is Action.QUARANTINE


def test_reject_needs_a_severe_enough_hit_unless_configured_lower() -> None:
    mild = verdict(hit(CONTACT, Severity.MEDIUM))
    reject_all = policy(default_action=Action.REJECT)

    assert decide(mild, reject_all).action is Action.QUARANTINE
    lowered = policy(default_action=Action.REJECT, reject_min_severity=Severity.MEDIUM)
    assert decide(mild, lowered).action is Action.REJECT
    assert decide(verdict(hit(CONTACT, Severity.LOW)), lowered).action is Action.QUARANTINE


def test_reject_names_its_most_severe_hit() -> None:
    severe = hit(INCENTIVE, Severity.HIGH)
    decision = decide(
        verdict(hit(CONTACT, Severity.MEDIUM), severe),
        policy(default_action=Action.REJECT, reject_min_severity=Severity.LOW),
    )
    assert decision == Decision(Action.REJECT, reason=severe)


def test_monitor_mode_forwards_and_records_what_enforce_would_do() -> None:
    monitor = policy(mode="monitor", default_action=Action.REJECT)

    assert decide(verdict(hit()), monitor) == Decision(Action.FORWARD, would_action=Action.REJECT)
    assert decide(CLEAN, monitor) == Decision(Action.FORWARD, would_action=Action.FORWARD)


def test_reject_reply_is_one_ascii_line_with_category_description_and_excerpt() -> None:
    reply = reject_reply(hit())

    assert reply == (
        "550 5.7.1 Rejected by policy (incentivized-review): Offers a benefit for a review: "
        '"leave us a 5-star review and we will refund you"'
    )


def test_reject_reply_stays_short_single_line_and_ascii_for_any_text() -> None:
    nasty = hit(
        excerpt='Schöne Grüße\r\n★★★★★ レビューをお願いします "quoted" ' + "x" * 500,
        description="Line one.\nLine two " + "y" * 600,
    )
    reply = reject_reply(nasty)

    assert reply.startswith("550 5.7.1 Rejected by policy (incentivized-review): Line one")
    assert "\r" not in reply and "\n" not in reply
    assert reply.isascii() and reply.isprintable()
    assert len(reply) <= 450
    assert "\"Schone Grusse ***** ? 'quoted' xxx" in reply


def test_tag_prepends_three_headers_and_keeps_every_byte() -> None:
    data = b"Subject: hi\r\nFrom: a@example.com\r\n\r\nbody\r\n"
    both = verdict(hit(INCENTIVE), hit(CONTACT))

    out = tagged(data, both)

    assert out == (
        b"X-Outbox-Relay-Verdict: violation\r\n"
        b"X-Outbox-Relay-Categories: incentivized-review, off-platform-contact\r\n"
        b"X-Outbox-Relay-Rules-Version: test@0123456789ab\r\n" + data
    )


def test_tag_follows_a_bare_lf_message() -> None:
    data = b"Subject: hi\n\nbody\n"
    assert tagged(data, verdict(hit())) == tag_headers(verdict(hit()), b"\n") + data
    assert b"\r" not in tagged(data, verdict(hit()))


def test_config_reads_reject_min_severity_and_names_a_bad_one(tmp_path: Path) -> None:
    file = tmp_path / "relay.yaml"
    ok = parse_config("upstream: {maildir: out}\npolicy: {reject_min_severity: low}\n", file)
    assert ok.policy.reject_min_severity is Severity.LOW
    assert PolicyConfig().reject_min_severity is Severity.HIGH

    with pytest.raises(ConfigError) as caught:
        parse_config("upstream: {maildir: out}\npolicy:\n  reject_min_severity: severe\n", file)
    assert caught.value.key_path == "policy.reject_min_severity" and caught.value.line == 3
