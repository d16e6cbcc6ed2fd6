"""`chorus roster import` with an org column against a real server: org paths shown, the tree
in the ledger, an ambiguous tree refused with the line, dry runs changing nothing."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chorus.server.cli import app

from .conftest import Running

#: Every test here starts a server, a process or a browser (tests/conftest.py, the fast lane).
pytestmark = pytest.mark.slow

runner = CliRunner()


def chorus(running: Running, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [*args, "--server", running.address, "--token", running.admin_token],
                         env={"COLUMNS": "200"})


def test_roster_import_reads_the_org_column_and_records_the_tree(running: Running, tmp_path) -> None:
    csv = tmp_path / "roster.csv"
    csv.write_text("email,department,division\n" + "".join(f"u{i},platform,engineering/core\n" for i in range(6))
                   + "s0,design,product\ns1,design,product\n")
    dry = chorus(running, "roster", "import", str(csv), "--user-column", "email", "--team-column", "department",
                 "--org-column", "division", "--dry-run")
    assert dry.exit_code == 0, dry.output
    out = " ".join(dry.stdout.split())
    assert "│ design │ product │ 2 │ new team │ no: below k = 5 (counted in product) │" in out
    assert "│ platform │ engineering/core │ 6 │" in out
    rows = running.chorus.db.run(lambda tx: tx.query("SELECT payload FROM ledger WHERE kind = 'roster_import'"),
                                 name="t")
    assert not any("team_orgs" in json.loads(p) for (p,) in rows)  # a dry run records nothing
    done = chorus(running, "roster", "import", str(csv), "--user-column", "email", "--team-column", "department",
                  "--org-column", "division")
    assert done.exit_code == 0, done.output
    (payload,), = running.chorus.db.run(lambda tx: tx.query(
        "SELECT payload FROM ledger WHERE kind = 'roster_import' ORDER BY seq DESC LIMIT 1"), name="t")
    assert json.loads(payload)["team_orgs"] == {"design": "product", "platform": "engineering/core"}


def test_a_team_in_two_orgs_is_refused_naming_the_lines(running: Running, tmp_path) -> None:
    csv = tmp_path / "roster.csv"
    csv.write_text("user,team,org\na,t,eng\nb,t,sales\n")
    result = chorus(running, "roster", "import", str(csv))
    assert result.exit_code == 2
    assert "line 3: team 't' is in org 'sales' here but in 'eng' at line 2; a team belongs to one org" in \
        " ".join(result.output.split())
