"""The parser shortcut builds exactly the stdlib's Message tree, whatever the message holds."""

from __future__ import annotations

import random
from email import message_from_bytes
from email.message import Message
from email.policy import compat32

import pytest

from bench.traffic import make_message
from relay import fastparse
from relay.fastparse import parse_message

FILLER = b"Thank you for your order, it left our warehouse this morning.\r\n" * 60
BASE64 = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\r\n" * 60


def _tree(message: Message) -> list[object]:
    """Everything the parser decided: headers, payload strings, preamble, epilogue, defects."""
    payload = getattr(message, "_payload", None)
    node: list[object] = [
        list(message.raw_items()),
        message.get_unixfrom(),
        message.get_default_type(),
        message.preamble,
        message.epilogue,
        [(type(defect).__name__, str(defect)) for defect in message.defects],
    ]
    if isinstance(payload, list):
        return [*node, [_tree(part) for part in payload]]
    return [*node, payload]


def _assert_same_tree(raw: bytes) -> None:
    assert _tree(parse_message(raw)) == _tree(message_from_bytes(raw, policy=compat32))


def _multipart(*bodies: bytes, boundary: bytes = b"b1") -> bytes:
    head = b"Subject: s\r\nContent-Type: multipart/mixed; boundary=%s\r\n\r\npreamble\r\n"
    parts = [b"--%s\r\nContent-Type: text/plain\r\n\r\n%s\r\n" % (boundary, b) for b in bodies]
    return head % boundary + b"".join(parts) + b"--%s--\r\nepilogue\r\n" % boundary


@pytest.mark.parametrize(
    "raw",
    [
        _multipart(FILLER, BASE64),
        _multipart(FILLER + b"--b1\r\n" + FILLER),  # a boundary inside what looks like a run
        _multipart(FILLER + b"-- not a boundary\r\n" + FILLER),
        _multipart(FILLER + b"a lone CR ends a line\r--b1\r\n" + FILLER),
        _multipart(FILLER + b"\r\n\r\n" + FILLER),  # blank lines inside a body
        _multipart(b"HollowedLines0\r\n" + FILLER),  # the placeholder itself in the message
        _multipart(b"HollowedLines0 SetAsideLines1 PlaceholderLines2\r\n" + FILLER),
        # The placeholders where the parser reads them (the preamble): another one, or none.
        _multipart(FILLER).replace(b"preamble", b"preamble HollowedLines0"),
        _multipart(FILLER).replace(b"preamble", b"HollowedLines0 SetAsideLines PlaceholderLines"),
        _multipart(FILLER.replace(b"\r\n", b"\n")),
        _multipart(FILLER.replace(b"\r\n", b"\r")),
        b"Subject: no blank line before the body\r\n" + FILLER,
        b"Subject: s\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\n" + FILLER,
        b"Subject: s\r\nContent-Type: message/rfc822\r\n\r\n" + FILLER,  # inner headers missing
        _multipart(FILLER, boundary=b"b2").replace(b"preamble", b"preamble\r\n" + FILLER),
        b"Subject: s\r\nContent-Type: multipart/report; boundary=r\r\n\r\n--r\r\n"
        b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
        + FILLER
        + b"\r\n--r--\r\n",
        b"Subject: s\r\nContent-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\n"
        b"Subject: digested\r\n\r\n" + FILLER + b"--d--\r\n",
        b"Subject: s\r\n\r\n" + FILLER + b"no final line break",
        b"Subject: caf\xc3\xa9\r\n\r\n" + FILLER.replace(b"order", b"\xff\xfe order"),
    ],
)
def test_tree_is_the_stdlib_tree(raw: bytes) -> None:
    _assert_same_tree(raw)


def test_random_line_soup_parses_like_the_stdlib(monkeypatch: pytest.MonkeyPatch) -> None:
    # Short runs set aside too, so that every kind of line lands at a run's edges.
    monkeypatch.setattr(fastparse, "_MIN_RUN", 8)
    lines = [
        b"--b1", b"--b1--", b"-", b"", b"From me", b"Header: x", b" continued", b"body text",
        b"QUJDREVGRw==", b"Content-Type: multipart/mixed; boundary=b1", b"x\ry", b"\r", b"x\r--b1",
        b"Content-Type: message/rfc822", b"Content-Type: multipart/digest; boundary=b1",
        b"HollowedLines0", b"SetAsideLines1 PlaceholderLines22",
    ]  # fmt: skip
    rng = random.Random(6)
    for _ in range(2000):
        body = [rng.choice(lines) for _ in range(rng.randint(0, 40))]
        eol = rng.choice([b"\r\n", b"\n", b"\r"])
        raw = eol.join([b"Content-Type: multipart/mixed; boundary=b1", b"", *body])
        _assert_same_tree(raw)


def test_attachment_lines_are_set_aside() -> None:
    raw = make_message(random.Random(1), 0, "large", False, 300_000).data
    runs = fastparse._runs(raw)
    assert sum(end - start for start, end in runs) > len(raw) * 0.9
    _assert_same_tree(raw)


def test_many_short_runs_are_not_worth_setting_aside() -> None:
    raw = b"Subject: list\r\n\r\n" + b"- item\r\n" * 20_000
    assert fastparse._runs(raw) == []
    _assert_same_tree(raw)


def test_placeholder_names_in_the_message_do_not_cost_a_search_each() -> None:
    # "HollowedLines" followed by many X once made a search per X (quadratic).
    raw = _multipart(b"HollowedLines" + b"X" * 200_000 + b"\r\n" + FILLER)
    _assert_same_tree(raw)
