"""The forward path end to end: client -> relay -> real aiosmtpd sink, and every failure reply."""

from __future__ import annotations

import pytest

from relay.config import Config
from relay.handler import ScanFn
from tests.conftest import StartRelay, WriteConfig
from tests.support import (
    MESSAGE,
    RunningRelay,
    ScriptedServer,
    SilentServer,
    Sink,
    make_message,
    unused_port,
)


async def test_message_arrives_byte_identical_with_its_envelope(
    relay: RunningRelay, sink: Sink
) -> None:
    reply = await relay.send(MESSAGE, mail_from="orders@shop.example", rcpt_tos=["sam@b.example"])

    assert reply.code == 250
    assert reply.text.startswith("2.0.0 queued as ")
    assert len(sink.messages) == 1
    got = sink.messages[0]
    assert got.mail_from == "orders@shop.example"
    assert got.rcpt_tos == ["sam@b.example"]
    assert got.data == MESSAGE


async def test_null_sender_is_forwarded_as_null_sender(relay: RunningRelay, sink: Sink) -> None:
    reply = await relay.send(MESSAGE, mail_from="")

    assert reply.code == 250
    assert [(m.mail_from, m.data) for m in sink.messages] == [("<>", MESSAGE)]
    [line] = await relay.messages()
    assert line["mail_from"] == "<>"


async def test_body_8bitmime_is_passed_on_to_an_upstream_that_offers_it(
    relay: RunningRelay, sink: Sink
) -> None:
    import aiosmtplib

    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False) as client:
        await client.sendmail(
            "shop@example.com", ["a@b.example"], MESSAGE, mail_options=["BODY=8BITMIME"]
        )

    [got] = sink.messages
    assert "BODY=8BITMIME" in got.mail_options
    assert got.data == MESSAGE


async def test_every_recipient_is_forwarded_in_one_transaction(
    relay: RunningRelay, sink: Sink
) -> None:
    rcpts = ["a@b.example", "c@d.example", "e@f.example", "a+tag@b.example"]

    reply = await relay.send(MESSAGE, rcpt_tos=rcpts)

    assert reply.code == 250
    assert [m.rcpt_tos for m in sink.messages] == [rcpts]


async def test_several_messages_in_one_session_each_get_forwarded(
    relay: RunningRelay, sink: Sink
) -> None:
    import aiosmtplib

    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False) as client:
        for n in range(3):
            await client.sendmail("shop@example.com", [f"b{n}@x.example"], make_message(str(n)))

    assert [m.rcpt_tos for m in sink.messages] == [[f"b{n}@x.example"] for n in range(3)]
    assert [m.data for m in sink.messages] == [make_message(str(n)) for n in range(3)]


async def test_upstream_down_gives_451_441_and_nothing_delivered(
    write_config: WriteConfig, start_relay: StartRelay, sink: Sink
) -> None:
    relay = await start_relay(write_config(upstream=sink.upstream(port=unused_port())))

    reply = await relay.send()

    assert (reply.code, reply.text) == (451, "4.4.1 upstream unreachable")
    assert sink.messages == []
    [line] = await relay.messages()
    assert line["reply"] == "451 4.4.1 upstream unreachable"
    assert line["upstream_reply"] is None


async def test_upstream_that_stopped_gives_451(relay: RunningRelay, sink: Sink) -> None:
    await sink.stop()

    reply = await relay.send()

    assert reply.code == 451
    assert sink.messages == []


async def test_upstream_timeout_gives_451_441(
    write_config: WriteConfig, start_relay: StartRelay
) -> None:
    silent = await SilentServer().start()
    try:
        relay = await start_relay(
            write_config(
                upstream={"host": "127.0.0.1", "port": silent.port, "tls": "none", "timeout": 0.3}
            )
        )
        reply = await relay.send()
    finally:
        await silent.stop()

    assert (reply.code, reply.text) == (451, "4.4.1 upstream timed out")


