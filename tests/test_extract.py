"""extract(): every encoding, charset and structure a seller's mail may come in, never raising."""

from __future__ import annotations

import base64
import quopri
import random

import pytest

from relay.extract import decode_bytes, decode_header, extract
from relay.model import Part, ScanInput

VIOLATION = "Please leave us a 5-star review and get a €10 gift card"


def message(
    body: bytes | str,
    *,
    content_type: str = "text/plain; charset=utf-8",
    encoding: str | None = None,
    subject: str | bytes = "Your order",
    extra_headers: str = "",
) -> bytes:
    """A single-part message whose body is given already transfer-encoded."""
    head = b"From: shop@example.com\r\nTo: buyer@example.com\r\nSubject: "
    head += subject.encode() if isinstance(subject, str) else subject
    head += f"\r\nMIME-Version: 1.0\r\nContent-Type: {content_type}\r\n".encode()
    if encoding:
        head += f"Content-Transfer-Encoding: {encoding}\r\n".encode()
    head += extra_headers.encode()
    return head + b"\r\n" + (body.encode() if isinstance(body, str) else body)


def multipart(subtype: str, *parts: bytes, boundary: str = "b1", subject: str = "Hi") -> bytes:
    head = (
        f"From: shop@example.com\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\npreamble\r\n'
    ).encode()
    body = b"".join(f"--{boundary}\r\n".encode() + part + b"\r\n" for part in parts)
    return head + body + f"--{boundary}--\r\n".encode()


def entity(body: bytes | str, headers: str) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return headers.replace("\n", "\r\n").encode() + b"\r\n\r\n" + data


def texts(scan: ScanInput) -> dict[str, str]:
    return {part.origin: part.text for part in scan.parts}


# Subject --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"=?utf-8?B?UGxlYXNlIGxlYXZlIDUgc3RhcnMg4piF?=", "Please leave 5 stars ★"),
        (b"=?UTF-8?Q?Bitte_5_Sterne_f=C3=BCr_uns?=", "Bitte 5 Sterne für uns"),
        (b"=?iso-8859-1?q?R=E9ponse_rapide?=", "Réponse rapide"),
        (b"=?utf-8?b?5pif?= =?utf-8?b?77yV?=", "星５"),  # adjacent words join without space
        (b"=?ISO-2022-JP?B?GyRCJWwlUyVlITwbKEI=?=", "レビュー"),
        (b"=?shift_jis?B?g4yDcoOFgVs=?=", "レビュー"),
        (b"=?utf-8?B?UGxlYXNlIGxlYXZl?=", "Please leave"),  # padding-free
        (b"=?utf-8?B?UGxlYXNl?=\r\n =?utf-8?B?IGxlYXZl?=", "Please leave"),  # folded
        (b"Plain =?x-unknown?Q?caf=E9?= text", "Plain café text"),
        ("Bitte 5 Sterne für uns".encode(), "Bitte 5 Sterne für uns"),  # raw 8-bit UTF-8
        ("レビューのお願い".encode(), "レビューのお願い"),
        ("Réponse".encode("latin-1"), "Réponse"),  # raw 8-bit, not UTF-8
        (b"=?utf-8?B?broken!!?=", ""),
    ],
)
def test_subject_is_decoded(raw: bytes, expected: str) -> None:
    scan = extract(message("Hello", subject=raw))
    assert scan.subject == expected.strip() or (not expected and scan.subject is not None)
    if expected:
        assert scan.parts[0] == Part("subject", expected)


def test_decode_header_tolerates_encoded_word_inside_a_word() -> None:
    assert decode_header("five=?utf-8?Q?_stars?=please") == "five starsplease"


def test_message_id_is_kept() -> None:
    raw = message("Hello", extra_headers="Message-ID: <abc.123@shop.example>\r\n")
    assert extract(raw).message_id == "<abc.123@shop.example>"
    assert extract(message("Hello")).message_id is None


# Transfer encodings -------------------------------------------------------------------------


def test_base64_body() -> None:
    body = base64.encodebytes(VIOLATION.encode()).decode()
    assert texts(extract(message(body, encoding="base64")))["text"] == VIOLATION


