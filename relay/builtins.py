"""Built-in term lists the engine computes: addresses, links, phone numbers, star ratings.

Each finder takes a normalized text and returns the `[start, end)` spans it recognizes.
Every regular expression here is anchored on a cheap literal (`@`, `.tld`, a digit) and has
bounded repetition, so a finder is linear in the text size; the judgement calls (is this
Amazon's domain, a date, an order id?) are made in plain Python on the few candidates.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from relay.normalize import LETTER, Normalized, may_have_star_word

NAMES = ("email", "url", "phone", "rating", "top-rating", "symbol-rating", "top-symbol-rating")


def _has_digit(text: str) -> bool:
    """Whether `text` holds an ASCII digit: ten memchr scans, far cheaper than one regex scan."""
    return any(digit in text for digit in "0123456789")


# --- domains ----------------------------------------------------------------------------

_ALNUM = r"a-z0-9\u00e0-\u00f6\u00f8-\u024f"
_LABEL = rf"[{_ALNUM}](?:[{_ALNUM}-]{{0,61}}[{_ALNUM}])?"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL}){{1,8}}")
_AMAZON_SHORT = {"amzn.to", "amzn.com", "amzn.eu", "amzn.asia", "a.co"}


def is_amazon_domain(domain: str) -> bool:
    """True for amazon.*, any subdomain of it (marketplace.amazon.de) and Amazon's short links."""
    domain = domain.strip(".").lower()
    if domain.startswith("www."):
        domain = domain[4:]
    labels = domain.split(".")
    # Amazon's own image and media hosts: m.media-amazon.com, images-na.ssl-images-amazon.com.
    parts = {part for label in labels[:-1] for part in (label, *label.split("-"))}
    return "amazon" in parts or domain in _AMAZON_SHORT or domain.endswith(".amazon")


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


_CARRIERS = _word_set(
    "dhl ups fedex usps dpd gls hermes hermesworld myhermes evri royalmail parcelforce "
    "laposte colissimo chronopost correos correosexpress seur mrw nacex poste posteitaliane "
    "brt sda tnt yamato kuronekoyamato sagawa-exp japanpost deutschepost canadapost auspost "
    "ontrac lasership postnl bpost swisspost dhlparcel mondialrelay inpost yodel aramex "
    "colisprive purolator asendia ctt packeta zasilkovna 17track parcelsapp aftership "
    "parcelforce dpdgroup"
)
# Too common as a host name to trust anywhere but as the registered name (post.ch, post.at).
_REGISTERED_ONLY_CARRIERS = frozenset({"post"})


def is_carrier_domain(domain: str) -> bool:
    """A parcel carrier's site: tracking links are needed to complete the order."""
    labels = domain.lower().split(".")[:-1]
    if labels and labels[-1] in _REGISTERED_ONLY_CARRIERS:
        return True
    return any(part in _CARRIERS for label in labels for part in (label, *label.split("-")))


# --- e-mail -----------------------------------------------------------------------------

_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._%+-")
# A hard-wrapped line may break anywhere around "(at)" and "(dot)".
_AT_RE = re.compile(r"[@\[({](?:(?<=@)|[ \t\n]?(?:at|@)[ \t\n]?[\])}][ \t\n]?)")
_OBFUSCATED_DOT = (
    r"[ \t\n]?[\[({][ \t\n]?(?:dot|punkt|point|punto)[ \t\n]?[\])}][ \t\n]?|[ \t\n]dot[ \t\n]"
)
_OBFUSCATED_DOMAIN_RE = re.compile(rf"{_LABEL}(?:(?:\.|{_OBFUSCATED_DOT}){_LABEL}){{1,8}}")
_OBFUSCATED_DOT_RE = re.compile(_OBFUSCATED_DOT)


