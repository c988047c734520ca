"""Shared fixtures: a real upstream sink, config files, and a relay running in the test's loop.

- `sink`: a started `tests.support.Sink` (aiosmtpd on 127.0.0.1, port 0) recording every
  message; set `sink.handler.mail_reply`, `.rcpt_replies`, `.data_reply`, `.data_delay` to make
  it answer 4xx/5xx, refuse some recipients or be slow; `await sink.stop()` takes it down.
- `write_config(**sections)`: writes a YAML config into tmp_path and returns its path.
  Defaults: listen 127.0.0.1 port 0, audit to `tmp_path/audit.log`, quarantine under
  tmp_path; pass `upstream=sink.upstream()` (or any dict) and other sections to override.
- `start_relay(config_path, make_scanner=...)`: starts a RelayServer in the test's loop and
  returns a `tests.support.RunningRelay` (`.port`, `.send()`, `.audit_events()`,
  `.messages()`, `.server`); every relay is stopped at teardown. It scans with the real rule
  packs of the config (`tests.support.cached_rules_scanner`, loaded once per session); pass
  `make_scanner=relay.server.clean_scanner` to skip scanning, or `rules_scanner` to reload
  packs whose content a test changes. `tests.support.VIOLATION` is an unmistakable violation.
- `relay`: a relay already started in front of `sink`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.config import load_config
from relay.server import RelayServer, ScannerFactory
from tests.support import RunningRelay, Sink, cached_rules_scanner

WriteConfig = Callable[..., Path]
StartRelay = Callable[..., Awaitable[RunningRelay]]


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    server = await Sink().start()
    yield server
    await server.stop()


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    def write(name: str = "relay.yaml", **sections: dict[str, Any]) -> Path:
        config: dict[str, Any] = {
            "listen": {"host": "127.0.0.1", "port": 0, "hostname": "relay.test"},
            "quarantine": {"path": str(tmp_path / "quarantine")},
            "audit": {"path": str(tmp_path / "audit.log")},
        }
        for key, value in sections.items():
            config[key] = {**config.get(key, {}), **value}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture
async def start_relay() -> AsyncIterator[StartRelay]:
    running: list[RelayServer] = []

    async def start(
        config_path: Path, *, make_scanner: ScannerFactory = cached_rules_scanner
    ) -> RunningRelay:
        server = RelayServer(load_config(config_path), make_scanner=make_scanner)
        await server.start()
        running.append(server)
        return RunningRelay(server, config_path)

    yield start
    for server in running:
        await server.stop(grace=2)


@pytest.fixture
async def relay(sink: Sink, write_config: WriteConfig, start_relay: StartRelay) -> RunningRelay:
    return await start_relay(write_config(upstream=sink.upstream()))
