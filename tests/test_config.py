"""Config loading: defaults, typed values, and one clear error (key path + line) per mistake."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from relay.config import Config, load_config, parse_config
from relay.errors import ConfigError
from relay.model import Action, Category

REPO = Path(__file__).resolve().parent.parent
SECRET = "hunter2-Sup3rSecret"


def write(tmp_path: Path, text: str, name: str = "relay.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error_for(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return caught.value


def test_minimal_config_gets_every_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "upstream: {host: smtp.example.net}\n"))

    assert (config.listen.host, config.listen.port, config.listen.hostname) == (
        "127.0.0.1",
        10025,
        None,
    )
    up = config.upstream
    assert (up.host, up.port, up.effective_port, up.tls, up.timeout, up.verify) == (
        "smtp.example.net",
        None,
        587,
        "starttls",
        60.0,
        True,
    )
    assert (up.username, up.password_file, up.ca_file, up.maildir) == (None, None, None, None)
    assert config.quarantine.path == Path("/var/lib/outbox-relay/quarantine")
    assert config.audit.path is None
    assert len(config.rules.paths) == 1 and config.rules.paths[0].is_dir()
    assert (config.policy.mode, config.policy.default_action, dict(config.policy.actions)) == (
        "enforce",
        Action.QUARANTINE,
        {},
    )
    assert (
        config.limits.max_message_size,
        config.limits.max_recipients,
        config.limits.shutdown_timeout,
    ) == (10_240_000, 1000, 30.0)
    assert config.source == tmp_path / "relay.yaml"


def test_implicit_tls_defaults_to_port_465(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "upstream: {host: smtp.example.net, tls: tls}\n"))
    assert config.upstream.effective_port == 465


def test_full_config_is_typed(tmp_path: Path) -> None:
    (tmp_path / "pass").write_text(SECRET + "\n")
    (tmp_path / "rules").mkdir()
    path = write(
        tmp_path,
        """
        listen: {host: 0.0.0.0, port: 2525, hostname: relay.example.net}
        upstream:
          host: smtp.example.net
          port: 465
          tls: tls
          username: relay
          password_file: pass
          timeout: 2m
        quarantine: {path: q}
        audit: {path: audit.log}
        rules: {paths: [rules]}
        policy:
          mode: monitor
          default_action: reject
          actions: {incentivized-review: tag, off-platform-contact: forward}
        limits: {max_message_size: 20MiB, max_recipients: 50, shutdown_timeout: 5s}
        """,
    )

    config = load_config(path)

    assert config.listen.port == 2525
    assert config.upstream.timeout == 120.0
    assert config.upstream.password_file is not None
    assert config.upstream.password_file.reveal() == SECRET
    assert config.quarantine.path == tmp_path / "q"
    assert config.audit.path == tmp_path / "audit.log"
    assert config.rules.paths == (tmp_path / "rules",)
    assert config.policy.default_action is Action.REJECT
    assert dict(config.policy.actions) == {
        Category.INCENTIVIZED_REVIEW: Action.TAG,
        Category.OFF_PLATFORM_CONTACT: Action.FORWARD,
    }
    assert config.limits.max_message_size == 20 * 1024 * 1024
    assert config.limits.shutdown_timeout == 5.0
    assert SECRET not in repr(config) and SECRET not in str(config)


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "packs").mkdir()
    path = write(
        folder,
        "upstream: {maildir: ../var/outbox}\nrules: {paths: [packs]}\naudit: {path: a.log}\n",
    )
    monkeypatch.chdir(REPO)

    config = load_config(path)

    assert config.upstream.maildir == tmp_path / "var" / "outbox"
    assert config.rules.paths == (folder / "packs",)
    assert config.audit.path == folder / "a.log"


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "upstream: {host: smtp.example.net}\n"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listen.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.policy.actions[Category.REVIEW_GATING] = Action.FORWARD  # type: ignore[index]


# (yaml, dotted key path, line, fragment of the message)
BAD_CONFIGS = [
    pytest.param(
        "upstream: {host: smtp.example.net}\nlisten:\n  host: 127.0.0.1\n  prot: 25\n",
        "listen.prot",
        4,
        "unknown key; did you mean 'port'?",
        id="unknown-key-with-suggestion",
    ),
    pytest.param(
        "upstream: {host: smtp.example.net}\nlogging: {level: debug}\n",
        "logging",
        2,
        "unknown key; known keys: listen, upstream",
        id="unknown-section",
    ),
    pytest.param(
        "upstream: {host: smtp.example.net}\nlisten:\n  port: '25'\n",
        "listen.port",
        3,
        "must be a port number (0-65535), got a string",
        id="port-wrong-type",
    ),
    pytest.param(
        "upstream:\n  host: smtp.example.net\n  port: 70000\n",
        "upstream.port",
        3,
        "must be a port number (1-65535), got 70000",
        id="port-out-of-range",
    ),
    pytest.param(
        "upstream:\n  host: smtp.example.net\n  port: 0\n",
        "upstream.port",
        3,
        "got 0",
        id="upstream-port-zero",
    ),
    pytest.param(
        "upstream: {host: smtp.example.net}\nlisten: {port: true}\n",
        "listen.port",
        2,
        "got a boolean",
        id="port-boolean",
    ),
    pytest.param(
        "listen: {port: 2525}\n",
        "upstream",
        None,
        "is required",
        id="missing-upstream",
    ),
    pytest.param(
        "upstream: {}\n",
        "upstream",
        1,
        "needs `host` (the smarthost) or `maildir`",
        id="empty-upstream",
    ),
    pytest.param(
        "upstream:\n  host: smtp.example.net\n  maildir: /tmp/x\n",
        "upstream.maildir",
        3,
        "not both",
        id="host-and-maildir",
    ),
    pytest.param(
        "upstream:\n  host: smtp.example.net\n  tls: ssl\n",
        "upstream.tls",
        3,
        "must be one of none, starttls, tls; got 'ssl'",
        id="bad-tls",
    ),
    pytest.param(
        "upstream:\n  host: smtp.example.net\n  username: relay\n",
        "upstream.username",
        3,
        "needs upstream.password_file",
        id="username-without-password",
    ),
    pytest.param(
        "upstream:\n  host: smtp.example.net\n  username: relay\n  password_file: nope.pass\n",
        "upstream.password_file",
        4,
        "nope.pass does not exist",
        id="password-file-missing",
    ),
    pytest.param(
        "upstream:\n  host: smtp.example.net\n  password_file: .\n  username: relay\n",
        "upstream.password_file",
        3,
        "is not a file",
        id="password-file-is-a-folder",
    ),
    pytest.param(
        "upstream:\n  host: smtp.example.net\n  tls: none\n  username: u\n"
        "  password_file: /etc/hostname\n",
        "upstream.username",
        4,
        "unencrypted",
        id="auth-without-tls",
    ),
    pytest.param(
        "upstream:\n  host: smtp.example.net\n  timeout: -5\n",
        "upstream.timeout",
        3,
        "must be more than 0 seconds",
        id="negative-timeout",
    ),
    pytest.param(
        "upstream:\n  host: 'smtp example net'\n",
        "upstream.host",
        2,
        "must be an IP address or a host name",
        id="bad-host",
    ),
    pytest.param(
        "upstream: {host: smtp.example.net}\nrules:\n  paths:\n    - /\n    - /no/such/pack\n",
        "rules.paths[1]",
        5,
        "/no/such/pack does not exist",
        id="missing-rule-pack",
    ),
    pytest.param(
        "upstream: {host: smtp.example.net}\nrules: {paths: []}\n",
        "rules.paths",
        2,
        "at least 1 item",
        id="no-rule-packs",
    ),
    pytest.param(
        "upstream: {host: smtp.example.net}\npolicy:\n  actions:\n    five-stars: reject\n",
        "policy.actions.five-stars",
        4,
        "must be one of positive-review-request",
        id="unknown-category",
    ),
    pytest.param(
        "upstream: {host: smtp.example.net}\npolicy:\n  actions:\n    review-gating: drop\n",
        "policy.actions.review-gating",
        4,
        "must be one of forward, quarantine, reject, tag; got 'drop'",
        id="unknown-action",
    ),
    pytest.param(
        "upstream: {host: smtp.example.net}\npolicy: {mode: audit}\n",
        "policy.mode",
        2,
        "must be one of enforce, monitor",
        id="bad-mode",
    ),
    pytest.param(
        "upstream: {host: smtp.example.net}\nlimits:\n  max_message_size: 10 parsecs\n",
        "limits.max_message_size",
        3,
        "size like '10MiB'",
        id="bad-size",
    ),
    pytest.param(
        "upstream: {host: smtp.example.net}\nlimits:\n  max_recipients: 0\n",
        "limits.max_recipients",
        3,
        "must be at least 1",
        id="zero-recipients",
    ),
    pytest.param(
        "upstream: {host: smtp.example.net}\naudit: {path: /no/such/folder/audit.log}\n",
        "audit.path",
        2,
        "folder /no/such/folder does not exist",
        id="audit-folder-missing",
    ),
    pytest.param(
        "upstream: {host: smtp.example.net}\nquarantine: {path: /etc/hostname}\n",
        "quarantine.path",
        2,
        "is not a folder",
        id="quarantine-is-a-file",
    ),
    pytest.param(
        "upstream: {host: smtp.example.net}\nlisten: 10025\n",
        "listen",
        2,
        "must be a mapping of keys, got an integer",
        id="section-not-a-mapping",
    ),
    pytest.param(
        "upstream: {host: smtp.example.net}\nlisten: {port: 1}\nlisten: {port: 2}\n",
        "listen",
        3,
        "duplicate key",
        id="duplicate-key",
    ),
    pytest.param(
        "upstream: {host: smtp.example.net\nlisten: {}\n",
        None,
        2,
        "not valid YAML",
        id="yaml-syntax",
    ),
    pytest.param(
        "upstream: {host: smtp.example.net}\nsource: /etc/other.yaml\n",
        "source",
        2,
        "unknown key",
        id="source-is-not-a-setting",
    ),
    pytest.param("", None, None, "is empty", id="empty-file"),
    pytest.param("- a\n- b\n", None, None, "must be a mapping of sections", id="list-file"),
]


@pytest.mark.parametrize(("text", "key_path", "line", "fragment"), BAD_CONFIGS)
def test_each_mistake_gets_a_clear_error(
    tmp_path: Path, text: str, key_path: str | None, line: int | None, fragment: str
) -> None:
    error = error_for(tmp_path, text)

    assert error.key_path == key_path
    assert error.line == line
    assert fragment in error.message
    assert error.file == str(tmp_path / "relay.yaml")
    location = f"{tmp_path / 'relay.yaml'}" + (f":{line}" if line else "")
    assert str(error).startswith(location + ": ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "content",
    [SECRET + "\nsecond line\n", ""],
    ids=["two-lines", "empty"],
)
def test_bad_password_file_never_shows_its_content(tmp_path: Path, content: str) -> None:
    (tmp_path / "pass").write_text(content)
    error = error_for(
        tmp_path, "upstream:\n  host: smtp.example.net\n  username: u\n  password_file: pass\n"
    )

    assert error.key_path == "upstream.password_file"
    assert SECRET not in str(error)


def test_secret_stays_out_of_errors_elsewhere(tmp_path: Path) -> None:
    (tmp_path / "pass").write_text(SECRET)
    error = error_for(
        tmp_path,
        "upstream:\n  host: smtp.example.net\n  username: u\n  password_file: pass\n"
        "  port: 99999\n",
    )
    assert SECRET not in str(error)


def test_parse_config_reports_the_given_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("upstream: {host: x.example}\nlisten: {port: -1}\n", tmp_path / "a.yaml")
    assert str(caught.value).startswith(f"{tmp_path / 'a.yaml'}:2: listen.port: ")


def test_password_file_without_username(tmp_path: Path) -> None:
    (tmp_path / "pass").write_text(SECRET)
    error = error_for(tmp_path, "upstream:\n  host: smtp.example.net\n  password_file: pass\n")
    assert (error.key_path, error.line) == ("upstream.password_file", 3)
    assert "needs upstream.username" in error.message


@pytest.mark.parametrize("name", ["dev.yaml", "relay.example.yaml"])
def test_bundled_configs_are_valid(name: str) -> None:
    config = load_config(REPO / "config" / name)
    assert isinstance(config, Config)


def test_dev_config_delivers_into_the_repo_var_folder() -> None:
    config = load_config(REPO / "config" / "dev.yaml")
    assert config.upstream.maildir == REPO / "var" / "outbox"
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 10025)
    assert config.audit.path is None
