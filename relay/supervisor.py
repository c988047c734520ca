"""Several relay processes sharing one port (`listen.workers`), so every core relays mail.

One Python process works on one core at a time (the GIL), and scanning is a large part of
a message's cost. With `listen.workers: N` above 1, `outbox-relay serve` becomes a supervisor
that starts N ordinary relay processes (`serve` again, told their role through WORKER_ENV).
Each accepts
connections from the same listening sockets, which the supervisor opens and hands down, so a
new connection goes to a worker that is waiting for one (as with Postfix's smtpd processes);
each loads the config and the rule packs itself and is, for a client, the whole relay.

The supervisor keeps the outside contracts of a single relay:
- the port: it binds and listens itself, so `port: 0` picks one free port for all workers,
  and a connection that arrives while a worker restarts waits in the queue for another.
  (With SO_REUSEPORT the kernel hashed each connection to one worker, busy or not: on the
  benchmark's mix of one message per connection, one worker queued while the other idled,
  and the relay got about 20% less mail through);
- one audit log: every process appends its own lines to `audit.path`, opened with O_APPEND,
  whole lines in one write each, so lines never interleave (relay.audit); each reopens the
  file after logrotate, and on SIGHUP (the supervisor passes it on to the workers). Copying
  every line through the supervisor cost about 0.2 ms of CPU per message. With the audit
  log on standard output, workers write their lines to a pipe each, and the supervisor
  passes whole lines on to its own standard output;
- systemd: workers notify the supervisor's own NOTIFY_SOCKET; it sends `READY=1` once every
  worker is ready, `RELOADING=1` ... `READY=1` around a reload of all of them, and
  `STOPPING=1` on SIGTERM;
- SIGHUP: the supervisor reads the file first; a broken one is logged once
  (`config.reload_failed`) and nothing changes but that every process reopens the audit
  log (workers on SIGUSR1); otherwise every worker reloads, and one
  `config.reload` line follows once all have (a worker that fails, say on a broken rule
  pack, logs `config.reload_failed` with its reason instead);
- SIGTERM: every worker stops gracefully (`limits.shutdown_timeout`), then the supervisor
  exits 0.
A worker that dies is logged (`error`, stage `worker`) and started again; one that fails to
start at start-up stops the whole relay with its exit status. Workers stop by themselves when
the supervisor's end of their standard input closes (the supervisor was killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path

from relay import audit as events
from relay.audit import AuditLog
from relay.config import Config, load_config
from relay.errors import ConfigError, RelayError
from relay.server import (
    LISTEN_BACKLOG,
    RELOADED,
    REOPEN_SIGNAL,
    SESSIONS_ENV,
    WORKER_ENV,
    SessionBoard,
    WorkerRole,
    _monotonic_usec,
    sd_notify,
)

# Longest audit line read from a worker (a message with very many hits stays well below).
LINE_LIMIT = 64 * 1024 * 1024
FUNNEL_CHUNK = 256 * 1024
# How long a worker may take to load its rules and listen, or to reload.
READY_TIMEOUT = 120.0
# Beyond `limits.shutdown_timeout`: time for a worker to close its sessions and exit.
STOP_MARGIN = 10.0
RESTART_DELAY_MAX = 30.0


def listening_sockets(host: str, port: int) -> tuple[list[socket.socket], int]:
    """Listen on every address of host:port; the sockets (for the workers) and the port."""
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            sock.listen(LISTEN_BACKLOG)
            port = port or sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets, port


@dataclass
class Worker:
    """One relay process slot; `process` is replaced when the worker is started again."""

    index: int
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Future[bool] | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    failures: int = 0


class Supervisor:
    """Starts `listen.workers` relay processes on one port and keeps them running."""

    def __init__(self, config: Config) -> None:
        if config.source is None:
            raise ConfigError("several workers need a config file to start them with")
        self.config = config
        self.source = config.source.resolve()
        self.count = config.listen.effective_workers
        self.workers = [Worker(index) for index in range(1, self.count + 1)]
        self.port = 0
        self._listening: list[socket.socket] = []
        self.stopping = False
        self.started = False
        self._audit: AuditLog | None = None
        self._notify: socket.socket | None = None
        self._notify_dir: tempfile.TemporaryDirectory[str] | None = None
        self._by_pid: dict[int, Worker] = {}
        self._done = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[object]] = set()

    @property
    def audit(self) -> AuditLog:
        assert self._audit is not None
        return self._audit

    # --- start-up ---

    async def run(self) -> int:
        """Serve until SIGTERM; the exit status (a worker's, if one could not start)."""
        self._listening, self.port = listening_sockets(
            self.config.listen.host, self.config.listen.port
        )
        try:
            try:
                self._audit = AuditLog(self.config.audit.path)
            except OSError as exc:
                raise ConfigError(f"cannot open: {exc.strerror}", key_path="audit.path") from exc
            self._open_notify_socket()
            try:
                return await self._run()
            finally:
                await asyncio.to_thread(self.audit.close)
                self._close_notify_socket()
        finally:
            for sock in self._listening:
                sock.close()

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._spawn, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._spawn, self.reload)
        for worker in self.workers:
            await self._start(worker)
        ready = await asyncio.gather(*(self._wait_ready(worker) for worker in self.workers))
        if not all(ready):
            failed = [w for w, ok in zip(self.workers, ready, strict=True) if not ok]
            await self.stop()
            codes = [w.process.returncode for w in failed if w.process is not None]
            return next((code for code in codes if code), 1)
        if self.stopping:  # SIGTERM while the workers were starting
            await self._done.wait()
            return 0
        self.started = True
        listen = self.config.listen
        sd_notify("READY=1", f"STATUS=listening on {listen.host}:{self.port}")
        print(
            f"outbox-relay: {self.count} workers listening on {listen.host}:{self.port}",
            file=sys.stderr,
            flush=True,
        )
        await self._done.wait()
        return 0

    async def _start(self, worker: Worker) -> None:
        assert self._notify_dir is not None
        fds = tuple(sock.fileno() for sock in self._listening)
        role = WorkerRole(worker.index, self.count, fds=fds)
        env = {
            **os.environ,
            WORKER_ENV: role.to_env(),
            SESSIONS_ENV: str(self._board_path()),
            "NOTIFY_SOCKET": str(Path(self._notify_dir.name) / "notify"),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay",
            "serve",
            "--config",
            str(self.source),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            pass_fds=fds,
        )
        worker.process = process
        worker.ready = asyncio.get_running_loop().create_future()
        self._by_pid[process.pid] = worker
        assert process.stdout is not None
        funnel = asyncio.create_task(self._funnel(process.stdout))
        worker.tasks = [funnel, asyncio.create_task(self._watch(worker, process, funnel))]

    async def _wait_ready(self, worker: Worker) -> bool:
        if worker.ready is None:
            return False
        try:
            return await asyncio.wait_for(asyncio.shield(worker.ready), READY_TIMEOUT)
        except TimeoutError:
            return False

    # --- the audit funnel ---

    async def _funnel(self, stream: asyncio.StreamReader) -> None:
        """Copy a worker's audit lines into the one audit log, whole lines only.

        Lines are passed on in blocks as they arrive; a newline never occurs inside a UTF-8
        sequence, so cutting after one keeps every character whole.
        """
        pending = b""
        while chunk := await stream.read(FUNNEL_CHUNK):
            pending += chunk
            end = pending.rfind(b"\n")
            if end >= 0:
                self.audit.write_line(pending[:end].decode("utf-8", "replace"))
                pending = pending[end + 1 :]
            elif len(pending) > LINE_LIMIT:
                pending = b""
                self.audit.emit(events.EVENT_ERROR, stage="worker", error="audit line too long")
        if pending:  # the worker died in the middle of a line
            self.audit.emit(
                events.EVENT_ERROR, stage="worker", error="a worker's last audit line was cut off"
            )

    # --- readiness, from the workers' sd_notify ---

    def _open_notify_socket(self) -> None:
        self._notify_dir = tempfile.TemporaryDirectory(prefix="outbox-relay-")
        SessionBoard.create(self._board_path(), self.count)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(str(Path(self._notify_dir.name) / "notify"))
        sock.setblocking(False)
        self._notify = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._notified)

    def _board_path(self) -> Path:
        """The session board every worker maps (see relay.server.SessionBoard)."""
        assert self._notify_dir is not None
        return Path(self._notify_dir.name) / "sessions"

    def _close_notify_socket(self) -> None:
        if self._notify is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(self._notify.fileno())
            self._notify.close()
        if self._notify_dir is not None:
            self._notify_dir.cleanup()

    def _notified(self) -> None:
        assert self._notify is not None
        credentials = socket.CMSG_SPACE(3 * 4)  # struct ucred: pid, uid, gid
        while True:
            try:
                data, ancillary, _, _ = self._notify.recvmsg(4096, credentials)
            except (BlockingIOError, InterruptedError):
                return
            pid = next(
                (
                    int.from_bytes(cdata[:4], sys.byteorder)
                    for level, kind, cdata in ancillary
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
                ),
                None,
            )
            worker = self._by_pid.get(pid) if pid is not None else None
            if worker is None or worker.ready is None or worker.ready.done():
                continue
            states = data.decode("utf-8", "replace").split("\n")
            if "READY=1" in states:
                worker.ready.set_result(f"{RELOADED}=0" not in states)

    # --- workers that exit ---

    async def _watch(
        self, worker: Worker, process: asyncio.subprocess.Process, funnel: asyncio.Task[None]
    ) -> None:
        code = await process.wait()
        await funnel  # its last audit lines
        self._by_pid.pop(process.pid, None)
        if worker.ready is not None and not worker.ready.done():
            worker.ready.set_result(False)
        if self.stopping or not self.started:
            return
        SessionBoard.clear(self._board_path(), worker.index - 1)  # its sessions died with it
        worker.failures += 1
        # Also lets a SIGTERM sent to the whole process group reach us before we restart.
        await asyncio.sleep(min(RESTART_DELAY_MAX, 0.5 * 2 ** (worker.failures - 1)))
        if self.stopping:
            return
        how = f"exit status {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        self.audit.emit(
            events.EVENT_ERROR,
            stage="worker",
            error=f"worker {worker.index} (pid {process.pid}) ended with {how}; starting it again",
        )
        await self._start(worker)
        if await self._wait_ready(worker):
            worker.failures = 0

    # --- signals ---

    def _spawn(self, action: Callable[[], Coroutine[object, object, None]]) -> None:
        task = asyncio.get_running_loop().create_task(action())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _live(self) -> list[tuple[Worker, asyncio.subprocess.Process]]:
        return [
            (worker, worker.process)
            for worker in self.workers
            if worker.process is not None and worker.process.returncode is None
        ]

    async def stop(self) -> None:
        """SIGTERM every worker, wait for their sessions in flight, then end `run()`."""
        if self.stopping:
            return
        self.stopping = True
        sd_notify("STOPPING=1")
        # The workers close their sockets as they stop; once ours is closed too, a new client
        # is refused at once instead of waiting in the queue while the workers drain.
        for sock in self._listening:
            sock.close()
        live = self._live()
        for _, process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        grace = self.config.limits.shutdown_timeout + STOP_MARGIN
        waits = [asyncio.create_task(process.wait()) for _, process in live]
        if waits:
            _, late = await asyncio.wait(waits, timeout=grace)
            for _, process in live:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            if late:
                await asyncio.wait(late)
        tasks = [task for worker in self.workers for task in worker.tasks]
        if tasks:
            await asyncio.wait(tasks)  # every worker's last audit lines are in
        self._done.set()

    async def reload(self) -> None:
        """Check the file, then have every worker reload it; READY=1 once all have."""
        async with self._reload_lock:
            if self.stopping or not self.started:
                return
            sd_notify("RELOADING=1", _monotonic_usec())
            try:
                await self._reload(time.monotonic())
            finally:
                sd_notify("READY=1")

    async def _reload(self, started: float) -> None:
        try:
            config = await asyncio.to_thread(load_config, self.source)
            new_audit = None
            if config.audit.path != self.config.audit.path:
                try:
                    new_audit = AuditLog(config.audit.path)
                except OSError as exc:
                    raise ConfigError(
                        f"cannot open: {exc.strerror}", key_path="audit.path"
                    ) from exc
        except Exception as exc:  # the workers keep running as they are
            self.audit.reopen()
            reason = str(exc) if isinstance(exc, RelayError) else f"{type(exc).__name__}: {exc}"
            self.audit.emit(events.EVENT_CONFIG_RELOAD_FAILED, file=str(self.source), error=reason)
            # The workers keep their config, but a SIGHUP may follow logrotate. Only ready
            # workers handle the signal (one still starting would die of it) and a starting
            # one opens the file anew anyway.
            for worker, process in self._live():
                if worker.ready is not None and worker.ready.done():
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(REOPEN_SIGNAL)
            return
        if new_audit is not None:
            old, self._audit = self.audit, new_audit
            await asyncio.to_thread(old.close)
        else:
            self.audit.reopen()
        # The listener (and the number of workers) stays as started: a restart changes it.
        restart_needed = [
            f"listen.{key}"
            for key in ("host", "port", "hostname", "workers")
            if getattr(config.listen, key) != getattr(self.config.listen, key)
        ]
        self.config = config
        waiting = []
        for worker, process in self._live():
            if worker.ready is None or not worker.ready.done():
                continue  # still starting: it reads the new file anyway
            worker.ready = asyncio.get_running_loop().create_future()
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGHUP)
            waiting.append(self._wait_ready(worker))
        # A worker that failed logged config.reload_failed itself, with its reason.
        if all(await asyncio.gather(*waiting)):
            self.audit.emit(
                events.EVENT_CONFIG_RELOAD,
                file=str(self.source),
                restart_needed=restart_needed,
                duration_ms=round((time.monotonic() - started) * 1000),
            )


def serve(config: Config) -> int:
    """`outbox-relay serve`: one relay process, or a supervisor of `listen.workers` of them."""
    from relay.server import RelayServer, announce

    role = WorkerRole.from_env()
    if role is None and config.listen.effective_workers > 1:
        return asyncio.run(Supervisor(config).run())
    server = RelayServer(config, worker=role)
    asyncio.run(server.serve(ready=announce if role is None else None))
    return 0
