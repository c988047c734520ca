"""An older commit's relay modules, importable next to the current ones for side-by-side timing.

`load_then(commit, names, into)` writes those modules of `commit` into a package `relay_then`
under `into` (their imports of each other point inside it; anything else they import is
today's `relay`) and imports them. Timing old and new code alternately in one process keeps
the machine's noise out of the comparison.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from tests.support import REPO


def load_then(commit: str, names: Sequence[str], into: Path) -> dict[str, ModuleType]:
    """Modules `names` of relay/ at `commit`, as `relay_then.<name>`, by name."""
    package = into / "relay_then"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in names:
        source = subprocess.run(
            ["git", "show", f"{commit}:relay/{name}.py"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for other in names:
            source = source.replace(f"from relay.{other} import", f"from relay_then.{other} import")
        (package / f"{name}.py").write_text(source)
    sys.path.insert(0, str(into))
    return {name: importlib.import_module(f"relay_then.{name}") for name in names}
