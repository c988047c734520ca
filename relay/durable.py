"""Durable file writes, done the way the Maildir spec and Postfix do them.

A file is written and fsynced under a temporary name, renamed into place, and the folder is
fsynced, so that after a crash a name either holds the complete bytes or does not exist.
The quarantine store and the Maildir upstream both rely on it before they answer 250.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_synced(path: Path, data: bytes) -> None:
    """Create `path` (it must not exist yet) holding `data`, flushed to the disk."""
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries, so that a rename into it survives a crash."""
    folder = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def replace_durably(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically: a temporary file, fsync, rename, fsync folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write_synced(tmp, data)
        os.rename(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
