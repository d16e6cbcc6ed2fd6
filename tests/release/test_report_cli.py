"""`chorus report` against a real server: table, csv, json, trend, and its refusals."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from chorus.server.app_context import Chorus
from chorus.server.auth import Role
from chorus.server.cli import app
from chorus.server.clock import FakeClock

from .conftest import WINDOW, Api, contribute

NEXT = "2026-11-26"


@pytest.fixture
def two_days(chorus: Chorus, clock: FakeClock, make_api: Callable[[Chorus], Api]) -> tuple[Api, list[str]]:
    """Two closed day windows with usage in team-red and team-blue; the CLI's base arguments."""
    for _ in range(2):
        contribute(chorus, *((f"user-team-red-{i}", "ai.requests", 100 + i) for i in range(6)),
                   ("user-team-blue-0", "ai.requests", 40), ("user-team-tiny-0", "ai.requests", 7))
        chorus.close_window(chorus.clock.now().date().isoformat(), actor="test")
        clock.advance(timedelta(days=1))
    api = make_api(chorus)
    secret, _ = chorus.tokens.create(Role.ANALYST, "leadership", clock.now(), actor="test")
    return api, ["--server", api.server.address, "--token", secret]


def run(args: list[str], expect: int = 0) -> str:
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    assert result.exit_code == expect, result.output
    return result.output


def test_table_defaults_to_the_latest_closed_window_with_adoption_and_budget(
        two_days: tuple[Api, list[str]]) -> None:
    _, base = two_days
    out = run(["report", *base, "--metric", "ai.requests"])
    assert f"Window {NEXT}: sum per team" in out
    assert "team-red" in out and "team-blue" in out and "adoption" in out and "budget left" in out
    assert "0.9 of 1 (-0.1 now)" in out  # sum of ai.requests + active, 0.05 each
    assert "suppressed: team team-tiny has 3 people on the roster; releases need at least 5" in out
    assert "Charged now: epsilon 0.1 to each of 2 team-window budget(s)" in out
    again = run(["report", *base, "--metric", "ai.requests"])
    assert "0.9 of 1" in again and "now)" not in again
    assert "Nothing was charged: every answer was released before" in again


def test_json_records_match_the_release_and_repeat_identically(two_days: tuple[Api, list[str]]) -> None:
    _, base = two_days
    args = ["report", *base, "--window", WINDOW, "--statistic", "mean", "--statistic", "histogram",
            "--metric", "ai.requests", "--team", "team-red", "--team", "team-tiny", "--format", "json",
            "--epsilon", "0.1"]
    first = json.loads(run(args))
    assert [(r["team"], r["statistic"], r["outcome"]) for r in first] == [
        ("team-red", "mean", "released"), ("team-red", "histogram", "released"),
        ("team-tiny", "", "suppressed")]
    mean, hist, tiny = first
    assert mean["epsilon_charged"] == "0.2" and hist["epsilon_charged"] == "0.1"
    assert hist["histogram_edges"] == [50, 200, 500, 1000] and len(hist["bucket_counts"]) == 5
    assert tiny["message"].startswith("team team-tiny has 3 people")
    assert mean["budget_remaining"] == "0.7" and mean["team_epsilon_charged"] == "0.3"
    assert tiny["team_epsilon_charged"] == "0"
    second = json.loads(run(args))
    for a, b in zip(first, second, strict=True):
        if a["outcome"] == "released":
            assert b["cached"] and b["epsilon_charged"] == "0"
            for key in ("value", "ci95", "bucket_counts", "release_id", "epsilon", "note"):
                assert a[key] == b[key]


def test_csv_has_a_header_and_one_row_per_team_and_estimate(two_days: tuple[Api, list[str]]) -> None:
    _, base = two_days
    rows = list(csv.DictReader(io.StringIO(run(["report", *base, "--statistic", "count", "--metric",
                                                "ai.requests", "--format", "csv"]))))
    assert [(r["window"], r["team"], r["statistic"]) for r in rows] == [
        (NEXT, "team-blue", "count"), (NEXT, "team-red", "count"), (NEXT, "team-tiny", "")]
    assert float(rows[1]["ci95"]) == pytest.approx(60.408, abs=0.01)


def test_trend_shows_one_metric_per_team_over_the_last_windows(two_days: tuple[Api, list[str]]) -> None:
    _, base = two_days
    out = run(["report", *base, "--trend", "5", "--metric", "ai.requests", "--statistic", "count"])
    assert "count of ai.requests per team, last 2 closed window(s)" in out
    assert out.index(WINDOW) < out.index(NEXT)  # oldest first
    assert "suppressed (3 people)" in out
    records = json.loads(run(["report", *base, "--trend", "2", "--metric", "ai.requests", "--statistic",
                              "count", "--format", "json"]))
    assert {(r["window"], r["team"]) for r in records if r["outcome"] == "released"} == {
        (WINDOW, "team-red"), (WINDOW, "team-blue"), (NEXT, "team-red"), (NEXT, "team-blue")}
    assert all(r["cached"] for r in records if r["outcome"] == "released")  # released just above


def test_refusals_are_clear_and_exit_nonzero(two_days: tuple[Api, list[str]]) -> None:
    api, base = two_days
    assert "--trend shows one statistic of one metric" in run(["report", *base, "--trend", "3"], expect=2)
    assert "--epsilon" in run(["report", *base, "--epsilon", "abc"], expect=2)
    out = run(["report", *base, "--metric", "ai.nothing"], expect=1)
    assert "NOT_FOUND" in out and "metric 'ai.nothing' is not in the policy" in out
    out = run(["report", *base, "--statistic", "sum", "--epsilon", "0.3"], expect=1)
    assert "RESOURCE_EXHAUSTED" in out and "team team-red requested epsilon 1.5" in out
    current = api.chorus.clock.now().date().isoformat()
    contribute(api.chorus, ("user-team-red-0", "ai.requests", 1))
    out = run(["report", *base, "--window", current], expect=1)
    assert "FAILED_PRECONDITION" in out and f"window {current} is still open" in out


def test_no_closed_window_yet(chorus: Chorus, make_api: Callable[[Chorus], Api]) -> None:
    api = make_api(chorus)
    secret, _ = chorus.tokens.create(Role.ANALYST, "leadership", chorus.clock.now(), actor="test")
    out = run(["report", "--server", api.server.address, "--token", secret], expect=1)
    assert "no closed window yet" in out
