"""The audit log: the canonical message line, session events, and surviving logrotate."""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
from collections.abc import MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from relay import audit as audit_module
from relay.audit import AuditLog
from relay.handler import _plain_header_summary, header_summary, parsed_header_summary
from tests.conftest import StartRelay, WriteConfig
from tests.support import MESSAGE, VIOLATION, RunningRelay, Sink

MESSAGE_FIELDS = {
    "ts",
    "event",
    "session_id",
    "client",
    "auth_user",
    "mail_from",
    "rcpt_to",
    "message_id",
    "subject",
    "size",
    "verdict",
    "categories",
    "hits",
    "action",
    "would_action",
    "reply",
    "upstream_reply",
    "refused",
    "duration_ms",
    "rules_version",
}


def parse_ts(value: str) -> datetime:
    stamp = datetime.fromisoformat(value)
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    return stamp


async def test_message_line_carries_every_field(relay: RunningRelay, sink: Sink) -> None:
    before = datetime.now(UTC)
    reply = await relay.send(MESSAGE, mail_from="orders@shop.example", rcpt_tos=["a@b.example"])

    [line] = await relay.messages()

    assert set(line) >= MESSAGE_FIELDS
    assert list(line)[:2] == ["ts", "event"]
    assert before <= parse_ts(line["ts"]) <= datetime.now(UTC)
    assert line["event"] == "message"
    assert line["client"] == "127.0.0.1"
    assert line["auth_user"] is None
    assert line["mail_from"] == "orders@shop.example"
    assert line["rcpt_to"] == ["a@b.example"]
    assert line["message_id"] == "<order-1001@example.com>"
    assert line["subject"] == "Your order has shipped"
    assert line["size"] == len(MESSAGE)
    assert (line["verdict"], line["categories"], line["hits"]) == ("clean", [], [])
    assert (line["action"], line["would_action"]) == ("forward", None)
    assert line["reply"] == reply.line
    assert line["upstream_reply"] == "250 2.0.0 Ok: queued as SINK1"
    assert line["refused"] == {}
    assert isinstance(line["duration_ms"], int) and line["duration_ms"] >= 0
    [connect] = await relay.audit_events("session.connect")
    assert line["session_id"] == connect["session_id"]


async def test_message_line_carries_the_rule_engines_verdict(relay: RunningRelay) -> None:
    await relay.send(VIOLATION)

    [line] = await relay.messages()

    assert line["verdict"] == "violation"
    assert "incentivized-review" in line["categories"]
    assert line["categories"] == sorted(set(line["categories"]))
    assert line["hits"] and all(
        set(hit) == {"rule", "category", "severity", "part", "excerpt"} for hit in line["hits"]
    )
    assert any("5-star review" in hit["excerpt"] for hit in line["hits"])
    assert line["rules_version"].startswith("bundled@")


async def test_clean_message_names_the_rules_that_judged_it(relay: RunningRelay) -> None:
    await relay.send(MESSAGE)

    [line] = await relay.messages()

    assert (line["verdict"], line["hits"]) == ("clean", [])
    assert line["rules_version"].startswith("bundled@")


async def test_session_connect_and_disconnect_events(relay: RunningRelay) -> None:
    await relay.send()
    await relay.send()

    connects = await relay.audit_events("session.connect")
    disconnects = await relay.audit_events("session.disconnect")

    assert len(connects) == 2 and len(disconnects) == 2
    assert {c["session_id"] for c in connects} == {d["session_id"] for d in disconnects}
    assert all(d["messages"] == 1 for d in disconnects)
    assert all(c["client"] == "127.0.0.1" for c in connects)


async def test_subject_is_decoded_and_truncated(relay: RunningRelay) -> None:
    long_subject = "=?utf-8?q?Gr=C3=BC=C3=9Fe?= " + "word " * 100
    data = f"Subject: {long_subject}\r\nFrom: a@b.example\r\n\r\nbody\r\n".encode()

    await relay.send(data)

    [line] = await relay.messages()
    assert line["subject"].startswith("Grüße word word")
    assert len(line["subject"]) == 200
    assert line["message_id"] is None


