"""The quarantine store: held messages in a Maildir, their metadata in sidecar JSON files.

`quarantine.path` is the Maildir itself (tmp/, new/, cur/), so any mail client can open it;
each message file holds the original bytes unchanged. What a release needs (envelope, client,
verdict, hits, state and history) lives in `.meta/ID.json`, outside the Maildir folders.

Durability follows the Maildir spec and Postfix: the message is written to tmp/ and fsynced,
its sidecar is written and fsynced (via a temporary name and a rename, then the folder is
fsynced), and only then is the message renamed into new/ and new/ fsynced. The relay replies
250 after that. When any step fails the pieces written so far are removed, nothing stays in
new/, and QuarantineError is raised (the client gets 451). A crash between the steps leaves at
most a file in tmp/ or a sidecar without a message; both are ignored by every reader.

The ID is the relay's queue id (the one in `250 2.0.0 queued as ID` and on the audit line);
file names are `TIME.M<usec>P<pid>Q<ID>.<hostname>`, unique across processes and restarts.
Blocking calls run in worker threads (`asyncio.to_thread`) when called from the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relay.audit import AuditLog
from relay.durable import fsync_dir, replace_durably, write_synced
from relay.errors import QuarantineError, UpstreamError
from relay.forwarder import Forwarder

META = ".meta"
STATE_HELD = "held"
STATE_RELEASED = "released"
STATE_DELETED = "deleted"
STATES = (STATE_HELD, STATE_RELEASED, STATE_DELETED)

EVENT_RELEASE = "quarantine.release"
EVENT_DELETE = "quarantine.delete"
EVENT_PURGE = "quarantine.purge"

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def utc_now() -> str:
    """Now as ISO-8601 UTC with a `Z`, the format of the audit log's `ts`."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """An ISO-8601 time as written by `utc_now` (or any offset-aware or naive-UTC form)."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


@dataclass(frozen=True)
class Held:
    """One quarantined message's sidecar: everything the CLI shows and a release needs."""

    meta: Mapping[str, Any]

    @property
    def id(self) -> str:
        return str(self.meta["id"])

    @property
    def state(self) -> str:
        return str(self.meta["state"])

    @property
    def file(self) -> str:
        return str(self.meta["file"])

    @property
    def received(self) -> datetime:
        return parse_time(str(self.meta["received"]))

    @property
    def mail_from(self) -> str:
        return str(self.meta["mail_from"])

    @property
    def rcpt_to(self) -> list[str]:
        return [str(r) for r in self.meta["rcpt_to"]]

    @property
    def categories(self) -> list[str]:
        return [str(c) for c in self.meta.get("categories", [])]

    def summary(self) -> dict[str, Any]:
        """The `quarantine list --json` object (CONTRACTS.md)."""
        return {
            "id": self.id,
            "received": self.meta["received"],
            "mail_from": self.mail_from,
            "rcpt_to": self.rcpt_to,
            "subject": self.meta.get("subject"),
            "categories": self.categories,
            "state": self.state,
        }


