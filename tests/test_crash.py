"""Crash safety: SIGKILL the relay mid-flow; every message a client saw `250` for survives.

The relay answers 250 only after the upstream accepted the message or the quarantine has it on
disk (fsynced), so a kill at any instant may cost a retry, never a message. The relay runs as a
real process (`python -m relay serve`); the upstream sink runs in the test's loop.
"""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import aiosmtplib

from tests.conftest import WriteConfig
from tests.support import Sink, send, spawn_serve

CLIENTS = 24
MESSAGES_EACH = 6
KILL_AFTER = 40  # acknowledged messages before the kill: many more are still in flight


def message(client: int, number: int) -> tuple[str, bytes]:
    """A message with a unique id; every third one breaks the policy (it will be quarantined)."""
    token = f"crash-{client}-{number}"
    body = (
        "Please leave us a 5-star review and we will refund your purchase."
        if number % 3 == 0
        else "Your parcel is on its way."
    )
    data = (
        f"From: shop@example.com\r\nTo: buyer@example.org\r\nSubject: Order {token}\r\n"
        f"Message-ID: <{token}@example.com>\r\n\r\n{body}\r\n"
    ).encode()
    return token, data


async def test_sigkill_loses_no_acknowledged_message(
    sink: Sink, write_config: WriteConfig, tmp_path: Path
) -> None:
    sink.handler.data_delay = 0.02  # keep transactions in flight at the upstream too
    path = write_config(upstream=sink.upstream())
    process = await spawn_serve(path, stdout=asyncio.subprocess.DEVNULL)
    acknowledged: list[str] = []
    enough = asyncio.Event()

    async def client(index: int, port: int) -> None:
        for number in range(MESSAGES_EACH):
            token, data = message(index, number)
            try:
                reply = await send(port, data)
            except (aiosmtplib.SMTPException, OSError):
                return  # the relay is gone
            if reply.code == 250:
                acknowledged.append(token)
                if len(acknowledged) >= KILL_AFTER:
                    enough.set()

    try:
        assert process.stderr is not None
        banner = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
        match = re.search(r":(\d+)$", banner.strip())
        assert match, banner
        port = int(match.group(1))
        clients = [asyncio.ensure_future(client(i, port)) for i in range(CLIENTS)]
        await asyncio.wait_for(enough.wait(), 60)
        process.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(process.wait(), 10) == -signal.SIGKILL
        await asyncio.wait_for(asyncio.gather(*clients), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    delivered = {m.data for m in sink.messages}
    held = {f.read_bytes() for f in (tmp_path / "quarantine" / "new").iterdir()}
    lost = [
        token
        for token in acknowledged
        if not any(f"<{token}@example.com>".encode() in data for data in delivered | held)
    ]
    assert len(acknowledged) >= KILL_AFTER
    assert len(acknowledged) < CLIENTS * MESSAGES_EACH, "the kill came after all mail was sent"
    assert lost == []
    assert any(b"5-star" in data for data in held)  # both paths were exercised
    assert delivered
