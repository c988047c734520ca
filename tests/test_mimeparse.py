"""parse_bytes(): the stdlib's parse of a message, without its whole-message copies."""

from __future__ import annotations

import base64
import random
from email import message_from_bytes
from email.message import Message
from email.policy import compat32

import pytest

from relay.mimeparse import FEED_STEP, parse_bytes


def _shape(message: Message) -> list[tuple[object, ...]]:
    """Everything extraction reads from a parsed message, part by part."""
    return [
        (
            part.get_content_type(),
            list(part.raw_items()),
            part.get_payload() if not part.is_multipart() else None,
            part.preamble,
            part.epilogue,
            [type(defect).__name__ for defect in part.defects],
        )
        for part in message.walk()
    ]


def _mixed(rng: random.Random, line_ending: bytes) -> bytes:
    text = " ".join(
        rng.choice(["review", "order", "\u00e9t\u00e9", "5-star", "."]) for _ in range(4000)
    )
    attachment = base64.encodebytes(rng.randbytes(50_000)).replace(b"\n", line_ending)
    lines = [
        b"From: shop@example.com",
        b"Subject: =?utf-8?q?Your_order?= \xc3\xa9",
        b'Content-Type: multipart/mixed; boundary="b1"',
        b"",
        b"preamble",
        b"--b1",
        b"Content-Type: text/plain; charset=utf-8",
        b"",
        text.encode(),
        b"--b1",
        b'Content-Type: application/pdf; name="a.pdf"',
        b"Content-Transfer-Encoding: base64",
        b"",
        attachment,
        b"--b1--",
        b"epilogue",
    ]
    return line_ending.join(lines)


@pytest.mark.parametrize("line_ending", [b"\r\n", b"\n", b"\r"])
@pytest.mark.parametrize("shift", [0, 1, 2, FEED_STEP - 1])
def test_same_message_as_the_stdlib_whatever_falls_on_a_step_boundary(
    line_ending: bytes, shift: int
) -> None:
    # A CRLF, a boundary line or a header split across two feeding steps must not matter.
    raw = b"X-Pad: " + b"p" * shift + line_ending + _mixed(random.Random(shift), line_ending)
    ours, stdlib = parse_bytes(raw), message_from_bytes(raw, policy=compat32)
    assert _shape(ours) == _shape(stdlib)
    assert ours.as_bytes() == stdlib.as_bytes()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n",
        b"Subject: only a header",
        b"no header at all\r\n\r\nbody",
        b"\xff\xfe\x00" * 9000,
    ],
)
def test_degenerate_input_parses_as_the_stdlib_does(raw: bytes) -> None:
    assert _shape(parse_bytes(raw)) == _shape(message_from_bytes(raw, policy=compat32))