class QuarantineStore:
    """A quarantine Maildir at `path` plus its `.meta/` sidecars."""

    def __init__(self, path: Path, *, hostname: str | None = None) -> None:
        self.path = path
        host = hostname or socket.gethostname()
        self.hostname = host.replace("/", "-").replace(":", "-") or "localhost"

    # --- layout ---

    def ensure_folders(self) -> None:
        """Create tmp/, new/, cur/ and .meta/ when missing (OSError when that is impossible)."""
        for sub in ("tmp", "new", "cur", META):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    def _sidecar(self, message_id: str) -> Path:
        if not _ID.fullmatch(message_id):
            raise QuarantineError(f"not a quarantine id: {message_id!r}")
        return self.path / META / f"{message_id}.json"

    def file_name(self, message_id: str) -> str:
        now = time.time()
        return f"{int(now)}.M{int(now % 1 * 1_000_000)}P{os.getpid()}Q{message_id}.{self.hostname}"

    # --- holding a message (the relay) ---

    async def hold(self, message_id: str, data: bytes, meta: Mapping[str, Any]) -> Held:
        """Store `data` durably with `meta` under `message_id`, off the event loop."""
        return await asyncio.to_thread(self.hold_sync, message_id, data, meta)

    def hold_sync(self, message_id: str, data: bytes, meta: Mapping[str, Any]) -> Held:
        """Blocking form of `hold`: returns once message and sidecar are on disk."""
        sidecar = self._sidecar(message_id)
        name = self.file_name(message_id)
        tmp, final = self.path / "tmp" / name, self.path / "new" / name
        record = Held(
            {
                "id": message_id,
                "file": name,
                "received": utc_now(),
                **meta,
                "state": STATE_HELD,
                "history": [],
            }
        )
        moved = sidecar_written = False
        try:
            self.ensure_folders()
            if sidecar.exists():
                raise FileExistsError(errno.EEXIST, "quarantine id already taken", str(sidecar))
            write_synced(tmp, data)
            replace_durably(sidecar, _dump(record.meta))
            sidecar_written = True
            os.rename(tmp, final)
            moved = True
            fsync_dir(final.parent)
        except OSError as exc:
            # Leave nothing behind: the client will send the message again after our 451.
            leftovers = [tmp, *([final] if moved else []), *([sidecar] if sidecar_written else [])]
            for leftover in leftovers:
                with contextlib.suppress(OSError):
                    leftover.unlink(missing_ok=True)
            raise QuarantineError(f"cannot write to the quarantine: {_reason(exc)}") from exc
        return record

    # --- reading (the CLI) ---

    def get(self, message_id: str) -> Held:
        """The sidecar of `message_id`; QuarantineError when there is none."""
        sidecar = self._sidecar(message_id)
        try:
            return Held(json.loads(sidecar.read_bytes()))
        except FileNotFoundError:
            raise QuarantineError(f"no quarantined message with id {message_id}") from None
        except (OSError, ValueError) as exc:
            raise QuarantineError(f"cannot read {sidecar}: {exc}") from exc

    def entries(self) -> list[Held]:
        """Every message with a readable sidecar, oldest first.

        A held entry whose message file is missing (a crash between writing the sidecar and
        moving the message into new/) was never acknowledged to the client, so it is skipped.
        """
        folder = self.path / META
        try:
            names = sorted(p for p in folder.iterdir() if p.suffix == ".json")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise QuarantineError(f"cannot read {folder}: {_reason(exc)}") from exc
        found: list[Held] = []
        for sidecar in names:
            try:
                entry = Held(json.loads(sidecar.read_bytes()))
                entry.received  # noqa: B018 (validates the field)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if entry.state == STATE_HELD and self.message_path(entry) is None:
                continue
            found.append(entry)
        found.sort(key=lambda e: (e.received, e.id))
        return found

    def remove_leftovers(self, before: datetime) -> int:
        """Remove what interrupted writes left behind before `before`; return how many.

        Files in tmp/ and sidecars of held messages whose file never reached new/: neither was
        acknowledged to a client, so neither is mail anyone is waiting for.
        """
        cutoff = before.timestamp()
        removed = 0
        candidates: list[Path] = []
        with contextlib.suppress(FileNotFoundError):
            candidates += [p for p in (self.path / "tmp").iterdir() if p.is_file()]
        with contextlib.suppress(FileNotFoundError):
            candidates += [p for p in (self.path / META).iterdir() if p.name.endswith(".tmp")]
            for sidecar in (self.path / META).glob("*.json"):
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    entry = Held(json.loads(sidecar.read_bytes()))
                    if entry.state == STATE_HELD and self.message_path(entry) is None:
                        candidates.append(sidecar)
        for path in candidates:
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed

    def message_path(self, entry: Held) -> Path | None:
        """Where the message file is now: new/, or cur/ once a mail client (or release) saw it."""
        candidate = self.path / "new" / entry.file
        if candidate.exists():
            return candidate
        cur = self.path / "cur"
        for suffix in ("", ":2,S", ":2,"):
            if (cur / f"{entry.file}{suffix}").exists():
                return cur / f"{entry.file}{suffix}"
        with contextlib.suppress(OSError):
            for path in cur.iterdir():
                if path.name.split(":", 1)[0] == entry.file:
                    return path
        return None

    def read_message(self, entry: Held) -> bytes:
        path = self.message_path(entry)
        if path is None:
            raise QuarantineError(f"the message file of {entry.id} is gone")
        try:
            return path.read_bytes()
        except OSError as exc:
            raise QuarantineError(f"cannot read {path}: {_reason(exc)}") from exc

    # --- changing state (the CLI) ---

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise state changes between concurrent `quarantine` commands."""
        try:
            self.ensure_folders()
            handle = open(self.path / META / ".lock", "a+b")  # noqa: SIM115
        except OSError as exc:
            raise QuarantineError(f"cannot lock the quarantine: {_reason(exc)}") from exc
        with handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def record(self, entry: Held, state: str, event: Mapping[str, Any]) -> Held:
        """Write `entry` with a new state and `event` appended to its history, durably."""
        history = [*entry.meta.get("history", []), {"at": utc_now(), **event}]
        updated = Held({**entry.meta, "state": state, "history": history})
        try:
            replace_durably(self._sidecar(entry.id), _dump(updated.meta))
        except OSError as exc:
            raise QuarantineError(f"cannot update {entry.id}: {_reason(exc)}") from exc
        return updated

    def mark_seen(self, entry: Held) -> None:
        """Move a released message from new/ to cur/ flagged Seen, so mail clients show it read."""
        path = self.message_path(entry)
        if path is not None and path.parent.name == "new":
            with contextlib.suppress(OSError):
                os.rename(path, self.path / "cur" / f"{entry.file}:2,S")
                fsync_dir(self.path / "cur")

    def remove_message(self, entry: Held) -> None:
        path = self.message_path(entry)
        if path is None:
            return
        try:
            path.unlink()
            fsync_dir(path.parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise QuarantineError(f"cannot remove {path}: {_reason(exc)}") from exc

    def remove_sidecar(self, entry: Held) -> None:
        try:
            self._sidecar(entry.id).unlink(missing_ok=True)
        except OSError as exc:
            raise QuarantineError(f"cannot remove the metadata of {entry.id}: {exc}") from exc


def _dump(meta: Mapping[str, Any]) -> bytes:
    return (json.dumps(meta, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def select(
    entries: Sequence[Held],
    *,
    state: str | None = None,
    category: str | None = None,
    since: datetime | None = None,
) -> list[Held]:
    """Filter entries as `quarantine list` does."""
    return [
        entry
        for entry in entries
        if (state is None or entry.state == state)
        and (category is None or category in entry.categories)
        and (since is None or entry.received >= since)
    ]


# --- operator actions (the `quarantine` CLI) --------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a release, delete or purge did to one message."""

    entry: Held
    upstream_reply: str | None = None
    refused: Mapping[str, str] | None = None


