"""Turn labeled corpus items into real messages: the plain form and obfuscated variants.

Each item (see README.md in this folder) becomes one message per variant:

- `plain`: text/plain UTF-8 (text/html when `html: true`), the `quoted` buyer text below it
  as a real reply quote in the item's language ("On ..., Buyer <...> wrote:" and `> ` lines,
  or a Gmail-style HTML blockquote);
- `base64`: body in base64, subject as RFC 2047 B-encoded words;
- `qp`: body in quoted-printable, subject as RFC 2047 Q-encoded words;
- `html-split`: one text/html part, words split by inline tags and letters written as
  character entities;
- `zero-width`: zero-width spaces/joiners and soft hyphens inside words (subject too);
- `homoglyph`: Latin letters inside words replaced by Cyrillic or Greek look-alikes (subject
  too; Japanese script is left alone);
- `attachment`: the seller's text moved into a text attachment, the body saying "see the
  attached note".

Everything is seeded by item id and variant, so the same corpus always builds the same bytes.
Run `python -m tests.corpus.build OUTDIR` to write the messages as .eml files.
"""

from __future__ import annotations

import argparse
import base64
import html
import quopri
import random
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from relay.model import Category

CORPUS_DIR = Path(__file__).resolve().parent
LANGUAGES = ("en", "de", "fr", "es", "it", "ja")
VARIANTS = ("plain", "base64", "qp", "html-split", "zero-width", "homoglyph", "attachment")
OBFUSCATED = VARIANTS[1:]
CATEGORIES = tuple(category.value for category in Category)
_ITEM_KEYS = frozenset({"id", "labels", "subject", "body", "html", "quoted", "language"})

_ATTRIBUTION = {
    "en": "On Mon, 3 Jun 2024 at 10:15, Sam Buyer <buyer@example.com> wrote:",
    "de": "Am Mo., 3. Juni 2024 um 10:15 Uhr schrieb Sam Käufer <buyer@example.com>:",
    "fr": "Le lun. 3 juin 2024 à 10:15, Sam Acheteur <buyer@example.com> a écrit :",
    "es": "El lun, 3 jun 2024 a las 10:15, Sam Comprador (<buyer@example.com>) escribió:",
    "it": "Il giorno lun 3 giu 2024 alle ore 10:15 Sam Acquirente <buyer@example.com> ha scritto:",
    "ja": "2024年6月3日(月) 10:15 山田太郎 <buyer@example.com>:",
}
_SEE_ATTACHED = {
    "en": "Hello, please see the attached note.",
    "de": "Hallo, bitte beachten Sie die beigefügte Notiz.",
    "fr": "Bonjour, veuillez consulter la note ci-jointe.",
    "es": "Hola, consulte la nota adjunta.",
    "it": "Buongiorno, consulti la nota allegata.",
    "ja": "添付のメモをご確認ください。",
}
_ATTACHMENT_NAME = {
    "en": "note",
    "de": "notiz",
    "fr": "note",
    "es": "nota",
    "it": "nota",
    "ja": "memo",
}

_ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad")
_HOMOGLYPHS = {
    "a": "аα", "c": "сϲ", "e": "е", "i": "іι", "j": "ј", "o": "оο", "p": "рρ", "s": "ѕ",
    "x": "хχ", "y": "уγ", "v": "ν", "A": "АΑ", "B": "ВΒ", "C": "СϹ", "E": "ЕΕ", "H": "НΗ",
    "I": "ІΙ", "K": "КΚ", "M": "МΜ", "N": "Ν", "O": "ОΟ", "P": "РΡ", "T": "ТΤ", "X": "ХΧ",
    "Y": "ҮΥ", "Z": "Ζ",
}  # fmt: skip
_INLINE_TAGS = (
    ("<b>", "</b>"),
    ("<i>", "</i>"),
    ("<span>", "</span>"),
    ("<strong>", "</strong>"),
    ("<em>", "</em>"),
    ('<span style="color:#333">', "</span>"),
    ('<font face="Arial">', "</font>"),
    ("<u>", "</u>"),
)
_WORD = re.compile(r"\w+")
_TAG_OR_TEXT = re.compile(r"(<[^>]*>)")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uff66-\uff9f]")
_B_WORD_BYTES = 45  # 45 bytes -> 60 base64 chars: encoded words stay under 75 characters
_Q_WORD_CHARS = 60


class CorpusError(ValueError):
    """A corpus file is malformed; the message names the file and the item."""


