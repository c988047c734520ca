"""STARTTLS on the listener, require_tls, SMTP AUTH over TLS with scrypt hashes, senders.

The certificate is self-signed, made per test session with the `openssl` command line tool.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP, AuthResult

from relay.access import hash_password, sender_allowed, verify_password
from relay.errors import ConfigError
from tests.conftest import StartRelay, WriteConfig
from tests.support import MESSAGE, RunningRelay, Sink, SinkHandler
from tests.test_bad_input import RawClient

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"
FAST_HASH = {"n": 2**10, "r": 8, "p": 1}  # cheap in tests; the default costs 2**14


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=relay.test",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def client_context(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


async def start_tls_relay(
    sink: Sink,
    write_config: WriteConfig,
    start_relay: StartRelay,
    certificate: tuple[Path, Path],
    *,
    listen: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
) -> RunningRelay:
    cert, key = certificate
    sections: dict[str, Any] = {
        "upstream": sink.upstream(),
        "listen": {"tls_cert": str(cert), "tls_key": str(key), **(listen or {})},
    }
    if auth is not None:
        sections["auth"] = auth
    return await start_relay(write_config(**sections))


def users(**extra: Any) -> dict[str, Any]:
    return {
        "users": {
            "erp": {"password_hash": hash_password(PASSWORD, **FAST_HASH), **extra},
        },
        "failure_delay": 0.3,
    }


async def connect(relay: RunningRelay, cert: Path) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=relay.port,
        timeout=10,
        start_tls=False,
        tls_context=client_context(cert),
        local_hostname="client.test",
    )
    await client.connect()
    return client


async def test_starttls_then_relay(
    sink: Sink, write_config: WriteConfig, start_relay: StartRelay, certificate: tuple[Path, Path]
) -> None:
    relay = await start_tls_relay(sink, write_config, start_relay, certificate)
    client = await connect(relay, certificate[0])
    try:
        await client.ehlo()
        assert client.supports_extension("starttls")
        assert not client.supports_extension("auth")  # no users: no AUTH, even over TLS
        await client.starttls()
        await client.ehlo()
        response = await client.sendmail("shop@example.com", ["buyer@example.org"], MESSAGE)
        assert response[1].startswith("2.0.0 queued")
    finally:
        await client.quit()
    assert [m.data for m in sink.messages] == [MESSAGE]


async def test_require_tls_refuses_mail_before_starttls(
    sink: Sink, write_config: WriteConfig, start_relay: StartRelay, certificate: tuple[Path, Path]
) -> None:
    relay = await start_tls_relay(
        sink, write_config, start_relay, certificate, listen={"require_tls": True}
    )
    client, _ = await RawClient.connect(relay.port)
    try:
        assert (await client.send(b"EHLO c\r\n")).startswith("250")
        assert (await client.send(b"MAIL FROM:<a@example.com>\r\n")).startswith("530")
        # Commands pipelined behind STARTTLS are thrown away, never run inside TLS.
        assert (await client.send(b"STARTTLS\r\nMAIL FROM:<a@example.com>\r\n")).startswith("220")
        await client.writer.start_tls(client_context(certificate[0]))
        # The first reply inside TLS answers this EHLO, not the smuggled MAIL.
        assert (await client.send(b"EHLO c\r\n")).startswith("250")
        assert (await client.send(b"RCPT TO:<b@example.org>\r\n")).startswith("503")
    finally:
        await client.close()
    assert sink.messages == []


async def test_auth_only_over_tls_and_the_right_password_only(
    sink: Sink, write_config: WriteConfig, start_relay: StartRelay, certificate: tuple[Path, Path]
) -> None:
    relay = await start_tls_relay(
        sink, write_config, start_relay, certificate, auth={**users(), "required": True}
    )
    client = await connect(relay, certificate[0])
    try:
        await client.ehlo()
        assert not client.supports_extension("auth")
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await client.mail("shop@example.com")
        assert refused.value.code == 530
        await client.starttls()
        await client.ehlo()
        assert client.supports_extension("auth")
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failed:
            await client.auth_plain("erp", "wrong password")
        assert failed.value.code == 535
        assert loop.time() - started >= 0.3  # slowed down
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await client.auth_login("nobody", PASSWORD)
        await client.auth_login("erp", PASSWORD)
        response = await client.sendmail("shop@example.com", ["buyer@example.org"], MESSAGE)
        assert response[1].startswith("2.0.0 queued")
    finally:
        await client.quit()
    failures = [e for e in await relay.audit_events("error") if e.get("stage") == "AUTH"]
    assert [(e["user"], e["mechanism"]) for e in failures] == [
        ("erp", "PLAIN"),
        ("nobody", "LOGIN"),
    ]
    log = relay.server.config.audit.path
    assert log is not None and "wrong password" not in log.read_text()
    [line] = await relay.messages()
    assert line["auth_user"] == "erp"


async def test_auth_plain_over_tls_and_only_real_mechanisms(
    sink: Sink, write_config: WriteConfig, start_relay: StartRelay, certificate: tuple[Path, Path]
) -> None:
    relay = await start_tls_relay(sink, write_config, start_relay, certificate, auth=users())
    client = await connect(relay, certificate[0])
    try:
        await client.starttls()
        await client.ehlo()
        # aiosmtpd offers every auth_* method of the handler as a mechanism: there are two.
        assert client.esmtp_extensions["auth"] == "LOGIN PLAIN"
        for mechanism in (b"failed", b"FAILED", b"CRAM-MD5"):
            reply = await client.execute_command(b"AUTH " + mechanism)
            assert reply.code == 504, (mechanism, reply)
        await client.auth_plain("erp", PASSWORD)
        await client.sendmail("shop@example.com", ["buyer@example.org"], MESSAGE)
    finally:
        await client.quit()
    assert len(sink.messages) == 1


async def test_user_may_send_only_as_listed_senders(
    sink: Sink, write_config: WriteConfig, start_relay: StartRelay, certificate: tuple[Path, Path]
) -> None:
    relay = await start_tls_relay(
        sink,
        write_config,
        start_relay,
        certificate,
        auth=users(allowed_senders=["@example.com", "orders@shop.example"]),
    )
    client = await connect(relay, certificate[0])
    try:
        await client.starttls()
        await client.ehlo()
        await client.auth_plain("erp", PASSWORD)
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await client.mail("ceo@elsewhere.example")
        assert (refused.value.code, refused.value.message[:5]) == (553, "5.7.1")
        await client.rset()
        await client.sendmail("orders@shop.example", ["buyer@example.org"], MESSAGE)
        await client.sendmail("help@EXAMPLE.com", ["buyer@example.org"], MESSAGE)
    finally:
        await client.quit()
    assert [m.mail_from for m in sink.messages] == ["orders@shop.example", "help@EXAMPLE.com"]


def test_password_hashes_verify_and_never_hold_the_password() -> None:
    stored = hash_password(PASSWORD, **FAST_HASH)
    assert PASSWORD not in stored and stored.startswith("scrypt$1024$8$1$")
    assert verify_password(PASSWORD.encode(), stored)
    assert not verify_password(b"wrong", stored)
    assert not verify_password(PASSWORD.encode(), "not a hash")
    assert hash_password(PASSWORD, **FAST_HASH) != stored  # salted


def test_sender_lists() -> None:
    assert sender_allowed("a@example.com", ())
    assert sender_allowed("a@Example.COM", ("example.com",))
    assert sender_allowed("a@example.com", ("@example.com",))
    assert not sender_allowed("a@sub.example.com", ("@example.com",))
    assert sender_allowed("orders@shop.example", ("orders@shop.example",))
    assert not sender_allowed("other@shop.example", ("orders@shop.example",))


def test_hash_password_command_reads_stdin() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "hash-password"],
        input="s3cret\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert verify_password(b"s3cret", result.stdout.strip())


def test_config_needs_tls_for_auth(write_config: WriteConfig, tmp_path: Path) -> None:
    from relay.config import load_config

    path = write_config(upstream={"maildir": str(tmp_path)}, auth=users())
    with pytest.raises(ConfigError, match="only over TLS"):
        load_config(path)
    broken = {"users": {"erp": {"password_hash": "md5$nope"}}}
    with pytest.raises(ConfigError, match="scrypt"):
        load_config(write_config(upstream={"maildir": str(tmp_path)}, auth=broken))


class TlsSink:
    """The upstream sink with STARTTLS (or implicit TLS) and optional AUTH."""

    def __init__(self, cert: Path, key: Path, *, implicit: bool = False) -> None:
        self.handler = SinkHandler()
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.implicit = implicit
        self.logins: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        self.logins.append(data.login)
        return AuthResult(success=data.password == b"upstream-secret")

    async def start(self) -> TlsSink:
        loop = asyncio.get_running_loop()

        def protocol() -> SMTP:
            return SMTP(
                self.handler,
                hostname="sink.test",
                tls_context=None if self.implicit else self.context,
                authenticator=self.authenticate,
                # aiosmtpd sees only STARTTLS as TLS; with implicit TLS the socket already is.
                auth_require_tls=not self.implicit,
                loop=loop,
            )

        self._server = await loop.create_server(
            protocol, "127.0.0.1", 0, ssl=self.context if self.implicit else None
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.mark.parametrize(
    ("tls", "implicit", "trusted", "delivered"),
    [
        ("starttls", False, True, 1),
        ("tls", True, True, 1),
        ("starttls", False, False, 0),  # verification is on by default: an unknown CA fails
        ("tls", True, False, 0),
    ],
)
async def test_upstream_tls_verifies_the_certificate(
    write_config: WriteConfig,
    start_relay: StartRelay,
    certificate: tuple[Path, Path],
    tmp_path: Path,
    tls: str,
    implicit: bool,
    trusted: bool,
    delivered: int,
) -> None:
    cert, key = certificate
    upstream = await TlsSink(cert, key, implicit=implicit).start()
    password = tmp_path / "upstream.pw"
    password.write_text("upstream-secret\n")
    section: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": upstream.port,
        "tls": tls,
        "timeout": 5,
        "username": "relay",
        "password_file": str(password),
    }
    if trusted:
        section["ca_file"] = str(cert)
    try:
        relay = await start_relay(write_config(upstream=section))
        reply = await relay.send()
    finally:
        upstream.close()
    assert len(upstream.handler.messages) == delivered
    if delivered:
        assert reply.code == 250 and upstream.logins == [b"relay"]
        assert upstream.handler.messages[0].data == MESSAGE
    else:
        assert reply.code // 100 == 4, reply  # retry later; nothing sent in the clear


async def test_reload_turns_on_starttls_and_auth_for_new_sessions(
    sink: Sink, write_config: WriteConfig, start_relay: StartRelay, certificate: tuple[Path, Path]
) -> None:
    relay = await start_relay(write_config(upstream=sink.upstream()))
    client = await connect(relay, certificate[0])
    await client.ehlo()
    assert not client.supports_extension("starttls")
    await client.quit()
    cert, key = certificate
    write_config(
        upstream=sink.upstream(),
        listen={"tls_cert": str(cert), "tls_key": str(key)},
        auth=users(),
    )
    assert await relay.server.reload()
    client = await connect(relay, cert)
    try:
        await client.ehlo()
        assert client.supports_extension("starttls")
        await client.starttls()
        await client.ehlo()
        await client.auth_plain("erp", PASSWORD)
    finally:
        await client.quit()


async def test_third_failed_auth_disconnects_with_421(
    sink: Sink, write_config: WriteConfig, start_relay: StartRelay, certificate: tuple[Path, Path]
) -> None:
    relay = await start_tls_relay(
        sink, write_config, start_relay, certificate, auth={**users(), "failure_delay": 0.05}
    )
    client = await connect(relay, certificate[0])
    try:
        await client.starttls()
        await client.ehlo()
        for _ in range(2):
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failed:
                await client.auth_plain("erp", "guess")
            assert failed.value.code == 535
        with pytest.raises(aiosmtplib.SMTPException) as last:
            await client.auth_plain("erp", "guess")
        assert getattr(last.value, "code", 421) == 421
        with pytest.raises(aiosmtplib.SMTPException):
            await client.noop()
    finally:
        client.close()
    failures = [e for e in await relay.audit_events("error") if e.get("stage") == "AUTH"]
    assert len(failures) == 3
