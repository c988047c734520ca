"""Server lifecycle: reload keeps or replaces the config, stop is graceful, signals work."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import threading
import time
from pathlib import Path

import aiosmtplib
import pytest
import yaml

from relay.config import Config, PolicyConfig
from relay.handler import INLINE_SCAN_SIZE, ScanFn, clean_scan
from relay.model import CLEAN, Action, Verdict
from relay.policy import Decision, decide
from relay.quarantine import QuarantineStore
from relay.server import RuleScanner, rules_scanner
from tests.conftest import StartRelay, WriteConfig
from tests.support import MESSAGE, RunningRelay, Sink, make_message, send, spawn_serve


def rewrite(path: Path, **changes: dict[str, object]) -> None:
    config = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        config[key] = {**config.get(key, {}), **value}
    path.write_text(yaml.safe_dump(config))


async def test_reload_switches_to_the_new_upstream(
    relay: RunningRelay, sink: Sink, tmp_path: Path
) -> None:
    other = await Sink().start()
    try:
        rewrite(relay.config_path, upstream={"port": other.port})

        assert await relay.server.reload() is True
        reply = await relay.send()
    finally:
        await other.stop()

    assert reply.code == 250
    assert (len(sink.messages), len(other.messages)) == (0, 1)
    [event] = await relay.audit_events("config.reload")
    assert event["file"] == str(relay.config_path)
    assert event["restart_needed"] == []


async def test_broken_reload_keeps_the_running_config(relay: RunningRelay, sink: Sink) -> None:
    rewrite(relay.config_path, upstream={"port": "not a port"})

    assert await relay.server.reload() is False
    reply = await relay.send()

    assert reply.code == 250
    assert len(sink.messages) == 1
    [event] = await relay.audit_events("config.reload_failed")
    assert "upstream.port" in event["error"]


async def test_reload_reports_listen_changes_need_a_restart(
    relay: RunningRelay, sink: Sink
) -> None:
    port = relay.port
    rewrite(relay.config_path, listen={"port": 10999})

    assert await relay.server.reload() is True

    assert (await relay.send()).code == 250
    assert relay.port == port
    [event] = await relay.audit_events("config.reload")
    assert event["restart_needed"] == ["listen.port"]


async def test_reload_can_move_the_audit_log(
    relay: RunningRelay, sink: Sink, tmp_path: Path
) -> None:
    rewrite(relay.config_path, audit={"path": str(tmp_path / "new-audit.log")})

    assert await relay.server.reload() is True
    await relay.send()

    lines = await relay.audit_events()
    assert relay.server.config.audit.path == tmp_path / "new-audit.log"
    assert [line["event"] for line in lines][-3:] == [
        "session.connect",
        "message",
        "session.disconnect",
    ]


async def test_stop_lets_a_transaction_in_flight_finish(relay: RunningRelay, sink: Sink) -> None:
    sink.handler.data_delay = 0.5
    sending = asyncio.create_task(relay.send())
    await asyncio.wait_for(sink.handler.data_started.wait(), 10)

    await relay.server.stop(grace=10)
    reply = await sending

    assert reply.code == 250
    assert len(sink.messages) == 1
    with pytest.raises(OSError):
        await send(relay.port)


async def test_stop_closes_idle_sessions_with_421_without_waiting(relay: RunningRelay) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
    await client.connect()
    await client.ehlo()

    await asyncio.wait_for(relay.server.stop(grace=60), 10)

    with pytest.raises(aiosmtplib.SMTPException):
        await client.mail("shop@example.com")
    client.close()


async def test_stop_after_grace_closes_sessions_and_logs_the_message(
    relay: RunningRelay, sink: Sink
) -> None:
    sink.handler.data_delay = 5
    sending = asyncio.create_task(relay.send())
    await asyncio.wait_for(sink.handler.data_started.wait(), 10)

    await relay.server.stop(grace=0.2)

    with pytest.raises(aiosmtplib.SMTPException):
        await sending
    assert sink.messages == []
    path = relay.server.config.audit.path
    assert path is not None
    [line] = [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == "message"]
    assert line["reply"] is None
    assert line["error"] == "client disconnected before the reply"


async def test_reload_failing_to_build_the_scanner_keeps_the_old_one(
    write_config: WriteConfig, start_relay: StartRelay, sink: Sink
) -> None:
    calls = []

    def scanner(config: Config) -> ScanFn:
        calls.append(config)
        if len(calls) > 1:
            raise MemoryError("rule packs too big")
        return clean_scan

    relay = await start_relay(write_config(upstream=sink.upstream()), make_scanner=scanner)

    assert await relay.server.reload() is False
    assert (await relay.send()).code == 250
    [event] = await relay.audit_events("config.reload_failed")
    assert event["error"] == "MemoryError: rule packs too big"


PACK = """\
language: en
rules:
  - id: test.stars
    category: positive-review-request
    severity: high
    description: Asks for five stars.
    hint: Ask for an honest review.
    all: ["ponies"]
    examples:
      match: ["We love ponies!"]
      no_match: ["Thanks for your order."]
