"""The relay's shortcuts in aiosmtpd's protocol give exactly aiosmtpd's own results."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

from aiosmtpd.smtp import SMTP

from relay.server import RelayServer, RelaySMTP, clean_scanner
from tests.conftest import StartRelay, WriteConfig

TRICKY = [
    "<shop@example.com>",
    "<shop@example.com> SIZE=5000",
    "<shop@example.com>  SIZE=5000 BODY=8BITMIME",
    "<shop@example.com>\tSIZE=1",
    "<shop@example.com>SIZE=1",
    "<shop@example.com> (comment) SIZE=1",
    "<shop@example.com>(comment)",
    "<shop@example.com> \u00a0SIZE=1",
    "<>",
    "<> SIZE=1",
    "shop@example.com",
    " <shop@example.com>",
    "<shop@[192.0.2.1]>",
    '<"quoted local"@example.com>',
    "<@relay.example:shop@example.com>",
    "<shop.@example.com>",
    "<.shop@example.com>",
    "<sh..op@example.com>",
    "<shop@example..com>",
    "<shop@.example.com>",
    "<shop@example.com.>",
    "<shop@example>",
    "<a.b.c+tag=x/y@sub-domain.example-1.org>",
    "<shop@example.com",
    "<shop@exa mple.com>",
    "<shop@example.com>>",
    "<" + "x" * 70 + "@example.com>",
]
ALPHABET = "ab.@<>()\"[] \t\\-+=_:,;!#$%&'*/?^`{|}~\u00e9\u00a0"


def outcome(parse: Callable[[str], object], arg: str) -> object:
    """What parse makes of arg, or the type of the exception it raises (the email package's
    parser has a few on odd input: the relay's must raise the same)."""
    try:
        return parse(arg)
    except Exception as exc:
        return type(exc)


def _pair(loop: asyncio.AbstractEventLoop, server: RelayServer) -> tuple[RelaySMTP, SMTP]:
    fast = server._protocol()
    plain = SMTP(server.handler, hostname="relay.test", loop=loop)
    return fast, plain


async def _relay(write_config: WriteConfig, start_relay: StartRelay, tmp_path: Path) -> RelayServer:
    path = write_config(upstream={"maildir": str(tmp_path / "out")})
    return (await start_relay(path, make_scanner=clean_scanner)).server


async def test_plain_paths_parse_as_aiosmtpd_parses_them(
    write_config: WriteConfig, start_relay: StartRelay, tmp_path: Path
) -> None:
    server = await _relay(write_config, start_relay, tmp_path)
    fast, plain = _pair(asyncio.get_running_loop(), server)
    rng = random.Random(6)
    generated = [
        "<"
        + "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(1, 30)))
        + ">"
        + "".join(rng.choice(ALPHABET + "SIZE=1") for _ in range(rng.randrange(0, 12)))
        for _ in range(20000)
    ]
    plain_like = [
        f"<{rng.choice(['a', 'b.c', 'x+y', 'q=1'])}@{rng.choice(['d', 'e.f', 'g-h.i'])}>"
        + rng.choice(["", " ", "  SIZE=12", "\tBODY=8BITMIME", "(c)", " (c) X", "X"])
        for _ in range(2000)
    ]
    for arg in TRICKY + generated + plain_like:
        assert outcome(fast._getaddr, arg) == outcome(plain._getaddr, arg), arg
    fast.local_part_limit = plain.local_part_limit = 3
    for arg in ["<abc@d.e>", "<abcd@d.e>", "<abcd@d.e> SIZE=1"]:
        assert fast._getaddr(arg) == plain._getaddr(arg), arg


async def test_ehlo_reply_is_aiosmtpds_whole_multi_line_reply(
    write_config: WriteConfig, start_relay: StartRelay, tmp_path: Path
) -> None:
    """The lines of EHLO's reply are held back and sent with its last line: all of them."""
    server = await _relay(write_config, start_relay, tmp_path)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert (await reader.readline()).startswith(b"220 ")
    lines = []
    for command in (b"EHLO client.test\r\n", b"HELO client.test\r\n", b"NOOP\r\n"):
        writer.write(command)
        while (line := await reader.readline())[3:4] != b" ":
            lines.append(line)
        lines.append(line)
    writer.write(b"QUIT\r\n")
    assert (await reader.readline()).startswith(b"221 ")
    writer.close()
    assert lines == [
        b"250-relay.test\r\n",
        f"250-SIZE {server.config.limits.max_message_size}\r\n".encode(),
        b"250-8BITMIME\r\n",
        b"250 HELP\r\n",
        b"250 relay.test\r\n",
        b"250 OK\r\n",
    ]
