"""Quote stripping keeps the seller's words and drops the buyer's, in every supported language."""

from __future__ import annotations

import random

import pytest

from relay.quotes import _strip, is_forward_subject, strip_quotes

SELLER = "Thanks for your order, Sam.\nWe shipped it today."
BUYER = "Where is my parcel? I will leave 1 star."


@pytest.mark.parametrize(
    "attribution",
    [
        "On Mon, 3 Jun 2024, Buyer <buyer@example.com> wrote:",
        "On Mon, Jun 3, 2024 at 10:00 AM Sam Buyer <buyer@example.com> wrote:",
        "Am 03.06.2024 um 10:00 schrieb Sam Käufer <buyer@example.com>:",
        "Sam Käufer <buyer@example.com> schrieb am 03.06.2024:",
        "Le lun. 3 juin 2024 à 10:00, Sam Acheteur <buyer@example.com> a écrit :",
        "El lun, 3 jun 2024 a las 10:00, Sam Comprador (<buyer@example.com>) escribió:",
        "Il giorno lun 3 giu 2024 alle ore 10:00 Sam Acquirente <buyer@example.com> ha scritto:",
        "2024年6月3日(月) 10:00 山田太郎 <buyer@example.com>:",
        "2024/06/03 10:00、山田太郎 <buyer@example.com>のメール:",
        "山田太郎さんは書きました：",
    ],
)
def test_attribution_and_quoted_lines_go(attribution: str) -> None:
    text = f"{SELLER}\n\n{attribution}\n> {BUYER}\n> Thanks\n"
    assert strip_quotes(text) == SELLER


@pytest.mark.parametrize(
    "attribution",
    [
        "On Mon, 3 Jun 2024, Buyer <buyer@example.com> wrote:",
        "Am 03.06.2024 um 10:00 schrieb Sam Käufer <buyer@example.com>:",
        "Le 3 juin 2024 à 10:00, Sam <buyer@example.com> a écrit :",
        "El 3 jun 2024, Sam <buyer@example.com> escribió:",
        "Il 3 giu 2024, Sam <buyer@example.com> ha scritto:",
        "2024年6月3日(月) 10:00 山田 <buyer@example.com>:",
        "山田さんは書きました:",
    ],
)
def test_attribution_over_unmarked_original_cuts_the_rest(attribution: str) -> None:
    text = f"{SELLER}\n\n{attribution}\n\n{BUYER}\nRegards, the buyer\n"
    assert strip_quotes(text) == SELLER


def test_attribution_wrapped_over_two_lines() -> None:
    text = (
        f"{SELLER}\n\nOn Mon, Jun 3, 2024 at 10:00 AM Sam Buyer <\n"
        f"buyer@example.com> wrote:\n\n> {BUYER}\n"
    )
    assert strip_quotes(text) == SELLER


def test_attribution_wrapped_over_three_lines_from_a_line_without_colon_or_dash() -> None:
    # Only the last line holds a colon: the first line must still be looked at as an opener.
    text = f"{SELLER}\n\nOn Monday 3 June 2024\nSam Buyer <buyer@example.com>\nwrote:\n\n{BUYER}\n"
    assert strip_quotes(text) == SELLER


def test_quote_marks_after_unicode_indentation_are_found() -> None:
    text = f"{SELLER}\n\u3000> {BUYER}\n\t> Thanks\n"
    assert strip_quotes(text) == SELLER


def test_text_without_any_quote_sign_comes_back_whole_less_trailing_rules() -> None:
    text = f"{SELLER}\nAnother line\n\n  \n___\n"
    assert strip_quotes(text) == f"{SELLER}\nAnother line"


@pytest.mark.parametrize(
    "separator",
    [
        "-----Original Message-----",
        "----- Original Message -----",
        "-----Ursprüngliche Nachricht-----",
        "-----Message d'origine-----",
        "-----Mensaje original-----",
        "-----Messaggio originale-----",
        "-----元のメッセージ-----",
    ],
)
def test_reply_separator_cuts_the_rest(separator: str) -> None:
    text = f"{SELLER}\n\n{separator}\nFrom: Buyer\n{BUYER}\n"
    assert strip_quotes(text) == SELLER


@pytest.mark.parametrize(
    "block",
    [
        "From: Sam Buyer <buyer@example.com>\nSent: Monday, June 3, 2024 10:00 AM\n"
        "To: shop@example.com\nSubject: Where is my order?",
        "*From:* Sam Buyer <buyer@example.com>\n*Sent:* Monday\n*To:* shop\n*Subject:* order",
        "Von: Sam Käufer <buyer@example.com>\nGesendet: Montag, 3. Juni 2024 10:00\n"
        "An: shop@example.com\nBetreff: Bestellung",
        "De : Sam <buyer@example.com>\nEnvoyé : lundi 3 juin 2024 10:00\nÀ : shop\n"
        "Objet : Commande",
        "De: Sam <buyer@example.com>\nEnviado el: lunes, 3 de junio de 2024\nPara: shop\n"
        "Asunto: Pedido",
        "Da: Sam <buyer@example.com>\nInviato: lunedì 3 giugno 2024 10:00\nA: shop\n"
        "Oggetto: Ordine",
        "差出人: 山田 <buyer@example.com>\n送信日時: 2024年6月3日 10:00\n宛先: shop\n件名: 注文",
        "送信者: 山田 <buyer@example.com>\n日付: 2024年6月3日 10:00\n宛先: shop\n件名: 注文",
    ],
)
def test_outlook_header_block_cuts_the_rest(block: str) -> None:
    text = f"{SELLER}\n\n________________________________\n{block}\n\n{BUYER}\n"
    assert strip_quotes(text) == SELLER


