"""Every rule in every bundled pack matches its `match` examples and none of its `no_match`.

Parametrized per rule, so a failing example names its rule, and a pack anyone lands under
rules/ is checked without touching this file.
"""

from __future__ import annotations

import pytest

from relay.engine import Rule, RuleSet, load_bundled_rules

RULESET: RuleSet = load_bundled_rules()


def test_bundled_packs_are_not_empty() -> None:
    assert RULESET.rules
    assert RULESET.version.startswith("bundled@")
    assert any(rule.id.startswith("common.") for rule in RULESET.rules)


@pytest.mark.parametrize("rule", RULESET.rules, ids=lambda rule: rule.id)
def test_rule_examples(rule: Rule) -> None:
    failures = RULESET.check_examples([rule])
    assert not failures, "\n".join(str(f) for f in failures)
