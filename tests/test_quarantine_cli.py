"""`outbox-relay quarantine`: list, show, release, delete, purge with a real relay and sink."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from relay.cli import main
from tests.conftest import StartRelay, WriteConfig
from tests.support import VIOLATION, RunningRelay, Sink, make_message

REPO = Path(__file__).resolve().parent.parent
GATING = make_message(
    subject="How did we do?",
    body="If you are happy, please leave us a review. If not, contact us first so we can fix it.",
)


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def operator(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setenv("LOGNAME", "alice")
    return "alice"


@pytest.fixture
async def held(relay: RunningRelay, sink: Sink) -> tuple[RunningRelay, Sink, str]:
    reply = await relay.send(
        VIOLATION, mail_from="shop@example.com", rcpt_tos=["a@example.org", "b@example.org"]
    )
    assert reply.code == 250 and sink.messages == []
    return relay, sink, reply.text.rsplit(" ", 1)[1]


async def cli(capsys: pytest.CaptureFixture[str], relay: RunningRelay, *args: str) -> Run:
    """Run `outbox-relay quarantine ARGS --config FILE` in a thread (it runs its own loop)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["quarantine", *args, "--config", str(relay.config_path)])
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def quarantine_events(relay: RunningRelay, event: str) -> list[dict[str, Any]]:
    path = relay.server.config.audit.path
    assert path is not None
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line for line in lines if line["event"] == event]


async def test_release_delivers_the_original_bytes_and_envelope_once(
    held: tuple[RunningRelay, Sink, str], capsys: pytest.CaptureFixture[str]
) -> None:
    relay, sink, queue_id = held

    run = await cli(capsys, relay, "release", queue_id, "--reason", "reviewed: fine")

    assert run.code == 0, run.err
    assert f"released {queue_id}" in run.out
    [delivered] = sink.messages
    assert delivered.data == VIOLATION
    assert (delivered.mail_from, delivered.rcpt_tos) == (
        "shop@example.com",
        ["a@example.org", "b@example.org"],
    )
    listed = json.loads((await cli(capsys, relay, "list", "--json")).out)
    assert [(e["id"], e["state"]) for e in listed] == [(queue_id, "released")]
    qdir = relay.server.config.quarantine.path
    assert list((qdir / "new").iterdir()) == []
    [seen] = list((qdir / "cur").iterdir())
    assert seen.name.endswith(":2,S") and seen.read_bytes() == VIOLATION
    [event] = quarantine_events(relay, "quarantine.release")
    assert (event["id"], event["result"], event["operator"], event["reason"]) == (
        queue_id,
        "released",
        "alice",
        "reviewed: fine",
    )
    assert event["upstream_reply"].startswith("250") and event["refused"] == {}

    again = await cli(capsys, relay, "release", queue_id, "--reason", "oops")

    assert again.code == 65
    assert "already released" in again.err and "by alice" in again.err
    assert len(sink.messages) == 1
    refused = quarantine_events(relay, "quarantine.release")[-1]
    assert refused["result"] == "refused" and refused["reason"] == "oops"


async def test_release_while_the_upstream_is_down_fails_and_keeps_it_held(
    held: tuple[RunningRelay, Sink, str], capsys: pytest.CaptureFixture[str]
) -> None:
    relay, sink, queue_id = held
    await sink.stop()

    run = await cli(capsys, relay, "release", queue_id, "--reason", "approved")

    assert run.code == 75
    assert "stays held" in run.err and "451 4.4.1" in run.err
    [entry] = json.loads((await cli(capsys, relay, "list", "--json")).out)
    assert entry["state"] == "held"
    assert len(list((relay.server.config.quarantine.path / "new").iterdir())) == 1
    [event] = quarantine_events(relay, "quarantine.release")
    assert event["result"] == "failed" and event["error"].startswith("451 4.4.1")


async def test_release_refused_by_the_upstream_exits_69_and_keeps_it_held(
    held: tuple[RunningRelay, Sink, str], capsys: pytest.CaptureFixture[str]
) -> None:
    relay, sink, queue_id = held
    sink.handler.data_reply = "554 5.7.1 not today"

    run = await cli(capsys, relay, "release", queue_id, "--reason", "approved")

    assert run.code == 69 and "554 5.7.1 not today" in run.err
    assert json.loads((await cli(capsys, relay, "list", "--json")).out)[0]["state"] == "held"


async def test_list_json_has_the_contract_fields_and_filters(
    held: tuple[RunningRelay, Sink, str], capsys: pytest.CaptureFixture[str]
) -> None:
    relay, _sink, first = held
    second = (await relay.send(GATING)).text.rsplit(" ", 1)[1]

    everything = json.loads((await cli(capsys, relay, "list", "--json")).out)

    assert [e["id"] for e in everything] == [first, second]
    assert set(everything[0]) == {
        "id",
        "received",
        "mail_from",
        "rcpt_to",
        "subject",
        "categories",
        "state",
    }
    assert everything[0]["received"].endswith("Z")
    assert datetime.fromisoformat(everything[0]["received"]) <= datetime.now(UTC)
    assert everything[0]["rcpt_to"] == ["a@example.org", "b@example.org"]
    assert everything[1]["subject"] == "How did we do?"
    assert "review-gating" in everything[1]["categories"]

    async def ids(*filters: str) -> list[str]:
        run = await cli(capsys, relay, "list", "--json", *filters)
        assert run.code == 0, run.err
        return [e["id"] for e in json.loads(run.out)]

    assert await ids("--category", "review-gating") == [second]
    assert await ids("--category", "incentivized-review") == [first]
    assert await ids("--state", "released") == []
    assert await ids("--state", "held") == [first, second]
    assert await ids("--since", "1h") == [first, second]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert await ids("--since", tomorrow) == []

    table = await cli(capsys, relay, "list")
    assert table.code == 0
    header, *rows, total = table.out.splitlines()
    assert header.split()[:4] == ["ID", "RECEIVED", "(UTC)", "STATE"]
    assert rows[0].startswith(first) and "Thanks for your order" in rows[0]
    assert total == "2 messages"