@dataclass(frozen=True, slots=True)
class Item:
    """One labeled seller message from the corpus."""

    id: str
    language: str
    labels: tuple[str, ...]
    subject: str
    body: str
    html: bool = False
    quoted: str | None = None
    source: str = ""

    @property
    def is_violation(self) -> bool:
        return bool(self.labels)


@dataclass(frozen=True, slots=True)
class Sample:
    """One built message: an item in one variant."""

    item: Item
    variant: str
    raw: bytes


# Loading -------------------------------------------------------------------------------------


def load_corpus(root: Path = CORPUS_DIR) -> list[Item]:
    """Every item under `root/<language>/*.yaml`, in a stable order; ids must be unique."""
    items: list[Item] = []
    for language in LANGUAGES:
        for path in sorted((root / language).glob("*.yaml")):
            items.extend(load_file(path, language=language))
    seen: dict[str, str] = {}
    for item in items:
        if item.id in seen:
            raise CorpusError(f"{item.source}: duplicate id {item.id!r} (also in {seen[item.id]})")
        seen[item.id] = item.source
    return items


def load_file(path: Path, *, language: str | None = None) -> list[Item]:
    """The items of one corpus file; `language` defaults to each item's `language` key."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CorpusError(f"{path}: cannot read: {exc}") from exc
    if data is None:
        return []
    if not isinstance(data, list):
        raise CorpusError(f"{path}: expected a list of items")
    return [_item(entry, path, language, index) for index, entry in enumerate(data)]


def _item(entry: object, path: Path, language: str | None, index: int) -> Item:
    where = f"{path}: item {index + 1}"
    if not isinstance(entry, dict):
        raise CorpusError(f"{where}: expected a mapping")
    where = f"{path}: {entry.get('id', f'item {index + 1}')}"
    unknown = set(entry) - _ITEM_KEYS
    if unknown:
        raise CorpusError(f"{where}: unknown keys {sorted(unknown)}")
    for key in ("id", "subject", "body"):
        if not isinstance(entry.get(key), str):
            raise CorpusError(f"{where}: {key!r} must be a string")
    labels = entry.get("labels")
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise CorpusError(f"{where}: 'labels' must be a list of categories ([] = compliant)")
    for label in labels:
        if label not in CATEGORIES:
            raise CorpusError(f"{where}: unknown category {label!r}")
    item_language = entry.get("language", language)
    if item_language not in LANGUAGES:
        raise CorpusError(f"{where}: unknown language {item_language!r}")
    quoted = entry.get("quoted")
    if quoted is not None and not isinstance(quoted, str):
        raise CorpusError(f"{where}: 'quoted' must be a string")
    is_html = entry.get("html", False)
    if not isinstance(is_html, bool):
        raise CorpusError(f"{where}: 'html' must be true or false")
    return Item(
        id=entry["id"],
        language=item_language,
        labels=tuple(sorted(set(labels))),
        subject=entry["subject"],
        body=entry["body"],
        html=is_html,
        quoted=quoted,
        source=str(path),
    )


# Building ------------------------------------------------------------------------------------


def build_all(items: Iterable[Item], variants: Sequence[str] = VARIANTS) -> Iterator[Sample]:
    """Every item in every requested variant."""
    for item in items:
        for variant in variants:
            yield Sample(item, variant, build(item, variant))


def build(item: Item, variant: str) -> bytes:
    """The message bytes of `item` in `variant` (one of VARIANTS); deterministic."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    rng = random.Random(f"{item.id}/{variant}")
    subject, body, is_html = item.subject, item.body, item.html
    if variant == "zero-width":
        subject = _in_text(subject, lambda text: _zero_width(text, rng), is_html=False)
        body = _in_text(body, lambda text: _zero_width(text, rng), is_html=is_html)
    elif variant == "homoglyph":
        subject = _in_text(subject, lambda text: _homoglyphs(text, rng), is_html=False)
        body = _in_text(body, lambda text: _homoglyphs(text, rng), is_html=is_html)
    elif variant == "html-split":
        body = _split_html(body if is_html else _text_to_html(body), rng)
        is_html = True

    if variant == "attachment":
        reply = _with_quote(_SEE_ATTACHED[item.language], item, is_html=False, rng=rng)
        extension = "html" if is_html else "txt"
        name = f"{_ATTACHMENT_NAME[item.language]}.{extension}"
        return _multipart_with_attachment(item, subject, reply, body, name, is_html)

    body = _with_quote(body, item, is_html=is_html, rng=rng)
    if variant == "html-split" and "<html" not in body.lower():
        body = f'<html><body style="font-family:Arial">\n{body}\n</body></html>'
    subject_mode = {"base64": "B", "qp": "Q"}.get(variant, "auto")
    encoding = {"base64": "base64", "qp": "quoted-printable"}.get(variant, "8bit")
    content_type = "text/html" if is_html else "text/plain"
    headers = _headers(item, variant, _encode_subject(subject, subject_mode))
    return _crlf(headers + _entity(body, content_type, encoding))


