"""`listen.workers`: a real `serve` process supervising two relay processes on one port.

Mail must reach both workers, the audit log must stay one stream of whole lines, systemd must
hear one READY=1, SIGHUP must reload every worker (and a broken file none), SIGTERM must let
transactions in flight finish, a dead worker must be replaced, and workers must not outlive a
killed supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from relay.config import load_config
from relay.errors import ConfigError
from relay.handler import RelaySession
from relay.server import RelayServer, SessionBoard, WorkerRole, clean_scanner
from relay.supervisor import listening_sockets
from tests.support import MESSAGE, Sink, make_message, send, spawn_serve
from tests.test_lifecycle_process import Process
from tests.test_server import notify_socket, received

Serve = Callable[[dict[str, Any]], Any]


def children(pid: int) -> list[int]:
    """The live child processes of pid."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def until(condition: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.fixture
async def serve_workers(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start `serve` with two workers and the given upstream; yields (Process, path, notify)."""
    started: list[asyncio.subprocess.Process] = []
    sockets = []

    async def start(
        upstream: dict[str, Any], limits: dict[str, Any] | None = None, audit: str = "-"
    ) -> tuple[Process, Path, Any]:
        path = tmp_path / "relay.yaml"
        path.write_text(
            json.dumps(
                {
                    "listen": {"host": "127.0.0.1", "port": 0, "hostname": "relay.test"},
                    "upstream": upstream,
                    "audit": {"path": audit},
                    "quarantine": {"path": str(tmp_path / "quarantine")},
                    "limits": {"shutdown_timeout": 10, **(limits or {})},
                }
            ).replace('"hostname"', '"workers": 2, "hostname"')
        )
        sock = notify_socket(tmp_path / "notify")
        sockets.append(sock)
        process = await spawn_serve(path, env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
        started.append(process)
        assert process.stderr is not None
        banner = (await asyncio.wait_for(process.stderr.readline(), 60)).decode()
        match = re.search(
            r"^outbox-relay: 2 workers listening on 127\.0\.0\.1:(\d+)$", banner.strip()
        )
        assert match, banner
        return Process(process, int(match.group(1))), path, sock

    yield start
    for process in started:
        if process.returncode is None:
            for child in children(process.pid):
                os.kill(child, signal.SIGKILL)
            process.kill()
            await process.wait()
    for sock in sockets:
        sock.close()


async def audit_lines(relay: Process, count: int, event: str = "message") -> list[dict[str, Any]]:
    """The next `count` audit lines of `event`; every line read must be whole JSON."""
    found: list[dict[str, Any]] = []
    assert relay.process.stdout is not None
    while len(found) < count:
        line = await asyncio.wait_for(relay.process.stdout.readline(), 20)
        assert line.endswith(b"\n"), line
        record: dict[str, Any] = json.loads(line)
        if record["event"] == event:
            found.append(record)
    return found


async def test_mail_goes_through_both_workers_into_one_audit_stream(
    serve_workers: Callable[..., Any], tmp_path: Path
) -> None:
    relay, _, sock = await serve_workers({"maildir": str(tmp_path / "outbox")})
    workers = children(relay.process.pid)
    assert len(workers) == 2
    # Long subjects make long lines; sent at once, so both workers write at the same time.
    # Whichever worker is free accepts a connection: bursts until both have taken some.
    body = ("y" * 70 + "\r\n") * 40
    subjects: list[str] = []
    lines: list[dict[str, Any]] = []
    while len(delivered_by(lines)) < 2 and len(subjects) < 24 * 5:
        burst = [f"Order {len(subjects) + i} " + "x" * 150 for i in range(24)]
        subjects += burst
        messages = [make_message(subject=subject, body=body) for subject in burst]
        replies = await asyncio.gather(*(send(relay.port, data) for data in messages))
        assert [reply.code for reply in replies] == [250] * 24
        lines += await audit_lines(relay, 24)
    assert delivered_by(lines) == set(workers)
    assert sorted(line["subject"] for line in lines) == sorted(subjects)
    assert len(list((tmp_path / "outbox" / "new").iterdir())) == len(subjects)
    notes = received(sock)
    assert len(notes) == 1 and notes[0].startswith("READY=1\nSTATUS="), notes


def delivered_by(lines: list[dict[str, Any]]) -> set[int]:
    """The workers that delivered these messages: a Maildir file name carries the pid."""
    pids = set()
    for line in lines:
        match = re.search(r"P(\d+)Q", line["upstream_reply"])
        assert match, line
        pids.add(int(match.group(1)))
    return pids


async def notes_until(sock: Any, last: str, seconds: float = 30) -> list[str]:
    """Every systemd notification from now until (and with) one equal to `last`."""
    notes: list[str] = []
    deadline = time.monotonic() + seconds
    while not notes or notes[-1] != last:
        assert time.monotonic() < deadline, notes
        notes.extend(received(sock))
        await asyncio.sleep(0.05)
    return notes


def file_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of an audit file, each of which must be whole JSON."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    assert not text or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def events_in(*paths: Path, event: str = "message") -> list[dict[str, Any]]:
    return [line for path in paths for line in file_lines(path) if line["event"] == event]


async def test_workers_append_whole_lines_to_one_audit_file_across_logrotate(
    serve_workers: Callable[..., Any], tmp_path: Path
) -> None:
    log, rotated, again = (tmp_path / name for name in ("audit.log", "audit.1", "audit.2"))
    relay, path, _ = await serve_workers({"maildir": str(tmp_path / "out")}, audit=str(log))
    workers = children(relay.process.pid)
    # Long lines, written by both workers at the same time (bursts until both have some).
    body = ("y" * 70 + "\r\n") * 40
    subjects: list[str] = []
    while len(delivered_by(events_in(log))) < 2 and len(subjects) < 40 * 5:
        burst = [f"Order {len(subjects) + i} " + "x" * 150 for i in range(40)]
        subjects += burst
        replies = await asyncio.gather(*(send(relay.port, make_message(s, body)) for s in burst))
        assert [reply.code for reply in replies] == [250] * 40
        total = len(subjects)
        await until(lambda: len(events_in(log)) == total)  # noqa: B023 (used at once)
    lines = events_in(log)
    assert sorted(line["subject"] for line in lines) == sorted(subjects)
    assert delivered_by(lines) == set(workers)

    # logrotate: rename, then SIGHUP; every process writes to the new file from then on.
    log.rename(rotated)
    relay.process.send_signal(signal.SIGHUP)
    await until(lambda: len(events_in(log, event="config.reload")) == 1)
    assert (await send(relay.port)).code == 250
    await until(lambda: len(events_in(log)) == 1)

    # A broken file: the workers keep their config but still reopen the log.
    log.rename(again)
    path.write_text("listen: [this is not a mapping\n")
    relay.process.send_signal(signal.SIGHUP)
    await until(lambda: len(events_in(log, event="config.reload_failed")) == 1)
    replies = await asyncio.gather(*(send(relay.port) for _ in range(6)))
    assert [reply.code for reply in replies] == [250] * 6
    await until(lambda: len(events_in(log)) == 6)
    relay.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(relay.process.wait(), 30) == 0
    assert len(events_in(rotated)) == len(subjects) and len(events_in(again)) == 1
    assert len(events_in(log)) == 6


async def test_sighup_reloads_every_worker_and_a_broken_file_none(
    serve_workers: Callable[..., Any], tmp_path: Path
) -> None:
    relay, path, sock = await serve_workers({"maildir": str(tmp_path / "first")})
    received(sock)  # READY=1 of the start
    config = json.loads(path.read_text())
    config["upstream"]["maildir"] = str(tmp_path / "second")
    path.write_text(json.dumps(config))
    relay.process.send_signal(signal.SIGHUP)
    [reload] = await audit_lines(relay, 1, "config.reload")
    assert reload["restart_needed"] == []
    notes = await notes_until(sock, "READY=1")
    assert len(notes) == 2 and re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", notes[0])
    # One line for the whole relay, once every worker runs the new config.
    replies = await asyncio.gather(*(send(relay.port) for _ in range(12)))
    assert [reply.code for reply in replies] == [250] * 12
    await audit_lines(relay, 12)
    assert len(list((tmp_path / "second" / "new").iterdir())) == 12
    assert not (tmp_path / "first" / "new").exists() or not any(
        (tmp_path / "first" / "new").iterdir()
    )

    path.write_text("listen: [this is not a mapping\n")
    relay.process.send_signal(signal.SIGHUP)
    [failed] = await audit_lines(relay, 1, "config.reload_failed")
    assert "YAML" in failed["error"]
    assert len(await notes_until(sock, "READY=1")) == 2
    assert (await send(relay.port)).code == 250
    [line] = await audit_lines(relay, 1)
    assert line["reply"].startswith("250 ")
    relay.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(relay.process.wait(), 30) == 0
    # Only the supervisor read the broken file, and no worker logged a reload of its own.
    assert relay.process.stdout is not None
    rest = await relay.process.stdout.read()
    assert b"config.reload" not in rest


async def test_sigterm_lets_transactions_in_flight_finish_in_every_worker(
    serve_workers: Callable[..., Any], sink: Sink
) -> None:
    relay, _, sock = await serve_workers(sink.upstream())
    workers = children(relay.process.pid)
    sink.handler.data_delay = 2.0
    arrived = []
    handle_data = sink.handler.handle_DATA

    async def counting(*args: Any) -> str:
        arrived.append(1)
        return await handle_data(*args)

    sink.handler.handle_DATA = counting  # type: ignore[method-assign, assignment]
    sending = [asyncio.ensure_future(send(relay.port)) for _ in range(6)]
    # Every message is in flight (the upstream has it) before the relay is told to stop.
    await until(lambda: len(arrived) == 6, 30)
    relay.process.send_signal(signal.SIGTERM)
    replies = await asyncio.wait_for(asyncio.gather(*sending), 30)
    assert [reply.code for reply in replies] == [250] * 6
    assert await asyncio.wait_for(relay.process.wait(), 30) == 0
    assert [m.data for m in sink.messages] == [MESSAGE] * 6
    assert received(sock)[-1] == "STOPPING=1"
    assert not any(alive(pid) for pid in workers)
    lines = [json.loads(line) for line in (await relay.process.stdout.read()).splitlines()]
    assert len([line for line in lines if line["event"] == "message"]) == 6
    with pytest.raises(OSError):
        await send(relay.port)


async def test_connections_are_refused_once_sigterm_arrived_while_mail_is_in_flight(
    serve_workers: Callable[..., Any], sink: Sink
) -> None:
    relay, _, _ = await serve_workers(sink.upstream())
    sink.handler.data_delay = 3.0  # within the upstream's timeout
    sending = asyncio.ensure_future(send(relay.port))
    await asyncio.wait_for(sink.handler.data_started.wait(), 30)
    relay.process.send_signal(signal.SIGTERM)
    # Nobody may take connections into a queue that no worker will serve any more.
    refused = False
    for _ in range(40):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        except ConnectionRefusedError:
            refused = True
            break
        writer.close()
        await asyncio.sleep(0.05)
    assert refused
    assert not sending.done()  # still in flight: the refusal came from the shutdown
    assert (await asyncio.wait_for(sending, 30)).code == 250
    assert await asyncio.wait_for(relay.process.wait(), 30) == 0
    assert [m.data for m in sink.messages] == [MESSAGE]


async def test_a_dead_worker_is_logged_and_replaced(
    serve_workers: Callable[..., Any], sink: Sink
) -> None:
    relay, _, _ = await serve_workers(sink.upstream())
    first, second = children(relay.process.pid)
    os.kill(first, signal.SIGKILL)
    [error] = await audit_lines(relay, 1, "error")
    assert error["stage"] == "worker" and "signal SIGKILL" in error["error"], error
    await until(lambda: len(children(relay.process.pid)) == 2)
    assert second in children(relay.process.pid)
    replies = [await send(relay.port) for _ in range(8)]
    assert [reply.code for reply in replies] == [250] * 8


async def test_a_worker_that_cannot_accept_leaves_connections_to_the_others(
    serve_workers: Callable[..., Any], sink: Sink
) -> None:
    """Workers accept from the supervisor's one queue: a stalled worker is simply passed by.

    With SO_REUSEPORT the kernel would hash about half of these connections to the stopped
    worker, and they would wait there.
    """
    relay, _, _ = await serve_workers(sink.upstream())
    stalled, working = children(relay.process.pid)
    os.kill(stalled, signal.SIGSTOP)
    try:
        replies = [await asyncio.wait_for(send(relay.port), 10) for _ in range(12)]
    finally:
        os.kill(stalled, signal.SIGCONT)
    assert [reply.code for reply in replies] == [250] * 12
    assert len(sink.messages) == 12
    assert children(relay.process.pid) == [stalled, working]


async def test_workers_stop_when_the_supervisor_is_killed(
    serve_workers: Callable[..., Any], sink: Sink
) -> None:
    relay, _, _ = await serve_workers(sink.upstream())
    workers = children(relay.process.pid)
    relay.process.kill()
    await relay.process.wait()
    await until(lambda: not any(alive(pid) for pid in workers))


def test_worker_role_shares_the_connection_limit() -> None:
    role = WorkerRole(index=1, count=3, fds=(5, 6))
    assert WorkerRole.from_env() is None
    assert role.share(100) == 34 and role.share(1) == 1
    os.environ["OUTBOX_RELAY_WORKER"] = role.to_env()
    try:
        assert WorkerRole.from_env() == role
    finally:
        del os.environ["OUTBOX_RELAY_WORKER"]


def test_listen_workers_is_checked_and_0_means_one_per_cpu(tmp_path: Path) -> None:
    path = tmp_path / "relay.yaml"
    base = f"upstream: {{maildir: {tmp_path / 'out'}}}\nquarantine: {{path: {tmp_path / 'q'}}}\n"
    path.write_text(base + "listen: {workers: 0}\n")
    assert load_config(path).listen.effective_workers == len(os.sched_getaffinity(0))
    path.write_text(base + "listen: {workers: -1}\n")
    with pytest.raises(ConfigError, match=r"listen\.workers"):
        load_config(path)


@contextlib.asynccontextmanager
async def two_workers(
    sink: Sink, tmp_path: Path, limits: dict[str, Any], board: Path | None = None
) -> AsyncIterator[tuple[list[RelayServer], int]]:
    """Two in-process relay workers on one reserved port (with a session board, if given)."""
    path = tmp_path / "relay.yaml"
    path.write_text(
        json.dumps(
            {
                "listen": {"host": "127.0.0.1", "port": 0, "hostname": "relay.test"},
                "upstream": sink.upstream(),
                "audit": {"path": str(tmp_path / "audit.log")},
                "quarantine": {"path": str(tmp_path / "quarantine")},
                "limits": limits,
            }
        )
    )
    config = load_config(path)
    sockets, port = listening_sockets("127.0.0.1", 0)
    board_path = str(board) if board is not None else None
    fds = tuple(sock.fileno() for sock in sockets)
    servers = [
        RelayServer(config, make_scanner=clean_scanner, worker=WorkerRole(i, 2, board_path, fds))
        for i in (1, 2)
    ]
    try:
        for server in servers:
            await server.start()
        yield servers, port
    finally:
        for server in servers:
            server.sessions.clear()
            await server.stop(grace=1)
        for sock in sockets:
            sock.close()


def new_session() -> RelaySession:
    session = RelaySession(asyncio.get_running_loop())
    session.peer = ("127.0.0.1", 1)  # type: ignore[assignment]  # aiosmtpd says str: a tuple
    return session


async def test_a_worker_shares_the_port_and_takes_its_share_of_the_limits(
    sink: Sink, tmp_path: Path
) -> None:
    limits = {"max_connections": 3, "max_concurrent_scan_size": "32MiB"}
    async with two_workers(sink, tmp_path, limits) as (servers, port):
        for server in servers:
            assert server.port == port
            assert server.handler.scan_gate.budget == 16 * 1024 * 1024
        assert (await send(port)).code == 250
        assert len(sink.messages) == 1
        first = servers[0]
        first.sessions.update({object(), object()})  # type: ignore[arg-type]
        assert first.admission(new_session()) is not None  # its share of 3 is 2


def test_the_session_board_adds_up_every_workers_sessions(tmp_path: Path) -> None:
    path = tmp_path / "sessions"
    SessionBoard.create(path, 3)
    first, second, third = (SessionBoard(str(path), slot, 3) for slot in range(3))
    first.publish(2)
    second.publish(5)
    assert (first.others(), second.others(), third.others()) == (5, 2, 7)
    SessionBoard.clear(path, 1)  # its worker died
    assert third.others() == 2


async def test_workers_hold_the_connection_limit_together(sink: Sink, tmp_path: Path) -> None:
    """However the kernel spreads connections, the limit is the relay's, not a share each."""
    board = tmp_path / "sessions"
    SessionBoard.create(board, 2)
    async with two_workers(sink, tmp_path, {"max_connections": 3}, board) as (servers, _):
        first, second = servers
        session = new_session()
        second.sessions.update({object(), object()})  # type: ignore[arg-type]
        second.sessions_changed()
        assert second.admission(session) is None  # 2 of 3: a share (2) would have refused
        assert first.admission(session) is None
        first.sessions.add(object())  # type: ignore[arg-type]
        first.sessions_changed()
        assert first.admission(session) is not None and second.admission(session) is not None


async def test_a_real_relay_refuses_the_connection_over_the_limit_whichever_worker(
    serve_workers: Callable[..., Any], sink: Sink
) -> None:
    relay, _, _ = await serve_workers(sink.upstream(), {"max_connections": 3})
    opened = []
    try:
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"220")
            opened.append(writer)
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        opened.append(writer)
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"421 4.7.0")
    finally:
        for writer in opened:
            writer.close()
