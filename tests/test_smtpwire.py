"""The fast DATA encoding sends exactly the bytes aiosmtplib's own code would."""

from __future__ import annotations

import random

import aiosmtplib.protocol as protocol

from relay import smtpwire


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
