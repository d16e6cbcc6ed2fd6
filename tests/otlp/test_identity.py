"""One person, however the HR export, the SDK or the AI tool spells their email: user ids are
compared trimmed and case-folded (emails) in the roster, in `Report` and in OTLP alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from chorus.client import Client
from chorus.server.domain import roster
from chorus.server.model.user_ids import normalise
from tests._roster import ROSTER, import_roster
from tests._usage import person_totals

from ._requests import DELTA, export_grpc, now_ns, point, request, sum_metric
from .conftest import OtlpServer, today

MIN = 60 * 10**9


def test_normalise_trims_and_folds_emails_only() -> None:
    assert normalise("  Dev1@Example.COM ") == "dev1@example.com"
    assert normalise(" E1234 ") == "E1234"  # not an email: case kept


def test_a_roster_refuses_ids_that_differ_only_in_case_naming_both_lines() -> None:
    with pytest.raises(roster.RosterError) as err:
        roster.parse_csv("user,team\nalice@example.com,red\nbob@example.com,red\nALICE@example.com ,blue\n")
    assert str(err.value).startswith("line 4: user appears more than once in the roster (also at line 2;")
    assert "alice" not in str(err.value).lower()
    rows, _ = roster.parse_csv("user,team\n Dev1@Example.com ,red\n")
    assert rows == [("dev1@example.com", "red")]


@pytest.mark.slow
def test_report_and_otlp_count_a_mixed_case_roster_id_as_one_person(tmp_path: Path) -> None:
    server = OtlpServer(tmp_path / "data")
    try:
        people = [("Dev1@Example.com", "team-red"), *[(u, t) for u, t in ROSTER if t == "team-red"][:5]]
        import_roster(server.address, server.admin_token, people)
        with Client(server.address, server.ingest_token, source="t", secure=False) as client:
            client.count("ai.requests", 2, user="dev1@example.com ")
            assert client.flush(30)
        t = now_ns() - 5 * MIN
        reply = export_grpc(server.address, server.ingest_token, request([sum_metric(
            "claude_code.token.usage", [point(100.0, t - MIN, t, user__email="DEV1@example.COM", type="input")],
            DELTA)]))
        assert not reply.HasField("partial_success")
        totals = person_totals(lambda sql, params: server.rows_with(sql, tuple(params)), today(),
                               ["dev1@example.com"])
        assert totals == {("dev1@example.com", "ai.tokens"): 100, ("dev1@example.com", "ai.requests"): 2}
    finally:
        server.stop()
