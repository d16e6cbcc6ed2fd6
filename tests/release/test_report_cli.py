"""`chorus report` against a real server: table, csv, json, trend, and its refusals."""

from __future__ import annotations

import csv
import io
import json
import shlex
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from chorus.server.cli import app
from chorus.server.cli.report import _number
from chorus.server.model.clock import FakeClock
from chorus.server.model.roles import Role
from chorus.server.root import Chorus

from .conftest import WINDOW, Api, contribute

NEXT = "2026-11-26"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def two_days(chorus: Chorus, clock: FakeClock, make_api: Callable[[Chorus], Api]) -> tuple[Api, list[str]]:
    """Two closed day windows with usage in team-red and team-blue; the CLI's base arguments, which
    spend (--release): reading without it is tested in test_reading_is_free_and_prices_the_rest."""
    for _ in range(2):
        contribute(chorus, *((f"user-team-red-{i}", "ai.requests", 100 + i) for i in range(6)),
                   ("user-team-blue-0", "ai.requests", 40), ("user-team-tiny-0", "ai.requests", 7))
        chorus.close_window(chorus.clock.now().date().isoformat(), actor="test")
        clock.advance(timedelta(days=1))
    api = make_api(chorus)
    secret, _ = chorus.tokens.create(Role.ANALYST, "leadership", clock.now(), actor="test")
    return api, ["--server", api.server.address, "--token", secret, "--release", "--yes"]


def run(args: list[str], expect: int = 0, columns: int = 250) -> str:
    result = CliRunner().invoke(app, args, env={"COLUMNS": str(columns)})
    assert result.exit_code == expect, result.output
    return result.output


def grid(out: str) -> list[list[str]]:
    """The body rows of every table printed, spaces collapsed; a blank first cell repeats the one above."""
    rows: list[list[str]] = []
    for line in out.splitlines():
        if line.startswith("│"):
            row = [" ".join(c.split()) for c in line.strip("│").split("│")]
            rows.append([row[0] or rows[-1][0], *row[1:]])
    return rows


def cells(out: str, *first: str) -> list[str]:
    """The cells of the table row that starts with `first` (e.g. metric and team, or team)."""
    return next(r for r in grid(out) if tuple(r[:len(first)]) == first)


def shown(r: dict[str, Any], compact: bool = False) -> str:
    """How the table shows a sum or count record."""
    mark = "*" if r["note"] else ""
    return f"{_number(r['value'], 0, compact)} ± {_number(r['ci95'], 0, compact)}{mark}"


def assert_whole(out: str, columns: int, fits: bool = True) -> None:
    """Nothing cut with an ellipsis, and (when it fits) no line wider than the terminal."""
    assert "…" not in out
    if fits:
        assert max(map(len, out.splitlines())) <= columns, out


@pytest.mark.slow
def test_table_defaults_to_the_latest_closed_window_with_adoption_and_budget(
        two_days: tuple[Api, list[str]]) -> None:
    _, base = two_days
    adoption = ["--statistic", "sum", "--statistic", "adoption"]  # a release releases what is asked
    out = run(["report", *base, *adoption, "--metric", "ai.requests"])
    assert f"Window {NEXT}: sum per team" in out
    assert "team-red" in out and "team-blue" in out and "adoption" in out and "budget left" in out
    assert cells(out, "ai.requests")[1] == "team-blue"  # one row per metric and team
    red = cells(out, "team-red")  # team, people, adoption, budget left, charged now
    assert red[1] == "6" and "% ± " in red[2] and red[3:] == ["0.9 of 1", "0.1"]  # sum + active, 0.05 each
    assert "charged now" in out
    assert "suppressed: team team-tiny has 3 people on the roster; releases need at least 5" in out
    assert "Charged now: epsilon 0.1 to each of 2 team-window budget(s)" in out
    again = run(["report", *base, *adoption, "--metric", "ai.requests"])
    assert cells(again, "team-red")[3:] == ["0.9 of 1"] and "charged now" not in again
    assert "Nothing was charged: reading released numbers is free" in again