def test_seller_text_after_a_quoted_block_stays() -> None:
    text = f"Hi Sam,\n\nOn 3 Jun 2024, Sam <b@example.com> wrote:\n> {BUYER}\n\nPS: see you soon\n"
    assert strip_quotes(text) == "Hi Sam,\n\n\nPS: see you soon"


def test_bare_quoted_lines_go_without_attribution() -> None:
    assert strip_quotes(f"> {BUYER}\n>> older\n{SELLER}") == SELLER


def test_signature_and_ps_stay() -> None:
    text = f"{SELLER}\n\nPS: a 5-star review would make our day!\n-- \nTidy Home Co.\n"
    assert strip_quotes(text) == text.rstrip("\n")


@pytest.mark.parametrize(
    "line",
    [
        "Here is what our team wrote:",
        "On Monday our courier wrote:",
        "2024年6月3日(月)のお届け予定です：",
        "From: the Tidy Home team",
        ">>> Spring sale: 20% off <<<",
    ],
)
def test_seller_lines_that_look_like_quote_headers_stay(line: str) -> None:
    text = f"{SELLER}\n{line}\nOur next step is a refund.\n"
    assert strip_quotes(text) == text.rstrip("\n")


def test_forwarded_message_marker_keeps_what_follows() -> None:
    text = (
        f"{SELLER}\n\n---------- Forwarded message ---------\nFrom: Warehouse <w@example.com>\n"
        "Date: Mon, 3 Jun 2024\nSubject: Dispatch\nTo: shop@example.com\n\nParcel left today.\n"
    )
    assert strip_quotes(text) == text.rstrip("\n")


def test_forward_flag_keeps_outlook_block() -> None:
    text = f"{SELLER}\n\n-----Original Message-----\nFrom: Warehouse\nParcel left today."
    assert strip_quotes(text, forward=True) == text
    assert strip_quotes(text) == SELLER


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Fwd: order", True),
        ("FW: order", True),
        ("WG: Bestellung", True),
        ("TR: commande", True),
        ("RV: pedido", True),
        ("I: ordine", True),
        ("転送: 注文", True),
        ("Re: order", False),
        ("Information about your order", False),
        ("Re: Fwd: order", False),
    ],
)
def test_forward_subjects(subject: str, expected: bool) -> None:
    assert is_forward_subject(subject) is expected


def test_long_input_is_handled_linearly() -> None:
    # Many From:-like lines and very long lines must not make stripping slow (no timing asserted:
    # the limits in the implementation bound the work; this proves it still returns the text).
    text = ("From: x\n" + "\n" * 50) * 2000 + "a" * 1_000_000
    assert strip_quotes(text).endswith("a")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  ", ""),
        (" \t\n\n", ""),
        ("abc  \n \n", "abc  "),
        ("\n\nabc", "\n\nabc"),
        ("a\n\xa0\n", "a\n\xa0"),
    ],
)
def test_blank_tail_goes_but_line_ends_stay(text: str, expected: str) -> None:
    assert strip_quotes(text) == expected


# Lines that trip each check, lines that almost do, and lines that only look like them.
_LINES = [
    "Thanks for your order.", "Buyer-Seller Messaging", "a 5-star review", "pre-paid and well-",
    "well -", "> quoted", "  > indented quote", "\u3000> quoted", ">>> SALE <<<", "x > y", "",
    "   ", "\t", "-- ", "---", "___", "= = =", "**", "*From:* Sam", "a_b", "1 = 1", "2 * 3",
    "-----Original Message-----", "----- Ursprüngliche Nachricht -----",
    "---------- Forwarded message ---------", "Forwarded message:", "Begin forwarded message:",
    "Forwarded message -----", "Forwarded message--", ">tight quote",
    "From: Sam Buyer <sam@buyer.example>", "Sent: Monday, June 3, 2024 10:00",
    "To: shop@seller.example", "Subject: Re: order", "Von: Sam", "Gesendet: Montag", "An: x",
    "On Mon, Jun 3, 2024 at 10:00 AM Sam <sam@buyer.example> wrote:", "On Monday 3 June 2024",
    "Sam Buyer <sam@buyer.example>", "wrote:", "Here is what our team wrote:", "Note: ok",
    "2024年6月3日(月) 10:00 山田 <y@example.jp>:", "山田さんは書きました：", "件名：注文",
    "Le lun. 3 juin 2024, Sam a écrit :", "time 10:00 sharp", "a\rb", "\xa0-\xa0",
]  # fmt: skip


@pytest.mark.parametrize("forward", [False, True])
def test_only_candidate_lines_can_change_the_outcome(forward: bool) -> None:
    # The candidate filter is an optimization only: checking every line gives the same text.
    rng = random.Random(3)
    changed = 0
    for _ in range(3000):
        text = "\n".join(rng.choice(_LINES) for _ in range(rng.randint(0, 12)))
        every_line = list(range(text.count("\n") + 1))
        expected = _strip(text, every_line, forward=forward)
        assert strip_quotes(text, forward=forward) == expected, text
        changed += expected != text
    assert changed > 1000
