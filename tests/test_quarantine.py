"""Actions end to end through real SMTP: quarantine, reject, tag, monitor, and a failing disk."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from relay.quarantine import QuarantineStore
from relay.server import rules_scanner
from tests.conftest import StartRelay, WriteConfig
from tests.support import MESSAGE, VIOLATION, RunningRelay, Sink, make_message


def held_files(root: Path, sub: str = "new") -> list[Path]:
    return sorted((root / sub).iterdir()) if (root / sub).is_dir() else []


def sidecars(root: Path) -> list[dict[str, Any]]:
    folder = root / ".meta"
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


@pytest.fixture
def qdir(tmp_path: Path) -> Path:
    return tmp_path / "quarantine"


async def relay_with(
    write_config: WriteConfig, start_relay: StartRelay, sink: Sink, **policy: Any
) -> RunningRelay:
    return await start_relay(write_config(upstream=sink.upstream(), policy=policy))


async def test_violation_is_held_durably_with_its_metadata_and_audit_line(
    relay: RunningRelay, sink: Sink, qdir: Path
) -> None:
    reply = await relay.send(
        VIOLATION, mail_from="shop@example.com", rcpt_tos=["a@example.org", "b@example.org"]
    )

    assert reply.code == 250 and reply.text.startswith("2.0.0 queued as ")
    queue_id = reply.text.rsplit(" ", 1)[1]
    assert sink.messages == []
    [path] = held_files(qdir)
    assert path.read_bytes() == VIOLATION
    assert f"Q{queue_id}." in path.name
    assert held_files(qdir, "tmp") == []
    [meta] = sidecars(qdir)
    assert meta["id"] == queue_id and meta["file"] == path.name
    assert (meta["mail_from"], meta["rcpt_to"]) == (
        "shop@example.com",
        ["a@example.org", "b@example.org"],
    )
    assert meta["client"] == "127.0.0.1" and meta["auth_user"] is None
    assert meta["received"].endswith("Z") and meta["state"] == "held" and meta["history"] == []
    assert meta["verdict"] == "violation" and "incentivized-review" in meta["categories"]
    assert meta["rules_version"].startswith("bundled@")
    assert all(hit["hint"] and hit["description"] and hit["excerpt"] for hit in meta["hits"])
    assert meta["subject"] == "Thanks for your order"
    [line] = await relay.messages()
    assert line["action"] == "quarantine" and line["would_action"] is None
    assert line["queue_id"] == queue_id and line["reply"] == f"250 {reply.text}"
    assert line["upstream_reply"] is None


async def test_clean_mail_is_forwarded_and_nothing_is_held(
    relay: RunningRelay, sink: Sink, qdir: Path
) -> None:
    assert (await relay.send(MESSAGE)).code == 250

    assert [m.data for m in sink.messages] == [MESSAGE]
    assert held_files(qdir) == [] and sidecars(qdir) == []


async def test_reject_gives_550_with_category_reason_and_excerpt(
    write_config: WriteConfig, start_relay: StartRelay, sink: Sink, qdir: Path
) -> None:
    relay = await relay_with(
        write_config, start_relay, sink, actions={"incentivized-review": "reject"}
    )

    reply = await relay.send(VIOLATION)

    assert reply.code == 550
    assert reply.text.startswith("5.7.1 Rejected by policy (incentivized-review): ")
    assert "5-star review" in reply.text and "\n" not in reply.text
    assert sink.messages == [] and held_files(qdir) == []
    [line] = await relay.messages()
    assert line["action"] == "reject" and line["reply"] == f"550 {reply.text}"


async def test_tag_forwards_with_headers_prepended_and_original_bytes(
    write_config: WriteConfig, start_relay: StartRelay, sink: Sink, qdir: Path
) -> None:
    relay = await relay_with(write_config, start_relay, sink, default_action="tag")

    assert (await relay.send(VIOLATION)).code == 250

    [received] = sink.messages
    headers, original = received.data.split(b"\r\n", 3)[:3], received.data.split(b"\r\n", 3)[3]
    assert headers[0] == b"X-Outbox-Relay-Verdict: violation"
    assert headers[1].startswith(b"X-Outbox-Relay-Categories: ")
    assert b"incentivized-review" in headers[1]
    assert headers[2].startswith(b"X-Outbox-Relay-Rules-Version: bundled@")
    assert original == VIOLATION
    assert held_files(qdir) == []
    [line] = await relay.messages()
    assert line["action"] == "tag" and line["upstream_reply"].startswith("250")


async def test_monitor_mode_forwards_unchanged_and_logs_would_action(
    write_config: WriteConfig, start_relay: StartRelay, sink: Sink, qdir: Path
) -> None:
    relay = await relay_with(
        write_config, start_relay, sink, mode="monitor", default_action="reject"
    )

    assert (await relay.send(VIOLATION)).code == 250
    assert (await relay.send(MESSAGE)).code == 250

    assert [m.data for m in sink.messages] == [VIOLATION, MESSAGE]
    assert held_files(qdir) == []
    violation, clean = await relay.messages()
    assert (violation["action"], violation["would_action"]) == ("forward", "reject")
    assert (clean["action"], clean["would_action"]) == ("forward", "forward")


@pytest.mark.parametrize("failing", ["fsync", "rename"])
async def test_a_failing_quarantine_write_gives_451_and_leaves_nothing(
    relay: RunningRelay, sink: Sink, qdir: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, failing, disk_full)
    reply = await relay.send(VIOLATION)
    monkeypatch.undo()

    assert (reply.code, reply.text.split(" ", 1)[0]) == (451, "4.3.0")
    assert held_files(qdir) == [] and held_files(qdir, "tmp") == []
    assert sidecars(qdir) == [] and list((qdir / ".meta").iterdir()) == []
    assert sink.messages == []
    [line] = await relay.messages()
    assert line["action"] == "quarantine" and line["reply"].startswith("451 4.3.0")
    assert "No space left on device" in line["error"]
    # The disk is back: the client's retry is held as usual.
    assert (await relay.send(VIOLATION)).code == 250
    assert len(held_files(qdir)) == 1


async def test_a_failing_folder_fsync_after_the_move_leaves_nothing_in_new(
    relay: RunningRelay, qdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.path.samefile(f"/proc/self/fd/{fd}", qdir / "new"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    reply = await relay.send(VIOLATION)

    assert reply.code == 451
    assert held_files(qdir) == [] and held_files(qdir, "tmp") == [] and sidecars(qdir) == []


async def test_many_sessions_quarantining_at_once_give_unique_complete_files(
    relay: RunningRelay, qdir: Path
) -> None:
    bodies = [
        make_message(
            subject=f"Order {n}", body=f"Leave us a 5-star review and we will refund you. #{n}"
        )
        for n in range(24)
    ]

    replies = await asyncio.gather(*(relay.send(body) for body in bodies))

    assert [r.code for r in replies] == [250] * len(bodies)
    files = held_files(qdir)
    assert len(files) == len({p.name for p in files}) == len(bodies)
    assert sorted(p.read_bytes() for p in files) == sorted(bodies)
    metas = sidecars(qdir)
    ids = {r.text.rsplit(" ", 1)[1] for r in replies}
    assert {m["id"] for m in metas} == ids and len(ids) == len(bodies)
    assert {m["file"] for m in metas} == {p.name for p in files}


def test_store_names_are_unique_and_carry_pid_id_and_host(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path / "q", hostname="relay/a:b")
    names = {store.file_name(f"ID{n}") for n in range(200)}

    assert len(names) == 200
    name = store.file_name("ABC")
    assert f"P{os.getpid()}QABC.relay-a-b" in name and "/" not in name


async def test_reload_moves_the_quarantine_to_the_new_path(
    write_config: WriteConfig, start_relay: StartRelay, sink: Sink, tmp_path: Path
) -> None:
    relay = await start_relay(write_config(upstream=sink.upstream()))
    write_config(upstream=sink.upstream(), quarantine={"path": str(tmp_path / "elsewhere")})

    assert await relay.server.reload() is True
    assert (await relay.send(VIOLATION)).code == 250

    assert len(held_files(tmp_path / "elsewhere")) == 1
    assert held_files(tmp_path / "quarantine") == []


MILD_PACK = """\
language: en
rules:
  - id: test.mild-contact
    category: off-platform-contact
    severity: {severity}
    description: Points the buyer to a chat app.
    hint: Keep the conversation in Buyer-Seller Messaging.
    all: ["whatsapp"]
    examples:
      match: ["Write us on WhatsApp."]
      no_match: ["Thanks for your order."]
"""


@pytest.mark.parametrize(("severity", "expected"), [("medium", "quarantine"), ("high", "reject")])
async def test_reject_applies_only_to_hits_severe_enough(
    write_config: WriteConfig,
    start_relay: StartRelay,
    sink: Sink,
    tmp_path: Path,
    qdir: Path,
    severity: str,
    expected: str,
) -> None:
    pack = tmp_path / "pack.yaml"
    pack.write_text(MILD_PACK.format(severity=severity))
    relay = await start_relay(
        write_config(
            upstream=sink.upstream(),
            rules={"paths": [str(pack)]},
            policy={"default_action": "reject"},
        ),
        make_scanner=rules_scanner,
    )

    reply = await relay.send(make_message(body="Questions? Write us on WhatsApp."))

    [line] = await relay.messages()
    assert line["action"] == expected
    if expected == "reject":
        assert reply.line == (
            "550 5.7.1 Rejected by policy (off-platform-contact): "
            'Points the buyer to a chat app: "Questions? Write us on WhatsApp."'
        )
        assert held_files(qdir) == []
    else:
        assert reply.code == 250 and len(held_files(qdir)) == 1
    assert sink.messages == []