async def test_monitor_mode_records_would_action(
    write_config: WriteConfig, start_relay: StartRelay, sink: Sink
) -> None:
    relay = await start_relay(write_config(upstream=sink.upstream(), policy={"mode": "monitor"}))

    await relay.send()

    [line] = await relay.messages()
    assert (line["action"], line["would_action"]) == ("forward", "forward")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"Subject: a\r\n b\r\nMessage-ID: <x@y>\r\n\r\nSubject: not me\r\n", ("<x@y>", "a b")),
        (b"Subject: headers only\r\n", (None, "headers only")),
        (b"Subject: bare LF\nMessage-Id: <q@r>\n\nbody\n", ("<q@r>", "bare LF")),
        (b"\r\nSubject: in the body\r\n", (None, None)),
        (b"", (None, None)),
        (b"Subject: =?utf-8?b?w7xiZXI=?=\r\n\r\n" + b"x" * 100_000, (None, "\u00fcber")),
    ],
    ids=["folded", "no-body", "bare-lf", "no-headers", "empty", "encoded-word"],
)
def test_header_summary_reads_only_the_header_block(
    data: bytes, expected: tuple[str | None, str | None]
) -> None:
    assert header_summary(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"From: a@b\r\nSubject: Re: Your order 114-1\r\nMessage-ID: <p.1@shop.example>\r\n\r\nx",
        b"Subject:\r\n  folded\r\n\tthree\r\nMessage-Id:  <a@b>  \r\n\r\n",
        b"SUBJECT: caf\xc3\xa9 \xff broken UTF-8\r\n\r\n",
        b"Subject: first\r\nSubject: second\r\n\r\n",
        b"X-Note: a\r\n continued\r\nnot a header\r\nSubject: in the body\r\n\r\n",
    ],
    ids=["plain", "folded", "raw-utf8", "repeated", "ends-early"],
)
def test_plain_headers_are_read_directly_with_the_parsers_values(data: bytes) -> None:
    assert _plain_header_summary(data) is not None
    assert header_summary(data) == parsed_header_summary(data)


@pytest.mark.parametrize(
    "data",
    [
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\n",
        b"Message-ID: <a@b> (comment)\r\n\r\n",
        b"Message-ID: not an id\r\n\r\n",
        b"From sender Fri Nov 27 2026\r\nSubject: mbox\r\n\r\n",
        b" continuation first\r\nSubject: x\r\n\r\n",
        b": no name\r\n continued\r\nSubject: x\r\n\r\n",
        b"Subject: bare\nLF\r\n\r\n",
    ],
    ids=[
        "encoded-word",
        "id-comment",
        "id-invalid",
        "unix-from",
        "lead-cont",
        "no-name",
        "bare-lf",
    ],
)
def test_other_headers_take_the_email_parser(data: bytes) -> None:
    assert _plain_header_summary(data) is None
    assert header_summary(data) == parsed_header_summary(data)


def test_header_summary_matches_the_email_parser_on_random_header_blocks() -> None:
    """Header blocks built from awkward pieces: the direct reading never differs."""
    rng = random.Random(2026)
    names = [b"Subject", b"SUBJECT", b"Message-ID", b"message-id", b"X-Foo", b"", b"Sub ject"]
    pieces = [
        *(b"hello", b" ", b"\t", b"=?utf-8?q?caf=C3=A9?=", b"=?", b"=", b"<", b">", b"@"),
        *(b".", b"..", b'"', b"(", b")", b"\\", b"\xc3\xa9", b"\xff", b"\x01", b"\x0b"),
        *(b"\x1c", b"\xc2\xa0", b"<abc@def.ghi>", b"<a.b@c>", b"[1.2.3.4]", b":", b"From "),
    ]

    def line() -> bytes:
        value = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        kind = rng.random()
        if kind < 0.12:
            return rng.choice([b" ", b"\t"]) + value
        if kind < 0.17:
            return rng.choice([b"", b"From "]) + value
        return rng.choice(names) + b":" + value

    fast = 0
    for _ in range(5000):
        lines = [line() for _ in range(rng.randint(0, 8))]
        ends = [rng.choice([b"\r\n"] * 20 + [b"\n", b"\r"]) for _ in lines]
        data = b"".join(a + b for a, b in zip(lines, ends, strict=True)) + b"\r\nSubject: body\r\n"
        fast += _plain_header_summary(data) is not None
        assert header_summary(data) == parsed_header_summary(data), data
    assert fast > 1000  # the comparison covered the direct reading, not only the fallback


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_file_target_survives_rotation_by_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_module, "INODE_CHECK_INTERVAL", 0.0)
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.emit("error", n=1)
    assert log.flush()
    path.rename(tmp_path / "audit.log.1")  # what logrotate does, without telling us

    log.emit("error", n=2)
    log.close()

    assert [line["n"] for line in read_lines(tmp_path / "audit.log.1")] == [1]
    assert [line["n"] for line in read_lines(path)] == [2]