def find_emails(text: str) -> list[tuple[int, int]]:
    """E-mail addresses (also `name [at] shop [dot] com`) whose domain is not Amazon's."""
    found: list[tuple[int, int]] = []
    if not _may_have_email(text):
        return found
    last_end = 0
    for at in _AT_RE.finditer(text):
        if at.start() < last_end:
            continue
        local_end = at.start()
        if at.group() != "@" and local_end > 0 and text[local_end - 1] in " \t\n":
            local_end -= 1  # "info [at] shop [dot] de"
        start = local_end
        while start > max(last_end, local_end - 64) and text[start - 1] in _LOCAL_CHARS:
            start -= 1
        while start < local_end and text[start] in "._-":
            start += 1
        if start == local_end:
            continue
        plain = at.group() == "@"
        domain_match = (_DOMAIN_RE if plain else _OBFUSCATED_DOMAIN_RE).match(text, at.end())
        if domain_match is None:
            continue
        domain = _OBFUSCATED_DOT_RE.sub(".", domain_match.group())
        if not _tld_ok(domain) or is_amazon_domain(domain):
            continue
        found.append((start, domain_match.end()))
        last_end = domain_match.end()
    return found


def _may_have_email(text: str) -> bool:
    """False when _AT_RE surely finds nothing: each of its matches starts with `@[({`."""
    return "@" in text or "[" in text or "(" in text or "{" in text


def _tld_ok(domain: str) -> bool:
    tld = domain.rsplit(".", 1)[-1]
    return len(tld) >= 2 and tld.isalpha()


# --- links ------------------------------------------------------------------------------

_TLDS = _word_set(
    "com net org info biz io co de fr es it jp uk eu at ch nl be pl se dk fi pt ie ca us au "
    "mx br ru cn shop store online site website app dev ai tv xyz top club link page blog "
    "tech email example cz hu gr ro sk si lu li nz ar cl store market deals reviews review "
    "ly me ee gl gd"
)
# Link shorteners and chat links whose first label is a single letter.
_ONE_LETTER_HOSTS = frozenset({"t.me", "m.me"})
_SCHEME_RE = re.compile(r"[hfw](?:(?<=h)ttps?://|(?<=f)tp://|(?<=w)ww\.)[^\s<>\"'(){}\[\]]+")
# The lookahead rejects a sentence's full stop before the engine tries every TLD on it.
_TLD_RE = re.compile(
    r"\.(?=[a-z])(?:"
    + "|".join(sorted(set(_TLDS), key=len, reverse=True))
    + r")(?![a-z0-9-]|\.[a-z0-9])"
)
_DOMAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")
_PATH_RE = re.compile(r"(?:[/?#][^\s<>\"'(){}\[\]]*)?")
_TRAILING = ".,;:!?'\"”’"


def find_urls(norm: Normalized) -> list[tuple[int, int]]:
    """Links and bare domains (`our-shop.com/help`) that do not point to Amazon."""
    text = norm.text
    found = _spelled_domains(text)
    if "." not in text:
        return found
    taken_until = -1
    for match in _SCHEME_RE.finditer(text) if _may_have_scheme(text) else ():
        start, end = match.start(), match.end()
        while end > start and text[end - 1] in _TRAILING:
            end -= 1
        host = re.sub(r"^(?:https?|ftp)://", "", text[start:end]).split("/")[0].split("?")[0]
        host = host.split("#")[0].split(":")[0].split("@")[-1]
        if "." not in host or is_amazon_domain(host) or is_carrier_domain(host):
            continue
        found.append((start, end))
    # A TLD inside a link or spelled domain found above is not looked at again. TLDs come in
    # order, so one pass over those spans by start tells whether one covers the TLD (looking
    # through all of them for each TLD made a text of many links quadratic).
    spans = sorted(found)
    next_span = 0
    covered_until = -1  # the farthest end of the spans starting at or before the TLD
    for match in _TLD_RE.finditer(text):
        tld_start, tld_end = match.start(), match.end()
        while next_span < len(spans) and spans[next_span][0] <= tld_start:
            covered_until = max(covered_until, spans[next_span][1])
            next_span += 1
        if tld_start < taken_until or tld_start < covered_until:
            continue
        start = tld_start
        while start > 0 and text[start - 1] in _DOMAIN_CHARS:
            start -= 1
        while start < tld_start and text[start] in ".-":
            start += 1
        label = text[start:tld_start].rsplit(".", 1)[-1]
        short_host = text[start:tld_end] in _ONE_LETTER_HOSTS
        if (len(label) < 2 and not short_host) or not any(
            c.isalpha() for c in text[start:tld_start]
        ):
            continue
        if start > 0 and text[start - 1] in "@/":
            continue  # an e-mail's domain, or part of a path
        domain = text[start:tld_end]
        if is_amazon_domain(domain) or is_carrier_domain(domain):
            continue
        if not _looks_written_as_domain(norm, start, tld_start):
            continue
        path = _PATH_RE.match(text, tld_end)
        end = path.end() if path else tld_end
        while end > tld_end and text[end - 1] in _TRAILING:
            end -= 1
        found.append((start, end))
        taken_until = end
    found.sort()
    return found


