"""The benchmark's traffic: a deterministic, realistic mix of seller mail.

About 70% short plain-text messages (2-10 KB), 25% text+html newsletters-sized replies
(about 50 KB), 5% large messages (300 KB-1 MB) carrying a PDF-like attachment; about 5% of all
messages carry a sentence that breaks the review policy, so the quarantine path runs too.
The same seed gives the same bytes, so every target in a run gets identical traffic.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

# Ordinary helpdesk prose; sentences are drawn at random to fill messages to size.
_SENTENCES = (
    "Thank you for your order, it left our warehouse this morning.",
    "Your parcel is on its way and should arrive within three working days.",
    "We are sorry to hear that the lid of the container was cracked on arrival.",
    "A replacement has been sent free of charge with tracking included.",
    "Please find the invoice for your purchase attached to the order page.",
    "If the size does not fit, you can return the item within thirty days.",
    "Our support team is available Monday to Friday from nine to five.",
    "The charger works with every model listed on the product page.",
    "We checked with the carrier and the delivery was delayed by weather.",
    "The refund for the missing part was issued to your original payment method.",
    "Instructions for assembling the shelf are printed on the back of the box.",
    "Let us know through Buyer-Seller Messaging if anything else comes up.",
    "The batteries are not included because of shipping regulations.",
    "We appreciate your patience while the new stock arrives next week.",
    "The colour may look slightly different depending on your screen settings.",
)

# Sentences that break Amazon's review policy (one category each), spread over the mix.
VIOLATIONS = (
    "If you are happy with your purchase, please leave us a 5-star review.",
    "We will refund your order in full once you leave a positive review.",
    "Could you please delete your negative review now that the issue is solved?",
    "If you were not satisfied, contact us first before writing a review.",
    "Please mark our reviews as helpful, it really helps a small business like ours.",
    "Please leave us a 5-star review!",
)


@dataclass(frozen=True, slots=True)
class Message:
    """One message to send: envelope, raw bytes (CRLF lines) and whether it should violate."""

    mail_from: str
    rcpt_to: tuple[str, ...]
    data: bytes
    violating: bool
    kind: str


def _prose(rng: random.Random, size: int) -> str:
    lines: list[str] = []
    total = 0
    while total < size:
        paragraph = " ".join(rng.choice(_SENTENCES) for _ in range(rng.randint(2, 5)))
        # Wrap at about 76 characters, as mail clients do.
        words = paragraph.split()
        line = ""
        for word in words:
            if len(line) + len(word) + 1 > 76:
                lines.append(line)
                total += len(line) + 2
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
        lines.append("")
        total += len(line) + 4
    return "\r\n".join(lines)


def _headers(rng: random.Random, index: int, subject: str, extra: list[str]) -> list[str]:
    when = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    return [
        f"From: Seller Support <support{index % 7}@shop.example>",
        f"To: buyer{index}@marketplace.example",
        f"Subject: {subject}",
        f"Date: {format_datetime(when)}",
        f"Message-ID: <bench{index}.{rng.getrandbits(40):010x}@shop.example>",
        "MIME-Version: 1.0",
        *extra,
    ]


def _plain(rng: random.Random, index: int, size: int, violation: str | None) -> bytes:
    body = _prose(rng, size - 400)
    if violation:
        body = _insert(rng, body, violation)
    head = _headers(
        rng,
        index,
        f"Re: Your order 114-{rng.randint(1000000, 9999999)}-{rng.randint(1000000, 9999999)}",
        ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"],
    )
    return ("\r\n".join(head) + "\r\n\r\n" + body + "\r\n").encode()


def _html_of(text: str) -> str:
    paragraphs = [p for p in text.split("\r\n\r\n") if p.strip()]
    inner = "\r\n".join(
        f'<p style="font-family:Arial,sans-serif;font-size:14px">{p}</p>' for p in paragraphs
    )
    return (
        '<!DOCTYPE html>\r\n<html><head><meta charset="utf-8"></head><body>\r\n'
        f'<table width="600"><tr><td>\r\n{inner}\r\n</td></tr></table>\r\n</body></html>'
    )


def _alternative(rng: random.Random, index: int, size: int, violation: str | None) -> bytes:
    # Text and HTML carry the same words; with the markup, the whole is about 2.3x the text.
    text = _prose(rng, int(size * 0.43))
    if violation:
        text = _insert(rng, text, violation)
    html = _html_of(text)
    boundary = f"=_alt_{index}_{rng.getrandbits(32):08x}"
    head = _headers(
        rng,
        index,
        "Your order has shipped",
        [f'Content-Type: multipart/alternative; boundary="{boundary}"'],
    )
    parts = [
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        text,
        f"--{boundary}",
        "Content-Type: text/html; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        html,
        f"--{boundary}--",
        "",
    ]
    return ("\r\n".join(head) + "\r\n\r\n" + "\r\n".join(parts)).encode()


def _with_attachment(rng: random.Random, index: int, size: int, violation: str | None) -> bytes:
    text = _prose(rng, 3000)
    if violation:
        text = _insert(rng, text, violation)
    payload = rng.randbytes(int(size * 0.74))
    encoded = base64.encodebytes(payload).decode().replace("\n", "\r\n")
    boundary = f"=_mix_{index}_{rng.getrandbits(32):08x}"
    head = _headers(
        rng,
        index,
        "Invoice and user manual for your order",
        [f'Content-Type: multipart/mixed; boundary="{boundary}"'],
    )
    parts = [
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        text,
        f"--{boundary}",
        'Content-Type: application/pdf; name="manual.pdf"',
        "Content-Transfer-Encoding: base64",
        'Content-Disposition: attachment; filename="manual.pdf"',
        "",
        encoded,
        f"--{boundary}--",
        "",
    ]
    return ("\r\n".join(head) + "\r\n\r\n" + "\r\n".join(parts)).encode()


def _insert(rng: random.Random, body: str, sentence: str) -> str:
    paragraphs = body.split("\r\n\r\n")
    at = rng.randrange(len(paragraphs))
    paragraphs.insert(at, sentence)
    return "\r\n\r\n".join(paragraphs)


def make_message(
    rng: random.Random, index: int, kind: str, violating: bool, size: int | None = None
) -> Message:
    """One message of `kind` (`small`, `medium`, `large`), about `size` bytes when given."""
    violation = rng.choice(VIOLATIONS) if violating else None
    if kind == "small":
        data = _plain(rng, index, size or rng.randint(2_000, 10_000), violation)
    elif kind == "medium":
        data = _alternative(rng, index, size or 50_000, violation)
    elif kind == "large":
        data = _with_attachment(rng, index, size or rng.randint(300_000, 1_000_000), violation)
    else:
        raise ValueError(f"unknown message kind {kind!r}")
    return Message(
        mail_from=f"support{index % 7}@shop.example",
        rcpt_to=(f"buyer{index}@marketplace.example",),
        data=data,
        violating=violating,
        kind=kind,
    )


def mix(count: int, seed: int = 6, violating_share: float = 0.05) -> list[Message]:
    """`count` messages in the issue-6 proportions, with exactly round(5%) violating."""
    rng = random.Random(seed)
    kinds = ["small"] * 70 + ["medium"] * 25 + ["large"] * 5
    chosen = [kinds[i * len(kinds) // count] for i in range(count)]
    rng.shuffle(chosen)
    bad = set(rng.sample(range(count), round(count * violating_share)))
    return [make_message(rng, i, kind, i in bad) for i, kind in enumerate(chosen)]


def dot_stuff(data: bytes) -> bytes:
    """The DATA payload as sent on the wire: leading dots doubled, ending in CRLF.CRLF."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"
