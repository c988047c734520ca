"""Parse a message into the stdlib's Message tree without feeding the parser every body line.

The stdlib parser (`email.feedparser`) reads a message line by line in Python and tests each
line against the boundaries of every enclosing multipart: a 1 MB message with a base64
attachment is 13,000 lines and about 12 ms. Most of those lines cannot change the parse:
inside a body, the parser only asks of a line whether it is a boundary (it starts with `--`)
and, inside a `message/delivery-status` part, whether it is blank. Such a run of lines is
replaced by one placeholder line before parsing, and put back into the parts' payloads,
preambles and epilogues afterwards, so the tree is the one the stdlib builds from the whole
message, string for string.

A run must start with a line that is neither blank nor looks like a header: the parser treats
that line (and the placeholder) alike in every state, as the first body line or as a body line,
and everything after it up to the next line starting with `-` is body text it only collects.
A lone CR ends a line for the parser (not for the run finder, which splits at LF): a dash after
one ends a run too. Messages naming a `...-status` type are parsed whole, since blank lines
split delivery-status parts.
"""

from __future__ import annotations

import re
from email.message import Message

from relay.mimeparse import parse_bytes

__all__ = ["parse_message"]

# Shorter runs save less than the scan costs.
_MIN_RUN = 2048
# One scan, for dashes: `-status` names a type like message/delivery-status, whose parts blank
# lines separate, so no run is set aside; a dash that starts a line (after LF, or after a lone
# CR, where the stdlib parser also ends a line) may start a boundary, so it ends a run.
_DASH = re.compile(rb"-(?:(?i:status)|(?<=[\r\n]-))")
# The start of a line that can open a run: not blank, and not what the stdlib parser takes for
# a header line or continuation (email.feedparser.headerRE) where it expects headers.
_RUN_START = re.compile(rb"\n(?![\r\n]|From |[\x21-\x39\x3b-\x7e]*:|[\t ])")
_PLACEHOLDERS = ("HollowedLines", "SetAsideLines", "PlaceholderLines")


def parse_message(raw: bytes) -> Message:
    """Return the Message `email.message_from_bytes(raw, policy=compat32)` returns, faster."""
    runs = _runs(raw) if len(raw) >= _MIN_RUN else []
    if not runs:
        return parse_bytes(raw)
    # The placeholder must not occur in what the parser reads of the message (the runs are
    # put back as they were, never searched); a bounded number of tries, so that a message
    # cannot make this search quadratic.
    edges = [0, *(edge for run in runs for edge in run), len(raw)]
    gaps = list(zip(edges[::2], edges[1::2], strict=True))
    marker = next(
        (
            name
            for name in _PLACEHOLDERS
            if all(raw.find(name.encode(), start, end) < 0 for start, end in gaps)
        ),
        None,
    )
    if marker is None:
        return parse_bytes(raw)
    pieces: list[bytes] = []
    originals: list[str] = []
    done = 0
    for start, end in runs:
        eol = b"\r\n" if raw[end - 2 : end] == b"\r\n" else b"\n"
        pieces += [raw[done:start], f"{marker}{len(originals)}".encode(), eol]
        originals.append(raw[start : end - len(eol)].decode("ascii", "surrogateescape"))
        done = end
    pieces.append(raw[done:])
    message = parse_bytes(b"".join(pieces))
    _restore(message, re.compile(re.escape(marker) + r"(\d+)"), originals)
    return message


def _runs(raw: bytes) -> list[tuple[int, int]]:
    """The (start, end) spans of whole lines that can be set aside, in order, each long enough.

    A span runs from a line that can open a run to the line before the next one in which a
    line of the stdlib parser starts with a dash (or to the last complete line). None at all
    when the message names a `...-status` type.
    """
    # Past this many breaks the runs are short on average: not worth a Python step per break.
    most = len(raw) // _MIN_RUN * 8
    bad_lines: list[int] = []
    for match in _DASH.finditer(raw):
        if match.end() - match.start() > 1:
            return []
        bad_lines.append(raw.rfind(b"\n", 0, match.start()) + 1)
        if len(bad_lines) > most:
            return []
    last_line_end = raw.rfind(b"\n") + 1
    runs: list[tuple[int, int]] = []
    gap_start = 0
    for bad in [*bad_lines, last_line_end]:
        gap_end = min(bad, last_line_end)
        if gap_end - gap_start >= _MIN_RUN:
            opener = _RUN_START.search(raw, max(gap_start - 1, 0), gap_end)
            if opener is not None and gap_end - opener.end() >= _MIN_RUN:
                runs.append((opener.end(), gap_end))
        line_end = raw.find(b"\n", bad)
        gap_start = max(gap_start, line_end + 1 if line_end >= 0 else len(raw))
    return runs


def _restore(message: Message, placeholder: re.Pattern[str], originals: list[str]) -> None:
    """Put the lines set aside back where the parser left their placeholders."""

    def put_back(text: str) -> str:
        return placeholder.sub(lambda match: originals[int(match.group(1))], text)

    for part in message.walk():
        # The payload as the parser stored it: get_payload() would decode it.
        payload = getattr(part, "_payload", None)
        if isinstance(payload, str) and placeholder.search(payload):
            part.set_payload(put_back(payload))
        if part.preamble and placeholder.search(part.preamble):
            part.preamble = put_back(part.preamble)
        if part.epilogue and placeholder.search(part.epilogue):
            part.epilogue = put_back(part.epilogue)
