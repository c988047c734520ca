"""Scan cost: extraction + normalization + matching per message, and rule-pack load time.

Runs in the benchmark process on the pure, synchronous core (no SMTP), on messages of the
benchmark mix's shapes: a 2 KB plain message, a 50 KB text+html one, a 1 MB one with an
attachment.
"""

from __future__ import annotations

import importlib.util


def scan_rows(quick: bool) -> str:
    """The scan-cost table, or a visible SKIPPED line while the engine is not on main."""
    missing = [m for m in ("relay.extract", "relay.engine") if importlib.util.find_spec(m) is None]
    if missing:
        return f"Scan cost: SKIPPED: TODO(issue 6): {', '.join(missing)} not on main yet"
    return "Scan cost: TODO(issue 6): wire relay.extract.extract + relay.engine once landed"
