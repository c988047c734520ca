"""Scanning in worker processes (relay.scanpool): same verdicts, and mail never waits on them.

The workers here load a one-rule pack, so each test spends well under a second starting them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.config import load_config
from relay.engine import load_rules
from relay.errors import ConfigError
from relay.extract import extract
from relay.limits import LimitExceeded
from relay.scanpool import PooledScanner, close_scanner
from relay.server import rules_scanner
from tests.conftest import StartRelay, WriteConfig
from tests.support import Sink, make_message

PACK = """\
language: en
rules:
  - id: test.ponies
    category: positive-review-request
    severity: high
    description: Mentions ponies.
    hint: Leave the ponies out.
    all: ["ponies"]
    examples:
      match: ["We love ponies!"]
      no_match: ["Thanks for your order."]
"""

PONIES = make_message(body="We love ponies!")
UNICORNS = make_message(body="We love unicorns!")
CLEAN = make_message(body="Your parcel left our warehouse today.")


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    path = tmp_path / "pack.yaml"
    path.write_text(PACK)
    return path


@pytest.fixture
def scanner(pack: Path) -> Iterator[PooledScanner]:
    scanner = PooledScanner(load_rules([pack]), [pack], workers=2)
    yield scanner
    scanner.close()


def wait_until(condition: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not callable(condition) or not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def worker_pids(scanner: PooledScanner) -> list[int]:
    pool = scanner._pool
    assert pool is not None
    return [process.pid for process in pool._processes.values() if process.pid is not None]


def test_workers_give_the_verdicts_of_in_process_scanning(
    scanner: PooledScanner, pack: Path
) -> None:
    rules = load_rules([pack])
    wait_until(lambda: scanner.ready)

    for message in (PONIES, CLEAN):
        assert scanner(message) == rules.evaluate(extract(message))
    assert [hit.rule for hit in scanner(PONIES).hits] == ["test.ponies"]
    assert len(worker_pids(scanner)) == 2


def test_messages_are_scanned_while_the_workers_still_start(pack: Path) -> None:
    scanner = PooledScanner(load_rules([pack]), [pack], workers=1)
    try:
        assert not scanner.ready
        assert scanner(PONIES).is_violation
        assert not scanner(CLEAN).is_violation
    finally:
        scanner.close()


def test_a_killed_worker_costs_no_verdict_and_the_pool_recovers(scanner: PooledScanner) -> None:
    wait_until(lambda: scanner.ready)
    for pid in worker_pids(scanner):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: all(not p.is_alive() for p in scanner._pool._processes.values()))  # type: ignore[union-attr]

    assert scanner(PONIES).is_violation  # the broken pool is noticed, this one scans here
    wait_until(lambda: scanner.ready)
    assert scanner(PONIES).is_violation
    assert not scanner(CLEAN).is_violation


def test_workers_that_find_other_packs_on_disk_leave_scanning_to_the_relay(pack: Path) -> None:
    rules = load_rules([pack])  # what the relay validated and logs as rules_version
    pack.write_text(PACK.replace("ponies", "unicorns"))
    scanner = PooledScanner(rules, [pack], workers=1)
    try:
        pool = scanner._pool
        assert pool is not None
        # The probe answers once the worker has tried to load the (changed) packs.
        wait_until(lambda: all(p.is_alive() for p in pool._processes.values()))
        time.sleep(0.5)
        verdict = scanner(PONIES)
        assert verdict.is_violation
        assert verdict.rules_version == rules.version
        assert not scanner(UNICORNS).is_violation
        assert not scanner.ready
    finally:
        scanner.close()


def test_a_closed_scanner_still_scans_in_process(scanner: PooledScanner) -> None:
    wait_until(lambda: scanner.ready)
    close_scanner(scanner)
    assert scanner._pool is None
    assert scanner(PONIES).is_violation


def test_scan_workers_must_be_a_small_count(write_config: WriteConfig, tmp_path: Path) -> None:
    upstream = {"maildir": str(tmp_path / "out")}
    with pytest.raises(ConfigError, match=r"rules\.scan_workers"):
        load_config(write_config(upstream=upstream, rules={"scan_workers": -1}))
    zero = write_config(upstream=upstream, rules={"scan_workers": 0})
    assert load_config(zero).rules.scan_workers == 0
    assert load_config(write_config(upstream=upstream)).rules.scan_workers == 0


def test_scan_workers_zero_scans_in_the_calling_thread(
    write_config: WriteConfig, pack: Path
) -> None:
    config = load_config(
        write_config(
            upstream={"maildir": str(pack.parent / "out")},
            rules={"paths": [str(pack)], "scan_workers": 0},
        )
    )
    scan = rules_scanner(config)
    assert not isinstance(scan, PooledScanner)
    assert scan(PONIES).is_violation


async def test_relay_scans_in_workers_and_reload_stops_the_old_ones(
    write_config: WriteConfig, start_relay: StartRelay, sink: Sink, pack: Path
) -> None:
    relay = await start_relay(
        write_config(upstream=sink.upstream(), rules={"paths": [str(pack)], "scan_workers": 1}),
        make_scanner=rules_scanner,
    )
    first = relay.server.runtime.scan
    assert isinstance(first, PooledScanner)
    assert relay.server.runtime.inline_scan is False  # it waits for its workers: a thread
    for _ in range(1200):
        if first.ready:
            break
        await asyncio.sleep(0.05)
    assert first.ready
    assert (await relay.send(PONIES)).code == 250
    assert (await relay.send(CLEAN)).code == 250

    assert await relay.server.reload() is True
    assert first._pool is None  # closed: its worker exits once idle
    second = relay.server.runtime.scan
    assert isinstance(second, PooledScanner) and second is not first
    assert (await relay.send(PONIES)).code == 250

    lines = await relay.messages()
    assert [(line["verdict"], line["action"]) for line in lines] == [
        ("violation", "quarantine"),
        ("clean", "forward"),
        ("violation", "quarantine"),
    ]
    assert len(sink.messages) == 1

    await relay.server.stop(grace=1)
    assert second._pool is None


def test_a_message_past_the_mime_limits_raises_from_a_worker_as_in_process(pack: Path) -> None:
    parts = "".join(
        f"--b\r\nContent-Type: text/plain\r\n\r\nPart {n} about ponies.\r\n" for n in range(5)
    )
    message = (
        "From: shop@example.com\r\nTo: buyer@example.org\r\nSubject: Parts\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        f"{parts}--b--\r\n"
    ).encode()
    scanner = PooledScanner(load_rules([pack]), [pack], workers=1, max_depth=5, max_parts=3)
    try:
        with pytest.raises(LimitExceeded):
            scanner(message)  # in the relay, while the worker starts
        wait_until(lambda: scanner.ready)
        with pytest.raises(LimitExceeded):
            scanner(message)
        assert scanner(PONIES).is_violation
    finally:
        scanner.close()