"""


async def test_reload_picks_up_changed_rule_packs_and_keeps_them_when_broken(
    write_config: WriteConfig, start_relay: StartRelay, sink: Sink, tmp_path: Path
) -> None:
    pack = tmp_path / "pack.yaml"
    pack.write_text(PACK)
    relay = await start_relay(
        write_config(upstream=sink.upstream(), rules={"paths": [str(pack)]}),
        make_scanner=rules_scanner,
    )
    ponies = make_message(body="We love ponies!")
    await relay.send(ponies)

    pack.write_text(PACK.replace("ponies", "unicorns"))
    assert await relay.server.reload() is True
    await relay.send(ponies)

    pack.write_text(PACK.replace("category: positive-review-request", "category: nonsense"))
    assert await relay.server.reload() is False
    await relay.send(make_message(body="We love unicorns!"))

    lines = await relay.messages()
    assert [line["verdict"] for line in lines] == ["violation", "clean", "violation"]
    assert lines[0]["rules_version"] != lines[1]["rules_version"] == lines[2]["rules_version"]
    [failed] = await relay.audit_events("config.reload_failed")
    assert "nonsense" in failed["error"] and str(pack) in failed["error"]


def notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


async def test_systemd_hears_reloading_ready_and_stopping(
    relay: RunningRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with notify_socket(tmp_path / "notify") as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))

        await relay.server.reload()
        await relay.server.stop()

        messages = received(sock)
    assert len(messages) == 3
    assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", messages[0])
    assert messages[1:] == ["READY=1", "STOPPING=1"]


def test_decide_forwards_and_monitor_mode_records_would_action() -> None:
    assert decide(CLEAN, PolicyConfig()) == Decision(Action.FORWARD)
    assert decide(CLEAN, PolicyConfig(mode="monitor")) == Decision(
        Action.FORWARD, would_action=Action.FORWARD
    )


async def test_sighup_reloads_and_sigterm_stops_a_serving_process(
    tmp_path: Path, start_relay: StartRelay, write_config: WriteConfig
) -> None:
    path = tmp_path / "relay.yaml"
    notify = notify_socket(tmp_path / "notify")
    path.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.1", "port": 0},
                "upstream": {"maildir": "first"},
                "audit": {"path": "-"},
                "quarantine": {"path": "quarantine"},
            }
        )
    )
    process = await spawn_serve(path, env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    assert process.stdout is not None and process.stderr is not None

    async def next_event(name: str) -> dict[str, object]:
        assert process.stdout is not None
        while True:
            event = json.loads(await asyncio.wait_for(process.stdout.readline(), 10))
            if event["event"] == name:
                return event  # type: ignore[no-any-return]

    try:
        banner = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
        match = re.search(r":(\d+)$", banner.strip())
        assert match, banner
        port = int(match.group(1))
        assert received(notify) == [f"READY=1\nSTATUS=listening on 127.0.0.1:{port}"]
        assert (await send(port)).code == 250
        await next_event("message")

        rewrite(path, upstream={"maildir": "second"})
        process.send_signal(signal.SIGHUP)
        await next_event("config.reload")
        assert (await send(port)).code == 250
        await next_event("message")

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        notify.close()
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert [f.read_bytes() for f in (tmp_path / "first" / "new").iterdir()] == [MESSAGE]
    assert [f.read_bytes() for f in (tmp_path / "second" / "new").iterdir()] == [MESSAGE]


class ThreadNoting(RuleScanner):
    """The real rule scanner, noting which thread ran each scan (and sleeping if told)."""

    def __init__(self, base: RuleScanner, delay: float = 0.0) -> None:
        super().__init__(base.ruleset, base.max_depth, base.max_parts)
        self.delay = delay
        self.threads: list[int] = []

    def __call__(self, data: bytes) -> Verdict:
        self.threads.append(threading.get_ident())
        time.sleep(self.delay)
        return super().__call__(data)


def padded(body: str, size: int) -> bytes:
    """A message of about `size` bytes whose text is `body` plus harmless filler lines."""
    filler = "Thanks for your order, it ships tomorrow.\r\n" * (size // 43)
    return make_message(subject="Order update", body=f"{body}\r\n\r\n{filler}")


VIOLATION_TEXT = "Please leave us a 5-star review and we will refund your purchase."


async def test_small_messages_are_scanned_on_the_loop_larger_ones_in_a_thread(
    write_config: WriteConfig, start_relay: StartRelay, sink: Sink, tmp_path: Path
) -> None:
    scanners: list[ThreadNoting] = []

    def noting(config: Config) -> ScanFn:
        base = rules_scanner(config)
        assert isinstance(base, RuleScanner)
        scanners.append(ThreadNoting(base))
        return scanners[-1]

    relay = await start_relay(write_config(upstream=sink.upstream()), make_scanner=noting)
    assert relay.server.runtime.inline_scan is True
    small, large = padded(VIOLATION_TEXT, 2000), padded(VIOLATION_TEXT, INLINE_SCAN_SIZE + 4000)
    assert len(small) <= INLINE_SCAN_SIZE < len(large)
    for data in (small, large, padded("Your parcel is on its way.", 2000)):
        assert (await relay.send(data)).code == 250

    loop_thread = threading.get_ident()
    assert [ident == loop_thread for ident in scanners[0].threads] == [True, False, True]
    lines = await relay.messages()
    assert [(line["verdict"], line["action"]) for line in lines] == [
        ("violation", "quarantine"),
        ("violation", "quarantine"),
        ("clean", "forward"),
    ]
    assert [line["subject"] for line in lines] == ["Order update"] * 3
    assert len(QuarantineStore(tmp_path / "quarantine").entries()) == 2
    assert len(sink.messages) == 1


async def test_inline_scan_past_the_deadline_is_held_with_reason_limits(
    write_config: WriteConfig, start_relay: StartRelay, sink: Sink, tmp_path: Path
) -> None:
    def slow(config: Config) -> ScanFn:
        base = rules_scanner(config)
        assert isinstance(base, RuleScanner)
        return ThreadNoting(base, delay=0.3)

    relay = await start_relay(
        write_config(upstream=sink.upstream(), limits={"scan_timeout": 0.1}), make_scanner=slow
    )
    assert (await relay.send(padded("Your parcel is on its way.", 2000))).code == 250

    assert sink.messages == []
    [entry] = QuarantineStore(tmp_path / "quarantine").entries()
    assert entry.meta["reason"] == "limits"
    [line] = await relay.messages()
    assert (line["action"], line["reason"]) == ("quarantine", "limits")
    assert "longer than 0.1 seconds" in line["error"]