@pytest.mark.parametrize(
    ("greeting", "replies", "expected"),
    [
        pytest.param(
            "554 5.3.2 no service here",
            [],
            "451 4.3.0 upstream refused the connection: 554 5.3.2 no service here",
            id="554-greeting",
        ),
        pytest.param(
            "220 hi", ["250 hi"], "451 4.4.1 upstream connection lost", id="drop-after-ehlo"
        ),
        pytest.param(
            "220 hi",
            ["250 hi", "250 ok", "250 ok"],
            "451 4.4.1 upstream connection lost",
            id="drop-before-data",
        ),
        pytest.param(
            "220 hi",
            ["250 hi", "250 ok", "250 ok", "354 go"],
            "451 4.4.1 upstream connection lost",
            id="drop-during-data",
        ),
        pytest.param(
            "220 hi",
            ["250 hi", "250 ok", "250 ok", "299 what"],
            "451 4.3.0",
            id="odd-reply-to-data",
        ),
    ],
)
async def test_misbehaving_upstream_gives_451(
    write_config: WriteConfig,
    start_relay: StartRelay,
    greeting: str,
    replies: list[str],
    expected: str,
) -> None:
    upstream = await ScriptedServer(greeting, replies).start()
    try:
        relay = await start_relay(
            write_config(upstream={"host": "127.0.0.1", "port": upstream.port, "tls": "none"})
        )
        reply = await relay.send()
    finally:
        await upstream.stop()

    assert reply.line.startswith(expected)


async def test_starttls_required_but_not_offered_gives_451_and_sends_nothing(
    write_config: WriteConfig, start_relay: StartRelay, sink: Sink
) -> None:
    relay = await start_relay(write_config(upstream=sink.upstream(tls="starttls")))

    reply = await relay.send()

    assert reply.line == "451 4.3.0 upstream session setup failed"
    assert sink.messages == []  # never falls back to sending in the clear


@pytest.mark.parametrize(
    ("stage", "upstream_reply"),
    [
        ("mail_reply", "421 4.7.0 try again later"),
        ("mail_reply", "451 4.3.2 system not accepting network messages"),
        ("data_reply", "452 4.3.1 insufficient system storage"),
    ],
)
async def test_upstream_4xx_gives_451_430_with_the_reason(
    relay: RunningRelay, sink: Sink, stage: str, upstream_reply: str
) -> None:
    setattr(sink.handler, stage, upstream_reply)

    reply = await relay.send()

    assert reply.code == 451
    assert reply.text.startswith("4.3.0 upstream deferred: ")
    assert upstream_reply in reply.text
    assert sink.messages == []
    [line] = await relay.messages()
    assert line["upstream_reply"] == upstream_reply


@pytest.mark.parametrize(
    ("stage", "upstream_reply"),
    [
        ("data_reply", "554 5.7.1 Message rejected as spam"),
        ("data_reply", "552 5.3.4 Message too big for system"),
        ("mail_reply", "553 5.7.1 Sender address not allowed"),
        ("mail_reply", "550 5.7.0 sender blocked"),
    ],
)
async def test_upstream_5xx_is_passed_back_with_its_own_code(
    relay: RunningRelay, sink: Sink, stage: str, upstream_reply: str
) -> None:
    setattr(sink.handler, stage, upstream_reply)

    reply = await relay.send()

    assert reply.line == upstream_reply
    assert sink.messages == []
    [line] = await relay.messages()
    assert line["reply"] == upstream_reply
    assert line["upstream_reply"] == upstream_reply


async def test_partial_refusal_gives_250_and_names_each_refused_recipient(
    relay: RunningRelay, sink: Sink
) -> None:
    sink.handler.rcpt_replies = {
        "gone@b.example": "550 5.1.1 no such user",
        "full@b.example": "452 4.2.2 mailbox full",
    }
    rcpts = ["ok@b.example", "gone@b.example", "full@b.example", "ok2@b.example"]

    reply = await relay.send(rcpt_tos=rcpts)

    assert reply.code == 250
    assert [m.rcpt_tos for m in sink.messages] == [["ok@b.example", "ok2@b.example"]]
    [line] = await relay.messages()
    assert line["refused"] == {
        "gone@b.example": "550 5.1.1 no such user",
        "full@b.example": "452 4.2.2 mailbox full",
    }
    assert line["reply"].startswith("250 2.0.0 queued as ")
    assert line["upstream_reply"] == "250 2.0.0 Ok: queued as SINK1"


async def test_every_recipient_refused_5xx_passes_the_refusal_back(
    relay: RunningRelay, sink: Sink
) -> None:
    sink.handler.rcpt_replies = {
        "a@b.example": "550 5.1.1 no such user",
        "c@b.example": "551 5.1.6 user has moved",
    }

    reply = await relay.send(rcpt_tos=["a@b.example", "c@b.example"])

    assert reply.line == "550 5.1.1 no such user"
    assert sink.messages == []
    [line] = await relay.messages()
    assert set(line["refused"]) == {"a@b.example", "c@b.example"}