@pytest.mark.slow
def test_table_at_80_columns_cuts_no_number(two_days: tuple[Api, list[str]]) -> None:
    """Every metric's sum with adoption and budget fits 80 columns (also the width of a pipe) whole."""
    _, base = two_days
    adoption = ["--statistic", "sum", "--statistic", "adoption"]
    out = run(["report", *base, *adoption], columns=80)
    assert_whole(out, 80)
    records = json.loads(run(["report", *base, *adoption, "--format", "json"]))  # cached: the same numbers
    sums = [r for r in records if r["statistic"] == "sum"]
    assert len(sums) == 8  # 4 metrics x 2 released teams
    for r in sums:
        assert cells(out, r["metric"], r["team"])[2] == shown(r)
    assert cells(out, "team-red")[3:] == ["0.75 of 1", "0.25"]  # 4 sums + active
    assert "Charged now: epsilon 0.25 to each of 2 team-window budget(s)" in out


@pytest.mark.slow
def test_table_rounds_large_numbers_only_when_they_do_not_fit(two_days: tuple[Api, list[str]]) -> None:
    _, base = two_days
    args = ["report", *base, "--statistic", "sum", "--statistic", "mean"]
    narrow, wide = run(args, columns=80), run(args, columns=250)
    assert_whole(narrow, 80)
    tokens = next(r for r in json.loads(run([*args, "--format", "json"]))
                  if r["team"] == "team-blue" and r["metric"] == "ai.tokens" and r["statistic"] == "sum")
    assert abs(tokens["ci95"]) >= 100_000
    assert cells(narrow, "ai.tokens", "team-blue")[2] == shown(tokens, compact=True)
    assert cells(wide, "ai.tokens", "team-blue")[2] == shown(tokens)
    assert "M" in shown(tokens, compact=True) and "M" not in shown(tokens)
    # Too many columns even rounded: the table grows past the terminal rather than cut a number.
    last_resort = run([*args, "--statistic", "histogram"], columns=80)
    assert_whole(last_resort, 80, fits=False)
    assert "histogram" in last_resort and "·" in cells(last_resort, "ai.tokens")[4]


def test_compact_numbers() -> None:
    assert _number(99_999, 0, True) == "99,999" and _number(99_999.25, 1, True) == "99,999.2"
    assert _number(7_932_123, 0, True) == "7.93M" and _number(7_932_123, 0, False) == "7,932,123"
    assert _number(999_950, 0, True) == "1.00M" and _number(123_456.7, 1, True) == "123K"
    assert _number(-2_500_000, 0, True) == "-2.50M" and _number(12_345_678_901, 0, True) == "12.3B"


def test_help_paragraphs_are_left_to_rich_to_wrap() -> None:
    out = run(["report", "--help"])
    assert "Reading is free: without --release it shows what is released and what the rest would cost." in out
    assert "With --release, a first release charges the team-window's privacy budget; repeats are free and " \
           "identical." in out
    assert "A read adds adoption (the share of each team's roster active in the window), in every format; " \
           "--release releases only what is asked" in " ".join(out.replace("│", "").split())


