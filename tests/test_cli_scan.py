"""`outbox-relay scan` and `outbox-relay rules`: the JSON contract, exit codes, paths, stdin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay.cli import main

REPO = Path(__file__).resolve().parent.parent

CLEAN = (
    b"From: shop@example.com\r\nTo: buyer@example.org\r\nSubject: Your order has shipped\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Hi Sam,\r\n\r\nyour parcel is on its way. Just reply here if anything is wrong.\r\n"
)
VIOLATION = (
    b"From: shop@example.com\r\nTo: buyer@example.org\r\nSubject: Thanks!\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Hi Sam,\r\n\r\nquestions? Write to help@our-shop.example or call +49 30 1234567.\r\n"
)
PACK = """
language: en
terms:
  t.review: [review*]
rules:
  - id: t.positive
    category: positive-review-request
    severity: high
    description: Asks for a five-star review.
    hint: Ask for an honest review.
    all: ["5 star*", "@t.review"]
    examples:
      match: ["A 5-star review please"]
      no_match: ["A review please"]
"""


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.fixture
def mails(tmp_path: Path) -> Path:
    folder = tmp_path / "mails"
    (folder / "sub").mkdir(parents=True)
    (folder / "clean.eml").write_bytes(CLEAN)
    (folder / "sub" / "bad.eml").write_bytes(VIOLATION)
    (folder / "notes.txt").write_text("not a message")
    return folder


def json_lines(out: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.decode().splitlines()]


def test_json_contract_for_a_folder(mails: Path) -> None:
    result = run("scan", "--format", "json", str(mails))
    assert result.returncode == 1, result.stderr
    lines = json_lines(result.stdout)
    assert [line["path"] for line in lines] == [
        str(mails / "clean.eml"),
        str(mails / "sub" / "bad.eml"),
    ]
    clean, bad = lines
    assert clean["verdict"] == "clean" and clean["categories"] == [] and clean["hits"] == []
    assert bad["verdict"] == "violation"
    assert bad["categories"] == ["off-platform-contact"]
    assert set(bad) == {"path", "verdict", "categories", "hits", "rules_version"}
    assert str(bad["rules_version"]).startswith("bundled@")
    hits = bad["hits"]
    assert isinstance(hits, list) and hits
    for hit in hits:
        assert set(hit) == {"rule", "category", "severity", "part", "excerpt", "hint"}
        assert hit["part"] == "text" and hit["severity"] == "medium" and hit["hint"]
    excerpts = " ".join(str(hit["excerpt"]) for hit in hits)
    assert "help@our-shop.example" in excerpts and "+49 30 1234567" in excerpts


def test_all_clean_exits_0_and_stdin_is_dash() -> None:
    result = run("scan", "--format", "json", "-", stdin=CLEAN)
    assert result.returncode == 0, result.stderr
    (line,) = json_lines(result.stdout)
    assert line["path"] == "-" and line["verdict"] == "clean"


def test_unreadable_file_is_named_and_others_still_scanned(mails: Path) -> None:
    missing = mails / "missing.eml"
    result = run("scan", "--format", "json", str(missing), str(mails / "clean.eml"))
    assert result.returncode == 2
    assert str(missing) in result.stderr.decode()
    (line,) = json_lines(result.stdout)
    assert line["verdict"] == "clean"


def test_text_format_shows_excerpt_and_hint(mails: Path) -> None:
    result = run("scan", str(mails / "sub" / "bad.eml"))
    assert result.returncode == 1
    out = result.stdout.decode()
    assert "VIOLATION (off-platform-contact)" in out
    assert "help@our-shop.example" in out
    assert "Buyer-Seller Messaging" in out


def test_config_rules_paths_are_used(tmp_path: Path, mails: Path) -> None:
    pack = tmp_path / "mypack.yaml"
    pack.write_text(PACK)
    config = tmp_path / "relay.yaml"
    config.write_text(
        f"upstream: {{maildir: {tmp_path / 'out'}}}\n"
        f"quarantine: {{path: {tmp_path / 'q'}}}\n"
        f"rules: {{paths: [{pack}]}}\n"
    )
    (tmp_path / "out").mkdir()
    mail = tmp_path / "five.eml"
    mail.write_bytes(CLEAN.replace(b"your parcel", b"a 5-star review would be great, your parcel"))
    assert main(["scan", "--config", str(config), "--format", "json", str(mail)]) == 1
    assert main(["scan", "--config", str(config), str(mails / "sub" / "bad.eml")]) == 0


def test_broken_rule_pack_in_config_exits_2(tmp_path: Path, mails: Path) -> None:
    pack = tmp_path / "broken.yaml"
    pack.write_text(PACK.replace("positive-review-request", "five-stars"))
    config = tmp_path / "relay.yaml"
    (tmp_path / "out").mkdir()
    config.write_text(
        f"upstream: {{maildir: {tmp_path / 'out'}}}\nrules: {{paths: [{pack}]}}\n"
        f"quarantine: {{path: {tmp_path / 'q'}}}\n"
    )
    result = run("scan", "--config", str(config), str(mails))
    assert result.returncode == 2
    assert "broken.yaml:7: rule t.positive" in result.stderr.decode()
    assert "five-stars" in result.stderr.decode()


def test_rules_test_passes_on_bundled_and_reports_failures_by_rule(tmp_path: Path) -> None:
    result = run("rules", "test")
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert "0 failed" in result.stdout.decode()
    pack = tmp_path / "wrong.yaml"
    pack.write_text(PACK.replace('no_match: ["A review please"]', 'no_match: ["A 5 star review"]'))
    result = run("rules", "test", str(pack))
    assert result.returncode == 1
    out = result.stdout.decode()
    assert "FAIL t.positive" in out and "should not match: 'A 5 star review'" in out


def test_rules_list(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pack = tmp_path / "p.yaml"
    pack.write_text(PACK)
    assert main(["rules", "list", str(pack)]) == 0
    assert capsys.readouterr().out.split("\t") == [
        "t.positive",
        "positive-review-request",
        "high",
        "Asks for a five-star review.\n",
    ]
