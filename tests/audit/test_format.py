"""The ledger format of docs/audit.md, byte for byte: an entry's body is the RFC 8785 text of
{kind, payload, prev_hash, seq, time}, its hash the SHA-256 of that text, and the export
carries the body verbatim, so any language reproduces every hash without re-serialising."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chorus.server.domain import audit
from chorus.server.model import config
from chorus.server.model.clock import FakeClock
from chorus.server.model.ledger_format import MAX_SAFE_INTEGER, Entry, parse_body
from chorus.server.root import Chorus
from chorus.server.verifier import verify
from tests._ledger import ledger_entries
from tests._policy import SUITE_TOML

from .conftest import NOON, WINDOW, open_and_close, release, roster_rows

#: Payloads whose Python json.dumps text differs from JavaScript's JSON.stringify (floats such as
#: 1000000.0, exponents, key order beyond the BMP) or that need escaping.
AWKWARD = {"float": 1000000.0, "tenth": 0.1, "huge": 1e21, "wide": 1.2345678901234568e+20,
           "tiny": 5e-324, "keys": {"\U0001F600": 1, "\uffff": 2, "é": 3, "a": 4},
           "text": "line\u2028sep \"quoted\" \\ \x07 é 😀", "list": [3.0, -0.0, MAX_SAFE_INTEGER]}


def export(chorus: Chorus) -> list[str]:
    return [verify.export_line(e) for e in ledger_entries(chorus.db)]


def test_the_body_is_rfc8785_of_the_entry_and_the_export_carries_it_verbatim(chorus: Chorus) -> None:
    chorus.db.run(lambda tx: chorus.ledger.append(tx, "test", AWKWARD, chorus.clock.now()), name="t")
    lines = export(chorus)
    for text in lines:
        line = json.loads(text)
        assert list(line) == ["body", "hash", "signature"]
        fields = parse_body(line["body"])
        assert line["body"].encode() == rfc8785.dumps(fields)
        assert line["hash"] == hashlib.sha256(line["body"].encode()).hexdigest()
    last = json.loads(json.loads(lines[-1])["body"])
    assert last["payload"]["float"] == 1000000 and '"float":1000000,' in json.loads(lines[-1])["body"]
    assert '"huge":1e+21' in json.loads(lines[-1])["body"]
    assert list(last["payload"]["keys"]) == ["a", "é", "\U0001F600", "\uffff"]  # UTF-16 order
    report = verify.verify_lines(lines, chorus.ledger.signer.public_key)
    assert report.ok, report.violations


def test_numbers_no_json_library_reads_back_exactly_are_refused_and_nothing_is_appended(
        chorus: Chorus) -> None:
    before = len(export(chorus))
    for bad in (MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            chorus.db.run(lambda tx, bad=bad: chorus.ledger.append(tx, "test", {"n": bad}, chorus.clock.now()),
                          name="t")
    assert len(export(chorus)) == before


def test_a_released_value_beyond_the_exact_range_is_a_decimal_string(tmp_path: Path) -> None:
    toml = SUITE_TOML.replace("max_per_user = 200000", "max_per_user = 1000000000000").replace(
        'sum = "0.05"', 'sum = "0.000001"')  # noise of scale 1e18: values far beyond 2**53
    instance = Chorus(config.parse(tomllib.loads(toml)), tmp_path / "data", clock=FakeClock(NOON))
    try:
        instance.import_roster(roster_rows(), actor="test-admin")
        open_and_close(instance)
        release(instance, "team-red", "ai.tokens", "sum", "histogram")
        lines = export(instance)
        bodies = [parse_body(json.loads(t)["body"]) for t in lines]
        values = [b["payload"]["value"] for b in bodies if b["kind"] == "release"]
        assert len(values) == 2 and isinstance(values[0], str) and all(isinstance(v, str) for v in values[1])
        assert verify.verify_lines(lines, instance.ledger.signer.public_key).ok
    finally:
        instance.close()


@pytest.mark.parametrize("body, problem", [
    ('{"kind":"x","payload":{},"prev_hash":"' + "0" * 64 + '","seq":1,"time":"t","extra":1}', "exactly the keys"),
    ('{"payload":{},"kind":"x","prev_hash":"' + "0" * 64 + '","seq":1,"time":"t"}', "canonical"),
    ('{"kind":"x","payload":{"a":1.0},"prev_hash":"' + "0" * 64 + '","seq":1,"time":"t"}', "canonical"),
    ('{"kind":"x","payload":{"a":1,"a":2},"prev_hash":"' + "0" * 64 + '","seq":1,"time":"t"}', "repeats"),
    ('{"kind":"x","payload":{},"prev_hash":"' + "0" * 64 + '","seq":0,"time":"t"}', "seq"),
    ('{"kind":"x","payload":[],"prev_hash":"' + "0" * 64 + '","seq":1,"time":"t"}', "payload"),
    ('{"kind":"x","payload":{},"prev_hash":"ABC","seq":1,"time":"t"}', "prev_hash"),
])
def test_a_body_not_in_ledger_form_is_named(body: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_body(body)


def test_a_stored_entry_round_trips_through_its_body(chorus: Chorus) -> None:
    chorus.db.run(lambda tx: chorus.ledger.append(tx, "test", AWKWARD, chorus.clock.now()), name="t")
    for entry in ledger_entries(chorus.db):
        assert Entry.from_signed(entry.body, entry.hash, entry.signature) == entry


def test_the_window_policy_text_is_the_ledgered_policy_byte_for_byte(chorus: Chorus) -> None:
    open_and_close(chorus)
    opened = [json.loads(t) for t in export(chorus) if json.loads(json.loads(t)["body"])["kind"] == "window_open"]
    policy = chorus.db.run(lambda tx: audit.list_policies(tx, WINDOW)[0].policy_json, name="t")
    assert f'"policy":{policy},' in opened[0]["body"]


DOCS = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def docs_block(language: str) -> str:
    """The test vector's fenced block of `language` in docs/audit.md's format section."""
    section = DOCS.read_text(encoding="utf-8").split("## The ledger format, byte for byte")[1]
    return section.split(f"```{language}\n")[1].split("```")[0]


def test_the_documented_test_vector_verifies_and_follows_every_stated_rule(tmp_path: Path) -> None:
    pem = docs_block("text")
    seeded = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key()
    assert pem.encode() == seeded.public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    der = seeded.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert der.hex().startswith("302a300506032b6570032100") and len(der) == 44
    lines = docs_block("jsonl").splitlines()
    prev = "0" * 64
    for seq, text in enumerate(lines, start=1):
        assert text.isascii()
        line = json.loads(text)
        fields = parse_body(line["body"])
        assert (fields["seq"], fields["prev_hash"]) == (seq, prev)
        assert hashlib.sha256(line["body"].encode()).hexdigest() == line["hash"]
        seeded.verify(bytes.fromhex(line["signature"]), bytes.fromhex(line["hash"]))  # raises if not
        prev = line["hash"]
    assert '\\"scale\\":4000000,' in lines[1]
    report = verify.verify_lines(lines, seeded)
    assert {v.rule for v in report.violations} == {"window"}  # chain and signatures hold; no window_open


def test_the_export_file_is_ascii_whatever_the_payload(chorus: Chorus) -> None:
    chorus.db.run(lambda tx: chorus.ledger.append(tx, "test", AWKWARD, chorus.clock.now()), name="t")
    lines = export(chorus)
    assert all(text.isascii() for text in lines)
    assert "\u2028" in json.loads(lines[-1])["body"]  # decoded, the body holds the character itself


def test_page_sizes_follow_aip_158() -> None:
    assert (audit.page_size(0), audit.page_size(7), audit.page_size(5000)) == (100, 7, 1000)
    with pytest.raises(ValueError, match="page_size -1"):
        audit.page_size(-1)
    assert audit.MAX_PAGE_BYTES == 1 << 20


def test_an_export_in_the_old_format_does_not_verify(chorus: Chorus) -> None:
    """Development builds exported the payload re-parsed, seven members per line; no release
    wrote that format, and the verifier names it rather than guessing."""
    entry = next(ledger_entries(chorus.db))
    old = json.dumps({"seq": entry.seq, "time": entry.at, "kind": entry.kind, "payload": json.loads(entry.payload),
                      "prev_hash": entry.prev_hash, "hash": entry.hash, "signature": entry.signature})
    report = verify.verify_lines([old], chorus.ledger.signer.public_key)
    assert [(v.rule, v.message) for v in report.violations] == [("format", "missing field 'body'")]