@pytest.mark.slow
def test_json_records_match_the_release_and_repeat_identically(two_days: tuple[Api, list[str]]) -> None:
    _, base = two_days
    args = ["report", *base, "--window", WINDOW, "--statistic", "mean", "--statistic", "histogram",
            "--statistic", "adoption", "--metric", "ai.requests", "--team", "team-red", "--team", "team-tiny",
            "--format", "json", "--epsilon", "0.1"]
    first = json.loads(run(args))
    # Every release paid for, the noisy parts before what is derived from them; adoption as in the table.
    assert [(r["team"], r["statistic"], r["outcome"]) for r in first] == [
        ("team-red", "sum", "released"), ("team-red", "count", "released"), ("team-red", "mean", "released"),
        ("team-red", "histogram", "released"), ("team-red", "active", "released"),
        ("team-red", "adoption", "released"), ("team-tiny", None, "suppressed")]
    total, count, mean, hist, active, adoption, tiny = first
    assert total["epsilon_charged"] == count["epsilon_charged"] == hist["epsilon_charged"] == "0.1"
    assert mean["epsilon_charged"] == "0" and mean["derived_from"] == [total["release_id"], count["release_id"]]
    assert active["epsilon_charged"] == "0.1" and adoption["derived_from"] == [active["release_id"]]
    assert adoption["epsilon_charged"] == "0" and adoption["metric"] is None and 0 <= adoption["value"] <= 1
    # jq-friendly: what a suppressed team was not given is null, never "" (jq '.value // "n/a"' works)
    assert all(tiny[k] is None for k in ("metric", "statistic", "value", "ci95", "cached", "release_id"))
    assert mean["bucket_counts"] is None and mean["cached"] is False
    assert hist["histogram_edges"] == [50, 200, 500, 1000] and len(hist["bucket_counts"]) == 5
    assert tiny["message"].startswith("team team-tiny has 3 people")
    assert mean["budget_remaining"] == "0.6" and mean["team_epsilon_charged"] == "0.4"
    assert tiny["team_epsilon_charged"] == "0"
    second = json.loads(run(args))
    for a, b in zip(first, second, strict=True):
        if a["outcome"] == "released":
            assert b["cached"] and b["epsilon_charged"] == "0"
            for key in ("value", "ci95", "bucket_counts", "release_id", "epsilon", "note"):
                assert a[key] == b[key]


@pytest.mark.slow
def test_csv_has_a_header_and_one_row_per_team_and_estimate(two_days: tuple[Api, list[str]]) -> None:
    _, base = two_days
    rows = list(csv.DictReader(io.StringIO(run(["report", *base, "--statistic", "count", "--statistic", "adoption",
                                                "--metric", "ai.requests", "--format", "csv"]))))
    assert [(r["window"], r["team"], r["statistic"]) for r in rows] == [
        (NEXT, "team-blue", "count"), (NEXT, "team-blue", "active"), (NEXT, "team-blue", "adoption"),
        (NEXT, "team-red", "count"), (NEXT, "team-red", "active"), (NEXT, "team-red", "adoption"),
        (NEXT, "team-tiny", "")]  # adoption (and the active count it is derived from) as in the table
    assert float(rows[3]["ci95"]) == pytest.approx(60.408, abs=0.01)
    assert rows[4]["epsilon_charged"] == "0.05" and rows[5]["epsilon_charged"] == "0"
    assert rows[5]["team_epsilon_charged"] == "0.1"


@pytest.mark.slow
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


@pytest.mark.slow
def test_refusals_are_clear_and_exit_nonzero(two_days: tuple[Api, list[str]]) -> None:
    api, base = two_days
    assert "--trend shows one statistic of one metric" in run(["report", *base, "--trend", "3"], expect=2)
    assert "--epsilon" in run(["report", *base, "--epsilon", "abc"], expect=2)
    out = run(["report", *base, "--metric", "ai.nothing"], expect=5)
    assert "NOT_FOUND" in out and "metric 'ai.nothing' is not in the policy" in out
    out = " ".join(run(["report", *base, "--statistic", "sum", "--statistic", "adoption", "--epsilon", "0.3"],
                       expect=8).split())
    assert "RESOURCE_EXHAUSTED, not sent: this release would overspend the privacy budget: team team-blue in" in out
    assert "needs epsilon 1.5 but has 1 left of 1" in out and "Nothing was released or charged" in out
    current = api.chorus.clock.now().date().isoformat()
    contribute(api.chorus, ("user-team-red-0", "ai.requests", 1))
    out = run(["report", *base, "--window", current], expect=7)
    assert "FAILED_PRECONDITION" in out and f"window {current} is still open" in out


