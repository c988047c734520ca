"""outbox-relay with a real Postfix, in both positions of issue 7, end to end.

Position 1 ("content-filter"): client -> Postfix -> outbox-relay -> Postfix re-injection
listener -> smarthost. Position 2 ("smarthost"): client -> outbox-relay -> Postfix ->
smarthost. Postfix is Debian's, installed when missing, run as a private instance with the
example fragments from config/postfix/ (ports swapped for free ones); the relay is a real
`python -m relay serve` process configured from the example YAML in the same folder; the
smarthost is an aiosmtpd sink that records the exact bytes it receives.
"""

from __future__ import annotations

import json
import smtplib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.mta import (
    EXAMPLES,
    LOOPBACK,
    PostfixInstance,
    RelayProcess,
    SMTPSink,
    ensure_postfix,
    free_port,
    strip_trace,
    wait_until,
)

SENDER = "support@shop.example"
RECIPIENTS = ["buyer@marketplace.example", "orders@marketplace.example"]

# 8-bit UTF-8, a folded header, a leading dot and a blank-line-heavy body: the bytes a
# careless hop would change (8bit->QP conversion, unfolding, dot-stuffing, line endings).
CLEAN = (
    b"From: Seller Support <support@shop.example>\r\n"
    b"To: Buyer <buyer@marketplace.example>\r\n"
    b"Cc: orders@marketplace.example\r\n"
    b"Subject: Your order 114-1234567-1234567 has shipped\r\n"
    b"Date: Fri, 27 Nov 2026 09:00:00 +0000\r\n"
    b"Message-ID: <e2e-clean@shop.example>\r\n"
    b"X-Helpdesk-Ticket: 48151623\r\n"
    b"X-Long-Header: first part of a long folded header value\r\n"
    b"\tcontinued on a second line\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Hallo Sam,\r\n"
    b"\r\n"
    b"your parcel left our warehouse today. Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln!\r\n"
    b".A line that starts with a dot survives dot-stuffing.\r\n"
    b"\r\n"
    b"\r\n"
    b"Seller Support\r\n"
)

VIOLATING = (
    b"From: Seller Support <support@shop.example>\r\n"
    b"To: Buyer <buyer@marketplace.example>\r\n"
    b"Subject: Thank you for your order\r\n"
    b"Date: Fri, 27 Nov 2026 09:00:00 +0000\r\n"
    b"Message-ID: <e2e-violating@shop.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hi Sam,\r\n"
    b"\r\n"
    b"thank you for your order. If you are happy with it, please leave us a 5-star\r\n"
    b"review on Amazon!\r\n"
)


@pytest.fixture(scope="module", autouse=True)
def postfix_installed() -> None:
    # Installs Debian's postfix + swaks when missing; a failure fails the tests, never skips.
    ensure_postfix()


@dataclass
class Chain:
    """One running arrangement: the final sink, Postfix, and the relay process."""

    sink: SMTPSink
    mta: PostfixInstance
    relay: RelayProcess
    audit: Path
    quarantine: Path

    def messages(self) -> list[dict[str, Any]]:
        """The relay's `message` audit events so far."""
        if not self.audit.exists():
            return []
        events = [json.loads(line) for line in self.audit.read_text().splitlines() if line]
        return [e for e in events if e.get("event") == "message"]

    def wait_for_messages(self, count: int) -> list[dict[str, Any]]:
        """The `message` events once there are `count`: a line follows its reply."""
        wait_until(lambda: len(self.messages()) >= count, 20, f"{count} audit line(s)")
        return self.messages()


def relay_config(
    tmp_path: Path, position: str, listen_port: int, upstream_port: int
) -> tuple[Path, Path, Path]:
    """The example YAML for `position`, with test ports and paths; (config, audit, quarantine)."""
    config = yaml.safe_load((EXAMPLES / position / "outbox-relay.yaml").read_text())
    audit = tmp_path / "audit.log"
    quarantine = tmp_path / "quarantine"
    config["listen"].update(port=listen_port, hostname="relay.outbox-relay.test")
    config["upstream"].update(port=upstream_port, timeout=10)
    config["quarantine"]["path"] = str(quarantine)
    config["audit"]["path"] = str(audit)
    config.setdefault("limits", {})["shutdown_timeout"] = 5
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, audit, quarantine


@pytest.fixture
def content_filter(tmp_path: Path) -> Iterator[Chain]:
    """Position 1, everything started: client -> Postfix -> relay -> Postfix -> sink."""
    relay_port = free_port()
    with (
        SMTPSink() as sink,
        PostfixInstance(
            relayhost=(LOOPBACK, sink.port), position="content-filter", relay_port=relay_port
        ) as mta,
    ):
        config, audit, quarantine = relay_config(
            tmp_path, "content-filter", relay_port, mta.listener_port
        )
        with RelayProcess(config, relay_port) as relay:
            yield Chain(sink, mta, relay, audit, quarantine)


