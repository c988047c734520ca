"""The fast DATA encoding sends exactly the bytes aiosmtplib's own code would."""

from __future__ import annotations

import asyncio
import random

import aiosmtplib.protocol as protocol
import pytest

from relay import smtpwire
from tests.conftest import StartRelay, WriteConfig
from tests.support import Sink


def reference(message: bytes) -> bytes:
    normalized = smtpwire._original_normalize(message)
    return smtpwire._original_period_regex.sub(b"..", normalized)


def fast(message: bytes) -> bytes:
    return smtpwire.PeriodQuoter().sub(b"..", smtpwire.normalize_message_line_endings(message))


def test_installed_where_aiosmtplib_looks_them_up() -> None:
    # The forwarder installs them on import; an aiosmtplib that renamed these would fail here.
    import relay.forwarder  # noqa: F401

    assert smtpwire.installed()
    assert protocol.normalize_message_line_endings is smtpwire.normalize_message_line_endings


def quoted(quote: object, address: str) -> object:
    """What quote makes of address, or the type of the exception it raises."""
    try:
        return quote(address)  # type: ignore[operator]
    except Exception as exc:
        return type(exc)


def test_addresses_are_quoted_as_aiosmtplib_quotes_them() -> None:
    rng = random.Random(12)
    alphabet = "ab.@<>()\"[] \t\\-+=_:,;!#$%&'*/?^`{|}~\u00e9\r\n\x00"
    generated = [
        "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 24))) for _ in range(20000)
    ]
    plain_like = [
        rng.choice(["a", "b.c", "x+y", "q=1", "o'k", "=?u?q?x?="])
        + "@"
        + rng.choice(["d", "e.f", "g-h.i", "-x.y", "x..y", "x.", "[1.2.3.4]"])
        + rng.choice(["", " ", ".", ">"])
        for _ in range(3000)
    ]
    fast_paths = 0
    for address in ["", "<>", "a@b", " a@b", "a@b ", "A <a@b>", *generated, *plain_like]:
        expected = quoted(smtpwire._original_quote_address, address)
        assert quoted(smtpwire.quote_address, address) == expected, address
        fast_paths += bool(smtpwire.PLAIN_ADDRESS.fullmatch(address))
    assert fast_paths > 300  # the comparison covered the shortcut, not only the parser


def test_same_bytes_as_aiosmtplib_on_random_messages() -> None:
    rng = random.Random(11)
    alphabet = [b"a", b".", b"\r\n", b"\n", b"\r", b"..", b"\r\n.", b"\n.", b" ", b"\xc3\xa4"]
    for _ in range(3000):
        message = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert fast(message) == reference(message), message


def test_quoting_alone_matches_the_regex_on_any_input() -> None:
    rng = random.Random(12)
    alphabet = [b"a", b".", b"\r\n", b"\n", b"\r", b"..", b"\n."]
    for _ in range(3000):
        text = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        expected = smtpwire._original_period_regex.sub(b"..", text)
        assert smtpwire.PeriodQuoter().sub(b"..", text) == expected, text


def test_same_bytes_for_typical_and_edge_messages() -> None:
    for message in (
        b"",
        b".",
        b".\r\n",
        b"Subject: x\r\n\r\n.hidden\r\n..two\r\nend",
        b"Subject: x\r\n\r\nbody\r\n",
        b"bare\nlf\r\n.dot\r\n",
        b"bare\rcr\r\n",
    ):
        assert fast(message) == reference(message), message


def test_crlf_message_is_not_copied_when_nothing_changes() -> None:
    message = b"Subject: x\r\n\r\nno dots here\r\n" * 1000
    assert smtpwire.normalize_message_line_endings(message) is message


# --- streaming DATA through a real relay -------------------------------------------------------


def big_message(size: int) -> bytes:
    """A message of about `size` bytes: a short text part with dot-stuffed lines and a large
    binary attachment (which the scanner skips, so the test times the wire, not the rules)."""
    head = (
        b"From: shop@example.com\r\nTo: buyer@example.org\r\nSubject: big\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\n"
        b".a line that needs dot-stuffing\r\n..and one with two dots\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    line = b"QUJD" * 19 + b"\r\n"
    return head + line * (size // len(line)) + b"--b--\r\n"


async def test_large_message_streams_upstream_byte_identical(
    sink: Sink, write_config: WriteConfig, start_relay: StartRelay
) -> None:
    relay = await start_relay(
        write_config(upstream=sink.upstream(), limits={"max_message_size": "16MiB"})
    )
    data = big_message(6 * 1024 * 1024)
    reply = await relay.send(data)
    assert reply.code == 250, reply
    assert sink.messages[0].data == data


class StallingServer:
    """An upstream that answers DATA with 354 and then stops reading (or hangs up)."""

    def __init__(self, hang_up: bool) -> None:
        self.hang_up = hang_up
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> StallingServer:
        async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.append(writer)
            writer.write(b"220 stall.test ESMTP\r\n")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-stall.test\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    await reader.read(1000)
                    if self.hang_up:
                        writer.close()
                    return  # stop reading: the client's writes back up
                else:
                    writer.write(b"250 ok\r\n")

        self._server = await asyncio.start_server(talk, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()


@pytest.mark.parametrize(
    ("hang_up", "expected"),
    [(False, "4.4.1 upstream timed out"), (True, "4.4.1 upstream connection lost")],
    ids=["stops-reading", "hangs-up"],
)
async def test_upstream_that_stalls_mid_data_gives_451(
    write_config: WriteConfig, start_relay: StartRelay, hang_up: bool, expected: str
) -> None:
    upstream = await StallingServer(hang_up).start()
    try:
        config = write_config(
            upstream={"host": "127.0.0.1", "port": upstream.port, "tls": "none", "timeout": 1},
            limits={"max_message_size": "64MiB"},
        )
        relay = await start_relay(config)
        # Far more than loopback socket buffers hold, so the relay must wait to write.
        reply = await relay.send(big_message(16 * 1024 * 1024))
        assert (reply.code, reply.text) == (451, expected), reply
        (event,) = await relay.messages()
        assert event["reply"].startswith("451 4.4.1")
    finally:
        await upstream.stop()
