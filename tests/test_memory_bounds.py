"""What bounds the relay's memory: the scan gate for large messages, and the DATA size limit.

Peak RSS itself is measured by bench/memory.py, never asserted here (the machine is shared);
these tests check the mechanisms: how many large scans run at once, that a turn lasts as long
as its scan, that small mail never waits, and that an oversized message is not buffered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import random
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from bench import traffic
from relay.config import Config
from relay.handler import RelayHandler, ScanFn
from relay.limits import LimitExceeded, ScanGate, run_within
from relay.model import CLEAN, Verdict
from relay.smtpdata import CHUNK_LIMIT, DataState, read_data
from tests.conftest import StartRelay, WriteConfig
from tests.support import Sink, cached_rules_scanner, make_message, send

MiB = 1024 * 1024


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_large_messages_share_the_budget_in_arrival_order() -> None:
    gate = ScanGate(10, small=2)
    assert await gate.acquire(4) == 4
    assert await gate.acquire(4) == 4
    admitted: list[int] = []

    async def wait_turn(size: int) -> None:
        await gate.acquire(size)
        admitted.append(size)

    third = asyncio.create_task(wait_turn(4))
    await _settle()
    # 2 more would fit, but the 4 waiting came first: no overtaking, so no starving.
    fourth = asyncio.create_task(wait_turn(2))
    await _settle()
    assert admitted == [] and gate.waiting == 2
    assert await gate.acquire(1) == 0  # small: never waits, takes nothing
    gate.release(4)
    await asyncio.gather(third, fourth)
    assert admitted == [4, 2] and gate.in_use == 10


async def test_a_message_over_the_whole_budget_runs_alone() -> None:
    gate = ScanGate(10, small=2)
    assert await gate.acquire(3) == 3
    huge = asyncio.create_task(gate.acquire(50))
    await _settle()
    assert not huge.done()
    gate.release(3)
    assert await huge == 10 and gate.in_use == 10


async def test_a_client_leaving_while_waiting_does_not_block_the_queue() -> None:
    gate = ScanGate(10, small=2)
    await gate.acquire(8)
    leaving = asyncio.create_task(gate.acquire(5))
    await _settle()
    staying = asyncio.create_task(gate.acquire(2))
    await _settle()
    leaving.cancel()
    assert await staying == 2 and gate.in_use == 10
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_a_bigger_budget_after_a_reload_admits_who_waits() -> None:
    gate = ScanGate(10, small=2)
    await gate.acquire(8)
    waiting = asyncio.create_task(gate.acquire(5))
    await _settle()
    gate.resize(20)
    assert await waiting == 5 and gate.in_use == 13


class Overlap:
    """Counts the threads inside `with overlap:` now, and the most there were at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *_: object) -> None:
        with self.lock:
            self.now -= 1


async def test_large_scans_in_threads_never_exceed_the_budget() -> None:
    gate = ScanGate(10, small=2)
    overlap = Overlap()

    def scan() -> int:
        with overlap:
            time.sleep(0.05)
        return 1

    results = await asyncio.gather(*(run_within(scan, 5, gate=gate, size=4) for _ in range(6)))
    assert results == [1] * 6
    assert overlap.most == 2  # 2 x 4 bytes fit in 10; a third would not
    assert gate.in_use == 0


async def test_a_scan_past_its_deadline_keeps_its_turn_until_its_thread_ends() -> None:
    gate = ScanGate(10, small=2)
    finish = threading.Event()
    with pytest.raises(LimitExceeded):
        await run_within(lambda: finish.wait(5), 0.05, gate=gate, size=8)
    # The thread still parses: its memory is still there, so its share of the budget too.
    assert gate.in_use == 8
    finish.set()
    for _ in range(200):
        if gate.in_use == 0:
            break
        await asyncio.sleep(0.01)
    assert gate.in_use == 0


async def test_small_mail_is_scanned_while_large_messages_wait() -> None:
    gate = ScanGate(10, small=2)
    finish = threading.Event()
    blocking = asyncio.create_task(run_within(lambda: finish.wait(5), 5, gate=gate, size=10))
    queued = asyncio.create_task(run_within(lambda: "large", 5, gate=gate, size=3))
    await _settle()
    assert await run_within(lambda: "small", 5, gate=gate, size=1) == "small"
    assert not queued.done()
    finish.set()
    assert await queued == "large"
    await blocking
    assert gate.in_use == 0


