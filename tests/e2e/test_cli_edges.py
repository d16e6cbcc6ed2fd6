"""The CLI's contract with scripts and operators, against a real server: exit codes, token
sources, --format, --version, help, and the sharp edges of issue 16."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import typer
from typer.testing import CliRunner

from chorus.server.cli import app
from chorus.server.cli._common import STATUS_EXIT, ExitCode
from chorus.server.cli.report import Statistic, _print_trend
from chorus.server.domain import roster
from chorus.server.model.calendar import window_of
from chorus.v1 import ingest_pb2_grpc, release_pb2
from tests._policy import suite_config

from .conftest import ROSTER, TEAMS, Running, create_token, report_request

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def cli(running: Running, *args: str, token: str | None = None, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """`chorus ARGS` against the running server (admin token unless another is given)."""
    auth = [] if env and "CHORUS_TOKEN_FILE" in env else ["--token", token or running.admin_token]
    return runner.invoke(app, [*args, "--server", running.address, *auth], env={"COLUMNS": "200", **(env or {})})


def words(text: str) -> str:
    return " ".join(text.split())


def ingest(running: Running, n: int = 1) -> None:
    with grpc.insecure_channel(running.address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for _ in range(n):
            stub.Report(report_request(), metadata=(("authorization", f"Bearer {running.ingest_token}"),), timeout=30)


def close_current(running: Running) -> str:
    current = window_of(datetime.now(UTC), suite_config().policy.window_length).id
    ingest(running)
    assert cli(running, "window", "close", current, "--yes").exit_code == 0
    return current


# -- exit codes ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_each_exit_code_from_a_real_server(running: Running, tmp_path: Path) -> None:
    analyst = create_token(running.address, running.admin_token, "analyst", "vp")
    codes = {
        ExitCode.USAGE: cli(running, "token", "create", "--role", "ingest", "--name", ""),  # server: INVALID_ARGUMENT
        ExitCode.UNAUTHENTICATED: cli(running, "stats", token="chorus_not-a-real-token"),
        ExitCode.PERMISSION_DENIED: cli(running, "stats", token=running.ingest_token),
        ExitCode.NOT_FOUND: cli(running, "token", "revoke", "no-such-token"),
        ExitCode.ALREADY_EXISTS: cli(running, "token", "create", "--role", "ingest", "--name", "test-ingest"),
        ExitCode.FAILED_PRECONDITION: cli(running, "report", token=analyst),  # nothing closed yet
    }
    current = close_current(running)
    codes[ExitCode.RESOURCE_EXHAUSTED] = cli(running, "report", "--window", current, "--epsilon", "0.3",
                                             "--release", "--yes", token=analyst)
    codes[ExitCode.UNAVAILABLE] = runner.invoke(app, ["stats", "--server", "127.0.0.1:1", "--token", "chorus_x"])
    codes[ExitCode.OK] = cli(running, "stats")
    for expected, result in codes.items():
        assert result.exit_code == expected, (expected, result.output)
    assert "INVALID_ARGUMENT" in codes[ExitCode.USAGE].output
    assert "RESOURCE_EXHAUSTED" in codes[ExitCode.RESOURCE_EXHAUSTED].output
    assert cli(running, "window", "close", "bogus").exit_code == ExitCode.USAGE  # refused before any call
    assert runner.invoke(app, ["stats", "--no-such-flag"]).exit_code == ExitCode.USAGE  # click's own


def test_docs_list_every_exit_code_and_the_statuses_it_stands_for() -> None:
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| (.*) \|$", (ROOT / "docs/cli.md").read_text(), re.M)
    assert {int(code): name for code, name, _ in rows} == {c.value: c.name for c in ExitCode}
    row_text = {int(code): f"{name} {when}" for code, name, when in rows}
    for status, code in STATUS_EXIT.items():
        assert status.name in row_text[code], (status, code)


# -- token sources ------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_sdk_variable_is_not_read_and_the_error_says_so(running: Running, tmp_path: Path) -> None:
    result = runner.invoke(app, ["stats", "--server", running.address], env={"CHORUS_TOKEN": running.ingest_token})
    assert result.exit_code == ExitCode.UNAUTHENTICATED
    assert "CHORUS_TOKEN is set, but it is the SDK's variable and the CLI does not read it" in words(result.output)
    admin_file = tmp_path / "admin.token"
    admin_file.write_text(running.admin_token + "\n")
    both = runner.invoke(app, ["stats", "--server", running.address, "--format", "json"],
                         env={"CHORUS_TOKEN": running.ingest_token, "CHORUS_TOKEN_FILE": str(admin_file)})
    assert both.exit_code == 0, both.output  # the admin file, not the SDK's ingest token


@pytest.mark.slow
def test_token_sources_are_read_in_the_documented_order(running: Running, tmp_path: Path) -> None:
    """docs/cli.md: --token, then --token-file, then $CHORUS_TOKEN_FILE; the first given is used."""
    admin_file, ingest_file = tmp_path / "admin.token", tmp_path / "ingest.token"
    admin_file.write_text(running.admin_token + "\n")
    ingest_file.write_text(running.ingest_token + "\n")
    base = ["token", "list", "--server", running.address, "--format", "json"]
    env = {"COLUMNS": "200", "CHORUS_TOKEN_FILE": str(ingest_file)}
    # --token beats --token-file and the environment: the admin token lists tokens.
    first = runner.invoke(app, [*base, "--token", running.admin_token, "--token-file", str(ingest_file)], env=env)
    assert first.exit_code == 0, first.output
    # --token beats --token-file: the ingest token is refused (an admin call), named by its source.
    refused = runner.invoke(app, [*base, "--token", running.ingest_token, "--token-file", str(admin_file)])
    assert refused.exit_code == ExitCode.PERMISSION_DENIED and "(token from --token)" in words(refused.output)
    # --token-file beats $CHORUS_TOKEN_FILE, both ways round.
    assert runner.invoke(app, [*base, "--token-file", str(admin_file)], env=env).exit_code == 0
    flipped = runner.invoke(app, [*base, "--token-file", str(ingest_file)],
                            env={**env, "CHORUS_TOKEN_FILE": str(admin_file)})
    assert flipped.exit_code == ExitCode.PERMISSION_DENIED
    assert f"(token from --token-file {ingest_file})" in words(flipped.output)


@pytest.mark.slow
def test_a_refused_token_is_named_by_its_source(running: Running, tmp_path: Path) -> None:
    ingest_file = tmp_path / "ingest.token"
    ingest_file.write_text(running.ingest_token)
    result = cli(running, "token", "list", env={"CHORUS_TOKEN_FILE": str(ingest_file)})
    assert result.exit_code == ExitCode.PERMISSION_DENIED
    assert f"(token from CHORUS_TOKEN_FILE={ingest_file})" in words(result.output)
    assert running.ingest_token not in result.output


@pytest.mark.slow
def test_a_binary_token_file_is_named_as_not_a_token(running: Running, tmp_path: Path) -> None:
    binary = tmp_path / "key.der"
    binary.write_bytes(b"\x30\x82\xff\xfe")
    result = cli(running, "stats", env={"CHORUS_TOKEN_FILE": str(binary)})
    assert result.exit_code == ExitCode.UNAUTHENTICATED and "does not hold a token" in words(result.output)


@pytest.mark.slow
def test_a_csv_given_as_token_file_is_not_sent(running: Running, tmp_path: Path) -> None:
    roster_file = tmp_path / "roster.csv"
    roster_file.write_text("user,team\nalice@example.com,red\n")
    result = cli(running, "stats", env={"CHORUS_TOKEN_FILE": str(roster_file)})
    assert result.exit_code == ExitCode.UNAUTHENTICATED
    assert "does not hold a token (one line starting with chorus_)" in words(result.output)
    assert "Illegal header" not in result.output and "alice" not in result.output


# -- formats ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_listing_command_speaks_json_and_csv(running: Running, tmp_path: Path) -> None:
    current = close_current(running)
    assert cli(running, "token", "revoke", "test-ingest").exit_code == 0
    analyst = create_token(running.address, running.admin_token, "analyst", "vp")
    auditor = create_token(running.address, running.admin_token, "auditor", "officer")
    assert cli(running, "report", "--window", current, token=analyst).exit_code == 0
    commands = {("stats",): None, ("token", "list"): None, ("window", "list"): None,
                ("budget",): auditor, ("report", "--window", current): analyst}
    for args, token in commands.items():
        as_json = cli(running, *args, "--format", "json", token=token)
        assert as_json.exit_code == 0, (args, as_json.output)
        records = json.loads(as_json.stdout)
        as_csv = cli(running, *args, "--format", "csv", token=token)
        rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
        assert records and len(rows) == len(records), args
        assert list(rows[0]) == list(records[0]), args  # the same columns in the same order
        assert all("" not in r.values() for r in records), args  # absent is null, never ""
        for r, row in zip(records, rows, strict=True):
            for key, value in r.items():
                if isinstance(value, bool):
                    assert row[key] == ("true" if value else "false"), (args, key)
                elif value is None:
                    assert row[key] == "", (args, key)
    tokens = {r["name"]: r for r in json.loads(cli(running, "token", "list", "--format", "json").stdout)}
    assert tokens["test-ingest"]["active"] is False and tokens["test-ingest"]["revoked"]
    assert tokens["vp"]["active"] is True and tokens["vp"]["revoked"] is None
    stats = {r["counter"]: r["value"] for r in json.loads(cli(running, "stats", "--format", "json").stdout)}
    assert stats["batches"] >= 1 and isinstance(stats["contributions_accepted"], int)


def jq(program: str, text: str) -> str:
    if shutil.which("jq") is None:
        if os.environ.get("CI"):
            pytest.fail("jq is required in CI")
        pytest.skip("jq is not installed")
    return subprocess.run(["jq", "-r", program], input=text, capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
def test_the_documented_jq_filters_work(running: Running) -> None:
    current = close_current(running)
    analyst = create_token(running.address, running.admin_token, "analyst", "vp")
    report = cli(running, "report", "--format", "json", "--statistic", "sum", "--statistic", "adoption",
                 "--release", "--yes", token=analyst).stdout
    lines = jq('.[] | select(.outcome == "released") | [.team, .statistic, .value] | @tsv', report).splitlines()
    assert {tuple(line.split("\t")[:2]) for line in lines} >= {("team-red", "sum"), ("team-blue", "adoption")}
    windows = cli(running, "window", "list", "--format", "json").stdout
    assert jq('.[] | select(.state == "open") | .window', windows) == ""
    closed = int(jq(".[0].closed_at | fromdate", windows))
    assert abs(closed - datetime.now(UTC).timestamp()) < 120
    assert jq(".[0].window", windows).strip() == current
    tokens = cli(running, "token", "list", "--format", "json").stdout
    assert jq('[.[] | select(.revoked == null)] | length', tokens).strip() == "3"


@pytest.mark.slow
def test_report_trend_before_any_window_closed(running: Running) -> None:
    analyst = create_token(running.address, running.admin_token, "analyst", "vp")
    result = cli(running, "report", "--trend", "8", "--metric", "ai.requests", token=analyst)
    assert result.exit_code == ExitCode.FAILED_PRECONDITION, result.output
    assert "no closed window yet" in words(result.output)
    assert not isinstance(result.exception, TypeError)


# -- window list, token create, version, help ---------------------------------------------------


@pytest.mark.slow
def test_window_list_shows_when_an_early_closed_window_actually_closed(running: Running) -> None:
    current = close_current(running)
    (window,) = json.loads(cli(running, "window", "list", "--format", "json").stdout)
    assert window["window"] == current and window["state"] == "closed"
    closed_at = datetime.fromisoformat(window["closed_at"])
    assert closed_at < datetime.fromisoformat(window["closes_at"])  # closed early, by hand
    assert abs((datetime.now(UTC) - closed_at).total_seconds()) < 120
    assert f"closed {closed_at:%Y-%m-%d %H:%M}" in cli(running, "window", "list").stdout


@pytest.mark.slow
def test_token_create_prints_only_the_token_on_stdout(running: Running) -> None:
    result = cli(running, "token", "create", "--role", "analyst", "--name", "piped")
    assert result.exit_code == 0
    (line,) = result.stdout.splitlines()
    assert re.fullmatch(r"chorus_[\w-]+", line)
    assert "piped" in result.stderr and line not in result.stderr


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and re.fullmatch(r"chorus \d+\.\d+\.\d+\S*\n", result.stdout)


@pytest.mark.slow
def test_help_shows_no_placeholder_on_flags() -> None:
    root = typer.main.get_command(app)

    def commands(cmd: Any, path: list[str]) -> list[list[str]]:
        found = [path]
        if hasattr(cmd, "commands"):  # a group
            for name, sub in cmd.commands.items():
                found += commands(sub, [*path, name])
        return found

    paths = commands(root, [])
    assert ["backup"] in paths and ["roster", "import"] in paths
    for path in paths:
        out = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).stdout
        assert "<bool>" not in out, path
        assert "--help" in out


# -- roster import ------------------------------------------------------------------------------


@pytest.mark.slow
def test_roster_import_of_latin1_names_the_line_and_accepts_encoding(running: Running, tmp_path: Path) -> None:
    hr = tmp_path / "roster.csv"
    hr.write_bytes(("user,team\n" + "".join(f"{u},{t}\n" for u, t in ROSTER[:3]) + "jos\u00e9@example.com,team-red\n")
                   .encode("latin-1"))
    refused = cli(running, "roster", "import", str(hr))
    assert refused.exit_code == ExitCode.USAGE and isinstance(refused.exception, SystemExit)  # no traceback
    message = words(refused.output)
    assert "line 5, column 4: byte 0xe9 is not valid utf-8" in message and "--encoding" in message
    assert "jos" not in message
    accepted = cli(running, "roster", "import", str(hr), "--encoding", "latin-1")
    assert accepted.exit_code == 0, accepted.output
    assert "jos\u00e9@example.com" in dict(running.chorus.db.run(
        lambda tx: tx.query("SELECT user_id, team FROM roster"), name="t"))


@pytest.mark.slow
def test_roster_import_reads_named_columns_of_an_hr_export(running: Running, tmp_path: Path) -> None:
    hr = tmp_path / "hr.csv"
    hr.write_text("Employee ID,Email,Department,Cost centre,,\n" +  # spreadsheets add unnamed columns
                  "".join(f"{i},{u},{t},cc-{i},,\n" for i, (u, t) in enumerate(ROSTER)))
    plain = cli(running, "roster", "import", str(hr))
    assert plain.exit_code == ExitCode.USAGE
    assert "has no column named 'user', 'team'" in words(plain.output) and "--user-column" in words(plain.output)
    result = cli(running, "roster", "import", str(hr), "--user-column", "email", "--team-column", "department")
    assert result.exit_code == 0, result.output
    assert f"Roster replaced: {len(ROSTER)} people in {len(TEAMS)} teams" in words(result.stdout)


@pytest.mark.slow
def test_roster_dry_run_shows_the_change_and_changes_nothing(running: Running, tmp_path: Path) -> None:
    before = running.chorus.db.run(roster.team_sizes, name="t")
    head = running.chorus.db.run(lambda tx: tx.query("SELECT seq FROM ledger_head"), name="t")
    new = [(u, t) for u, t in ROSTER if u != "user-team-red-0"]  # red shrinks by one; blue is removed
    new = [(u, t) for u, t in new if t != "team-blue"] + [(f"user-green-{i}", "team-green") for i in range(7)]
    path = tmp_path / "next.csv"
    path.write_text("user,team\n" + "".join(f"{u},{t}\n" for u, t in new))
    result = cli(running, "roster", "import", str(path), "--dry-run")
    assert result.exit_code == 0, result.output
    out = words(result.stdout)
    assert "Dry run, nothing changed: the roster would have 12 people in 2 teams" in out
    assert "would change: 1 team(s) added, 1 removed, 1 resized; 7 people added, 6 removed" in out
    assert "-1 (was 6)" in out and "removed (was 5)" in out and "new team" in out
    assert running.chorus.db.run(roster.team_sizes, name="t") == before
    assert running.chorus.db.run(lambda tx: tx.query("SELECT seq FROM ledger_head"), name="t") == head  # no entry
    assert "changed: 1 team(s) added" in words(cli(running, "roster", "import", str(path)).stdout)
    assert running.chorus.db.run(roster.team_sizes, name="t") == {"team-green": 7, "team-red": 5}


# -- serve on a busy port -----------------------------------------------------------------------


@pytest.mark.slow
def test_serve_on_a_busy_port_prints_one_line_and_touches_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir",
                               str(tmp_path / "data"), "--listen", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=60, env={"COLUMNS": "300", "PATH": ""})
    assert proc.returncode == ExitCode.UNAVAILABLE
    assert proc.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert "add_port" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("csv_text", ["user\nalice\n", "name,dept\nalice,red\n"])
def test_a_headerless_or_unnamed_roster_never_echoes_a_row(csv_text: str) -> None:
    with pytest.raises(roster.RosterError) as err:
        roster.parse_csv(csv_text)
    assert "alice" not in str(err.value)


def test_roster_errors_name_the_file_line_after_blank_lines() -> None:
    with pytest.raises(roster.RosterError, match=r"^line 5: user appears more than once"):
        roster.parse_csv("user,team\na,red\n\n\na,blue\n")
    with pytest.raises(roster.RosterError, match="names 'team' more than once"):
        roster.parse_csv("user,team,team\na,red,blue\n")


def test_a_trend_whose_windows_are_all_past_retention_prints_an_empty_table(
        capsys: pytest.CaptureFixture[str]) -> None:
    _print_trend([release_pb2.ReleaseResponse(window="2025-01-01")], Statistic.SUM)  # raised TypeError before
    assert "sum of activity per team, last 1 closed window(s)" in words(capsys.readouterr().out)
