"""Render an HTML mail body to the text a reader sees, without the quoted original below it.

A reader sees words, line breaks and paragraphs, not tags: block elements (`p`, `div`, `li`,
`tr`, `br`...) become line or paragraph breaks, while inline tags never split a word, so
`fi<b>ve</b>` reads `five`. Character entities are resolved; `script` and `style` are dropped.
Text hidden with CSS (`display:none`, zero font size, white on white) is kept on purpose: hiding
a violation from the buyer's eye is an evasion, and Amazon's scanner reads it anyway.

With `strip_quotes`, the quoted original of a reply is left out: `blockquote`, Gmail's
`div.gmail_quote`, Thunderbird's `div.moz-cite-prefix`, Yahoo's `div.yahoo_quoted`, and
everything from Outlook's `#appendonsend` / `#divRplyFwdMsg` marker to the end. A container
whose text starts with a forwarding marker ("---------- Forwarded message ---------") is the
seller's forward and is kept; so is Outlook's reply marker when `forward` is set.
"""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser

__all__ = ["FORWARD_MARKERS", "html_to_text"]

_PARAGRAPH_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "center", "dl", "fieldset", "figure",
        "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "main", "nav",
        "ol", "p", "pre", "section", "table", "title", "ul",
    }
)  # fmt: skip
_LINE_TAGS = frozenset(
    {
        "body", "caption", "dd", "details", "div", "dt", "figcaption", "html", "legend",
        "li", "option", "summary", "tbody", "tfoot", "thead", "tr",
    }
)  # fmt: skip
_CELL_TAGS = frozenset({"td", "th"})
_SKIPPED_TAGS = frozenset({"script", "style", "template"})
_VOID_TAGS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)
_PREFORMATTED_TAGS = frozenset({"pre", "textarea", "plaintext", "listing", "xmp"})

_QUOTE_CLASSES = frozenset(
    {"gmail_quote", "gmail_attr", "moz-cite-prefix", "yahoo_quoted", "protonmail_quote"}
)
_REPLY_MARKER_IDS = ("appendonsend", "divrplyfwdmsg")
_CONTACT_SCHEMES = ("mailto:", "tel:", "sms:", "callto:")
# The line breaks a block element asks for where it starts and where it ends.
_BLOCK_BREAKS = {**dict.fromkeys(_LINE_TAGS, 1), **dict.fromkeys(_PARAGRAPH_TAGS, 2)}
# Elements whose content `_render_plain` leaves to the renderer: preformatted or skipped as
# markup (script and style bodies it skips itself).
_HANDED_OVER_TAGS = _PREFORMATTED_TAGS | (_SKIPPED_TAGS - {"script", "style"})

FORWARD_MARKERS = (
    "forwarded message",
    "begin forwarded message",
    "weitergeleitete nachricht",
    "anfang der weitergeleiteten nachricht",
    "message transféré",
    "début du message réexpédié",
    "mensaje reenviado",
    "inicio del mensaje reenviado",
    "messaggio inoltrato",
    "inizio messaggio inoltrato",
    "転送されたメッセージ",
    "転送メッセージ",
)

# One regex instead of a loop over the markers: this runs for every line of every part.
_FORWARD_MARKER_RE = re.compile("|".join(re.escape(marker) for marker in FORWARD_MARKERS))

