"""The Postfix harness itself: private instances relay, defer and retry as the e2e tests expect."""

from __future__ import annotations

import smtplib
import subprocess

from tests.mta import LOOPBACK, SMTPSink, postfix, wait_until

MESSAGE = (
    b"From: Seller <support@shop.example>\r\n"
    b"To: Buyer <buyer@marketplace.example>\r\n"
    b"Subject: harness check\r\n"
    b"Date: Fri, 27 Nov 2026 09:00:00 +0000\r\n"
    b"Message-ID: <harness@shop.example>\r\n"
    b"\r\n"
    b"Your parcel left the warehouse.\r\n"
    b".leading dot survives\r\n"
)


def _listening_addresses(pids: set[int]) -> set[str]:
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            found.add(line.split()[3].rsplit(":", 1)[0])
    return found


def test_private_postfix_relays_defers_and_retries() -> None:
    sink = SMTPSink().start()
    try:
        with postfix((LOOPBACK, sink.port)) as mta:
            # Only loopback: every socket the instance's processes listen on is 127.0.0.1.
            master = int((mta.queue_dir / "pid" / "master.pid").read_text().split()[0])
            children = subprocess.run(
                ["pgrep", "-P", str(master)], capture_output=True, text=True, check=False
            ).stdout.split()
            assert _listening_addresses({master, *map(int, children)}) == {LOOPBACK}

            with smtplib.SMTP(LOOPBACK, mta.port) as client:
                client.sendmail("support@shop.example", ["buyer@marketplace.example"], MESSAGE)
            wait_until(lambda: len(sink.received()) == 1, 15, "first delivery")
            mail_from, rcpts, data = sink.received()[0]
            assert (mail_from, rcpts) == ("support@shop.example", ["buyer@marketplace.example"])
            # Postfix prepends its Received: header and changes nothing else.
            assert data.startswith(b"Received: from ")
            assert data.endswith(MESSAGE)

            # Smarthost down: the message waits in the deferred queue, not bounced.
            sink.stop()
            with smtplib.SMTP(LOOPBACK, mta.port) as client:
                client.sendmail("support@shop.example", ["buyer@marketplace.example"], MESSAGE)
            queue = mta.wait_deferred()
            assert queue[0]["recipients"][0]["address"] == "buyer@marketplace.example"
            sink.start()
            mta.flush()
            wait_until(lambda: len(sink.received()) == 2, 15, "delivery after the sink is back")
            mta.wait_queue(lambda q: q == [], 10, "an empty queue")
            assert "status=bounced" not in mta.log()
    finally:
        sink.stop()