def _headers(item: Item, variant: str, subject: str) -> str:
    return (
        "From: Tidy Home Co. <seller@shop.example>\n"
        "To: buyer@marketplace.example\n"
        f"Subject: {subject}\n"
        "Date: Mon, 03 Jun 2024 12:00:00 +0000\n"
        f"Message-ID: <{item.id}.{variant}@corpus.outbox-relay.test>\n"
        "MIME-Version: 1.0\n"
    )


def _entity(body: str, content_type: str, encoding: str, disposition: str = "") -> str:
    data = body.encode("utf-8")
    if encoding == "base64":
        encoded = base64.encodebytes(data).decode("ascii")
    elif encoding == "quoted-printable":
        encoded = quopri.encodestring(data).decode("ascii")
    else:
        encoded = body if body.endswith("\n") else body + "\n"
    return (
        f"Content-Type: {content_type}; charset=utf-8\n"
        f"Content-Transfer-Encoding: {encoding}\n"
        f"{disposition}\n{encoded}"
    )


def _multipart_with_attachment(
    item: Item, subject: str, reply: str, note: str, name: str, is_html: bool
) -> bytes:
    boundary = f"=_corpus_{item.id}"
    content_type = "text/html" if is_html else "text/plain"
    disposition = f'Content-Disposition: attachment; filename="{name}"\n'
    return _crlf(
        _headers(item, "attachment", _encode_subject(subject, "auto"))
        + f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'
        + f"--{boundary}\n"
        + _entity(reply, "text/plain", "8bit")
        + f"--{boundary}\n"
        + _entity(note, content_type, "base64", disposition)
        + f"--{boundary}--\n"
    )


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def _with_quote(body: str, item: Item, *, is_html: bool, rng: random.Random) -> str:
    """Append the buyer's earlier mail the way a mail client quotes it in a reply."""
    if not item.quoted:
        return body
    attribution = _ATTRIBUTION[item.language]
    if not is_html:
        quoted = "\n".join(f"> {line}" if line else ">" for line in item.quoted.splitlines())
        return f"{body.rstrip()}\n\n{attribution}\n{quoted}\n"
    quoted_html = _text_to_html(item.quoted)
    if rng.random() < 0.5:
        quote = (
            f'<div class="gmail_quote"><div dir="ltr" class="gmail_attr">'
            f"{html.escape(attribution)}<br></div>"
            '<blockquote class="gmail_quote" style="margin:0 0 0 .8ex;border-left:1px #ccc '
            f'solid;padding-left:1ex">{quoted_html}</blockquote></div>'
        )
    else:
        quote = (
            f"<div>{html.escape(attribution)}</div>"
            f'<blockquote type="cite">{quoted_html}</blockquote>'
        )
    return f"{body.rstrip()}\n<br>\n{quote}\n"


def _encode_subject(subject: str, mode: str) -> str:
    """The subject as a header value: raw ASCII, or RFC 2047 encoded words (B or Q)."""
    if mode == "auto":
        if subject.isascii():
            return subject
        mode = "Q"
    words: list[str] = []
    chunk = ""
    for char in subject:
        candidate = chunk + char
        too_long = (
            len(candidate.encode("utf-8")) > _B_WORD_BYTES
            if mode == "B"
            else len(_q_encode(candidate)) > _Q_WORD_CHARS
        )
        if too_long and chunk:
            words.append(chunk)
            candidate = char
        chunk = candidate
    if chunk:
        words.append(chunk)
    encoded = [
        f"=?utf-8?B?{base64.b64encode(word.encode('utf-8')).decode('ascii')}?="
        if mode == "B"
        else f"=?utf-8?Q?{_q_encode(word)}?="
        for word in words
    ]
    return "\n ".join(encoded)