@pytest.mark.slow
def test_no_closed_window_yet(chorus: Chorus, make_api: Callable[[Chorus], Api]) -> None:
    api = make_api(chorus)
    secret, _ = chorus.tokens.create(Role.ANALYST, "leadership", chorus.clock.now(), actor="test")
    out = run(["report", "--server", api.server.address, "--token", secret], expect=7)
    assert "no closed window yet" in out


@pytest.mark.slow
def test_reading_is_free_and_prices_the_rest(two_days: tuple[Api, list[str]]) -> None:
    """Without --release nothing is spent: released numbers are shown, the rest as not released
    with its cost; the same request with --release then spends exactly that."""
    api, base = two_days
    read = [a for a in base if a not in ("--release", "--yes")]
    budgets = api.chorus.db.run(lambda tx: tx.query("SELECT team, window_id, spent_micros FROM budgets"),
                                name="test")
    out = " ".join(run(["report", *read, "--metric", "ai.requests"]).split())
    assert ("not released: sum of ai.requests (epsilon 0.05 per team) for teams team-blue and team-red; "
            "`--release` spends it") in out
    assert "not released: adoption (epsilon 0.05 per team)" in out
    assert "Nothing was charged: reading released numbers is free" in out
    records = json.loads(run(["report", *read, "--metric", "ai.requests", "--format", "json"]))
    assert {(r["team"], r["statistic"], r["outcome"], r["epsilon"]) for r in records if r["team"] == "team-red"} == {
        ("team-red", "sum", "not released", "0.05"), ("team-red", "adoption", "not released", "0.05")}
    assert api.chorus.db.run(lambda tx: tx.query("SELECT team, window_id, spent_micros FROM budgets"),
                             name="test") == budgets
    spent = run(["report", *base, "--statistic", "sum", "--statistic", "adoption", "--metric", "ai.requests"])
    assert "Charged now: epsilon 0.1 to each of 2 team-window budget(s)" in spent
    again = run(["report", *read, "--metric", "ai.requests"])
    assert "not released" not in again and cells(again, "ai.requests", "team-blue")[2] == cells(
        spent, "ai.requests", "team-blue")[2]


def _spent(api: Api) -> list[tuple[str, str, int]]:
    return api.chorus.db.run(lambda tx: tx.query("SELECT team, window_id, spent_micros FROM budgets ORDER BY 1, 2"),
                             name="test")


@pytest.mark.slow
def test_release_without_a_terminal_or_yes_refuses_and_says_why(two_days: tuple[Api, list[str]]) -> None:
    """A script that forgot --yes spends nothing: it is told what would be charged and how to confirm."""
    api, base = two_days
    before = _spent(api)
    no_yes = [a for a in base if a != "--yes"]
    out = " ".join(run(["report", *no_yes, "--statistic", "histogram", "--metric", "ai.requests"], expect=2).split())
    assert ("not sent: This release spends epsilon 0.05 of each of 2 team-window budget(s), once and for good: "
            f"team team-blue ({NEXT}) epsilon 0.05; team team-red ({NEXT}) epsilon 0.05.") in out
    assert "Nothing was released or charged: confirm on a terminal, or pass --yes to spend from a script" in out
    assert _spent(api) == before
    # Nothing to spend (already released): no question, whatever the terminal.
    run(["report", *base, "--statistic", "histogram", "--metric", "ai.requests"])
    assert "Nothing was charged" in run(["report", *no_yes, "--statistic", "histogram", "--metric", "ai.requests"])