# Private-use placeholder for whitespace that held a source line break: between two Japanese
# or Chinese characters a reader sees nothing there, elsewhere a space.
_SOFT_BREAK = "\ue000"
_CJK = r"\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
# The CJK character is captured, not looked behind for: a pattern that opens with a character
# class lets the regex engine skip ahead, one that opens with a look-behind tries every position.
_SOFT_BREAK_BETWEEN_CJK = re.compile(f"([{_CJK}]){_SOFT_BREAK}+(?=[{_CJK}])")
_CJK_CHARACTER = re.compile(f"[{_CJK}]")
# `_render_plain` marks each line break it asks for with this character while it leaves the
# text's own whitespace for `_tidy_raw`: one that neither source text nor an entity can hold.
_BREAK_MARK = "\x00"
_SPACES = re.compile("  +")
# A run of spaces that holds a line break becomes a soft break (`_soft_breaks`), any other run
# one space.
_SPACE = " \t\r\f"
# A pattern that opens with a character class (not with a repeat of one) lets the regex engine
# skip ahead to the next candidate character instead of trying every position.
_SPACE_RUN = re.compile(r"[ \t\r\f][ \t\r\f]*")
# A line break with a space (or another break) beside it. Both open with the line break, which
# lets the regex engine skip ahead to the next one; a two-character `in` test is much slower.
_SPACE_BESIDE_BREAK = re.compile(r"\n(?:(?<=[ \t\r\f]\n)|[ \t\r\f\n])")
_SPACE_BESIDE_NEWLINE = re.compile(r"\n(?:(?<=[ \t]\n)|[ \t])")
_MULTI_SPACE = re.compile(r"[ \t][ \t]+")
_MANY_NEWLINES = re.compile(r"\n\n\n+")  # not \n{3,}: a literal start lets the search skip ahead
# The plain subset of markup that `_feed_plain` reads itself (see there); ASCII whitespace only.
_PLAIN_ATTRIBUTE = re.compile(
    r"""[ \t\n\r\f]+([a-zA-Z_:][-a-zA-Z0-9_:.]*)"""
    # An unquoted value stops at any Unicode space, as the stdlib's does (HTML at ASCII spaces
    # only): one that holds such a space is not plain.
    r"""(?:[ \t\n\r\f]*=[ \t\n\r\f]*("[^"]*"|'[^']*'|[^\s"'=<>`]+))?"""
)
_PLAIN_MARKUP = re.compile(
    r"<(?:"
    r"(?P<start>[a-zA-Z][-a-zA-Z0-9_:.]*)(?P<attrs>(?:" + _PLAIN_ATTRIBUTE.pattern + r")*)"
    r"[ \t\n\r\f]*(?P<close>/)?>"
    r"|/(?P<end>[a-zA-Z][-a-zA-Z0-9_:.]*)[ \t\n\r\f]*>"
    r"|!--(?![->])(?:[^-]|-(?!-))*(?<!-)-->"
    r"|![dD][oO][cC][tT][yY][pP][eE][^<>]*>"
    r"|\?[^<>]*>"
    r")"
)
_PLAIN_END_TAG = re.compile(r"</([a-zA-Z][-a-zA-Z0-9_:.]*)[ \t\n\r\f]*>")
# The text up to a tag and the tag, in one match (`_render_plain`). Possessive: on markup
# outside the subset the match fails at once instead of giving back the text character by
# character.
# After a start tag (not self-closing), the text in the element and its end tag too, when the
# element holds only text: <p style="...">words</p>.
_PLAIN_TOKEN = re.compile(
    r"(?P<data>[^<]*+)(?P<markup>" + _PLAIN_MARKUP.pattern + ")"
    r"(?(close)|(?:(?P<text>[^<]*+)</(?ai:(?P=start))[ \t\n\r\f]*>)?)"
)
# Bodies the stdlib parser reads as text up to their end tag.
_RAW_TEXT_TAGS = frozenset({"script", "style"})
# Elements whose bodies some Python versions' parsers read as text and others as markup.
_PLAIN_REFUSED = frozenset(
    {"title", "textarea", "xmp", "iframe", "noembed", "noframes", "noscript", "plaintext"}
)
_NOT_A_TAG = re.compile(r"<(?![A-Za-z!?/])|<(?=/(?![A-Za-z]))|<(?=!\[(?!CDATA\[))")
_ANY_TAG = re.compile(r"<[^<>]*>")


def starts_with_forward_marker(text: str) -> bool:
    """Whether `text` opens with a forwarding line such as `---- Forwarded message ----`."""
    head = text.lstrip(" \t\n-–—_*>").lower()[:80]
    return _FORWARD_MARKER_RE.match(head) is not None


def html_to_text(html: str, *, strip_quotes: bool = False, forward: bool = False) -> str:
    """Return the text a reader of `html` sees, optionally without the quoted original.

    Never raises on malformed markup: the stdlib parser recovers from unclosed and stray tags.
    """
    text = _render_plain(html, strip_quotes=strip_quotes, forward=forward)
    if text is not None:
        return text
    html = _defuse(html)
    renderer = _Renderer(strip_quotes=strip_quotes, forward=forward)
    try:
        renderer.feed(html)
        renderer.close()
    except Exception:  # the stdlib parser asserts on some malformed declarations
        return _crude_text(html)
    return renderer.text()


