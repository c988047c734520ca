"""Turn a raw message into the seller's own text, piece by piece, for the rule engine.

`extract` reads what a buyer would read: the subject (RFC 2047 or raw UTF-8), every text part
whatever its transfer encoding and charset, HTML rendered to text, text attachments (plain,
HTML, CSV, and `.txt`/`.csv`/`.html` files), and attached or forwarded messages recursively up to
a depth limit. Both alternatives of a multipart/alternative are read: a violation may hide in
either. Quoted replies (the buyer's words) are removed from body parts; attachments and
forwarded messages are what the seller chose to send, so they are read whole (minus any quoted
replies inside a forwarded message's own body).

Extraction never raises: broken input yields whatever could be read, and `ScanInput.notes` says
what was given up on (a part beyond the limits, a charset that did not fit, a bad encoding).
"""

from __future__ import annotations

import binascii
import codecs
import quopri
import re
from dataclasses import dataclass, field
from email.message import Message

from relay.fastparse import parse_message
from relay.htmltext import html_to_text
from relay.model import Part, ScanInput
from relay.quotes import is_forward_subject, strip_quotes

__all__ = ["decode_bytes", "decode_header", "extract"]

_TEXT_ATTACHMENT_TYPES = frozenset(
    {"text/plain", "text/html", "text/csv", "text/tab-separated-values", "text/markdown"}
)
_TEXT_EXTENSIONS = (".txt", ".text", ".csv", ".tsv", ".md")
_HTML_EXTENSIONS = (".html", ".htm", ".xhtml")
_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
# Inline text/* types that are data for programs, not words for the buyer.
_NON_PROSE_TEXT = frozenset(
    {"text/calendar", "text/vcard", "text/x-vcard", "text/rfc822-headers", "text/css"}
)
_MAX_MULTIPART_NESTING = 50

# Charsets that decode any byte string, so success proves nothing: look closer first.
_SINGLE_BYTE_WESTERN = frozenset({"ascii", "latin-1", "iso8859-1", "iso8859-15", "cp1252"})
_CODEC_ALIASES = {
    "x-sjis": "cp932",
    "windows-31j": "cp932",
    "shift_jis": "cp932",  # mail labelled Shift_JIS is written by Windows: cp932 is the superset
    "x-euc-jp": "euc_jp",
    "iso2022_jp": "iso2022_jp_ext",  # half-width katakana, which real mailers do send
    "cp50220": "iso2022_jp_ext",
    "cp50221": "iso2022_jp_ext",
    "cp50222": "iso2022_jp_ext",
}
_JAPANESE_CANDIDATES = ("cp932", "euc_jp")
_KANA = re.compile(r"[\u3040-\u30ff\uff66-\uff9f]")
_JAPANESE = re.compile(r"[\u3000-\u30ff\u4e00-\u9fff\uff00-\uffef]")

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_ENCODED_WORDS = re.compile(r"(?<=\?=)[ \t]+(?==\?[^?\s]+\?[bBqQ]\?)")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_LONE_CR = re.compile(r"\r(?!\n)")
_LONE_CR_BYTE = re.compile(rb"\r(?!\n)")
_BASE64_NOISE = re.compile(rb"[^A-Za-z0-9+/=\s]")
_BASE64_KEEP = re.compile(rb"[^A-Za-z0-9+/]")
_META_CHARSET = re.compile(
    rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.I
)


def extract(raw: bytes, *, max_depth: int = 5, max_parts: int = 200) -> ScanInput:
    """Return the subject and every piece of the seller's own text in `raw`, with origins.

    `max_depth` limits how deep attached messages are followed (1 = attachments of the message
    itself); `max_parts` limits how many MIME parts are looked at. Never raises: what could not
    be read is named in `notes`.
    """
    walker = _Walker(max_depth=max_depth, max_parts=max_parts)
    try:
        message = parse_message(raw)
        subject = walker.message(message, prefix="", depth=0)
        message_id = _raw_header(message, "message-id")
    except Exception as exc:  # a parser bug must not turn into lost or unscanned mail
        text, _ = decode_bytes(raw, None)
        walker.notes.append(f"message could not be parsed ({type(exc).__name__}); read as text")
        return ScanInput(subject="", parts=(Part("text", text),), notes=tuple(walker.notes))
    if message_id is not None:
        message_id = decode_header(message_id).strip() or None
    return ScanInput(
        subject=subject, parts=tuple(walker.parts), message_id=message_id, notes=tuple(walker.notes)
    )


# Headers -----------------------------------------------------------------------------------