def _may_have_scheme(text: str) -> bool:
    """False when _SCHEME_RE surely finds nothing: a match holds `://` or `www.`.

    The regex would be tried at every h, f and w; `:` is rare, so memchr rules most text out.
    """
    return (":" in text and "://" in text) or "www." in text


_SPELLED_DOT = r"(?:[ \t]+dot[ \t]+|[ \t]*[\[({](?:dot|punkt|point|punto)[\])}][ \t]*)"
_SPELLED_DOMAIN_RE = re.compile(
    rf"(?<![a-z0-9-])[a-z0-9][a-z0-9-]{{1,62}}(?:{_SPELLED_DOT}[a-z0-9][a-z0-9-]{{0,62}}){{1,3}}"
    r"(?![a-z0-9-])"
)


def _spelled_domains(text: str) -> list[tuple[int, int]]:
    """`our-shop dot com`, `shop [dot] co [dot] uk`: a domain spelled out to slip through."""
    if not _may_have_spelled_dot(text):
        return []
    found = []
    for match in _SPELLED_DOMAIN_RE.finditer(text):
        labels = re.split(_SPELLED_DOT, match.group())
        domain = ".".join(labels)
        if labels[-1] in _TLDS and not is_amazon_domain(domain) and not is_carrier_domain(domain):
            found.append(match.span())
    return found


def _may_have_spelled_dot(text: str) -> bool:
    """Whether `text` holds ` dot `, `dot]`, `dot)` or `t]` (the spelled-dot forms looked at).

    `dot]` contains `t]`; `]` and `dot` are looked for first because both are rare.
    """
    return ("]" in text and "t]" in text) or ("dot" in text and (" dot " in text or "dot)" in text))


def _looks_written_as_domain(norm: Normalized, start: int, dot: int) -> bool:
    """`Thanks.It works` is a missing space, not a domain: a domain is not capitalized midway."""
    src_start, src_end = norm.source_span(start, dot + 2)
    written = norm.source[src_start:src_end]
    tld_first = written[-1:]
    return not (tld_first.isupper() and not written.isupper())


# --- phone numbers ----------------------------------------------------------------------

_SEP = r" \t\-./()\u2010-\u2015\u2212\u30fc"
_PHONE_RE = re.compile(
    # A colon before the number is allowed after a word ("tel:", "TEL：") but not after a digit
    # (a time such as 10:30).
    r"[+(0-9](?<![0-9a-z#/.,+\-_@].)(?<![0-9]:.)(?:(?<=\+)[ \t]?\(?[0-9]|(?<=\()[0-9]|(?<=[0-9]))"
    rf"[0-9{_SEP}]{{4,24}}[0-9](?![0-9a-z])"
)
_DATE_RE = re.compile(r"[0-9]{1,4}([./-])[0-9]{1,2}\1[0-9]{1,4}")
_GROUP_RE = re.compile(r"[0-9]+")