def _render_plain(html: str, *, strip_quotes: bool, forward: bool) -> str | None:
    """Render `_defuse(html)` as `_Renderer` does when `_feed_plain` reads it; None if it cannot.

    Most mail is plain markup whose rendering needs no more than the open elements and the
    pending line breaks: no quote container, no skipped or preformatted element, no contact
    link. For that part of a document, this loop does the tokenizer's and the renderer's work
    in one place, without a method call per tag, and settles the text's whitespace once for
    the whole document instead of once per piece of text (`_tidy_raw`). A `<` that `_defuse`
    would escape is read as the text it would become, where it is met: plain markup has no
    other, outside attribute values, comments and script or style bodies, where escaping
    changes nothing the renderer sees. At the first tag that needs more, it hands its state to
    a `_Renderer` and lets `_feed_plain` go on from there; None when that fails (markup
    outside the plain subset), for the caller to start over with the stdlib parser.
    """
    chunks: list[str] = []
    emit = chunks.append
    open_tags: list[str] = []
    open_count: dict[str, int] = {}
    pending = 0  # the line breaks asked for before the next text
    # Text is kept as written (entities resolved) and its whitespace settled once, at the end
    # (`_tidy_raw`), with line breaks marked; unless the document holds the mark itself.
    raw = _BREAK_MARK not in html
    newline = _BREAK_MARK if raw else "\n"
    # Mail repeats the same tags, attributes and all (<p style="font-family:...">): what each
    # one does is worked out once.
    actions: dict[str, _Action] = {}
    match_token = _PLAIN_TOKEN.match
    block_breaks = _BLOCK_BREAKS
    position = 0
    last_tag_end = html.rfind(">")
    try:
        while True:
            match = match_token(html, position)
            if match is None:
                opening = html.find("<", position)
                if 0 <= opening <= last_tag_end and not _NOT_A_TAG.match(html, opening):
                    return None  # markup outside the plain subset: `_feed_plain` fails there too
                # Text to the end, or up to a `<` that opens no tag and with it: text, once
                # `_defuse` escaped it (as it does every `<` after the last `>`).
                end = len(html) if opening < 0 or opening > last_tag_end else opening + 1
                data = html[position:end]
                if "&" in data:
                    data = unescape(data)
                if data:
                    if pending:
                        emit(newline * pending)
                        pending = 0
                    emit(data if raw else _flow(data))
                if end == len(html):
                    # What is still open would close with line breaks only, after the text.
                    return _tidy_raw(chunks) if raw else _tidy("".join(chunks))
                position = end
                continue
            data, markup, text = match.group("data", "markup", "text")
            if data and "&" in data:
                data = unescape(data)  # which may leave nothing (&#1;)
            if data:
                if pending:
                    emit(newline * pending)
                    pending = 0
                emit(data if raw else _flow(data))
            action = actions.get(markup)
            if action is None:
                action = actions[markup] = _action(match, strip_quotes=strip_quotes)
            kind, tag, breaks, shown = action
            if kind is _OPEN:
                if breaks:
                    if breaks < 0:
                        pending += 1  # <br>: unlike block edges, two in a row make a blank line
                    elif breaks > pending:
                        pending = breaks
                if shown:
                    if raw and _flow(shown) != shown:
                        # Shown as written, unlike text: settle the text so far here instead.
                        chunks[:] = _flowed(chunks)
                        raw = False
                        newline = "\n"
                    if pending:
                        emit(newline * pending)
                        pending = 0
                    emit(shown)
                if tag:
                    open_tags.append(tag)
                    open_count[tag] = open_count.get(tag, 0) + 1
            elif kind is _CLOSE:
                if open_count.get(tag):
                    while open_tags:
                        closed = open_tags.pop()
                        open_count[closed] -= 1
                        breaks = block_breaks.get(closed, 0)
                        if breaks > pending:
                            pending = breaks
                        if closed == tag:
                            break
                elif tag == "br":
                    pending += 1  # browsers treat a stray </br> as <br>
            elif kind is _RAW_TEXT:
                # Skipped whole: the renderer's state is the same after it as before.
                body = _raw_text(html, match.end("markup"), tag)
                if body is None:
                    return None
                position = body[1]
                continue
            elif kind is _HAND_OVER:
                break
            elif kind is _REFUSED:
                return None
            if text is not None:
                # The element's text and its end tag, which closes just the element (or, for a
                # void one, is a stray).
                if "&" in text:
                    text = unescape(text)
                if text:
                    if pending:
                        emit(newline * pending)
                        pending = 0
                    emit(text if raw else _flow(text))
                if tag:
                    open_tags.pop()
                    open_count[tag] -= 1
                    breaks = block_breaks.get(tag, 0)
                    if breaks > pending:
                        pending = breaks
                elif breaks < 0:
                    pending += 1  # </br>, as <br>
            position = match.end()
    except Exception:  # as in `_feed_plain`: the stdlib path gives the same outcome its own way
        return None
    # A tag that needs the whole renderer: it goes on from that tag, with the state so far.
    renderer = _Renderer(strip_quotes=strip_quotes, forward=forward)
    renderer.take_over(_flowed(chunks) if raw else chunks, open_tags, open_count, pending)
    if not _feed_plain(renderer, html, match.end("data")):
        return None
    return renderer.text()


