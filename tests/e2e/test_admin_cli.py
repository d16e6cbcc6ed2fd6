"""The operator's commands against a real server: windows, roster, tokens, connection errors."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from chorus.server.cli import app
from chorus.server.model.calendar import window_of
from chorus.server.store import SQLITE_FILE
from tests._policy import suite_config

from .conftest import Running

runner = CliRunner()


def chorus(running: Running, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [*args, "--server", running.address, "--token", running.admin_token],
                         env={"COLUMNS": "200"})


@pytest.mark.slow
def test_window_list_and_close_guard_the_current_window(running: Running) -> None:
    current = window_of(datetime.now(UTC), suite_config().policy.window_length).id
    running.chorus.closer.tick()  # opens the current window
    listed = chorus(running, "window", "list")
    assert listed.exit_code == 0 and current in listed.stdout and "open" in listed.stdout

    refused = chorus(running, "window", "close", current)
    assert refused.exit_code == 2
    assert "closing it now rejects every later contribution for it as late. Pass --yes" in " ".join(
        refused.output.split())

    closed = chorus(running, "window", "close", current, "--yes")
    assert closed.exit_code == 0 and f"window {current} closed:" in closed.stdout
    again = chorus(running, "window", "close", current, "--yes")
    assert again.exit_code == 0 and "was already closed; nothing changed" in again.stdout


@pytest.mark.slow
def test_window_close_names_a_malformed_or_unknown_window(running: Running) -> None:
    bad = chorus(running, "window", "close", "bogus")
    assert bad.exit_code == 2 and "neither a day (YYYY-MM-DD) nor an ISO week" in " ".join(bad.output.split())
    unknown = chorus(running, "window", "close", "2020-W01")
    assert unknown.exit_code == 5 and "NOT_FOUND" in unknown.output and "2020-W01" in unknown.output


@pytest.mark.slow
def test_roster_import_accepts_a_spreadsheet_bom_and_marks_small_teams(running: Running, tmp_path) -> None:
    csv = tmp_path / "roster.csv"
    csv.write_text("\ufeffuser,team\n" + "".join(f"user-big-{i},big\n" for i in range(6)) + "user-solo-0,solo\n",
                   encoding="utf-8")
    result = chorus(running, "roster", "import", str(csv))
    out = " ".join(result.stdout.split())
    assert result.exit_code == 0, result.output
    assert "Roster replaced: 7 people in 2 teams" in out
    assert "no: below k = 5" in out


@pytest.mark.slow
def test_token_names_are_never_reused(running: Running, tmp_path) -> None:
    assert chorus(running, "token", "create", "--role", "ingest", "--name", "tool",
                  "--out", str(tmp_path / "t1")).exit_code == 0
    assert chorus(running, "token", "revoke", "tool").exit_code == 0
    again = chorus(running, "token", "create", "--role", "ingest", "--name", "tool", "--out", str(tmp_path / "t2"))
    assert again.exit_code == 6 and "names are never reused" in " ".join(again.output.split())


def test_a_server_that_is_not_running_gets_a_hint(tmp_path) -> None:
    result = runner.invoke(app, ["stats", "--server", "127.0.0.1:1", "--token", "chorus_x"])
    assert result.exit_code == 9
    assert "Is `chorus serve` running and listening on 127.0.0.1:1?" in " ".join(result.output.split())


@pytest.mark.slow
def test_revoking_an_unknown_token_is_not_found(running: Running) -> None:
    result = chorus(running, "token", "revoke", "no-such-token")
    assert result.exit_code == 5 and "NOT_FOUND" in result.output and "no-such-token" in result.output


@pytest.mark.slow
def test_stats_shows_a_pending_shred_until_it_completes(running: Running) -> None:
    current = window_of(datetime.now(UTC), suite_config().policy.window_length).id
    running.chorus.closer.tick()  # opens the current window
    assert "shreds: complete" in chorus(running, "stats").stdout
    reader = sqlite3.connect(running.chorus.data_dir / SQLITE_FILE, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM windows").fetchall()  # e.g. a sqlite3 shell left open
    try:
        assert chorus(running, "window", "close", current, "--yes").exit_code == 0
        shown = chorus(running, "stats")
        assert shown.exit_code == 0 and "pending shred" in shown.stdout and f"window {current}" in shown.stdout
    finally:
        reader.execute("ROLLBACK")
        reader.close()
    assert running.chorus.shredder.attempt()
    assert "shreds: complete" in chorus(running, "stats").stdout