async def test_show_explains_why_with_hits_hints_headers_and_text(
    held: tuple[RunningRelay, Sink, str], capsys: pytest.CaptureFixture[str]
) -> None:
    relay, _sink, queue_id = held

    run = await cli(capsys, relay, "show", queue_id)

    assert run.code == 0, run.err
    assert f"ID:          {queue_id}" in run.out
    assert "MAIL FROM:   <shop@example.com>" in run.out
    assert "RCPT TO:     <b@example.org>" in run.out
    assert "incentivized-review" in run.out
    assert "seller wrote: Please leave us a 5-star review" in run.out
    assert "instead:" in run.out and "Subject: Thanks for your order" in run.out
    assert "Text (text):\n  Please leave us a 5-star review and we will refund" in run.out

    missing = await cli(capsys, relay, "show", "NOSUCHID")
    assert missing.code == 65 and "no quarantined message with id NOSUCHID" in missing.err
    traversal = await cli(capsys, relay, "show", "../../etc/passwd")
    assert traversal.code == 65 and "not a quarantine id" in traversal.err


async def test_delete_discards_without_sending_and_blocks_a_release(
    held: tuple[RunningRelay, Sink, str], capsys: pytest.CaptureFixture[str]
) -> None:
    relay, sink, queue_id = held

    run = await cli(capsys, relay, "delete", queue_id, "--reason", "asks for 5 stars")

    assert run.code == 0, run.err
    qdir = relay.server.config.quarantine.path
    assert list((qdir / "new").iterdir()) == [] and list((qdir / "cur").iterdir()) == []
    [entry] = json.loads((await cli(capsys, relay, "list", "--json")).out)
    assert entry["state"] == "deleted"
    [event] = quarantine_events(relay, "quarantine.delete")
    assert (event["result"], event["operator"], event["reason"]) == (
        "deleted",
        "alice",
        "asks for 5 stars",
    )
    shown = await cli(capsys, relay, "show", queue_id)
    assert "delete by alice: asks for 5 stars" in shown.out

    release = await cli(capsys, relay, "release", queue_id, "--reason", "changed my mind")
    assert release.code == 65 and "already deleted" in release.err
    assert sink.messages == []


async def test_purge_removes_only_old_messages_and_logs_each(
    held: tuple[RunningRelay, Sink, str], capsys: pytest.CaptureFixture[str]
) -> None:
    relay, _sink, old = held
    recent = (await relay.send(GATING)).text.rsplit(" ", 1)[1]
    qdir = relay.server.config.quarantine.path
    sidecar = qdir / ".meta" / f"{old}.json"
    meta = json.loads(sidecar.read_text())
    meta["received"] = "2026-01-01T00:00:00.000000Z"
    sidecar.write_text(json.dumps(meta))

    # Leftovers of a write interrupted long ago: a file in tmp/, a sidecar without message.
    stale = [qdir / "tmp" / "1.M1P1QGONE.host", qdir / ".meta" / "GONE.json"]
    stale[0].write_bytes(b"half a mess")
    stale[1].write_text(json.dumps({**meta, "id": "GONE", "file": "1.M1P1QGONE.host"}))
    for path in stale:
        os.utime(path, (1_700_000_000, 1_700_000_000))

    run = await cli(capsys, relay, "purge", "--older-than", "30d")

    assert (run.code, run.out.strip()) == (0, "purged 1 message")
    assert [e["id"] for e in json.loads((await cli(capsys, relay, "list", "--json")).out)] == [
        recent
    ]
    assert not sidecar.exists() and len(list((qdir / "new").iterdir())) == 1
    assert not any(path.exists() for path in stale)
    assert len(list((qdir / ".meta").glob("*.json"))) == 1
    [event] = quarantine_events(relay, "quarantine.purge")
    assert (event["id"], event["state"], event["reason"]) == (
        old,
        "held",
        "retention: older than 30d",
    )
    with pytest.raises(SystemExit) as usage:
        await cli(capsys, relay, "purge", "--older-than", "a month")
    assert usage.value.code == 2


def test_every_subcommand_takes_config_after_it_as_a_real_command(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    config = write_config(upstream={"maildir": str(tmp_path / "out")})
    for args in (["list"], ["list", "--json"], ["show", "X"], ["purge", "--older-than", "1d"]):
        result = subprocess.run(
            [sys.executable, "-m", "relay", "quarantine", *args, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert result.returncode == (65 if args[0] == "show" else 0), result.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "relay", "quarantine", "list", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert json.loads(listed.stdout) == []


async def test_release_into_a_maildir_upstream(
    write_config: WriteConfig,
    start_relay: StartRelay,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    relay = await start_relay(write_config(upstream={"maildir": str(tmp_path / "out")}))
    queue_id = (await relay.send(VIOLATION)).text.rsplit(" ", 1)[1]
    assert list((tmp_path / "out" / "new").iterdir()) == []

    run = await cli(capsys, relay, "release", queue_id, "--reason", "ok")

    assert run.code == 0, run.err
    [delivered] = list((tmp_path / "out" / "new").iterdir())
    assert delivered.read_bytes() == VIOLATION