def is_phone_number(candidate: str) -> bool:
    """Judges a digit run with separators: a phone number, or an order id, date, price...?"""
    raw = candidate.strip()
    groups = _GROUP_RE.findall(raw)
    digits = "".join(groups)
    count = len(digits)
    sizes = [len(g) for g in groups]
    if count < 7 or count > 15:
        return False
    if _DATE_RE.fullmatch(raw) or re.fullmatch(r"[0-9]{3}-[0-9]{7}-[0-9]{7}", raw):
        return False
    if re.search(r"[^0-9 \t\-./()+\u2010-\u2015\u2212\u30fc]|[.]{2,}|[-]{2,}", raw):
        return False
    if "/" in raw and (raw.count("/") > 1 or not digits.startswith("0")):
        return False  # 0171/1234567 is a German number; other slashes are fractions or dates
    if raw.startswith("+"):
        return count >= 8 or (count >= 7 and len(groups) >= 2)
    if raw.startswith("00"):
        return count >= 10
    if re.match(r"\([0-9]{2,5}\)", raw):
        return True
    if digits.startswith("0"):
        return 9 <= count <= 12 and (len(groups) > 1 or count >= 10)
    if sizes == [3, 3, 4] or (sizes == [1, 3, 3, 4] and digits.startswith("1")):
        return True
    if count == 9 and digits[0] in "6789" and sizes in ([3, 3, 3], [3, 2, 2, 2], [2, 3, 2, 2]):
        return True  # Spanish numbers have no trunk prefix: 612 345 678, 91 765 43 21
    italian_mobile = ([3, 7], [3, 3, 4], [3, 4, 3], [3, 2, 2, 3], [3, 3, 2, 2])
    return count == 10 and digits[0] == "3" and sizes in italian_mobile


def find_phones(text: str) -> list[tuple[int, int]]:
    """Phone numbers in national or international form; not order ids, dates or prices."""
    found: list[tuple[int, int]] = []
    if not _has_digit(text):
        return found  # every match of _PHONE_RE holds digits
    for match in _PHONE_RE.finditer(text):
        raw = match.group()
        start = match.start() + (len(raw) - len(raw.lstrip()))
        if _CODE_BEFORE_RE.search(text, max(0, start - 24), start):
            continue  # the tail of a code such as a tracking number "1Z 999 AA1 01 2345 6784"
        if is_phone_number(raw):
            found.append((start, match.end()))
    return found


_CODE_BEFORE_RE = re.compile(r"(?:[a-z]+[0-9]|[0-9]+[a-z])[a-z0-9]*[ \t]$")


# --- ratings ----------------------------------------------------------------------------

_RATING_RE = re.compile(
    r"[0-9星](?:"
    r"(?<=[0-9])(?<![0-9.,][0-9])(?:[.,][0-9])?(?:"
    rf"[ \t\-\u2010\u2011]*(?:[{LETTER}]+[ \t\-]+)?"
    rf"(?:stars?|sterne?n?|étoiles?|etoiles?|estrellas?|stelle|stella)(?![{LETTER}])"
    r"|\s?つ?星)"
    r"|(?<=星)を?\s?[0-9](?:\.[0-9])?(?![0-9]))"
)
_NUMBER_RE = re.compile(r"[0-9](?:[.,][0-9])?")


def _may_have_rating(text: str) -> bool:
    """False when _RATING_RE surely finds nothing: a match holds a digit and a star word or 星."""
    return _has_digit(text) and ("星" in text or may_have_star_word(text))


def find_ratings(text: str, *, minimum: float = 0) -> list[tuple[int, int]]:
    """Star ratings, already normalized to `N stars` (or `5つ星`, `星5`) by normalize()."""
    found: list[tuple[int, int]] = []
    if not _may_have_rating(text):
        return found
    for match in _RATING_RE.finditer(text):
        number = _NUMBER_RE.search(match.group())
        if number and float(number.group().replace(",", ".")) >= minimum:
            found.append(match.span())
    return found


_FINDERS: dict[str, Callable[[Normalized], list[tuple[int, int]]]] = {
    "email": lambda norm: find_emails(norm.text),
    "url": find_urls,
    "phone": lambda norm: find_phones(norm.text),
    "rating": lambda norm: find_ratings(norm.text),
    "top-rating": lambda norm: find_ratings(norm.text, minimum=4),
    "symbol-rating": lambda norm: [(s, e) for s, e, _ in norm.symbol_ratings],
    "top-symbol-rating": lambda norm: [(s, e) for s, e, n in norm.symbol_ratings if n >= 4],
}


def find(name: str, norm: Normalized) -> list[tuple[int, int]]:
    """Spans of the built-in term list `name` (without `builtin.`) in a normalized text."""
    return _FINDERS[name](norm)
