"""What the scan path makes of a large, fixed set of messages, for checking speed work.

A speed-up of extraction, normalization or matching must not change a single verdict. This
prints one line per message: the message's name, a digest of what `extract()` returned (every
part's origin and text, and the notes) and every hit (rule, part, excerpt). Run it before and
after a change and compare the two files; any difference is a behaviour change to explain.

Messages: every corpus item in every variant (tests/corpus), long messages made of many corpus
items of one language (plain text and HTML, so sentence, paragraph and message scopes see many
candidates at once) and the benchmark's traffic shapes.

    python -m bench.fingerprint > before.txt; ...; python -m bench.fingerprint > after.txt
    diff before.txt after.txt && echo identical
"""

from __future__ import annotations

import argparse
import hashlib
import html
import random
import sys
from collections.abc import Iterator, Sequence

from bench.traffic import make_message
from relay.engine import load_rules
from relay.extract import extract
from tests.corpus.build import LANGUAGES, build_all, load_corpus
from tests.support import REPO


def _long_messages(seed: int = 6) -> Iterator[tuple[str, bytes]]:
    items = load_corpus()
    rng = random.Random(seed)
    for language in LANGUAGES:
        mine = [item for item in items if item.language == language]
        for index in range(12):
            chosen = rng.sample(mine, min(len(mine), 40))
            body = "\n\n".join(f"{item.subject}. {item.body}" for item in chosen)
            if index % 2:
                markup = "".join(f"<p>{html.escape(p)}</p>\n" for p in body.split("\n\n"))
                content = f"<html><body>{markup}</body></html>"
                kind = "text/html"
            else:
                content, kind = body, "text/plain"
            raw = (
                f"From: shop@example.com\r\nTo: buyer@example.com\r\nSubject: long {index}\r\n"
                f"MIME-Version: 1.0\r\nContent-Type: {kind}; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: 8bit\r\n\r\n" + content.replace("\n", "\r\n")
            )
            yield f"long/{language}/{index}", raw.encode("utf-8")


def _bench_messages() -> Iterator[tuple[str, bytes]]:
    rng = random.Random(27)
    for kind, size, count in (("small", 3_000, 20), ("medium", 50_000, 10), ("large", 400_000, 2)):
        for index in range(count):
            message = make_message(rng, index, kind, index % 3 == 0, size)
            yield f"bench/{kind}/{index}", message.data


def messages(quick: bool = False) -> Iterator[tuple[str, bytes]]:
    items = load_corpus()
    if quick:
        items = items[::7]
    for sample in build_all(items):
        yield f"corpus/{sample.item.id}/{sample.variant}", sample.raw
    yield from _long_messages()
    yield from _bench_messages()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fingerprint", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="every seventh corpus item only")
    args = parser.parse_args(argv)
    ruleset = load_rules([REPO / "rules"])
    out = sys.stdout
    total = hashlib.sha256()
    for name, data in messages(args.quick):
        scan = extract(data)
        digest = hashlib.sha256()
        digest.update(scan.subject.encode("utf-8", "surrogatepass"))
        for part in scan.parts:
            digest.update(b"\x00" + part.origin.encode() + b"\x01")
            digest.update(part.text.encode("utf-8", "surrogatepass"))
        for note in scan.notes:
            digest.update(b"\x02" + note.encode("utf-8", "surrogatepass"))
        verdict = ruleset.evaluate(scan)
        hits = " ".join(f"{h.rule}@{h.part}:{h.excerpt!r}" for h in verdict.hits)
        line = f"{name}\t{digest.hexdigest()[:16]}\t{hits}\n"
        total.update(line.encode("utf-8", "surrogatepass"))
        out.write(line)
    print(f"# total {total.hexdigest()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