def decode_header(value: str) -> str:
    """Decode a raw header value: unfold, raw 8-bit bytes as UTF-8 (or a fallback), RFC 2047.

    Lenient where mailers are sloppy: encoded words inside words, wrong or unknown charsets,
    missing base64 padding.
    """
    value = _FOLD.sub("", value).replace("\r", " ").replace("\n", " ")
    raw = value.encode("utf-8", "surrogateescape")
    if not raw.isascii():
        value, _ = decode_bytes(raw, None)
    value = _BETWEEN_ENCODED_WORDS.sub("", value)
    return _ENCODED_WORD.sub(_decode_encoded_word, value)


def _decode_encoded_word(match: re.Match[str]) -> str:
    charset, encoding, payload = match.groups()
    charset = charset.split("*", 1)[0]  # RFC 2231 language suffix: utf-8*en
    data = payload.encode("ascii", "replace")
    is_base64 = encoding in "bB"
    data = _decode_base64(data) if is_base64 else binascii.a2b_qp(data.replace(b"_", b" "))
    text, _ = decode_bytes(data, charset)
    return text


def _raw_header(message: Message, name: str) -> str | None:
    for key, value in message.raw_items():
        if key.lower() == name:
            return str(value)
    return None


# Bodies ------------------------------------------------------------------------------------


def decode_bytes(data: bytes, declared: str | None) -> tuple[str, str | None]:
    """Decode `data` as text: the declared charset if it fits, else the likeliest one.

    Returns the text and, when the declared charset was unknown or did not fit, a note naming
    the charset used instead. Order: the declared charset (but valid UTF-8 wins over a Western
    single-byte label, which accepts any bytes); ISO-2022-JP when its escapes appear; UTF-8;
    Shift_JIS or EUC-JP when the result reads as Japanese; cp1252; latin-1 (never fails).
    """
    codec = _codec(declared) if declared else None
    jis_escapes = _has_jis_escapes(data)
    if data.isascii() and not jis_escapes:
        return data.decode("ascii"), None
    fits_label = not jis_escapes or (codec or "").startswith("iso2022")
    if codec and codec not in _SINGLE_BYTE_WESTERN and fits_label:
        try:
            return data.decode(codec), None
        except UnicodeDecodeError:
            pass
    text, used = _guess(data, codec)
    if declared and codec is None:
        return text, f"unknown charset {declared!r}; read as {used}"
    if codec and used != codec:
        western_to_western = codec != "ascii" and {codec, used} <= _SINGLE_BYTE_WESTERN
        if not western_to_western:
            return text, f"charset {declared!r} did not fit; read as {used}"
    return text, None


def _has_jis_escapes(data: bytes) -> bool:
    # The one-byte search first: a two-byte `in` is many times slower on long bodies.
    return b"\x1b" in data and (b"\x1b$" in data or b"\x1b(" in data)


def _codec(declared: str) -> str | None:
    name = declared.strip().strip("\"'").lower()
    name = _CODEC_ALIASES.get(name, name)
    try:
        canonical = codecs.lookup(name).name
    except (LookupError, ValueError):
        return None
    return _CODEC_ALIASES.get(canonical, canonical)


def _guess(data: bytes, declared: str | None) -> tuple[str, str]:
    if _has_jis_escapes(data):
        for candidate in ("iso2022_jp_ext", "iso2022_jp_2"):
            try:
                return data.decode(candidate), candidate
            except UnicodeDecodeError:
                pass
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    for candidate in _JAPANESE_CANDIDATES:
        try:
            text = data.decode(candidate)
        except UnicodeDecodeError:
            continue
        if _reads_as_japanese(text):
            return text, candidate
    if declared in ("iso8859-15", "cp1252"):
        return data.decode(declared, "replace"), declared
    try:
        # Mail labelled latin-1 (or unlabelled) is usually cp1252: its curly quotes and dashes.
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def _reads_as_japanese(text: str) -> bool:
    """Kana are frequent in any Japanese sentence and all but absent from misread Latin text."""
    non_ascii = sum(1 for char in text if ord(char) > 127)
    if not non_ascii:
        return False
    kana = len(_KANA.findall(text))
    return kana * 5 >= non_ascii and len(_JAPANESE.findall(text)) * 5 >= non_ascii * 4


def _decode_base64(data: bytes) -> bytes:
    """Decode base64 leniently: stray characters dropped, missing padding tolerated."""
    cleaned = _BASE64_KEEP.sub(b"", data)
    cleaned = cleaned[: len(cleaned) - (len(cleaned) % 4 == 1)]
    cleaned += b"=" * (-len(cleaned) % 4)
    try:
        return binascii.a2b_base64(cleaned)
    except binascii.Error:
        return b""