# What a tag does in `_render_plain`: (kind, tag, breaks, text shown). An _OPEN tag asks for
# `breaks` line breaks (-1: one more, as <br> does), shows its text and is pushed on the open
# elements unless the tag is "" (void); a _CLOSE tag closes up to `tag`; _IGNORED (comments,
# doctype, processing instructions) does nothing; _RAW_TEXT is a script or style whose body
# is skipped; _HAND_OVER needs the renderer (`_Renderer`); _REFUSED is outside the plain subset.
_Action = tuple[str, str, int, str]
_OPEN, _CLOSE, _IGNORED, _RAW_TEXT, _HAND_OVER, _REFUSED = (
    "open", "close", "ignored", "raw text", "hand over", "refused"
)  # fmt: skip


def _action(match: re.Match[str], *, strip_quotes: bool) -> _Action:
    """What the tag `match` ends with does in `_render_plain` (see `_Action`)."""
    tag, attributes, close, end_tag = match.group("start", "attrs", "close", "end")
    if end_tag is not None:
        return (_CLOSE, end_tag.lower(), 0, "")
    if tag is None:
        return (_IGNORED, "", 0, "")
    tag = tag.lower()
    if tag in _PLAIN_REFUSED:
        return (_REFUSED, tag, 0, "")
    named = {name: value or "" for name, value in _plain_attributes(attributes)}
    if strip_quotes and _is_quote_marker(named):
        return (_HAND_OVER, tag, 0, "")
    void = bool(close) or tag in _VOID_TAGS
    if tag in _RAW_TEXT_TAGS and not void:
        return (_RAW_TEXT, tag, 0, "")
    if (
        (tag in _HANDED_OVER_TAGS and not void)
        or (tag == "blockquote" and strip_quotes)
        or (tag == "a" and _is_contact_link(named))
    ):
        return (_HAND_OVER, tag, 0, "")
    breaks = -1 if tag == "br" else _BLOCK_BREAKS.get(tag, 0)
    shown = " " if tag in _CELL_TAGS else named.get("alt", "") if tag == "img" else ""
    return (_OPEN, "" if void else tag, breaks, shown)


def _feed_plain(parser: HTMLParser, html: str, start: int = 0) -> bool:
    """Feed `parser` the events the stdlib tokenizer would, if `html` is plainly written.

    The stdlib tokenizer costs several regex matches and Python calls per tag; one match per
    tag does for markup in a plain subset: start tags with space-separated, well-quoted (or
    simply unquoted) attributes, end tags, simple comments, doctype and processing
    instructions, script and style bodies without `</` in them. Within that subset the stdlib
    parser (of any recent Python version) calls its handlers with exactly these arguments. At
    the first construct outside it, returns False: the caller starts over with the stdlib
    parser on a fresh handler. `start` is where to go on from, at a tag or text (not inside
    one), with `parser` in the state the markup before it leaves.
    """
    handle_data = parser.handle_data
    find = html.find
    match_markup = _PLAIN_MARKUP.match
    # Mail repeats the same attributes on tag after tag (style="font-family:...").
    parsed: dict[str, list[tuple[str, str | None]]] = {}
    position = start
    end = len(html)
    try:
        while position < end:
            opening = find("<", position)
            if opening < 0:
                opening = end
            if opening > position:
                handle_data(unescape(html[position:opening]))
                if opening == end:
                    break
            match = match_markup(html, opening)
            if match is None:
                return False
            position = match.end()
            tag, attributes, close, end_tag = match.group("start", "attrs", "close", "end")
            if tag is not None:
                tag = tag.lower()
                if tag in _PLAIN_REFUSED:
                    return False
                attrs = []
                if attributes:
                    if attributes not in parsed:
                        parsed[attributes] = _plain_attributes(attributes)
                    attrs = list(parsed[attributes])  # a list of its own, as the stdlib gives
                if close:
                    parser.handle_startendtag(tag, attrs)
                    continue
                parser.handle_starttag(tag, attrs)
                if tag in _RAW_TEXT_TAGS:
                    position = _feed_raw_text(parser, html, position, tag)
                    if position < 0:
                        return False
            elif end_tag is not None:
                parser.handle_endtag(end_tag.lower())
            # Comments, doctype and processing instructions: the renderer ignores them.
        parser.close()
    except Exception:  # a handler failed: the stdlib path gives the same outcome its own way
        return False
    return True


