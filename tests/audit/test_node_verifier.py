"""examples/node/verify-ledger.js, a verifier written from docs/audit.md alone in JavaScript
(node:crypto only), checks a ledger exported from a real server through `chorus audit export`,
reproducing every hash and signature, and rejects each kind of tampering.

Needs Node.js: skipped with a visible reason locally when `node` is missing, a failure in CI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from chorus.server.cli import app
from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server
from chorus.server.verifier import verify

from .conftest import decode, line, resign
from .test_format import AWKWARD, docs_block

pytestmark = pytest.mark.slow  # Node.js processes

VERIFIER = Path(__file__).resolve().parents[2] / "examples" / "node" / "verify-ledger.js"
NODE = shutil.which("node")

if NODE is None:
    if os.environ.get("CI"):
        pytest.fail("node is missing: CI must install Node.js (apt-get install nodejs)", pytrace=False)
    pytest.skip("node is not installed: the JavaScript ledger verifier cannot run", allow_module_level=True)


def node_verify(ledger: Path, key: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run([NODE, str(VERIFIER), str(ledger), "--public-key", str(key), *extra],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def exported(released: Chorus, server: Server, auditor_token: str, tmp_path: Path) -> tuple[Path, Path]:
    """The real server's ledger (releases with float scales, an entry with awkward numbers and
    text), exported by `chorus audit export` over gRPC."""
    released.db.run(lambda tx: released.ledger.append(tx, "test", AWKWARD, released.clock.now()), name="t")
    out, key = tmp_path / "ledger.jsonl", tmp_path / "ledger.pub.pem"
    result = CliRunner().invoke(app, ["audit", "export", "--out", str(out), "--public-key-out", str(key),
                                      "--token", auditor_token], env={"CHORUS_SERVER": server.address})
    assert result.exit_code == 0, result.output
    return out, key


def test_node_reproduces_every_hash_and_signature_of_a_real_export(exported: tuple[Path, Path]) -> None:
    ledger, key = exported
    python = verify.verify_file(ledger, key.read_bytes())
    assert python.ok and python.head is not None and python.kinds["release"] > 0
    result = node_verify(ledger, key, "--expect-head", str(python.head))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OK: {python.entries} entries" in result.stdout and f"head {python.head}" in result.stdout


def _edit_payload(entries: list[dict[str, Any]], target: int) -> None:
    entries[target]["payload"]["by"] = "nobody"


TAMPERING = {
    # name: (change to the decoded entries or lines, rule the verifier must name)
    "payload altered": ("entries", _edit_payload, "hash"),
    "entry deleted": ("lines", lambda lines, t: lines.pop(t), "seq"),
    "entries swapped": ("lines", lambda lines, t: lines.insert(t + 1, lines.pop(t)), "chain"),
    "signature forged": ("lines", lambda lines, t: lines.__setitem__(t, lines[t].replace(
        json.loads(lines[t])["signature"], "0" * 128)), "signature"),
    "time not in the ledger's format, re-signed": (
        "resigned", lambda entries, t: entries[t].update(time=entries[t]["time"][:19] + "Z"), "format"),
    "payload not an object, re-signed": (
        "resigned", lambda entries, t: entries[t].update(payload=None), "format"),
    "body not canonical": ("lines", lambda lines, t: lines.__setitem__(t, json.dumps({
        **json.loads(lines[t]), "body": json.loads(lines[t])["body"].replace(",", ", ", 1)})), "format"),
}


@pytest.mark.parametrize("name", TAMPERING, ids=list(TAMPERING))
def test_node_rejects_a_tampered_export_and_names_the_entry(name: str, exported: tuple[Path, Path],
                                                            released: Chorus, tmp_path: Path) -> None:
    ledger, key = exported
    lines = ledger.read_text(encoding="utf-8").splitlines()
    target = 5
    level, change, rule = TAMPERING[name]
    if level in ("entries", "resigned"):
        entries = [decode(text) for text in lines]
        change(entries, target)
        if level == "resigned":  # chain, hash and signature all consistent: only the format is wrong
            entries = resign(entries, released.ledger.signer, target)
        lines = [line(e) for e in entries]
    else:
        change(lines, target)
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = node_verify(tampered, key)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"(line {target + 1}) [{rule}]" in result.stdout, result.stdout
    assert not verify.verify_file(tampered, key.read_bytes()).ok  # the two verifiers agree


def test_node_catches_a_resigned_history_and_a_truncated_tail_with_the_pinned_head(
        exported: tuple[Path, Path], released: Chorus, tmp_path: Path) -> None:
    ledger, key = exported
    entries = [decode(text) for text in ledger.read_text(encoding="utf-8").splitlines()]
    pin = f"{entries[-1]['seq']}:{entries[-1]['hash']}"
    rewritten = [dict(e) for e in entries]
    rewritten[4] = {**rewritten[4], "time": rewritten[4]["time"].replace("12:", "11:")}
    rewritten = resign(rewritten, released.ledger.signer, 4)  # the operator holds the key
    forged = tmp_path / "forged.jsonl"
    forged.write_text("".join(line(e) + "\n" for e in rewritten), encoding="utf-8")
    assert node_verify(forged, key).returncode == 0  # consistent: only the pin catches it
    result = node_verify(forged, key, "--expect-head", pin)
    assert result.returncode == 1 and "[expect_head]" in result.stdout and "rewritten" in result.stdout
    truncated = tmp_path / "truncated.jsonl"
    truncated.write_text("".join(line(e) + "\n" for e in entries[:-1]), encoding="utf-8")
    result = node_verify(truncated, key, "--expect-head", pin)
    assert result.returncode == 1 and "(end of file) [expect_head]" in result.stdout


def test_node_refuses_a_wrong_key_and_bad_arguments(exported: tuple[Path, Path], tmp_path: Path) -> None:
    ledger, _ = exported
    other = tmp_path / "other.pem"
    other.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    wrong = node_verify(ledger, other)
    assert wrong.returncode == 1 and wrong.stdout.count("[signature]") == len(ledger.read_text().splitlines())
    assert node_verify(ledger, tmp_path / "missing.pem").returncode == 2
    assert node_verify(ledger, other, "--expect-head", "12:nothex").returncode == 2



def test_node_verifies_the_documented_test_vector(tmp_path: Path) -> None:
    ledger, key = tmp_path / "vector.jsonl", tmp_path / "vector.pem"
    ledger.write_text(docs_block("jsonl"), encoding="ascii")
    key.write_text(docs_block("text"), encoding="ascii")
    lines = ledger.read_text().splitlines()
    result = node_verify(ledger, key, "--expect-head", f"2:{json.loads(lines[1])['hash']}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 2 entries" in result.stdout
