"""Private Postfix instances on loopback, for end-to-end tests and the benchmark.

A test never touches the machine's own Postfix: every instance gets its own config, queue and
data directories under a temporary folder, listens on free 127.0.0.1 ports only, and every
Postfix command runs with `-c DIR` (and `MAIL_CONFIG=DIR`). Backoff times are a second or two
so deferred mail is retried within a test; `flush()` asks for a retry at once.

`ensure_postfix()` installs Debian's `postfix` and `swaks` when they are missing, so a clean
machine runs these tests without anything installed by hand. It fails loudly, never skips.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

POSTFIX = Path("/usr/sbin/postfix")
POSTQUEUE = Path("/usr/sbin/postqueue")
POSTSUPER = Path("/usr/sbin/postsuper")
SMTP_SOURCE = Path("/usr/sbin/smtp-source")
SMTP_SINK = Path("/usr/sbin/smtp-sink")
LOOPBACK = "127.0.0.1"

_INSTALL_LOCK = Path(tempfile.gettempdir()) / "outbox-relay-postfix-install.lock"
_installed_checked = False


class MTAError(RuntimeError):
    """Postfix could not be installed, configured, started or inspected."""


# Debian packages the tests use and the command each provides (ss and pgrep let the harness
# test check which addresses an instance listens on).
PACKAGES = {"postfix": "postfix", "swaks": "swaks", "ss": "iproute2", "pgrep": "procps"}


def _have_tools() -> bool:
    binaries = (POSTFIX, POSTQUEUE, POSTSUPER, SMTP_SOURCE, SMTP_SINK)
    commands = [cmd for cmd in PACKAGES if cmd != "postfix"]
    return all(p.exists() for p in binaries) and all(shutil.which(c) for c in commands)


def ensure_postfix() -> None:
    """Install Debian's postfix and swaks when missing; raise MTAError with the reason if not.

    The debconf answer "No configuration" keeps the package from writing a system main.cf,
    so the machine's default instance has nothing to start with and stays down.
    """
    global _installed_checked
    if _installed_checked or _have_tools():
        _installed_checked = True
        return
    if os.geteuid() != 0:
        raise MTAError(
            "postfix or swaks is missing and this is not root; install them with: "
            "apt-get install --no-install-recommends postfix swaks"
        )
    if shutil.which("apt-get") is None:
        raise MTAError("postfix or swaks is missing and apt-get is not available")
    # Two test processes may both find the tools missing: one installs, the other waits.
    with _INSTALL_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _have_tools():
            _apt_install()
    if not _have_tools():
        raise MTAError("apt-get reported success but postfix/swaks binaries are still missing")
    _installed_checked = True


def _apt_install() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    preseed = (
        "postfix postfix/main_mailer_type select No configuration\n"
        "postfix postfix/mailname string localhost\n"
    )
    if shutil.which("debconf-set-selections"):
        subprocess.run(["debconf-set-selections"], input=preseed, text=True, env=env, check=False)
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES.values()]
    first = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if first.returncode == 0:
        return
    # A machine whose package lists are stale or absent needs one update first.
    update = subprocess.run(
        ["apt-get", "update", "-q"], env=env, capture_output=True, text=True, check=False
    )
    second = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if second.returncode != 0:
        raise MTAError(
            "could not install postfix and swaks with apt-get "
            f"(update exit {update.returncode}, install exit {second.returncode}):\n"
            + (second.stderr or second.stdout)[-2000:]
        )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 10.0, host: str = LOOPBACK) -> None:
    """Block until something accepts TCP connections on host:port, or raise MTAError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise MTAError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    """Poll predicate until it is true; raise AssertionError naming what did not happen."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# The services a relay-only instance needs (pickup too: `postqueue -f` wakes the queue
# manager through it). chroot is off (column 5 = n) because the instance's queue lives in a
# temporary folder, not under /var/spool/postfix.
_MASTER_BASE = """\
# service   type       private unpriv chroot wakeup maxproc command + args
{listen}   inet       n       -      n      -      -       smtpd
pickup      unix       n       -      n      60     1       pickup
cleanup     unix       n       -      n      -      0       cleanup
qmgr        unix       n       -      n      300    1       qmgr
rewrite     unix       -       -      n      -      -       trivial-rewrite
bounce      unix       -       -      n      -      0       bounce
defer       unix       -       -      n      -      0       bounce
trace       unix       -       -      n      -      0       bounce
verify      unix       -       -      n      -      1       verify
flush       unix       n       -      n      1000?  0       flush
proxymap    unix       -       -      n      -      -       proxymap
smtp        unix       -       -      n      -      -       smtp
relay       unix       -       -      n      -      -       smtp
showq       unix       n       -      n      -      -       showq
error       unix       -       -      n      -      -       error
retry       unix       -       -      n      -      -       error
discard     unix       -       -      n      -      -       discard
anvil       unix       -       -      n      -      1       anvil
scache      unix       -       -      n      -      1       scache
postlog     unix-dgram n       -      n      -      1       postlogd
"""

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "config" / "postfix"
POSITIONS = ("content-filter", "smarthost")
# The ports the example fragments use; tests substitute free ones.
EXAMPLE_RELAY_PORT = "10025"
EXAMPLE_LISTENER = "127.0.0.1:10026"


def example_main_cf(position: str, relay_port: int) -> dict[str, str]:
    """The active `key = value` lines of config/postfix/POSITION/main.cf, relay port swapped."""
    settings = {}
    for raw in (EXAMPLES / position / "main.cf").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        settings[key.strip()] = value.strip().replace(f":{EXAMPLE_RELAY_PORT}", f":{relay_port}")
    return settings


def example_master_cf(position: str, listener_port: int) -> str:
    """config/postfix/POSITION/master.cf with its loopback listener moved to listener_port."""
    text = (EXAMPLES / position / "master.cf").read_text()
    if EXAMPLE_LISTENER not in text:
        raise MTAError(f"{position}/master.cf no longer defines {EXAMPLE_LISTENER}")
    return text.replace(EXAMPLE_LISTENER, f"{LOOPBACK}:{listener_port}")


@dataclass
class PostfixInstance:
    """A private Postfix on loopback, started on enter and stopped (queue and all) on exit.

    relayhost: where every message goes next (the smarthost), as (host, port).
    position: None for a plain relay, or "content-filter" / "smarthost" to add the example
      fragments from config/postfix/POSITION/ (main.cf and master.cf) as an operator would.
    relay_port: where outbox-relay listens (the content filter's destination).
    port: the instance's ordinary SMTP listener; listener_port: the fragment's loopback
      listener (re-injection in position 1, outbox-relay's upstream in position 2).
    """

    relayhost: tuple[str, int]
    position: str | None = None
    relay_port: int = 0
    name: str = "mta"
    maxproc: int = 20
    extra_main: dict[str, str] = field(default_factory=dict)
    port: int = 0
    listener_port: int = 0
    root: Path = field(default_factory=Path)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    def __enter__(self) -> PostfixInstance:
        ensure_postfix()
        self._tmp = tempfile.TemporaryDirectory(prefix=f"outbox-{self.name}-")
        self.root = Path(self._tmp.name)
        # Postfix daemons drop to the postfix user and must traverse the folder.
        self.root.chmod(0o755)
        if self.position is not None and self.position not in POSITIONS:
            raise MTAError(f"unknown position {self.position!r}; expected one of {POSITIONS}")
        self.port = self.port or free_port()
        if self.position is not None:
            self.listener_port = self.listener_port or free_port()
        try:
            self._write_config()
            self._run(POSTFIX, "start")
            wait_for_port(self.port)
            if self.listener_port:
                wait_for_port(self.listener_port)
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._teardown()

    def main_cf(self) -> dict[str, str]:
        """The main.cf settings of this instance, as written."""
        host, port = self.relayhost
        settings = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.root / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": f"{self.name}.outbox-relay.test",
            "mydomain": "outbox-relay.test",
            "myorigin": "$myhostname",
            "inet_interfaces": LOOPBACK,
            "inet_protocols": "ipv4",
            "smtp_bind_address": LOOPBACK,
            "mynetworks": "127.0.0.0/8",
            "mynetworks_style": "host",
            # No local delivery at all: this instance only relays.
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:5.1.1 local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "relayhost": f"[{host}]:{port}",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtp_dns_support_level": "disabled",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "smtp_connect_timeout": "5s",
            "message_size_limit": str(64 * 1024 * 1024),
            "biff": "no",
            # Retry deferred mail within seconds and never bounce it during a test.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "maximal_queue_lifetime": "1d",
            "bounce_queue_lifetime": "1d",
            "default_destination_concurrency_limit": str(self.maxproc),
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.root),
            "smtputf8_enable": "yes",
        }
        if self.position is not None:
            settings.update(example_main_cf(self.position, self.relay_port))
        settings.update(self.extra_main)
        return settings

    def _write_config(self) -> None:
        self.config_dir.mkdir()
        (self.root / "data").mkdir()
        self.queue_dir.mkdir()
        main = "".join(f"{key} = {value}\n" for key, value in self.main_cf().items())
        (self.config_dir / "main.cf").write_text(main)
        master = _MASTER_BASE.format(listen=f"{LOOPBACK}:{self.port}")
        if self.position is not None:
            master += example_master_cf(self.position, self.listener_port)
        (self.config_dir / "master.cf").write_text(master)
        # Postfix waits for a main.cf younger than a second or two to "settle" (it re-reads
        # it until the mtime is old enough); back-date both files so start-up is instant.
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.config_dir / name, (past, past))
        shutil.chown(self.root / "data", "postfix", "postfix")

    def _env(self) -> dict[str, str]:
        return {**os.environ, "MAIL_CONFIG": str(self.config_dir)}

    def _run(self, binary: Path, *args: str, check: bool = True) -> str:
        cmd = [str(binary), "-c", str(self.config_dir), *args]
        done = subprocess.run(
            cmd, env=self._env(), capture_output=True, text=True, timeout=60, check=False
        )
        if check and done.returncode != 0:
            raise MTAError(
                f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr}{done.stdout}\n"
                f"maillog:\n{self.log()[-3000:]}"
            )
        return done.stdout

    def _master_running(self) -> bool:
        pid_file = self.queue_dir / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def _teardown(self) -> None:
        if self._tmp is None:
            return
        if self._master_running():
            with contextlib.suppress(MTAError, subprocess.TimeoutExpired):
                self._run(POSTFIX, "stop", check=False)
            deadline = time.monotonic() + 10
            while self._master_running() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._master_running():
                with contextlib.suppress(MTAError, subprocess.TimeoutExpired):
                    self._run(POSTFIX, "abort", check=False)
        self._tmp.cleanup()
        self._tmp = None

    def log(self) -> str:
        """The instance's mail log so far (empty when none was written yet)."""
        try:
            return self.maillog.read_text(errors="replace")
        except OSError:
            return ""

    def queue(self) -> list[dict[str, Any]]:
        """Every message in the queue, as `postqueue -j` describes it (one dict each)."""
        out = self._run(POSTQUEUE, "-j")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self) -> None:
        """Ask Postfix to retry every deferred message now (`postqueue -f`)."""
        self._run(POSTQUEUE, "-f")

    def delete_all(self) -> None:
        """Drop every queued message (`postsuper -d ALL`)."""
        self._run(POSTSUPER, "-d", "ALL")

    def wait_deferred(self, timeout: float = 20) -> list[dict[str, Any]]:
        """Wait until the queue holds exactly one message that a delivery attempt deferred.

        With one-second backoffs Postfix moves such a message deferred -> incoming -> active
        -> deferred every second or so, so the proof is a delay reason on every recipient,
        whichever of those queues it sits in at the moment; bounced mail leaves the queue.
        """
        return self.wait_queue(
            lambda q: len(q) == 1 and all(r.get("delay_reason") for r in q[0]["recipients"]),
            timeout,
            "one deferred message",
        )

    def wait_queue(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float, what: str
    ) -> list[dict[str, Any]]:
        """Poll the queue until predicate(queue) holds; return that queue."""
        seen: list[dict[str, Any]] = []

        def check() -> bool:
            nonlocal seen
            seen = self.queue()
            return predicate(seen)

        try:
            wait_until(check, timeout, what, interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; queue: {seen}; maillog:\n{self.log()[-3000:]}") from None
        return seen


@dataclass
class SMTPSink:
    """A thread-run aiosmtpd sink on a fixed 127.0.0.1 port that records raw messages.

    It can be stopped and started again on the same port, which is how tests take the
    "smarthost" down and bring it back.
    """

    port: int = 0
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    _controller: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> SMTPSink:
        from aiosmtpd.controller import Controller

        sink = self

        class _Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                raw = envelope.original_content or envelope.content
                with sink._lock:
                    sink.messages.append((envelope.mail_from, list(envelope.rcpt_tos), bytes(raw)))
                return "250 2.0.0 Ok: stored"

        self.port = self.port or free_port()
        self._controller = Controller(
            _Handler(),
            hostname=LOOPBACK,
            port=self.port,
            data_size_limit=64 * 1024 * 1024,
            server_hostname="sink.outbox-relay.test",
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SMTPSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def received(self) -> list[tuple[str, list[str], bytes]]:
        with self._lock:
            return list(self.messages)


@contextlib.contextmanager
def postfix(relayhost: tuple[str, int], **kwargs: Any) -> Iterator[PostfixInstance]:
    """Shorthand: `with postfix((LOOPBACK, sink.port)) as mta: ...`."""
    with PostfixInstance(relayhost=relayhost, **kwargs) as mta:
        yield mta


@dataclass
class RelayProcess:
    """outbox-relay run as an operator runs it: `python -m relay serve --config FILE`.

    A real process, so stopping it (SIGTERM) and starting it again is what a restart is.
    Its stdout and stderr go to files next to the config, shown when it fails to start.
    """

    config: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def output(self) -> Path:
        return self.config.with_suffix(".out")

    def start(self, timeout: float = 30.0) -> RelayProcess:
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "serve", "--config", str(self.config)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise MTAError(
                    f"outbox-relay exited {self.proc.returncode} at start:\n{self.log()[-3000:]}"
                )
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise MTAError(
                        f"outbox-relay not listening after {timeout}s:\n{self.log()[-3000:]}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        try:
            return self.output.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> RelayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def strip_trace(data: bytes) -> tuple[list[bytes], bytes]:
    """Split the trace headers relays prepend (Received:, X-Outbox-Relay-*) from the rest.

    Returns (trace header fields, everything after them). A relay that only prepends trace
    headers leaves the rest byte-identical to what the sender sent.
    """
    trace: list[bytes] = []
    rest = data
    while True:
        name = rest.split(b":", 1)[0].lower()
        if name != b"received" and not name.startswith(b"x-outbox-relay-"):
            return trace, rest
        # One header field: its first line plus continuation lines (starting with space/tab).
        end = rest.index(b"\r\n") + 2
        while rest[end : end + 1] in (b" ", b"\t"):
            end = rest.index(b"\r\n", end) + 2
        trace.append(rest[:end])
        rest = rest[end:]
