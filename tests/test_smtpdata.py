"""The chunked DATA reader: same bytes and replies as aiosmtpd's line reader, fewer steps."""

from __future__ import annotations

import asyncio
import random

import pytest

from relay.smtpdata import CHUNK_LIMIT, DataState, read_data

LINE_LIMIT = 1001


def reference_unstuff(wire: bytes) -> bytes:
    """What aiosmtpd makes of a DATA payload (everything before CRLF.CRLF), line by line."""
    lines = wire.split(b"\r\n")
    out = [line[1:] if line.startswith(b".") else line for line in lines]
    return b"\r\n".join(out)


def stuff(data: bytes) -> bytes:
    """A client's dot-stuffing of a message ending in CRLF, plus the terminator."""
    stuffed = (b"." + data if data.startswith(b".") else data).replace(b"\r\n.", b"\r\n..")
    return stuffed + b".\r\n"


async def feed_and_read(
    wire: bytes, pieces: list[int] | None = None, size_limit: int | None = None
) -> tuple[DataState, bytes, bytes]:
    """Feed `wire` in pieces of the given sizes; return (state, content, what stays unread)."""
    reader = asyncio.StreamReader(limit=CHUNK_LIMIT)
    sizes = pieces or [len(wire)]

    async def feed() -> None:
        offset = 0
        for size in sizes:
            reader.feed_data(wire[offset : offset + size])
            offset += size
            await asyncio.sleep(0)
        reader.feed_data(wire[offset:])
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    result = await read_data(reader, size_limit, LINE_LIMIT)
    await feeder
    return result.state, result.content, await reader.read()


MESSAGE = (
    b"From: shop@example.com\r\n"
    b"Subject: dots\r\n"
    b"\r\n"
    b".starts with a dot\r\n"
    b"..two dots\r\n"
    b"a line ending in a period.\r\n"
    b".\r\n"
    b"not the end: a bare LF dot\n.\r\n"
    b"nor this\n.\n"
    b"end.\r\n"
)


async def test_unstuffs_exactly_as_aiosmtpd_and_leaves_the_next_command() -> None:
    state, content, rest = await feed_and_read(stuff(MESSAGE) + b"QUIT\r\n")
    assert state is DataState.NOMINAL
    assert content == MESSAGE
    assert rest == b"QUIT\r\n"


@pytest.mark.parametrize(
    "data",
    [b"", b"\r\n", b"\r\n\r\n", b".\r\n", b"..\r\n", b"x\r\n", b".x\r\n.\r\n"],
    ids=["empty", "one-blank-line", "two-blank-lines", "dot-line", "two-dots", "x", "dots"],
)
async def test_edge_messages(data: bytes) -> None:
    wire = b".\r\n" if not data else stuff(data)
    state, content, rest = await feed_and_read(wire + b"NOOP\r\n")
    assert (state, content, rest) == (DataState.NOMINAL, data, b"NOOP\r\n")


async def test_terminator_split_at_every_position() -> None:
    wire = stuff(MESSAGE) + b"RSET\r\n"
    for cut in range(1, len(wire)):
        state, content, rest = await feed_and_read(wire, [cut])
        assert (state, content, rest) == (DataState.NOMINAL, MESSAGE, b"RSET\r\n"), cut


async def test_fed_one_byte_at_a_time() -> None:
    wire = stuff(MESSAGE)
    state, content, _ = await feed_and_read(wire, [1] * len(wire))
    assert (state, content) == (DataState.NOMINAL, MESSAGE)


async def test_random_messages_in_random_pieces_match_the_reference() -> None:
    rng = random.Random(7)
    alphabet = [b"a", b"b", b".", b"\r\n", b"\n", b"\r", b" ", b"..", b"\r\n."]
    for _ in range(200):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400)))
        # A client stuffs whole CRLF lines; the payload always ends with CRLF.
        data = body + b"\r\n"
        wire = stuff(data)
        pieces = [rng.randint(1, 50) for _ in range(len(wire) // 10 + 1)]
        state, content, rest = await feed_and_read(wire + b"QUIT\r\n", pieces)
        assert state is DataState.NOMINAL
        assert content == reference_unstuff(wire[:-3]) == data
        assert rest == b"QUIT\r\n"


async def test_large_message_with_long_base64_runs() -> None:
    rng = random.Random(3)
    lines = [rng.randbytes(57).hex().encode()[:76] for _ in range(40_000)]  # ~3 MB
    data = b"\r\n".join(lines) + b"\r\n"
    state, content, _ = await feed_and_read(stuff(data), [65536] * 60)
    assert (state, content) == (DataState.NOMINAL, data)


async def test_over_the_size_limit_is_refused_and_drained() -> None:
    data = b"x" * 70 + b"\r\n"
    wire = stuff(data * 1000)
    state, content, rest = await feed_and_read(wire + b"QUIT\r\n", size_limit=10_000)
    assert (state, content, rest) == (DataState.TOO_MUCH, b"", b"QUIT\r\n")
    # Exactly at the limit is still accepted (the limit counts bytes as received).
    exact = stuff(data * 10)
    state, content, _ = await feed_and_read(exact, size_limit=len(exact) - 3)
    assert state is DataState.NOMINAL


async def test_line_over_1000_octets_is_refused_like_aiosmtpd() -> None:
    ok = b"y" * (LINE_LIMIT - 2) + b"\r\n"
    state, _, _ = await feed_and_read(stuff(b"short\r\n" + ok))
    assert state is DataState.NOMINAL
    too_long = b"y" * (LINE_LIMIT - 1) + b"\r\n"
    for pieces in (None, [500] * 10, [1] * 3000):
        state, content, rest = await feed_and_read(
            stuff(b"short\r\n" + too_long + b"after\r\n") + b"QUIT\r\n", pieces
        )
        assert (state, content, rest) == (DataState.TOO_LONG, b"", b"QUIT\r\n")


async def test_connection_lost_mid_data_raises() -> None:
    reader = asyncio.StreamReader(limit=CHUNK_LIMIT)
    reader.feed_data(b"Subject: cut\r\n\r\nhalf a mess")
    reader.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError):
        await read_data(reader, None, LINE_LIMIT)


async def test_lines_ending_in_a_period_do_not_cost_a_step_each() -> None:
    data = b"A sentence that ends at the end of its line.\r\n" * 500
    reader = asyncio.StreamReader(limit=CHUNK_LIMIT)
    reader.feed_data(stuff(data) + b"QUIT\r\n")
    steps = []
    result = await read_data(reader, None, LINE_LIMIT, lambda: steps.append(1))
    assert (result.state, result.content) == (DataState.NOMINAL, data)
    assert len(steps) == 1
    assert await reader.readline() == b"QUIT\r\n"