def _q_encode(text: str) -> str:
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char == " ":
            out.append("_")
        elif char.isascii() and char.isalnum():
            out.append(char)
        else:
            out.append(f"={byte:02X}")
    return "".join(out)


# Obfuscations --------------------------------------------------------------------------------


def _in_text(text: str, transform: Callable[[str], str], *, is_html: bool) -> str:
    """Apply `transform` to text only, leaving HTML tags (and entity spelling) intact."""
    if not is_html:
        return transform(text)
    pieces = _TAG_OR_TEXT.split(text)
    return "".join(
        piece if index % 2 else html.escape(transform(html.unescape(piece)), quote=False)
        for index, piece in enumerate(pieces)
    )


def _zero_width(text: str, rng: random.Random) -> str:
    def scatter(match: re.Match[str]) -> str:
        word = match.group()
        if len(word) < 3 or rng.random() < 0.3:
            return word
        positions = sorted(rng.sample(range(1, len(word)), k=min(2, len(word) - 1)))
        out, last = [], 0
        for position in positions:
            out += [word[last:position], rng.choice(_ZERO_WIDTH)]
            last = position
        return "".join([*out, word[last:]])

    return _WORD.sub(scatter, text)


def _homoglyphs(text: str, rng: random.Random) -> str:
    def disguise(token: str) -> str:
        if "@" in token or "://" in token or token.lower().startswith("www."):
            return token  # addresses and links keep working; words are the target
        return _WORD.sub(disguise_word, token)

    def disguise_word(match: re.Match[str]) -> str:
        word = match.group()
        candidates = [i for i, char in enumerate(word) if char in _HOMOGLYPHS]
        if len(word) < 3 or not candidates or rng.random() < 0.4:
            return word
        letters = list(word)
        for index in rng.sample(candidates, k=min(len(candidates), rng.choice((1, 2)))):
            letters[index] = rng.choice(_HOMOGLYPHS[letters[index]])
        return "".join(letters)

    return "".join(disguise(token) for token in re.split(r"(\s+)", text))


def _text_to_html(text: str) -> str:
    paragraphs = [block for block in re.split(r"\n\s*\n", text.strip()) if block.strip()]
    return "\n".join(
        "<p>" + "<br>\n".join(html.escape(line) for line in block.splitlines()) + "</p>"
        for block in paragraphs
    )


def _split_html(markup: str, rng: random.Random) -> str:
    """Split words with inline tags and write some letters as entities; tags stay valid."""

    def split_text(text: str) -> str:
        out: list[str] = []
        last = 0
        for match in _WORD.finditer(text):
            out.append(html.escape(text[last : match.start()], quote=False))
            out.append(split_word(match.group()))
            last = match.end()
        out.append(html.escape(text[last:], quote=False))
        return "".join(out)

    def split_word(word: str) -> str:
        letters = [_entity_or_char(char, rng) for char in word]
        if len(word) < 3:
            return "".join(letters)
        if _CJK.search(word):
            cuts = sorted(rng.sample(range(1, len(word)), k=min(len(word) - 1, len(word) // 3)))
        elif rng.random() < 0.6:
            cuts = [rng.randrange(1, len(word))]
        else:
            cuts = []
        out, last = [], 0
        for cut in [*cuts, len(word)]:
            opening, closing = rng.choice(_INLINE_TAGS) if last else ("", "")
            out.append(opening + "".join(letters[last:cut]) + closing)
            last = cut
        return "".join(out)

    pieces = _TAG_OR_TEXT.split(markup)
    return "".join(
        piece if index % 2 else split_text(html.unescape(piece))
        for index, piece in enumerate(pieces)
    )


def _entity_or_char(char: str, rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.08:
        return f"&#{ord(char)};"
    if roll < 0.16:
        return f"&#x{ord(char):x};"
    return html.escape(char, quote=False)


# Command line --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("outdir", type=Path, help="folder to write <language>/<id>.<variant>.eml")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--corpus", type=Path, default=CORPUS_DIR, help="corpus folder")
    args = parser.parse_args(argv)
    try:
        items = load_corpus(args.corpus)
    except CorpusError as exc:
        print(exc, file=sys.stderr)
        return 2
    count = 0
    for sample in build_all(items, args.variants):
        folder = args.outdir / sample.item.language
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{sample.item.id}.{sample.variant}.eml").write_bytes(sample.raw)
        count += 1
    print(f"wrote {count} messages from {len(items)} items to {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