def _plain_attributes(text: str) -> list[tuple[str, str | None]]:
    """Attributes as the stdlib parser reports them: lowercase names, values unescaped."""
    attrs: list[tuple[str, str | None]] = []
    for match in _PLAIN_ATTRIBUTE.finditer(text):
        value: str | None = match.group(2)
        if value is not None:
            if value[:1] in "\"'":
                value = value[1:-1]
            if value:
                value = unescape(value)
        attrs.append((match.group(1).lower(), value))
    return attrs


def _feed_raw_text(parser: HTMLParser, html: str, start: int, tag: str) -> int:
    """Feed a script or style body as the stdlib does (as it is), then its end tag.

    Returns where the markup goes on, or -1 when the body is not plain (see `_raw_text`).
    """
    body = _raw_text(html, start, tag)
    if body is None:
        return -1
    closing, after = body
    if closing > start:
        parser.handle_data(html[start:closing])
    parser.handle_endtag(tag)
    return after


def _raw_text(html: str, start: int, tag: str) -> tuple[int, int] | None:
    """Where a script or style body from `start` ends, and where its end tag does.

    None when the body is not plain: it holds `</` before its end tag (or, for a script,
    `<!--`, which newer parsers treat specially).
    """
    closing = html.find("</", start)
    if closing < 0 or (tag == "script" and "<!--" in html[start:closing]):
        return None
    match = _PLAIN_END_TAG.match(html, closing)
    if match is None or match.group(1).lower() != tag:
        return None
    return closing, match.end()


def _defuse(html: str) -> str:
    """Escape `<` that cannot open a tag, which the stdlib parser would rescan to the end.

    Left alone, every such `<` (`</` without a name, a `<` with no `>` after it) makes the
    parser search the rest of the document, so a message full of them takes quadratic time.
    Browsers show these as text (or hide a bogus comment), so escaping loses nothing a reader sees.
    """
    html = _NOT_A_TAG.sub("&lt;", html)
    last = html.rfind(">")
    return html[: last + 1] + html[last + 1 :].replace("<", "&lt;")


def _soft_breaks(data: str) -> str:
    """Replace each run of spaces that holds a line break with one soft break.

    String methods per line, not a regex: a pattern that opens with an optional run of spaces
    is tried at every position of the text.
    """
    lines = data.split("\n")
    inner = [line.strip(_SPACE) for line in lines[1:-1]]
    return _SOFT_BREAK.join(
        [lines[0].rstrip(_SPACE), *[line for line in inner if line], lines[-1].lstrip(_SPACE)]
    )


def _strip_around_newlines(text: str) -> str:
    """Drop the spaces and tabs on either side of every line break of `text`."""
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    inner = [line.strip(" \t") for line in lines[1:-1]]
    return "\n".join([lines[0].rstrip(" \t"), *inner, lines[-1].lstrip(" \t")])


def _crude_text(html: str) -> str:
    """Last resort for markup the parser gives up on: drop tags, resolve entities."""
    text = unescape(_ANY_TAG.sub("", html))
    return _MANY_NEWLINES.sub("\n\n", _MULTI_SPACE.sub(" ", text)).strip()


def _flow(data: str) -> str:
    """Text outside preformatted elements as it flows: spaces collapsed, line breaks soft."""
    if "\n" in data:
        # Usually every line break stands alone, between two words: one replace does.
        if _SPACE_BESIDE_BREAK.search(data):
            data = _soft_breaks(data)
        else:
            data = data.replace("\n", _SOFT_BREAK)
    # Most text has single spaces only, which the substitution would leave as they are.
    if "  " in data or "\t" in data or "\r" in data or "\f" in data:
        data = _SPACE_RUN.sub(" ", data)
    return data