def _payload_bytes(part: Message) -> tuple[bytes, str | None]:
    """The part's body with its transfer encoding undone, and a note when that went wrong."""
    # Not get_payload() to find out: for a body with 8-bit bytes it decodes the whole body (the
    # caller has read it once already, and so met any error that raises).
    if part.is_multipart():
        return b"", None
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    if "base64" in encoding or encoding == "b":
        # Base64 text is ASCII, so the str payload holds it exactly.
        raw = str(part.get_payload()).encode("utf-8", "surrogateescape").strip()
        if raw and len(_BASE64_NOISE.findall(raw)) * 20 > len(raw):
            return raw, "declared base64 but is not; read as is"
        return _decode_base64(raw), None
    if ("quoted" in encoding or encoding == "q") and encoding != "quoted-printable":
        return quopri.decodestring(str(part.get_payload()).encode("utf-8", "surrogateescape")), None
    # The stdlib decodes quoted-printable and uuencode leniently and, for every other
    # encoding, returns the body's raw bytes (8-bit text included, whatever its charset).
    decoded = part.get_payload(decode=True)
    return (decoded if isinstance(decoded, bytes) else b""), None


@dataclass
class _Scope:
    """Per-message state: the origin prefix and how many of each origin were seen."""

    prefix: str
    forward: bool
    counts: dict[str, int] = field(default_factory=dict)

    def origin(self, kind: str) -> str:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        count = self.counts[kind]
        return f"{self.prefix}{kind}" if count == 1 else f"{self.prefix}{kind}:{count}"

    def nested_prefix(self) -> str:
        self.counts["message"] = self.counts.get("message", 0) + 1
        return f"{self.prefix}message:{self.counts['message']}>"


class _Walker:
    def __init__(self, *, max_depth: int, max_parts: int) -> None:
        self.max_depth = max_depth
        self.max_parts = max_parts
        self.parts: list[Part] = []
        self.notes: list[str] = []
        self.seen = 0

    def message(self, message: Message, *, prefix: str, depth: int) -> str:
        """Collect one message's subject and parts; returns its decoded subject."""
        raw_subject = _raw_header(message, "subject")
        subject = decode_header(raw_subject).strip() if raw_subject else ""
        if subject:
            self.parts.append(Part(f"{prefix}subject", subject))
        scope = _Scope(prefix=prefix, forward=is_forward_subject(subject))
        self.entity(message, scope, depth=depth, nesting=0)
        return subject

    def entity(self, part: Message, scope: _Scope, *, depth: int, nesting: int) -> None:
        if self.seen >= self.max_parts:
            if self.seen == self.max_parts:
                self.notes.append(f"more than {self.max_parts} MIME parts; the rest not scanned")
                self.seen += 1
            return
        self.seen += 1
        content_type = part.get_content_type()
        filename = _filename(part)
        if content_type in _MESSAGE_TYPES or (filename or "").lower().endswith(".eml"):
            self.nested(part, scope, depth=depth)
            return
        payload = part.get_payload()
        if content_type.startswith("multipart/") and isinstance(payload, list):
            if nesting >= _MAX_MULTIPART_NESTING:
                self.notes.append(f"{scope.prefix}multipart nested too deep; the rest not scanned")
                return
            for child in payload:
                if isinstance(child, Message):
                    self.entity(child, scope, depth=depth, nesting=nesting + 1)
            return
        if content_type.startswith("multipart/"):
            self.notes.append(f"{scope.prefix}multipart without a usable boundary; read as text")
            content_type = "text/plain"
        self.leaf(part, content_type, filename, scope)

    def leaf(self, part: Message, content_type: str, filename: str | None, scope: _Scope) -> None:
        disposition = part.get_content_disposition()
        # A named text part marked inline is shown as body text (ERPs send bodies like that).
        inline_text = disposition == "inline" and content_type.startswith("text/")
        is_attachment = disposition == "attachment" or (filename is not None and not inline_text)
        name = (filename or "").lower()
        is_html = "html" in content_type.split("/", 1)[-1] or name.endswith(_HTML_EXTENSIONS)
        if is_attachment:
            if not (
                content_type in _TEXT_ATTACHMENT_TYPES
                or name.endswith(_TEXT_EXTENSIONS + _HTML_EXTENSIONS)
            ):
                if not content_type.startswith("image/"):
                    self.notes.append(
                        f"{scope.prefix}attachment:{filename or '?'} not scanned ({content_type})"
                    )
                return
            origin = scope.origin(f"attachment:{filename or 'unnamed'}")
        elif content_type.startswith("text/") and content_type not in _NON_PROSE_TEXT:
            origin = scope.origin("html" if is_html else "text")
        else:
            return
        data, note = _payload_bytes(part)
        if note:
            self.notes.append(f"{origin}: {note}")
        if b"\x00" in data[:4096]:
            self.notes.append(f"{origin}: looks binary; not scanned")
            return
        # Always read: a malformed parameter raises here, which decides what becomes of the
        # message (and spares the check in `_param` below).
        declared = part.get_content_charset() or (_meta_charset(data) if is_html else None)
        if b"\r" in data and data.isascii() and not _has_jis_escapes(data):
            # Read as ASCII, one byte to one character: the line ends are the same done on the
            # bytes, where deleting is more than twice as fast.
            data = _unix_line_end_bytes(data)
        text, note = decode_bytes(data, declared)
        if note:
            self.notes.append(f"{origin}: {note}")
        if "\r" in text:
            text = _unix_line_ends(text)
        if is_html:
            text = html_to_text(text, strip_quotes=not is_attachment, forward=scope.forward)
        elif _param(part, "format") == "flowed":
            text = _unflow(text, delete_space=_param(part, "delsp") == "yes")
        if not is_attachment:
            text = strip_quotes(text, forward=scope.forward)
        text = text.strip()
        if text:
            self.parts.append(Part(origin, text))

    def nested(self, part: Message, scope: _Scope, *, depth: int) -> None:
        prefix = scope.nested_prefix()
        if depth >= self.max_depth:
            self.notes.append(
                f"{prefix.rstrip('>')}: nested deeper than {self.max_depth}; not scanned"
            )
            return
        payload = part.get_payload()
        encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
        encoded = "base64" in encoding or "quoted" in encoding
        first = payload[0] if isinstance(payload, list) and payload else None
        if isinstance(first, Message) and not encoded:
            inner = first
        else:
            # Encoded (against RFC 2046, but seen) or an .eml file: undo it, then parse.
            if isinstance(first, Message):
                body = first.as_string().encode("utf-8", "surrogateescape")
                data = _decode_base64(body) if "base64" in encoding else quopri.decodestring(body)
            else:
                data, _ = _payload_bytes(part)
            inner = parse_message(data)
        self.message(inner, prefix=prefix, depth=depth + 1)