def test_base64_body_without_padding_and_with_junk() -> None:
    encoded = base64.b64encode(VIOLATION.encode()).decode().rstrip("=")
    body = "\r\n".join(encoded[i : i + 10] for i in range(0, len(encoded), 10)) + "\r\n!!\r\n"
    scan = extract(message(body, encoding="BASE64 "))
    assert texts(scan)["text"] == VIOLATION


def test_declared_base64_that_is_plain_text() -> None:
    scan = extract(message(VIOLATION + "\r\n", encoding="base64"))
    assert texts(scan)["text"] == VIOLATION
    assert any("declared base64" in note for note in scan.notes)


def test_quoted_printable_body_with_soft_breaks() -> None:
    body = quopri.encodestring((VIOLATION + " " * 3 + "x" * 120).encode()).decode()
    assert "=\n" in body
    scan = extract(message(body, encoding="quoted-printable"))
    assert texts(scan)["text"] == VIOLATION + "   " + "x" * 120


def test_broken_quoted_printable_is_read_leniently() -> None:
    scan = extract(message("five =E2=98=8 stars =ZZ done=", encoding="quoted-printable"))
    assert texts(scan)["text"].startswith("five ")
    assert "stars" in texts(scan)["text"]


@pytest.mark.parametrize("encoding", ["7bit", "8bit", "binary", "x-unknown", None])
def test_identity_and_unknown_encodings(encoding: str | None) -> None:
    scan = extract(message(VIOLATION.encode(), encoding=encoding))
    assert texts(scan)["text"] == VIOLATION


def test_uuencoded_body() -> None:
    import binascii

    line = binascii.b2a_uu(b"five stars please").decode()
    body = f"begin 644 note.txt\n{line}`\nend\n"
    assert texts(extract(message(body, encoding="x-uuencode")))["text"] == "five stars please"


# Charsets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "charset"),
    [
        ("Bitte geben Sie uns fünf Sterne – danke!", "utf-8"),
        ("Bitte geben Sie uns fünf Sterne – danke!", "cp1252"),
        ("Merci de nous donner une évaluation", "iso-8859-1"),
        ("Merci de nous donner une évaluation €", "iso-8859-15"),
        ("星5のレビューをお願いします。", "iso-2022-jp"),
        ("星5のレビューをお願いします。", "shift_jis"),
        ("星5のレビューをお願いします。", "euc-jp"),
        ("①星5のレビューをお願いします", "cp932"),
    ],
)
def test_declared_charsets(text: str, charset: str) -> None:
    raw = message(text.encode(charset), content_type=f"text/plain; charset={charset}")
    scan = extract(raw)
    assert texts(scan)["text"] == text
    assert scan.notes == ()


def test_shift_jis_label_decodes_windows_extensions() -> None:
    raw = message("①レビュー".encode("cp932"), content_type="text/plain; charset=Shift_JIS")
    assert texts(extract(raw))["text"] == "①レビュー"


@pytest.mark.parametrize(
    ("text", "actual", "declared"),
    [
        ("Bitte fünf Sterne für uns", "utf-8", "iso-8859-1"),  # UTF-8 labelled latin-1
        ("Bitte fünf Sterne für uns", "utf-8", "us-ascii"),
        ("Bitte fünf Sterne für uns", "cp1252", "utf-8"),  # latin text labelled UTF-8
        ("星5のレビューをお願いします。", "shift_jis", "utf-8"),
        ("星5のレビューをお願いします。", "euc-jp", "iso-8859-1"),
        ("星5のレビューをお願いします。", "iso-2022-jp", "utf-8"),
        ("Bitte fünf Sterne für uns", "utf-8", "x-no-such-charset"),
        ("星5のレビューをお願いします。", "shift_jis", "x-no-such-charset"),
        ("Merci – évaluation “honnête”", "cp1252", "iso-8859-1"),
    ],
)
def test_wrong_or_unknown_charset_falls_back(text: str, actual: str, declared: str) -> None:
    raw = message(text.encode(actual), content_type=f"text/plain; charset={declared}")
    scan = extract(raw)
    assert texts(scan)["text"] == text
    if declared != "iso-8859-1" or actual != "cp1252":
        assert any(declared in note for note in scan.notes), scan.notes


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Bitte fünf Sterne", "utf-8"),
        ("Merci – évaluation", "cp1252"),
        ("星5のレビューをお願いします", "iso-2022-jp"),
        ("星5のレビューをお願いします", "shift_jis"),
        ("星5のレビューをお願いします", "euc-jp"),
    ],
)
def test_missing_charset_is_guessed(text: str, encoding: str) -> None:
    raw = message(text.encode(encoding), content_type="text/plain")
    assert texts(extract(raw))["text"] == text