async def test_every_recipient_refused_with_some_4xx_asks_to_retry(
    relay: RunningRelay, sink: Sink
) -> None:
    sink.handler.rcpt_replies = {
        "a@b.example": "550 5.1.1 no such user",
        "c@b.example": "450 4.2.1 mailbox busy",
    }

    reply = await relay.send(rcpt_tos=["a@b.example", "c@b.example"])

    assert reply.code == 451
    assert "450 4.2.1 mailbox busy" in reply.text
    assert sink.messages == []


async def test_multiline_upstream_reply_reaches_the_client_as_one_line(
    relay: RunningRelay, sink: Sink
) -> None:
    sink.handler.data_reply = "554-5.7.1 rejected\r\n554 5.7.1 see https://help.example"

    reply = await relay.send()

    assert reply.code == 554
    assert "\n" not in reply.text and "\r" not in reply.text
    assert reply.text.startswith("5.7.1 rejected")


async def test_unexpected_error_gives_451_430_and_an_error_event(
    write_config: WriteConfig, start_relay: StartRelay, sink: Sink
) -> None:
    def broken_scanner(config: Config) -> ScanFn:
        def scan(data: bytes) -> object:
            raise RuntimeError("scanner exploded")

        return scan  # type: ignore[return-value]

    relay = await start_relay(write_config(upstream=sink.upstream()), make_scanner=broken_scanner)

    reply = await relay.send()

    assert reply.code == 451
    assert reply.text.startswith("4.3.0 ")
    assert sink.messages == []  # fail closed: never forwarded unscanned
    [error] = await relay.audit_events("error")
    assert error["error"] == "RuntimeError: scanner exploded"
    [line] = await relay.messages()
    assert line["reply"] == reply.line


async def test_error_in_any_command_gives_451_430_never_500(
    relay: RunningRelay, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object) -> str:
        raise KeyError("boom")

    monkeypatch.setattr(relay.server.handler, "handle_RCPT", broken)

    reply = await relay.send()

    assert (reply.code, reply.text[:5]) == (451, "4.3.0")
    assert sink.messages == []
    [error] = await relay.audit_events("error")
    assert error["error"] == "KeyError: 'boom'"


async def test_too_many_recipients_get_452_453_and_the_rest_is_delivered(
    write_config: WriteConfig, start_relay: StartRelay, sink: Sink
) -> None:
    import aiosmtplib

    relay = await start_relay(write_config(upstream=sink.upstream(), limits={"max_recipients": 2}))
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False) as client:
        await client.mail("shop@example.com")
        await client.rcpt("a@b.example")
        await client.rcpt("c@b.example")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt("e@b.example")
        response = await client.data(MESSAGE)

    assert (refused.value.code, refused.value.message[:5]) == (452, "4.5.3")
    assert response.code == 250
    assert [m.rcpt_tos for m in sink.messages] == [["a@b.example", "c@b.example"]]


async def test_oversized_message_gets_552_534_and_is_not_forwarded(
    write_config: WriteConfig, start_relay: StartRelay, sink: Sink
) -> None:
    relay = await start_relay(
        write_config(upstream=sink.upstream(), limits={"max_message_size": 2000})
    )

    reply = await relay.send(make_message(body=("y" * 70 + "\r\n") * 40))

    assert (reply.code, reply.text[:5]) == (552, "5.3.4")
    assert sink.messages == []


async def test_maildir_write_failure_gives_451_and_leaves_nothing(
    write_config: WriteConfig, start_relay: StartRelay, tmp_path: object
) -> None:
    from pathlib import Path

    outbox = Path(str(tmp_path)) / "outbox"
    relay = await start_relay(write_config(upstream={"maildir": str(outbox)}))
    (outbox / "tmp").rmdir()
    (outbox / "tmp").write_text("not a folder")  # every write into tmp/ now fails

    reply = await relay.send()

    assert reply.code == 451
    assert reply.text.startswith("4.3.0 cannot write to the Maildir")
    assert list((outbox / "new").iterdir()) == []


async def test_maildir_upstream_stores_the_exact_bytes(
    write_config: WriteConfig, start_relay: StartRelay, tmp_path: object
) -> None:
    from pathlib import Path

    outbox = Path(str(tmp_path)) / "outbox"
    relay = await start_relay(write_config(upstream={"maildir": str(outbox)}))

    replies = [await relay.send(make_message(str(n))) for n in range(3)]

    assert [r.code for r in replies] == [250, 250, 250]
    files = sorted((outbox / "new").iterdir(), key=lambda p: p.read_bytes())
    assert [f.read_bytes() for f in files] == sorted(make_message(str(n)) for n in range(3))
    assert list((outbox / "tmp").iterdir()) == []