def _unix_line_ends(text: str) -> str:
    """`text` with CRLF and lone CR line ends as LF.

    Mail has CRLF ends only, as a rule: deleting every CR is then the same, and a one-character
    replace is several times faster than the two-character one.
    """
    if _LONE_CR.search(text):
        return text.replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\r", "")


def _unix_line_end_bytes(data: bytes) -> bytes:
    """`_unix_line_ends` for bytes."""
    if _LONE_CR_BYTE.search(data):
        return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data.replace(b"\r", b"")


def _filename(part: Message) -> str | None:
    try:
        if not (
            _may_have_param(part, "content-disposition", "name")
            or _may_have_param(part, "content-type", "name")
        ):
            return None  # the common case, without parsing the parameters twice
        name = part.get_filename()
    except Exception:  # malformed RFC 2231 parameters
        return None
    if name is None:
        return None
    return decode_header(str(name)).strip() or None


def _may_have_param(part: Message, header: str, name: str) -> bool:
    """False when `part`'s `header` cannot have a parameter `name`: the name is not in it.

    Reading the parameters (`get_param`) costs a parse of the header in Python, most often to
    find nothing: `format` or `filename` are rare. A parse can also raise (malformed RFC 2231
    continuations of any parameter): only where that is caught, or cannot happen any more,
    may this check stand in for it.
    """
    value = part.get(header)
    return value is not None and name in str(value).lower()


def _param(part: Message, name: str) -> str:
    if not _may_have_param(part, "content-type", name):
        return ""
    value = part.get_param(name)
    return value.strip().lower() if isinstance(value, str) else ""


def _meta_charset(data: bytes) -> str | None:
    match = _META_CHARSET.search(data[:4096])
    return match.group(1).decode("ascii") if match else None


def _unflow(text: str, *, delete_space: bool) -> str:
    """Join format=flowed soft line breaks (RFC 3676) back into the lines the writer typed."""
    lines: list[str] = []
    pending = ""
    for line in text.split("\n"):
        if line.startswith(">") or line == "-- ":
            if pending:
                lines.append(pending)
                pending = ""
            lines.append(line)
            continue
        line = line.removeprefix(" ")  # space-stuffing
        if line.endswith(" "):
            pending += line[:-1] if delete_space else line
        else:
            lines.append(pending + line)
            pending = ""
    if pending:
        lines.append(pending)
    return "\n".join(lines)