def test_decode_bytes_never_fails() -> None:
    noise = bytes(range(256)) * 4
    for declared in (None, "utf-8", "iso-2022-jp", "shift_jis", "bogus", "utf-16", ""):
        text, _ = decode_bytes(noise, declared)
        assert isinstance(text, str)


def test_latin_text_is_not_mistaken_for_japanese() -> None:
    sample = "Café crème à volonté, été. Ça va? Über Größe, señor, año. Êtes-vous là?"
    text, _ = decode_bytes(sample.encode("cp1252"), None)
    assert text == sample


# HTML -----------------------------------------------------------------------------------------


def test_html_part_is_rendered() -> None:
    html = "<html><body><p>Leave fi<b>ve</b> st&#97;rs</p><p style='display:none'>tiny</p>"
    scan = extract(message(html, content_type="text/html; charset=utf-8"))
    assert texts(scan) == {"subject": "Your order", "html": "Leave five stars\n\ntiny"}


def test_html_charset_from_meta_when_header_has_none() -> None:
    html = '<meta charset="shift_jis"><p>レビューをお願いします</p>'.encode("shift_jis")
    scan = extract(message(html, content_type="text/html"))
    assert texts(scan)["html"] == "レビューをお願いします"


def test_both_alternatives_are_scanned() -> None:
    raw = multipart(
        "alternative",
        entity("Thanks for your order.", "Content-Type: text/plain; charset=utf-8"),
        entity("<p>Thanks! Leave 5 stars.</p>", "Content-Type: text/html; charset=utf-8"),
    )
    assert texts(extract(raw)) == {
        "subject": "Hi",
        "text": "Thanks for your order.",
        "html": "Thanks! Leave 5 stars.",
    }


def test_html_quotes_are_stripped_in_body() -> None:
    html = (
        "<div>We are sorry.</div><div class='gmail_quote'><div class='gmail_attr'>On Mon, 3 Jun"
        " 2024 Buyer &lt;b@example.com&gt; wrote:</div><blockquote>I leave 1 star</blockquote>"
        "</div>"
    )
    scan = extract(message(html, content_type="text/html; charset=utf-8"))
    assert texts(scan)["html"] == "We are sorry."


def test_html_with_gt_quoted_lines_after_rendering() -> None:
    html = "<p>Sorry!</p><p>&gt; I leave 1 star<br>&gt; bad</p>"
    scan = extract(message(html, content_type="text/html; charset=utf-8"))
    assert texts(scan)["html"] == "Sorry!"


# Quotes in text bodies ------------------------------------------------------------------------


def test_quoted_reply_is_removed_from_text_body() -> None:
    body = "We are sorry, a new one is on its way.\n\nOn Mon, 3 Jun 2024, Sam <s@x.com> wrote:\n"
    body += "> I leave 1 star unless you refund me\n"
    assert texts(extract(message(body)))["text"] == "We are sorry, a new one is on its way."


def test_format_flowed_is_joined() -> None:
    body = "Please leave a 5-star \r\nreview.\r\n"
    raw = message(body, content_type="text/plain; charset=utf-8; format=flowed")
    assert texts(extract(raw))["text"] == "Please leave a 5-star review."
    raw = message(
        "Please leave a 5-st \r\nar review.\r\n",
        content_type="text/plain; charset=utf-8; format=flowed; delsp=yes",
    )
    assert texts(extract(raw))["text"] == "Please leave a 5-star review."