@pytest.mark.slow
def test_release_on_a_terminal_shows_the_cost_and_asks(two_days: tuple[Api, list[str]]) -> None:
    """The real `chorus` process on a pseudo-terminal: "n" sends nothing, "y" spends what it said."""
    import os
    import pty
    import shutil
    import subprocess
    import time

    api, base = two_days
    no_yes = [a for a in base if a != "--yes"]
    chorus = shutil.which("chorus")
    assert chorus is not None

    def answer(reply: bytes) -> tuple[int, str]:
        leader, follower = pty.openpty()
        proc = subprocess.Popen([chorus, "report", *no_yes, "--statistic", "histogram", "--metric",
                                 "ai.requests"], stdin=follower, stdout=follower, stderr=follower,
                                env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
        os.close(follower)
        seen = b""
        deadline = time.monotonic() + 60
        while b"Release and spend it?" not in seen and time.monotonic() < deadline:
            seen += os.read(leader, 4096)
        os.write(leader, reply + b"\n")
        code = proc.wait(timeout=60)
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        os.close(leader)
        return code, " ".join(seen.decode().split())

    before = _spent(api)
    code, out = answer(b"n")
    assert code == 2 and "This release spends epsilon 0.05 of each of 2 team-window budget(s)" in out
    assert "not sent: nothing was released or charged" in out and _spent(api) == before
    code, out = answer(b"y")
    assert code == 0 and "Charged now: epsilon 0.05 to each of 2 team-window budget(s)" in out
    assert _spent(api) != before


@pytest.mark.slow
def test_the_jq_example_of_docs_cli_prints_rows_one_can_tell_apart(two_days: tuple[Api, list[str]]) -> None:
    """docs/cli.md's first jq line, run by jq itself over the real output: one distinct row per
    released estimate (adoption's metric is empty: it is a team statistic)."""
    example = next(line for line in (ROOT / "docs" / "cli.md").read_text().splitlines()
                   if line.startswith("chorus report --format json | jq -r "))
    program = shlex.split(example.partition("| jq -r ")[2])[0]
    _, base = two_days
    out = run(["report", *base, "--window", WINDOW, "--metric", "ai.requests", "--metric", "ai.tokens",
               "--statistic", "sum", "--statistic", "count", "--statistic", "adoption", "--format", "json"])
    rows = subprocess.run(["jq", "-r", program], input=out, capture_output=True, text=True, check=True,
                          timeout=30).stdout.splitlines()
    released = [r for r in json.loads(out) if r["outcome"] == "released"]
    assert len(rows) == len(released) > 4 and len(set(rows)) == len(rows)
    assert {tuple(r.split("\t")[:3]) for r in rows} >= {("team-red", "ai.requests", "sum"),
                                                        ("team-red", "ai.tokens", "sum"), ("team-red", "", "adoption")}


@pytest.mark.slow
def test_a_ratio_is_shown_as_a_share_with_its_denominator_and_records_it(two_days: tuple[Api, list[str]]) -> None:
    _, base = two_days
    ratio = ["--statistic", "ratio", "--metric", "ai.requests", "--denominator", "ai.requests",
             "--denominator", "ai.tasks_completed"]
    out = run(["report", *base, *ratio])
    assert "ratio: each metric's sum over the sum of ai.requests + ai.tasks_completed" in " ".join(out.split())
    assert "% ± " in cells(out, "ai.requests", "team-red")[2]  # a share: numerator within its denominator
    assert not any(r[0] == "ai.tasks_completed" for r in grid(out))  # a part, not a row of its own
    records = json.loads(run(["report", *base, *ratio, "--format", "json"]))
    red = next(r for r in records if r["team"] == "team-red" and r["statistic"] == "ratio")
    assert red["denominator"] == ["ai.requests", "ai.tasks_completed"] and len(red["derived_from"]) == 2
    assert red["epsilon_charged"] == "0" and 0 <= red["value"] <= 1
    assert {r["denominator"] for r in records if r["statistic"] != "ratio"} == {None}
    missing = run(["report", *base, "--statistic", "ratio", "--metric", "ai.requests"], expect=2)
    assert "--statistic ratio needs --denominator" in missing