@pytest.fixture
def smarthost(tmp_path: Path) -> Iterator[Chain]:
    """Position 2, everything started: client -> relay -> Postfix -> sink."""
    relay_port = free_port()
    with (
        SMTPSink() as sink,
        PostfixInstance(relayhost=(LOOPBACK, sink.port), position="smarthost") as mta,
    ):
        config, audit, quarantine = relay_config(
            tmp_path, "smarthost", relay_port, mta.listener_port
        )
        with RelayProcess(config, relay_port) as relay:
            yield Chain(sink, mta, relay, audit, quarantine)


def send(port: int, data: bytes = CLEAN, rcpts: list[str] = RECIPIENTS) -> None:
    with smplib_client(port) as client:
        client.sendmail(SENDER, rcpts, data)


def smplib_client(port: int) -> smtplib.SMTP:
    return smtplib.SMTP(LOOPBACK, port, local_hostname="app.shop.example", timeout=30)


def swaks(port: int, data: bytes, tmp_path: Path) -> str:
    """Send as an operator would, with swaks; return its transcript (it must succeed)."""
    eml = tmp_path / "message.eml"
    # swaks ends DATA with CRLF.CRLF itself: give it the message without its last CRLF.
    eml.write_bytes(data.removesuffix(b"\r\n"))
    done = subprocess.run(
        [
            "swaks",
            "--server",
            f"{LOOPBACK}:{port}",
            "--helo",
            "app.shop.example",
            "--from",
            SENDER,
            "--to",
            ",".join(RECIPIENTS),
            "--data",
            f"@{eml}",
            "--timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"swaks failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def assert_delivered_intact(chain: Chain, count: int = 1) -> bytes:
    """The sink got exactly `count` copies: original envelope, original bytes after trace."""
    wait_until(lambda: len(chain.sink.received()) >= count, 20, f"{count} message(s) at the sink")
    received = chain.sink.received()
    assert len(received) == count, f"expected {count} deliveries, got {len(received)}"
    mail_from, rcpts, data = received[-1]
    assert mail_from == SENDER
    assert sorted(rcpts) == sorted(RECIPIENTS)
    trace, rest = strip_trace(data)
    assert rest == CLEAN, "headers or body changed on the way"
    # Trace headers only: Postfix's Received: lines and at most the relay's own additions.
    assert trace, "Postfix always prepends a Received: header"
    return data


def delivery_log(mta: PostfixInstance, port: int) -> list[str]:
    """Postfix's log lines for delivery attempts to 127.0.0.1:port (sent or deferred)."""
    return [
        line
        for line in mta.log().splitlines()
        if f"[{LOOPBACK}]:{port}" in line and " to=<" in line and "status=" in line
    ]


# --- position 1: after-queue content filter ----------------------------------------------------


def test_content_filter_delivers_clean_mail_byte_identical(
    content_filter: Chain, tmp_path: Path
) -> None:
    transcript = swaks(content_filter.mta.port, CLEAN, tmp_path)
    assert "<-  250 2.0.0 Ok: queued as " in transcript
    assert_delivered_intact(content_filter)
    # It really went through the relay: Postfix handed it over, the relay logged a forward.
    relay_hops = delivery_log(content_filter.mta, content_filter.relay.port)
    assert relay_hops and all("status=sent" in line for line in relay_hops)
    (event,) = content_filter.wait_for_messages(1)
    assert event["action"] == "forward" and event["verdict"] == "clean"
    assert sorted(event["rcpt_to"]) == sorted(RECIPIENTS)
    assert event["upstream_reply"].startswith("250")
    content_filter.mta.wait_queue(lambda q: q == [], 10, "an empty Postfix queue")


def test_content_filter_relay_down_mail_waits_deferred_then_delivers(
    content_filter: Chain,
) -> None:
    content_filter.relay.stop()
    send(content_filter.mta.port)
    # Postfix accepted it (250) and keeps it: deferred because the filter is unreachable.
    queue = content_filter.mta.wait_deferred()
    reasons = [r.get("delay_reason", "") for r in queue[0]["recipients"]]
    assert all(f":{content_filter.relay.port}" in r for r in reasons), reasons
    # Let Postfix retry a few times against the dead relay: still deferred, never bounced.
    content_filter.mta.flush()
    wait_until(
        lambda: len(delivery_log(content_filter.mta, content_filter.relay.port)) >= 2,
        20,
        "a second failed attempt",
    )
    assert content_filter.sink.received() == []
    assert "status=bounced" not in content_filter.mta.log()
    content_filter.mta.wait_deferred()

    content_filter.relay.start()
    content_filter.mta.flush()
    assert_delivered_intact(content_filter)
    content_filter.mta.wait_queue(lambda q: q == [], 10, "an empty Postfix queue")
    # Exactly one copy, no bounce or delay notice to the sender reached the smarthost.
    assert len(content_filter.sink.received()) == 1


def test_content_filter_smarthost_down_nothing_lost(content_filter: Chain) -> None:
    content_filter.sink.stop()
    send(content_filter.mta.port)
    # The relay forwarded it to the re-injection listener; Postfix now holds it for the sink.
    wait_until(lambda: len(content_filter.messages()) == 1, 20, "the relay's audit line")
    (event,) = content_filter.messages()
    assert event["action"] == "forward" and event["upstream_reply"].startswith("250")
    queue = content_filter.mta.wait_deferred()
    reasons = [r.get("delay_reason", "") for r in queue[0]["recipients"]]
    assert all(f":{content_filter.sink.port}" in r for r in reasons), reasons
    assert "status=bounced" not in content_filter.mta.log()

    content_filter.sink.start()
    content_filter.mta.flush()
    assert_delivered_intact(content_filter)
    content_filter.mta.wait_queue(lambda q: q == [], 10, "an empty Postfix queue")
    # Filtered once: the re-injected copy did not go through the relay a second time.
    assert len(content_filter.messages()) == 1


# --- position 2: outbox-relay in front of Postfix ----------------------------------------------


def test_smarthost_delivers_clean_mail_byte_identical(smarthost: Chain, tmp_path: Path) -> None:
    transcript = swaks(smarthost.relay.port, CLEAN, tmp_path)
    assert "<-  250 " in transcript
    assert_delivered_intact(smarthost)
    (event,) = smarthost.wait_for_messages(1)
    assert event["action"] == "forward" and event["verdict"] == "clean"
    # The relay's reply came after Postfix queued it: Postfix's queue id is in its reply.
    assert "queued as" in event["upstream_reply"]
    smarthost.mta.wait_queue(lambda q: q == [], 10, "an empty Postfix queue")


def test_smarthost_final_smarthost_down_nothing_lost(smarthost: Chain) -> None:
    smarthost.sink.stop()
    send(smarthost.relay.port)
    queue = smarthost.mta.wait_deferred()
    assert sorted(r["address"] for r in queue[0]["recipients"]) == sorted(RECIPIENTS)
    assert "status=bounced" not in smarthost.mta.log()

    smarthost.sink.start()
    smarthost.mta.flush()
    assert_delivered_intact(smarthost)
    smarthost.mta.wait_queue(lambda q: q == [], 10, "an empty Postfix queue")


def test_smarthost_postfix_down_client_keeps_the_message(smarthost: Chain) -> None:
    # Postfix (the relay's upstream) is down: the relay must not pretend; the client gets a
    # temporary failure and still holds the message, and nothing half-delivered remains.
    smarthost.mta.__exit__(None, None, None)
    codes: list[int] = []
    with smplib_client(smarthost.relay.port) as client:
        try:
            client.sendmail(SENDER, RECIPIENTS, CLEAN)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
        except smtplib.SMTPResponseException as exc:
            codes = [exc.smtp_code]
    assert codes and all(400 <= code < 500 for code in codes), codes
    events = smarthost.wait_for_messages(1)
    assert all(event["reply"].startswith("4") for event in events)
    assert smarthost.sink.received() == []


# --- a violating message is held in either position --------------------------------------------


def assert_quarantined_only(chain: Chain, client_port: int) -> None:
    """VIOLATING goes to the quarantine Maildir; only the clean message after it is delivered."""
    send(client_port, VIOLATING, RECIPIENTS[:1])
    send(client_port, CLEAN)
    # The clean message sent afterwards arrives; by then the violating one would have too.
    assert_delivered_intact(chain)
    chain.mta.wait_queue(lambda q: q == [], 10, "an empty Postfix queue")
    assert all(b"5-star" not in data for _, _, data in chain.sink.received())

    held = [e for e in chain.wait_for_messages(2) if e["action"] == "quarantine"]
    assert len(held) == 1, chain.messages()
    assert held[0]["verdict"] != "clean" and "positive-review-request" in held[0]["categories"]
    assert held[0]["reply"].startswith("250")
    files = sorted((chain.quarantine / "new").iterdir())
    assert len(files) == 1, files
    _, rest = strip_trace(files[0].read_bytes())
    assert rest == VIOLATING


def test_content_filter_quarantines_violating_mail(content_filter: Chain) -> None:
    assert_quarantined_only(content_filter, content_filter.mta.port)
    # Postfix handed it over and is done with it: delivered to the filter, not bounced.
    assert "status=bounced" not in content_filter.mta.log()


def test_smarthost_quarantines_violating_mail(smarthost: Chain) -> None:
    assert_quarantined_only(smarthost, smarthost.relay.port)
