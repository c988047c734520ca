"""Policy: turns a verdict into what the relay does with the message.

Rules detect, policy acts. `decide` is pure so it unit-tests without a server. In monitor mode
every message is forwarded and `would_action` records what enforce mode would have done.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.config import PolicyConfig
from relay.model import Action, Verdict


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one message; `would_action` is set in monitor mode only."""

    action: Action
    would_action: Action | None = None


def enforce_action(verdict: Verdict, policy: PolicyConfig) -> Action:
    """The action enforce mode takes for `verdict`.

    For now every message is forwarded: the quarantine, reject and tag paths arrive with the
    actions issue, which maps `verdict.categories` through `policy.actions` here.
    """
    return Action.FORWARD


def decide(verdict: Verdict, policy: PolicyConfig) -> Decision:
    """The decision for `verdict` under `policy`, honouring monitor mode."""
    action = enforce_action(verdict, policy)
    if policy.mode == "monitor":
        return Decision(Action.FORWARD, would_action=action)
    return Decision(action)