@pytest.mark.parametrize(
    ("body", "encoding", "expected"),
    [
        (b"one\r\ntwo\r\nthree", None, "one\ntwo\nthree"),
        (b"one\r\ntwo\rthree\nfour\r\r\nfive", None, "one\ntwo\nthree\nfour\n\nfive"),
        ("caf\u00e9\r\ntwo\rthree".encode(), None, "caf\u00e9\ntwo\nthree"),
        (base64.encodebytes(b"one\r\ntwo\rthree"), "base64", "one\ntwo\nthree"),
        (base64.encodebytes(b"one\r\ntwo\r\nthree"), "base64", "one\ntwo\nthree"),
    ],
)
def test_line_ends_become_line_feeds(body: bytes, encoding: str | None, expected: str) -> None:
    # ASCII bodies have their line ends rewritten as bytes, others as text: alike.
    raw = message(body, content_type="text/plain; charset=utf-8", encoding=encoding)
    assert texts(extract(raw))["text"] == expected


def test_parameter_names_in_any_case_or_continued_are_read() -> None:
    # Parameters are looked for only where their name appears; it may appear in any case.
    raw = message(
        "Please leave a 5-st \r\nar review.\r\n",
        content_type="text/plain; CHARSET=utf-8; Format=Flowed; DELSP=yes",
    )
    assert texts(extract(raw))["text"] == "Please leave a 5-star review."
    raw = multipart(
        "mixed",
        entity(
            "one", 'Content-Type: text/plain\nContent-Disposition: attachment; FileName="a.txt"'
        ),
        entity("two", 'Content-Type: text/plain; NAME="b.txt"\nContent-Disposition: attachment'),
        entity(
            "three",
            "Content-Type: text/plain\nContent-Disposition: attachment; "
            'filename*0="c"; filename*1=".txt"',
        ),
    )
    assert texts(extract(raw)) == {
        "subject": "Hi",
        "attachment:a.txt": "one",
        "attachment:b.txt": "two",
        "attachment:c.txt": "three",
    }


# Attachments ----------------------------------------------------------------------------------


def test_text_attachments_are_scanned_whole() -> None:
    raw = multipart(
        "mixed",
        entity("See attached note.", "Content-Type: text/plain; charset=utf-8"),
        entity(
            base64.encodebytes(b"Leave 5 stars!\n> not a quote here\n").decode(),
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n"
            'Content-Disposition: attachment; filename="note.txt"',
        ),
        entity(
            "item,comment\nlamp,Review us with 5 stars\n",
            'Content-Type: text/csv\nContent-Disposition: attachment; filename="list.csv"',
        ),
        entity(
            "<p>fi<b>ve</b> stars</p>",
            'Content-Type: text/html\nContent-Disposition: attachment; filename="promo.html"',
        ),
        entity(
            "octet text body",
            'Content-Type: application/octet-stream; name="readme.txt"\n'
            "Content-Disposition: attachment",
        ),
        entity(
            "%PDF-1.4 binary",
            'Content-Type: application/pdf\nContent-Disposition: attachment; filename="inv.pdf"',
        ),
        entity("GIF89a", 'Content-Type: image/gif; name="logo.gif"'),
    )
    scan = extract(raw)
    assert texts(scan) == {
        "subject": "Hi",
        "text": "See attached note.",
        "attachment:note.txt": "Leave 5 stars!\n> not a quote here",
        "attachment:list.csv": "item,comment\nlamp,Review us with 5 stars",
        "attachment:promo.html": "five stars",
        "attachment:readme.txt": "octet text body",
    }
    assert scan.notes == ("attachment:inv.pdf not scanned (application/pdf)",)