def _tidy(joined: str) -> str:
    """The rendered text: soft breaks resolved, spaces around line breaks and blank lines gone."""
    raw = joined.replace(_SOFT_BREAK, " ")
    if not raw.isascii():  # else there is no Japanese or Chinese character to join
        raw = _SOFT_BREAK_BETWEEN_CJK.sub(r"\1", joined).replace(_SOFT_BREAK, " ")
    # Each substitution tries every position of a long text: skip those with nothing to do.
    if "\t" in raw or _SPACE_BESIDE_NEWLINE.search(raw):
        raw = _strip_around_newlines(raw)
    if "\t" in raw or "  " in raw:
        raw = _MULTI_SPACE.sub(" ", raw)
    return _MANY_NEWLINES.sub("\n\n", raw).strip()


def _flowed(chunks: list[str]) -> list[str]:
    """`_render_plain`'s chunks of text as written and marked breaks, as the renderer has them."""
    return ["\n" * len(chunk) if chunk[0] == _BREAK_MARK else _flow(chunk) for chunk in chunks]


def _tidy_raw(chunks: list[str]) -> str:
    """`_tidy(''.join(_flowed(chunks)))`, in a few passes over the whole text.

    Without a Japanese or Chinese character, whose neighbours decide what a soft break is,
    every run of source whitespace ends up one space or, beside a line break, nothing: so
    each whitespace character may become a space here, runs collapse, and the spaces beside
    a marked break go. Single-character searches and splits mostly: a two-character search
    (`"  " in text`) costs as much as ten of them.
    """
    text = "".join(chunks)
    if not text.isascii() and _CJK_CHARACTER.search(text):
        return _tidy("".join(_flowed(chunks)))
    for space in "\n\t\r\f" + _SOFT_BREAK:
        if space in text:
            text = text.replace(space, " ")
    if "  " in text:
        text = _SPACES.sub(" ", text)
    text = "\n".join([line.strip(" ") for line in text.split(_BREAK_MARK)])
    if "\n\n\n" in text:
        text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def _is_reply_marker(attrs: dict[str, str]) -> bool:
    """Outlook's marker of where the original being replied to starts."""
    return "id" in attrs and attrs["id"].lower().endswith(_REPLY_MARKER_IDS)


def _has_quote_class(attrs: dict[str, str]) -> bool:
    if "class" not in attrs:
        return False
    classes = set(attrs["class"].lower().split())
    return any(cls.removeprefix("x_") in _QUOTE_CLASSES for cls in classes)


def _is_quote_marker(attrs: dict[str, str]) -> bool:
    """Whether, quotes stripped, these attributes open a quote container or the reply marker."""
    return _is_reply_marker(attrs) or _has_quote_class(attrs)


def _is_contact_link(attrs: dict[str, str]) -> bool:
    return attrs.get("href", "").strip().lower().startswith(_CONTACT_SCHEMES)


class _Capture:
    """Text collected inside a quote container, kept only if it turns out to be a forward."""

    def __init__(self, depth: int, keep_if_forward: bool, keep: bool = False) -> None:
        self.depth = depth
        self.keep_if_forward = keep_if_forward
        self.keep = keep
        self.chunks: list[str] = []


