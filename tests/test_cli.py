"""The command line, run as a real subprocess: exit codes, messages, and a serving relay."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.support import MESSAGE, send, spawn_serve

REPO = Path(__file__).resolve().parent.parent
EX_CONFIG = 78


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_check_config_accepts_both_bundled_configs() -> None:
    for name in ("dev.yaml", "relay.example.yaml"):
        result = run_cli("check-config", f"config/{name}")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{REPO / 'config' / name}: OK")


def test_check_config_rejects_with_key_path_line_and_78(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("upstream:\n  host: smtp.example.net\n  port: 99999\n")

    result = run_cli("check-config", str(path))

    assert result.returncode == EX_CONFIG
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"outbox-relay: config error: {path}:3: upstream.port: "
        "must be a port number (1-65535), got 99999"
    )


def test_check_config_missing_file_is_78(tmp_path: Path) -> None:
    result = run_cli("check-config", str(tmp_path / "nope.yaml"))
    assert result.returncode == EX_CONFIG
    assert "file not found" in result.stderr


def test_check_config_never_prints_the_password(tmp_path: Path) -> None:
    (tmp_path / "pass").write_text("s3cret-value\n")
    good = tmp_path / "good.yaml"
    good.write_text("upstream: {host: smtp.example.net, username: u, password_file: pass}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "upstream: {host: smtp.example.net, username: u, password_file: pass, tls: none}\n"
    )

    results = [run_cli("check-config", str(good)), run_cli("check-config", str(bad))]

    assert [r.returncode for r in results] == [0, EX_CONFIG]
    assert all("s3cret" not in r.stdout + r.stderr for r in results)


def test_serve_with_invalid_config_exits_78_before_listening(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "listen: {port: 10099}\nupstream: {maildir: out}\nlimits: {max_recipients: -1}\n"
    )

    result = run_cli("serve", "--config", str(path), timeout=20)

    assert result.returncode == EX_CONFIG
    assert "limits.max_recipients" in result.stderr
    assert "listening" not in result.stderr


def test_serve_with_a_broken_rule_pack_exits_78_before_listening(tmp_path: Path) -> None:
    (tmp_path / "pack.yaml").write_text("rules:\n  - id: x\n    category: five-stars\n")
    path = tmp_path / "relay.yaml"
    path.write_text("upstream: {maildir: out}\nrules: {paths: [pack.yaml]}\n")

    result = run_cli("serve", "--config", str(path), timeout=20)

    assert result.returncode == EX_CONFIG
    assert "rule error" in result.stderr and "pack.yaml" in result.stderr
    assert "listening" not in result.stderr


def test_serve_on_a_busy_port_exits_71_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "relay.yaml"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path.write_text(f"listen: {{port: {port}}}\nupstream: {{maildir: out}}\n")

        result = run_cli("serve", "--config", str(path), timeout=20)

    assert result.returncode == 71
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr


def test_console_script_matches_python_m(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "outbox-relay"
    result = subprocess.run(
        [str(script), "check-config", "config/dev.yaml"], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0
    assert result.stdout == run_cli("check-config", "config/dev.yaml").stdout


def test_usage_errors_exit_2() -> None:
    assert run_cli().returncode == 2
    assert run_cli("serve").returncode == 2


async def test_dev_config_serves_and_delivers_into_its_maildir(tmp_path: Path) -> None:
    """`make run`'s config, with only the port and folders moved so tests never collide."""
    config = yaml.safe_load((REPO / "config" / "dev.yaml").read_text())
    config["listen"]["port"] = 0
    config["upstream"]["maildir"] = str(tmp_path / "outbox")
    config["quarantine"]["path"] = str(tmp_path / "quarantine")
    config["rules"]["paths"] = [str(REPO / "rules")]
    path = tmp_path / "dev.yaml"
    path.write_text(yaml.safe_dump(config))

    process = await spawn_serve(path)
    try:
        assert process.stderr is not None and process.stdout is not None
        banner = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", banner)
        assert match, banner
        reply = await send(int(match.group(1)), MESSAGE, rcpt_tos=["a@b.example", "c@d.example"])
        assert reply.code == 250

        events: list[dict[str, Any]] = []
        while not any(e["event"] == "message" for e in events):
            line = await asyncio.wait_for(process.stdout.readline(), 10)
            events.append(json.loads(line))
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    [delivered] = list((tmp_path / "outbox" / "new").iterdir())
    assert delivered.read_bytes() == MESSAGE
    [message] = [e for e in events if e["event"] == "message"]
    assert message["rcpt_to"] == ["a@b.example", "c@d.example"]
    assert message["reply"] == f"{reply.code} {reply.text}"