def test_attachment_name_rfc2047_and_rfc2231() -> None:
    raw = multipart(
        "mixed",
        entity(
            "one",
            "Content-Type: text/plain\n"
            'Content-Disposition: attachment; filename="=?utf-8?B?44Oh44Oi?=.txt"',
        ),
        entity(
            "two",
            "Content-Type: text/plain\nContent-Disposition: attachment; "
            "filename*=utf-8''Notiz%20f%C3%BCr%20Sie.txt",
        ),
        entity("three", "Content-Type: text/plain\nContent-Disposition: attachment"),
    )
    assert texts(extract(raw)) == {
        "subject": "Hi",
        "attachment:メモ.txt": "one",
        "attachment:Notiz für Sie.txt": "two",
        "attachment:unnamed": "three",
    }


def test_named_inline_text_part_is_a_body() -> None:
    raw = multipart(
        "mixed",
        entity(
            "Sorry for the delay.\n\nOn 3 Jun 2024, Sam <s@x.com> wrote:\n> 1 star!",
            'Content-Type: text/plain\nContent-Disposition: inline; filename="body.txt"',
        ),
    )
    assert texts(extract(raw)) == {"subject": "Hi", "text": "Sorry for the delay."}
    raw = multipart(
        "mixed",
        entity(
            "Leave 5 stars",
            'Content-Type: application/octet-stream\nContent-Disposition: inline; filename="a.txt"',
        ),
    )
    assert texts(extract(raw)) == {"subject": "Hi", "attachment:a.txt": "Leave 5 stars"}


def test_binary_data_in_text_attachment_is_noted() -> None:
    raw = multipart(
        "mixed",
        entity(
            b"\x00\x01\x02binary",
            'Content-Type: text/plain\nContent-Disposition: attachment; filename="x.txt"',
        ),
    )
    scan = extract(raw)
    assert texts(scan) == {"subject": "Hi"}
    assert scan.notes == ("attachment:x.txt: looks binary; not scanned",)


def test_repeated_text_parts_get_numbered_origins() -> None:
    raw = multipart(
        "mixed",
        entity("first", "Content-Type: text/plain"),
        entity("GIF89a", "Content-Type: image/gif"),
        entity("second", "Content-Type: text/plain"),
    )
    assert texts(extract(raw)) == {"subject": "Hi", "text": "first", "text:2": "second"}


def test_calendar_and_vcard_parts_are_not_prose() -> None:
    raw = multipart(
        "mixed",
        entity("BEGIN:VCALENDAR", "Content-Type: text/calendar"),
        entity("hello", "Content-Type: text/plain"),
    )
    assert texts(extract(raw)) == {"subject": "Hi", "text": "hello"}


# Nested messages ------------------------------------------------------------------------------


def nest(inner: bytes, levels: int) -> bytes:
    raw = inner
    for level in range(levels):
        raw = multipart(
            "mixed",
            entity(f"level {levels - level - 1} body", "Content-Type: text/plain"),
            entity(raw, "Content-Type: message/rfc822"),
            boundary=f"n{level}",
            subject=f"level {levels - level - 1}",
        )
    return raw


def test_forwarded_message_is_scanned_with_nested_origins() -> None:
    inner = message(
        "Leave 5 stars please.\n\nOn Mon, 3 Jun 2024, Sam <s@x.com> wrote:\n> buyer words\n",
        subject=b"=?utf-8?Q?Inner_subj=C3=A9ct?=",
    )
    raw = multipart(
        "mixed",
        entity("FYI, see below.", "Content-Type: text/plain"),
        entity(inner, "Content-Type: message/rfc822"),
        subject="Fwd: Your order",
    )
    assert texts(extract(raw)) == {
        "subject": "Fwd: Your order",
        "text": "FYI, see below.",
        "message:1>subject": "Inner subjéct",
        "message:1>text": "Leave 5 stars please.",
    }


def test_eml_attachment_and_base64_encoded_message_part() -> None:
    inner = message("inner body", subject="inner")
    raw = multipart(
        "mixed",
        entity(
            base64.encodebytes(inner).decode(),
            "Content-Type: message/rfc822\nContent-Transfer-Encoding: base64",
        ),
        entity(
            inner,
            "Content-Type: application/octet-stream\nContent-Disposition: attachment; "
            'filename="fwd.eml"',
        ),
    )
    assert texts(extract(raw)) == {
        "subject": "Hi",
        "message:1>subject": "inner",
        "message:1>text": "inner body",
        "message:2>subject": "inner",
        "message:2>text": "inner body",
    }


