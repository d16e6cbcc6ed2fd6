"""The officer's CLI against a real server on port 0: export -> verify round trip, pinning,
budgets and the privacy statement."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from typer.testing import CliRunner

from chorus.server.cli import app
from chorus.server.domain import audit
from chorus.server.front.statement import StatementFormat, render_statement
from chorus.server.model import config
from chorus.server.model.calendar import WindowLength
from chorus.server.privacy.budget import worst_case
from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server
from chorus.server.transport.services.audit import AuditServicer
from tests._policy import SUITE_TOML

from .conftest import WINDOW, decode, line, release

runner = CliRunner()
HEAD = re.compile(r"--expect-head (\d+:[0-9a-f]{64})")


def token_env(server_address: str, token: str, tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "auditor.token"
    path.write_text(token + "\n")
    return {"CHORUS_SERVER": server_address, "CHORUS_TOKEN_FILE": str(path)}


@pytest.fixture
def env(released: Chorus, server: Server, auditor_token: str, tmp_path: Path) -> dict[str, str]:
    return token_env(server.address, auditor_token, tmp_path)


def chorus_cli(env: dict[str, str], *args: str) -> Any:
    return runner.invoke(app, list(args), env=env)


def export(env: dict[str, str], tmp_path: Path, name: str = "ledger.jsonl") -> tuple[Path, Path]:
    out, key = tmp_path / name, tmp_path / "ledger.pub.pem"
    result = chorus_cli(env, "audit", "export", "--out", str(out), "--public-key-out", str(key))
    assert result.exit_code == 0, result.output
    assert re.search(r"exported \d+ entries \(1\.\.\d+\)", result.stderr)
    return out, key


@pytest.mark.slow
def test_export_then_verify_round_trip_and_pin_the_head(env: dict[str, str], released: Chorus,
                                                        tmp_path: Path) -> None:
    ledger, key = export(env, tmp_path)
    lines = ledger.read_text().splitlines()
    assert [decode(line)["seq"] for line in lines] == list(range(1, len(lines) + 1))
    assert key.read_text() == released.ledger.signer.public_key_pem()

    verified = chorus_cli({}, "audit", "verify", str(ledger), "--public-key", str(key))
    assert verified.exit_code == 0, verified.output
    assert f"OK: {len(lines)} entries verified" in verified.stdout
    pin = HEAD.search(verified.stdout)
    assert pin is not None and pin[1] == f"{len(lines)}:{json.loads(lines[-1])['hash']}"

    # The ledger grows; the pinned head still holds in the longer export.
    release(released, "team-blue", "ai.requests", "count")
    longer, _ = export(env, tmp_path, "later.jsonl")
    again = chorus_cli({}, "audit", "verify", str(longer), "--public-key", str(key), "--expect-head", pin[1])
    assert again.exit_code == 0, again.output


@pytest.mark.slow
def test_verify_exits_non_zero_and_names_the_tampered_entry(env: dict[str, str], tmp_path: Path) -> None:
    ledger, key = export(env, tmp_path)
    lines = ledger.read_text().splitlines()
    entry = decode(lines[5])
    entry["payload"]["by"] = "nobody"
    lines[5] = line(entry)
    ledger.write_text("\n".join(lines) + "\n")
    result = chorus_cli({}, "audit", "verify", str(ledger), "--public-key", str(key))
    assert result.exit_code == 1
    assert "FAILED: 1 violation(s)" in result.stdout
    assert f"entry {entry['seq']} (line 6) [hash]" in result.stdout
    assert "Do not pin" in result.stdout and "--expect-head" not in result.stdout


@pytest.mark.slow
def test_verify_catches_a_truncated_tail_with_the_pinned_head(env: dict[str, str], tmp_path: Path) -> None:
    ledger, key = export(env, tmp_path)
    lines = ledger.read_text().splitlines()
    pin = f"{len(lines)}:{json.loads(lines[-1])['hash']}"
    ledger.write_text("\n".join(lines[:-1]) + "\n")
    result = chorus_cli({}, "audit", "verify", str(ledger), "--public-key", str(key), "--expect-head", pin)
    assert result.exit_code == 1
    assert f"entry {len(lines)} (end of file) [expect_head]" in result.stdout


def test_verify_usage_errors_exit_2_without_a_report(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text("")
    missing = chorus_cli({}, "audit", "verify", str(ledger), "--public-key", str(tmp_path / "nope.pem"))
    assert missing.exit_code == 2 and "nope.pem" in missing.stderr
    key = tmp_path / "key.pem"
    key.write_text("not a key")
    bad_key = chorus_cli({}, "audit", "verify", str(ledger), "--public-key", str(key))
    assert bad_key.exit_code == 2 and "PEM" in bad_key.stderr
    public = Ed25519PrivateKey.generate().public_key()
    key.write_bytes(public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    for pin in ("12", "x:" + "0" * 64, "3:abc"):
        bad_pin = chorus_cli({}, "audit", "verify", str(ledger), "--public-key", str(key), "--expect-head", pin)
        assert bad_pin.exit_code == 2 and "SEQ:HASH" in bad_pin.stderr, (pin, bad_pin.stderr)
        assert "entries" not in bad_pin.stdout  # no report


@pytest.mark.slow
def test_export_to_standard_output_from_a_sequence_number(env: dict[str, str]) -> None:
    result = chorus_cli(env, "audit", "export", "--from-seq", "3")
    assert result.exit_code == 0, result.output
    seqs = [decode(text)["seq"] for text in result.stdout.splitlines()]
    assert seqs[0] == 3 and seqs == list(range(3, 3 + len(seqs)))


@pytest.mark.slow
def test_export_resumes_when_the_server_cuts_a_long_stream(released: Chorus, auditor_token: str,
                                                           tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    real = AuditServicer.StreamLedger
    calls: list[str] = []

    def cut_after_three(self: AuditServicer, request: Any, context: grpc.ServicerContext) -> Any:
        calls.append(request.page_token)
        for n, page in enumerate(real(self, request, context)):
            if n == 3:
                context.cancel()  # what the server does at its stream time limit
                return
            yield page

    monkeypatch.setattr(AuditServicer, "StreamLedger", cut_after_three)
    monkeypatch.setattr(audit, "DEFAULT_PAGE_SIZE", 1)  # one entry per message
    server = Server(released, "127.0.0.1:0")
    server.start()
    try:
        env = token_env(server.address, auditor_token, tmp_path)
        ledger, key = export(env, tmp_path)
    finally:
        server.stop(grace=1)
    lines = ledger.read_text().splitlines()
    assert calls == [str(seq) for seq in range(1, len(lines) + 1, 3)]
    verified = chorus_cli({}, "audit", "verify", str(ledger), "--public-key", str(key))
    assert verified.exit_code == 0, verified.output


@pytest.mark.slow
def test_budget_shows_spent_and_remaining_per_team_window(env: dict[str, str]) -> None:
    result = chorus_cli(env, "budget", "--window", WINDOW)
    assert result.exit_code == 0, result.output
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in result.stdout.splitlines()
             if line.startswith("│") and "team-" in line]
    # window, team, spent, bar, remaining, cap, releases
    rows = {row[1]: (row[2], row[4], row[5], row[6]) for row in cells}
    assert rows == {"team-blue": ("0.05", "0.95", "1", "1"), "team-red": ("0.2", "0.8", "1", "4"),
                    "team-tiny": ("0", "1", "1", "0")}
    open_window = chorus_cli(env, "budget", "--window", "2026-11-26")
    assert open_window.exit_code == 0
    assert "budget starts when its window closes" in " ".join(open_window.stdout.split())


@pytest.mark.slow
def test_budget_refuses_an_unknown_window_by_name(env: dict[str, str]) -> None:
    result = chorus_cli(env, "budget", "--window", "2020-01-01")
    assert result.exit_code == 5 and "NOT_FOUND" in result.stderr and "2020-01-01" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["text", "markdown"])
def test_the_privacy_statement_renders_the_live_policy(env: dict[str, str], fmt: str) -> None:
    result = chorus_cli(env, "privacy-statement", "--format", fmt)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())  # undo wrapping
    assert "window 2026-11-26" in text  # the newest window's frozen policy
    assert "at most 200,000 per person per day" in text and "ai.tokens" in text
    assert "epsilon = 1 per day" in text
    assert "at most epsilon = 367 (367 x 1)" in text
    assert "at least 5 people" in text and "for 52 days" in text
    assert "Not even the operator" in text and "Rankings" in text
    assert ("## What nobody can see" in result.stdout) == (fmt == "markdown")


def test_the_statement_counts_54_windows_a_year_for_weeks() -> None:
    toml = SUITE_TOML.replace('length = "day"', 'length = "week"').replace(
        'epsilon_per_window = "1"', 'epsilon_per_window = "0.5"')
    policy = config.parse(tomllib.loads(toml)).policy
    assert policy.window_length is WindowLength.WEEK
    text = " ".join(render_statement("2026-W48", policy, StatementFormat.TEXT).split())
    assert "at most epsilon = 27 (54 x 0.5)" in text and "per week" in text


def test_the_statement_says_what_a_release_at_each_level_costs_each_person() -> None:
    policy = config.parse(tomllib.loads(SUITE_TOML)).policy
    text = " ".join(render_statement("2026-11-25", policy, StatementFormat.TEXT).split())
    assert ("a release about your org, or about any org above your team, or about the whole company, spends the "
            "same epsilon from your team's budget too") in text
    assert "A release about an org you are not in costs you nothing." in text
    assert "everything released about one day still reveals at most epsilon = 1 about you" in text
    assert "A team smaller than 5 is never released on its own, but its people are counted in their org's" in text


def test_the_default_statement_states_the_yearly_worst_case_in_rho_and_as_epsilon_delta() -> None:
    policy = config.load(None).policy
    year = worst_case(policy.budget_per_window, 54)
    text = " ".join(render_statement("2026-W48", policy, StatementFormat.TEXT).split())
    assert "OpenDP's discrete Gaussian mechanism" in text
    assert f"over a year that adds up to at most rho = 7.452 (54 x 0.138) in zero-concentrated differential " \
           f"privacy, which is (epsilon = {year.epsilon:.1f}, delta = 1e-08) differential privacy" in text
    assert "except with probability 1e-08: the worst case, where every budget is spent in full, whichever " \
           "teams and orgs you moved between" in text
    assert "spends the same rho from your team's budget too" in text
