"""The lifecycle of a real relay process: graceful SIGTERM mid-transaction, broken SIGHUP.

The relay runs as `python -m relay serve` with a real AF_UNIX datagram socket as
NOTIFY_SOCKET; the upstream sink runs in the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import MESSAGE, Sink, send, spawn_serve
from tests.test_server import notify_socket, received


class Process:
    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port

    async def next_event(self, name: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        while True:
            line = await asyncio.wait_for(self.process.stdout.readline(), 20)
            assert line, f"no {name} event before the audit log ended"
            event: dict[str, Any] = json.loads(line)
            if event["event"] == name:
                return event


@pytest.fixture
async def serving(sink: Sink, tmp_path: Path) -> AsyncIterator[tuple[Process, Path, Any]]:
    path = tmp_path / "relay.yaml"
    path.write_text(
        json.dumps(
            {
                "listen": {"host": "127.0.0.1", "port": 0, "hostname": "relay.test"},
                "upstream": sink.upstream(),
                "audit": {"path": "-"},
                "quarantine": {"path": str(tmp_path / "quarantine")},
                "limits": {"shutdown_timeout": 10},
            }
        )
    )
    sock = notify_socket(tmp_path / "notify")
    process = await spawn_serve(path, env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    try:
        assert process.stderr is not None
        banner = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
        match = re.search(r":(\d+)$", banner.strip())
        assert match, banner
        yield Process(process, int(match.group(1))), path, sock
    finally:
        sock.close()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_sigterm_lets_the_transaction_in_flight_finish_then_exits_0(
    sink: Sink, serving: tuple[Process, Path, Any]
) -> None:
    relay, _, sock = serving
    sink.handler.data_delay = 1.0
    sending = asyncio.ensure_future(send(relay.port))
    await asyncio.wait_for(sink.handler.data_started.wait(), 20)
    relay.process.send_signal(signal.SIGTERM)
    reply = await asyncio.wait_for(sending, 20)
    assert reply.code == 250, reply
    assert await asyncio.wait_for(relay.process.wait(), 20) == 0
    assert [m.data for m in sink.messages] == [MESSAGE]
    assert received(sock)[-1] == "STOPPING=1"
    # A new client is no longer accepted.
    with pytest.raises(OSError):
        await send(relay.port)


async def test_broken_sighup_keeps_serving_on_the_old_config(
    sink: Sink, serving: tuple[Process, Path, Any]
) -> None:
    relay, path, sock = serving
    path.write_text("listen: [this is not a mapping\n")
    relay.process.send_signal(signal.SIGHUP)
    failed = await relay.next_event("config.reload_failed")
    assert "YAML" in failed["error"]
    assert (await send(relay.port)).code == 250
    assert len(sink.messages) == 1
    notes = received(sock)
    assert notes[0].startswith("READY=1")
    assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", notes[1])
    assert notes[2] == "READY=1"
    relay.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(relay.process.wait(), 20) == 0