class _Renderer(HTMLParser):
    def __init__(self, *, strip_quotes: bool, forward: bool) -> None:
        super().__init__(convert_charrefs=True)
        self._strip_quotes = strip_quotes
        self._forward = forward
        self._main: list[str] = []
        self._captures: list[_Capture] = []
        self._open: list[str] = []
        self._open_count: dict[str, int] = {}  # tag -> how many are open, for O(1) lookups
        self._skip_depth: int | None = None
        self._pre = 0
        self._pending_breaks = 0
        self._links: list[tuple[str, int, int]] = []  # (target, capture level, chunk index)

    # Output -------------------------------------------------------------------------------

    def _out(self) -> list[str]:
        return self._captures[-1].chunks if self._captures else self._main

    def _emit(self, chunk: str) -> None:
        if self._skip_depth is None and chunk:
            out = self._captures[-1].chunks if self._captures else self._main
            if self._pending_breaks:
                out.append("\n" * self._pending_breaks)
                self._pending_breaks = 0
            out.append(chunk)

    def _break(self, newlines: int) -> None:
        """Ask for a line (1) or paragraph (2) break; adjacent blocks share one break."""
        if self._skip_depth is None and newlines > self._pending_breaks:
            self._pending_breaks = newlines

    def _line_break(self) -> None:
        """A `<br>`: unlike block edges, two of them in a row make a blank line."""
        if self._skip_depth is None:
            self._pending_breaks += 1

    def text(self) -> str:
        while self._captures:
            self._end_capture()
        return _tidy("".join(self._main))

    def take_over(
        self, main: list[str], open_tags: list[str], open_count: dict[str, int], pending: int
    ) -> None:
        """Go on from the state `_render_plain` reached: text so far, open elements, breaks."""
        self._main = main
        self._open = open_tags
        self._open_count = open_count
        self._pending_breaks = pending

    # Quote containers ---------------------------------------------------------------------

    def _is_quote_container(self, tag: str, attrs: dict[str, str]) -> bool:
        return tag == "blockquote" or _has_quote_class(attrs)

    def _end_capture(self) -> None:
        capture = self._captures.pop()
        text = "".join(capture.chunks)
        if capture.keep or (capture.keep_if_forward and starts_with_forward_marker(text)):
            self._out().append(text)

    # Parser callbacks ---------------------------------------------------------------------

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {name: value or "" for name, value in attrs} if attrs else {}
        self._start(tag, named, void=tag in _VOID_TAGS)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, {name: value or "" for name, value in attrs}, void=True)

    def _push(self, tag: str) -> None:
        self._open.append(tag)
        self._open_count[tag] = self._open_count.get(tag, 0) + 1

    def _pop(self) -> str:
        tag = self._open.pop()
        self._open_count[tag] -= 1
        return tag

    def _start(self, tag: str, attrs: dict[str, str], *, void: bool) -> None:
        if self._skip_depth is not None:
            if not void:
                self._push(tag)
            return
        if tag in _SKIPPED_TAGS and not void:
            self._push(tag)
            self._skip_depth = len(self._open)
            return
        if self._strip_quotes and _is_reply_marker(attrs):
            # Outlook: everything from here to the end is the original being replied to.
            self._captures.append(_Capture(depth=-1, keep_if_forward=True, keep=self._forward))
        if tag == "br":
            self._line_break()
        elif tag in _PARAGRAPH_TAGS:
            self._break(2)
        elif tag in _LINE_TAGS:
            self._break(1)
        elif tag in _CELL_TAGS:
            self._emit(" ")
        if tag == "img" and attrs.get("alt"):
            self._emit(attrs["alt"])
        if tag == "a" and _is_contact_link(attrs):
            target = attrs["href"].strip()
            self._links.append((target, len(self._captures), len(self._out())))
        if void:
            return
        self._push(tag)
        if tag in _PREFORMATTED_TAGS:
            self._pre += 1
        if self._strip_quotes and self._is_quote_container(tag, attrs):
            self._captures.append(_Capture(depth=len(self._open), keep_if_forward=True))

    def handle_endtag(self, tag: str) -> None:
        if not self._open_count.get(tag):
            if tag == "br":
                self._line_break()  # browsers treat a stray </br> as <br>
            return
        while self._open:
            closed = self._pop()
            self._close(closed)
            if closed == tag:
                break

    def _close(self, tag: str) -> None:
        depth = len(self._open) + 1
        if self._skip_depth is not None:
            if depth == self._skip_depth:
                self._skip_depth = None
            return
        if tag == "a" and self._links and self._links[-1][1] == len(self._captures):
            self._close_link()
        while self._captures and self._captures[-1].depth == depth:
            self._end_capture()
        if tag in _PREFORMATTED_TAGS:
            self._pre = max(0, self._pre - 1)
        if tag in _PARAGRAPH_TAGS:
            self._break(2)
        elif tag in _LINE_TAGS:
            self._break(1)

    def _close_link(self) -> None:
        """Show where a `mailto:`/`tel:` link leads: the buyer reaches that address by clicking."""
        target, _, start = self._links.pop()
        address = target.split(":", 1)[1].split("?", 1)[0].strip()
        shown = "".join(self._out()[start:])
        if address and address.lower() not in shown.lower():
            self._emit(f" ({address})")

    def handle_data(self, data: str) -> None:
        if self._skip_depth is not None:
            return
        self._emit(data if self._pre else _flow(data))

    def close(self) -> None:
        super().close()
        while self._open:
            self._close(self._pop())