def test_reopen_switches_to_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)  # the inode check waits a second: only reopen() can explain a switch
    log.emit("error", n=1)
    assert log.flush()
    path.rename(tmp_path / "audit.log.1")

    log.reopen()
    log.emit("error", n=2)
    log.close()

    assert [line["n"] for line in read_lines(path)] == [2]


def test_stdout_target_writes_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    log = AuditLog(None)
    log.emit("config.reload", file="x.yaml")
    log.close()

    [line] = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert (line["event"], line["file"]) == ("config.reload", "x.yaml")
    parse_ts(line["ts"])


def test_a_burst_of_lines_is_written_completely_and_in_order(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    for n in range(5000):
        log.emit("error", n=n)
    log.close()

    assert [line["n"] for line in read_lines(tmp_path / "audit.log")] == list(range(5000))


async def test_lines_queued_on_the_loop_go_together_in_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    try:
        for n in range(3):
            log.emit("error", n=n)
        # A thread's line while those still wait on the loop: after them.
        thread = threading.Thread(target=log.emit, args=("error",), kwargs={"n": 3})
        thread.start()
        thread.join()
        assert log.flush()  # hands over what waits, without the loop's help
        assert [line["n"] for line in read_lines(path)] == [0, 1, 2, 3]
        log.emit("error", n=4)
        log.emit("error", n=5)
        for _ in range(500):  # the loop hands them over by itself, no flush needed
            if len(read_lines(path)) == 6:
                break
            await asyncio.sleep(0.01)
        assert [line["n"] for line in read_lines(path)] == [0, 1, 2, 3, 4, 5]
        log.emit("error", n=6)
    finally:
        log.close()  # writes what the loop has not handed over yet
    assert [line["n"] for line in read_lines(path)] == list(range(7))


class Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


class Loggable:
    def __structlog__(self) -> str:
        return "as structlog shows it"


def test_lines_render_as_structlogs_timestamper_and_json_renderer_render_them() -> None:
    import structlog

    def reordered(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
        return {"ts": event_dict.pop("ts"), "event": event_dict.pop("event"), **event_dict}

    reference: list[Any] = [
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        reordered,
        structlog.processors.JSONRenderer(ensure_ascii=False),
    ]
    samples: list[dict[str, Any]] = [
        {"event": "message", "subject": 'Caf\u00e9 \u2605 "quoted" \\ \n', "size": 5, "x": None},
        {"event": "error", "hits": [{"rule": "a", "excerpt": "\u65e5\u672c"}], "ok": True},
        {"event": "e", "ts": "given", "n": 1.5, "o": Opaque(), "l": Loggable(), "t": (1, 2)},
        {"event": "session.connect"},
    ]
    stamp = re.compile(r'^\{"ts": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", ')
    for sample in samples:
        mine: Any = dict(sample)
        theirs: Any = dict(sample)
        for step in (audit_module._stamped, audit_module._rendered):
            mine = step(None, "msg", mine)
        for processor in reference:
            theirs = processor(None, "msg", theirs)
        assert stamp.match(mine) and stamp.match(theirs), mine
        assert stamp.sub("", mine) == stamp.sub("", theirs)