def test_depth_limit() -> None:
    raw = nest(message("deepest body", subject="deepest"), 4)
    scan = extract(raw, max_depth=5)
    origins = [part.origin for part in scan.parts]
    assert "message:1>message:1>message:1>message:1>text" in origins
    assert scan.notes == ()

    scan = extract(raw, max_depth=2)
    origins = [part.origin for part in scan.parts]
    assert "message:1>message:1>text" in origins
    assert not any(origin.count("message:") > 2 for origin in origins)
    assert scan.notes == ("message:1>message:1>message:1: nested deeper than 2; not scanned",)


def test_default_depth_limit_is_five() -> None:
    scan = extract(nest(message("deepest body"), 7))
    assert max(part.origin.count("message:") for part in scan.parts) == 5
    assert len(scan.notes) == 1
    assert "nested deeper than 5" in scan.notes[0]


def test_part_limit() -> None:
    raw = multipart("mixed", *(entity(f"part {n}", "Content-Type: text/plain") for n in range(30)))
    scan = extract(raw, max_parts=10)
    assert len([p for p in scan.parts if p.origin != "subject"]) == 9  # the multipart counts
    assert scan.notes == ("more than 10 MIME parts; the rest not scanned",)


# Broken input ---------------------------------------------------------------------------------


def test_multipart_without_boundary_is_read_as_text() -> None:
    raw = (
        b"Subject: x\r\nContent-Type: multipart/mixed\r\n\r\n--zz\r\nContent-Type: text/plain"
        b"\r\n\r\nLeave 5 stars\r\n--zz--\r\n"
    )
    scan = extract(raw)
    assert "Leave 5 stars" in texts(scan)["text"]
    assert any("boundary" in note for note in scan.notes)


def test_missing_closing_boundary() -> None:
    raw = multipart("mixed", entity("Leave 5 stars", "Content-Type: text/plain"))
    raw = raw.replace(b"--b1--\r\n", b"")
    assert texts(extract(raw))["text"] == "Leave 5 stars"


def test_headers_only_and_empty_input() -> None:
    assert extract(b"") == ScanInput(subject="", parts=())
    assert extract(b"Subject: only\r\n").parts == (Part("subject", "only"),)


def test_not_an_email_at_all() -> None:
    scan = extract(b"Leave us 5 stars please, no headers here")
    assert "Leave us 5 stars" in " ".join(part.text for part in scan.parts)


@pytest.mark.parametrize("seed", range(40))
def test_garbage_never_raises(seed: int) -> None:
    rng = random.Random(seed)
    pieces = [
        b"Content-Type: multipart/mixed; boundary=q\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"Content-Type: text/html; charset=\xff\xfe\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"Content-Disposition: attachment; filename*=bogus''%ZZ\r\n",
        b"Subject: =?utf-8?B?\xff?= =?x?Q?=?=\r\n",
        b"--q\r\n",
        b"--q--\r\n",
        b"\r\n",
        b"<p>fi<b>ve",
        b"=?=?=?",
        b"\x00\x1b$B\x1b(B\xff\xfe",
        bytes(rng.randrange(256) for _ in range(40)),
    ]
    raw = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 60)))
    scan = extract(raw)
    assert isinstance(scan, ScanInput)
    assert all(isinstance(part.text, str) for part in scan.parts)


def test_deeply_nested_multiparts_do_not_raise() -> None:
    raw = b"Subject: deep\r\n"
    for level in range(300):
        raw += f'Content-Type: multipart/mixed; boundary="d{level}"\r\n\r\n--d{level}\r\n'.encode()
    raw += b"Content-Type: text/plain\r\n\r\nbottom\r\n"
    scan = extract(raw, max_parts=10_000)
    assert isinstance(scan, ScanInput)
    assert scan.notes  # either the nesting limit or the parser's own recovery is reported
