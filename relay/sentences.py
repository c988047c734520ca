"""Sentence breaks of a part, found paragraph by paragraph where positions need them.

A long message has hundreds of sentences, and most rules that survive the census need the
sentence of a few positions only. Every paragraph break is also a sentence break (both are a
blank line, which no other sentence-break alternative can consume), so a scan for sentence
breaks that starts at a paragraph break is in step with a scan from the start of the text:
each paragraph's breaks can be found on their own, when a position inside it asks.

A sentence is named by where the break that ends it starts (the text's length for the last
one): two positions share a name exactly when as many breaks start before each, and a name
does not depend on which paragraphs have been looked at.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from functools import partial

from relay.normalize import SENTENCE_BREAK_RE


def _fast_sentence_break_re() -> re.Pattern[str]:
    """SENTENCE_BREAK_RE, rewritten to open with one character class.

    The regex engine skips ahead to a character of an opening class in C; an alternation
    that opens with repeats is tried at every position, several times slower. Each
    alternative keeps its own first character by a look-behind, so the matches (and the
    order the alternatives are tried in) are the same: see the tests.
    """
    pattern = SENTENCE_BREAK_RE.pattern
    head = r"[.!?\u2026]+"
    split = pattern.index(r"|[\u3002\uff61]|")
    after_marks = pattern[len(head) : split]
    kana_stop, blank_line, bullet = pattern[split + 1 :].split("|", 2)
    if not (
        pattern.startswith(head)
        and kana_stop == r"[\u3002\uff61]"
        and blank_line.startswith("\\n")
        and bullet.startswith("\\n")
    ):
        raise RuntimeError("SENTENCE_BREAK_RE changed: update _fast_sentence_break_re")
    return re.compile(
        r"[.!?\u2026\u3002\uff61\n](?:"
        + r"(?<=[.!?\u2026])[.!?\u2026]*"
        + after_marks
        + r"|(?<=[\u3002\uff61])"
        + r"|(?<=\n)"
        + blank_line[2:]
        + r"|(?<=\n)"
        + bullet[2:]
        + ")"
    )


FAST_SENTENCE_BREAK_RE = _fast_sentence_break_re()


def sentence_starts(text: str) -> list[int]:
    """The starts of SENTENCE_BREAK_RE's matches, as its finditer() gives them."""
    return [match.start() for match in FAST_SENTENCE_BREAK_RE.finditer(text)]


class Sentences:
    """Names the sentence of any position of `text`, given its paragraph break starts.

    A short text (or one where most paragraphs are asked about) has all its breaks found in
    one pass, which costs less than keeping track of paragraphs.
    """

    # Texts shorter than this get every break at once.
    WHOLE_BELOW = 8192

    def __init__(self, text: str, paragraph_starts: list[int]) -> None:
        self.text = text
        self.paragraphs = paragraph_starts
        self._looked_at: set[int] = set()  # paragraph numbers whose breaks are known
        # Every known break start: all paragraph breaks, the sentence breaks inside the
        # paragraphs looked at, and the text's length (the last sentence's name).
        self._known = [*paragraph_starts, len(text)]
        self.complete = False
        if len(text) < self.WHOLE_BELOW:
            self._find_all()

    def _find_all(self) -> None:
        self._known = [*sentence_starts(self.text), len(self.text)]
        self.complete = True

    def _look_at(self, numbers: set[int]) -> None:
        self._looked_at |= numbers
        if 2 * len(self._looked_at) > len(self.paragraphs):
            self._find_all()
            return
        found = []
        paragraphs, text, finditer = self.paragraphs, self.text, FAST_SENTENCE_BREAK_RE.finditer
        for number in numbers:
            low = paragraphs[number - 1] if number else -1
            high = paragraphs[number] if number < len(paragraphs) else len(text)
            for match in finditer(text, max(low, 0)):
                start = match.start()
                if start >= high:
                    break
                if start > low:
                    found.append(start)
        if found:
            self._known = sorted(self._known + found)

    def of(self, position: int) -> int:
        """The sentence holding `position` (a sentence holds `low < position <= its name`)."""
        if not self.complete:
            number = bisect.bisect_left(self.paragraphs, position)
            if number not in self._looked_at:
                self._look_at({number})
        return self._known[bisect.bisect_left(self._known, position)]

    def of_each(self, positions: Sequence[int]) -> list[int]:
        """`of()` of each of `positions`, the bisects in C (thousands in a long part)."""
        left = bisect.bisect_left
        if not self.complete:
            numbers = set(map(partial(left, self.paragraphs), positions))
            if not numbers <= self._looked_at:
                self._look_at(numbers - self._looked_at)
        known = self._known
        return list(map(known.__getitem__, map(partial(left, known), positions)))

    def bounds(self, name: int) -> tuple[int, int]:
        """`(low, name)`: the sentence `name` (named by `of()`) holds `low < p <= name`."""
        index = bisect.bisect_left(self._known, name)
        return self._known[index - 1] if index else -1, name