def _audit_fields(entry: Held) -> dict[str, Any]:
    return {
        "id": entry.id,
        "mail_from": entry.mail_from,
        "rcpt_to": entry.rcpt_to,
        "subject": entry.meta.get("subject"),
        "categories": entry.categories,
        "received": entry.meta["received"],
    }


def _must_be_held(entry: Held, doing: str) -> None:
    if entry.state == STATE_HELD:
        return
    last = (entry.meta.get("history") or [{}])[-1]
    when = f" at {last['at']}" if "at" in last else ""
    who = f" by {last['operator']}" if "operator" in last else ""
    raise QuarantineError(f"cannot {doing} {entry.id}: it was already {entry.state}{when}{who}")


async def release(
    store: QuarantineStore,
    message_id: str,
    *,
    forwarder: Forwarder,
    audit: AuditLog,
    reason: str,
    operator: str,
) -> Outcome:
    """Send a held message on with its original bytes and envelope; mark it released.

    It counts as released only when the upstream accepted it. A second release, or one of a
    deleted message, is refused. Every attempt, failed or not, writes a `quarantine.release`
    audit line with the operator and the reason.
    """
    with store.locked():
        entry = store.get(message_id)
        fields = {**_audit_fields(entry), "operator": operator, "reason": reason}
        try:
            _must_be_held(entry, "release")
            data = store.read_message(entry)
            delivery = await forwarder.deliver(
                entry.mail_from, entry.rcpt_to, data, list(entry.meta.get("mail_options", []))
            )
        except UpstreamError as exc:
            upstream_reply = getattr(exc, "upstream_reply", None)
            audit.emit(
                EVENT_RELEASE,
                **fields,
                result="failed",
                error=f"{exc.code} {exc.text}",
                upstream_reply=upstream_reply,
            )
            raise
        except QuarantineError as exc:
            audit.emit(EVENT_RELEASE, **fields, result="refused", error=str(exc))
            raise
        updated = store.record(
            entry,
            STATE_RELEASED,
            {
                "action": "release",
                "operator": operator,
                "reason": reason,
                "upstream_reply": delivery.upstream_reply,
                "refused": dict(delivery.refused),
            },
        )
        store.mark_seen(updated)
        audit.emit(
            EVENT_RELEASE,
            **fields,
            result="released",
            upstream_reply=delivery.upstream_reply,
            refused=dict(delivery.refused),
        )
        return Outcome(updated, delivery.upstream_reply, dict(delivery.refused))


def delete(
    store: QuarantineStore, message_id: str, *, audit: AuditLog, reason: str, operator: str
) -> Outcome:
    """Discard a held message without sending it; its sidecar stays as the record."""
    with store.locked():
        entry = store.get(message_id)
        fields = {**_audit_fields(entry), "operator": operator, "reason": reason}
        try:
            _must_be_held(entry, "delete")
        except QuarantineError as exc:
            audit.emit(EVENT_DELETE, **fields, result="refused", error=str(exc))
            raise
        store.remove_message(entry)
        updated = store.record(
            entry, STATE_DELETED, {"action": "delete", "operator": operator, "reason": reason}
        )
        audit.emit(EVENT_DELETE, **fields, result="deleted")
        return Outcome(updated)


def purge(
    store: QuarantineStore, *, before: datetime, audit: AuditLog, operator: str, reason: str
) -> list[Outcome]:
    """Remove every message received before `before`, whatever its state, and its sidecar.

    For retention: one `quarantine.purge` audit line per message removed. Leftovers of
    interrupted writes older than `before` go too (see `remove_leftovers`).
    """
    removed: list[Outcome] = []
    with store.locked():
        for entry in store.entries():
            if entry.received >= before:
                continue
            store.remove_message(entry)
            store.remove_sidecar(entry)
            audit.emit(
                EVENT_PURGE,
                **_audit_fields(entry),
                state=entry.state,
                operator=operator,
                reason=reason,
                result="purged",
            )
            removed.append(Outcome(entry))
        store.remove_leftovers(before)
    return removed