async def test_relay_scans_at_most_the_configured_bytes_of_large_messages_at_once(
    sink: Sink, write_config: WriteConfig, start_relay: StartRelay
) -> None:
    release = threading.Event()
    large = Overlap()

    def blocking_scanner(config: Config) -> ScanFn:
        def scan(data: bytes) -> Verdict:
            if len(data) < MiB:
                return CLEAN
            with large:
                release.wait(10)
            return CLEAN

        return scan

    relay = await start_relay(
        write_config(upstream=sink.upstream(), limits={"max_concurrent_scan_size": "3MiB"}),
        make_scanner=blocking_scanner,
    )
    gate = relay.server.handler.scan_gate
    body = ("x" * 70 + "\r\n") * (MiB // 72 + 2000)  # about 1.1 MiB each
    manuals = [make_message(subject=f"manual {i}", body=body) for i in range(5)]
    sending = [asyncio.create_task(send(relay.port, message)) for message in manuals]
    try:
        for _ in range(1000):  # until every large message is scanning or waiting its turn
            # (an admitted message's thread may not have started its scan yet)
            if gate.waiting == 3 and large.now == 2:
                break
            await asyncio.sleep(0.01)
        assert gate.waiting == 3 and large.now == 2  # 2 x 1.1 MiB fit in 3 MiB
        small = await send(relay.port, make_message(subject="small"))
        assert small.code == 250 and len(sink.messages) == 1  # it did not wait for them
    finally:
        release.set()
    replies = await asyncio.gather(*sending)
    assert [reply.code for reply in replies] == [250] * 5
    assert large.most == 2 and len(sink.messages) == 6
    assert gate.in_use == 0


async def test_message_over_the_size_limit_is_never_buffered_whole() -> None:
    line = b"x" * 70 + b"\r\n"
    piece = line * (CHUNK_LIMIT // len(line))
    pieces = 160  # 10 MiB sent against a 100 KB limit
    reader = asyncio.StreamReader(limit=CHUNK_LIMIT)

    async def client() -> None:
        for _ in range(pieces):
            reader.feed_data(piece)
            await asyncio.sleep(0)
        reader.feed_data(b".\r\nQUIT\r\n")

    tracemalloc.start()
    try:
        sending = asyncio.create_task(client())
        result = await read_data(reader, 100_000, 1001)
        await sending
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.state is DataState.TOO_MUCH and result.content == b""
    assert result.received == pieces * len(piece)
    # Drained piece by piece: at most the 100 KB under the limit and a few pieces at once.
    assert peak < MiB, peak


def test_the_scan_budget_accepts_sizes(tmp_path: Path) -> None:
    from relay.config import load_config

    path = tmp_path / "relay.yaml"
    path.write_text(
        "upstream: {maildir: box}\nlimits: {max_concurrent_scan_size: 64MiB}\n", encoding="utf-8"
    )
    assert load_config(path).limits.max_concurrent_scan_size == 64 * MiB
    assert Config().limits.max_concurrent_scan_size == 32 * MiB


async def test_relay_processes_split_the_scan_budget_also_after_a_reload(
    sink: Sink, write_config: WriteConfig, start_relay: StartRelay
) -> None:
    relay = await start_relay(
        write_config(upstream=sink.upstream(), limits={"max_concurrent_scan_size": "9MiB"})
    )
    assert relay.server.handler.scan_gate.budget == 9 * MiB
    runtime = relay.server.runtime
    handler = RelayHandler(runtime, workers=2)  # as in each of 2 listen.workers
    assert handler.scan_gate.budget == 9 * MiB // 2
    limits = dataclasses.replace(runtime.config.limits, max_concurrent_scan_size=4 * MiB + 1)
    handler.runtime = dataclasses.replace(
        runtime, config=dataclasses.replace(runtime.config, limits=limits)
    )
    assert handler.scan_gate.budget == 2 * MiB + 1


def _plain_violation() -> bytes:
    body = "Thank you for your order. Please tell us how you liked it.\r\n" * 200
    return make_message(
        subject="Your order", body=body + "Please leave us a 5-star review and we will refund you."
    )


def _html_violation() -> bytes:
    return traffic.make_message(random.Random(3), 0, "medium", True, 60_000).data


@pytest.mark.parametrize("build", [_plain_violation, _html_violation])
def test_scanning_leaves_no_cycles_holding_the_scanned_text(build: Callable[[], bytes]) -> None:
    # Cyclic garbage waits for a full collection, which the loaded rule set makes rare: a
    # cycle through a part's text kept 18 MiB per 10 MB text part scanned.
    scan = cached_rules_scanner(Config())
    message = build()
    scan(message)  # warm caches
    gc.collect()
    gc.disable()
    try:
        verdict = scan(message)
        left = gc.collect()
    finally:
        gc.enable()
    assert verdict.hits  # it went all the way through the rules
    assert left == 0
