"""The dashboard's parts on their own: SVG charts, the table model and CSV, the session store."""

from __future__ import annotations

import csv
import io
import math
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest

from chorus.server.dashboard import answers, charts
from chorus.server.dashboard.charts import Bar, BudgetBar, Interval
from chorus.server.dashboard.sessions import SessionStore
from chorus.server.dashboard.tables import Column, DataTable, text
from chorus.server.model import hierarchy
from chorus.server.model.clock import FakeClock
from chorus.server.model.roles import Role
from chorus.v1 import common_pb2, release_pb2

SVG = "{http://www.w3.org/2000/svg}"


def parse(markup: str) -> ET.Element:
    return ET.fromstring(str(markup))


def accessible(svg: ET.Element, chart_id: str, title: str) -> None:
    assert svg.get("role") == "img"
    assert svg.get("aria-labelledby") == f"{chart_id}-title {chart_id}-desc"
    assert svg.find(f"{SVG}title").text == title  # type: ignore[union-attr]
    assert svg.find(f"{SVG}title").get("id") == f"{chart_id}-title"  # type: ignore[union-attr]
    assert svg.find(f"{SVG}desc").get("id") == f"{chart_id}-desc"  # type: ignore[union-attr]


def test_interval_bars_draw_one_bar_and_whisker_per_released_row_and_a_note_otherwise() -> None:
    rows = [Bar("team-a", Interval(40.0, 10.0)), Bar("team-b", Interval(5.0, 20.0)),
            Bar("team-<tiny>", None, "suppressed: too small")]
    svg = parse(charts.interval_bars("c1", "Total & more", "desc <here>", rows))
    accessible(svg, "c1", "Total & more")
    assert len(svg.findall(f"{SVG}rect[@class='bar']")) == 2
    whiskers = svg.findall(f"{SVG}path[@class='ci']")
    assert len(whiskers) == 2
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert "team-<tiny>" in texts and "suppressed: too small" in texts  # escaped, then parsed back
    # The whisker of team-b is cut at 0: it starts where the zero line is.
    zero = float(svg.find(f"{SVG}line[@class='zero']").get("x1"))  # type: ignore[union-attr, arg-type]
    assert whiskers[1].get("d", "").startswith(f"M{zero:.1f},")


def test_a_long_label_is_shortened_but_keeps_its_full_text_as_a_tooltip() -> None:
    name = "platform-infrastructure-reliability"
    svg = parse(charts.interval_bars("c2", "t", "d", [Bar(name, Interval(1.0, 0.5))]))
    label = next(t for t in svg.iter(f"{SVG}text") if t.find(f"{SVG}title") is not None)
    assert label.find(f"{SVG}title").text == name  # type: ignore[union-attr]
    assert label.find(f"{SVG}title").tail.endswith("…")  # type: ignore[union-attr]


def test_trend_panel_breaks_the_band_where_a_window_has_no_value() -> None:
    points = [Interval(1, 1), Interval(2, 1), None, Interval(3, 1), Interval(2, 1)]
    svg = parse(charts.trend_panel("c3", "t", "d", ["w1", "w2", "w3", "w4", "w5"], points, [0.0, 4.0]))
    accessible(svg, "c3", "t")
    assert len(svg.findall(f"{SVG}polygon[@class='band']")) == 2
    assert len(svg.findall(f"{SVG}circle[@class='point']")) == 4


@pytest.mark.parametrize("points", [[Interval(5, 2)], [None, Interval(5, 2), None]])
def test_a_window_standing_alone_keeps_its_interval_as_a_whisker(points: list[Interval | None]) -> None:
    """A band through one point has zero width: the 95% interval would vanish."""
    svg = parse(charts.trend_panel("c6", "t", "d", [f"w{i}" for i in range(len(points))], points, [0.0, 8.0]))
    assert svg.findall(f"{SVG}polygon") == []
    (whisker,) = svg.findall(f"{SVG}path[@class='ci']")
    ys = [float(v) for v in re.findall(r"[MV][\d.]+,([\d.]+)|V([\d.]+)", whisker.get("d", "")) for v in v if v]
    assert max(ys) - min(ys) > 10  # from 3 to 7 on a 0..8 axis: a visible height
    empty = parse(charts.trend_panel("c4", "t", "d", ["w1", "w2"], [None, None], [0.0]))
    assert "nothing released in these windows" in [t.text for t in empty.iter(f"{SVG}text")]


def test_histogram_labels_each_bar_with_its_range() -> None:
    buckets = [Interval(3, 2), Interval(8, 2), Interval(1, 2)]
    svg = parse(charts.histogram_bars("c5", "t", "d", buckets, [10_000, 50_000]))
    assert len(svg.findall(f"{SVG}rect[@class='bar']")) == 3
    assert {"under 10K", "10K-50K", "50K+"} <= {t.text for t in svg.iter(f"{SVG}text")}
    assert charts.bucket_labels([25_000, 100_000, 250_000, 400_000]) == [
        "under 25K", "25K-100K", "100K-250K", "250K-400K", "400K+"]


def test_budget_bars_fill_the_spent_share_of_the_cap() -> None:
    svg = parse(charts.budget_bars("c6", "t", "d", [BudgetBar("a", 1.0, 0.25, "0.25 of 1 spent"),
                                                    BudgetBar("b", 1.0, 1.5, "1.5 of 1 spent")]))
    caps = svg.findall(f"{SVG}rect[@class='cap']")
    spent = svg.findall(f"{SVG}rect[@class='spent']")
    width = float(caps[0].get("width"))  # type: ignore[arg-type]
    assert float(spent[0].get("width")) == pytest.approx(width / 4, abs=0.1)  # type: ignore[arg-type]
    # Overspent (impossible, but drawn safely): never past the cap.
    assert float(spent[1].get("width")) == pytest.approx(width, abs=0.1)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "ceiling", "low", "high"), [
    (10.0, math.inf, 7.0, 13.0), (1.0, math.inf, 0.0, 4.0), (0.9, 1.0, 0.0, 1.0)])
def test_intervals_are_cut_at_the_range_a_value_can_take(value: float, ceiling: float, low: float,
                                                          high: float) -> None:
    interval = Interval(value, 3.0 if value > 1 else (3.0 if ceiling == math.inf else 2.0), ceiling)
    assert (interval.low, interval.high) == (low, high)


@pytest.mark.parametrize(("value", "number", "compact", "percent"), [
    (0.0, "0", "0", "0.0%"), (12345.0, "12,345", "12.3K", "1234500.0%"), (0.4231, "0.423", "0.423", "42.3%"),
    (1866.5, "1,866.5", "1.87K", "186650.0%"), (2_500_000.0, "2,500,000", "2.5M", "250000000.0%")])
def test_number_formats(value: float, number: str, compact: str, percent: str) -> None:
    assert charts.format_number(value) == number
    assert charts.format_compact(value) == compact
    assert charts.format_percent(value) == percent


def test_csv_keeps_full_precision_and_defuses_spreadsheet_formulas() -> None:
    table = DataTable("t", [text("team"), Column("value"), text("note")])
    table.add("=HYPERLINK(\"http://x\")", 0.1 + 0.2, None)
    table.add("@team", 12.0, "-negative noisy value shown as 0")
    table.add("team-b", -3.5, "+1")
    rows = list(csv.reader(io.StringIO(table.to_csv())))
    assert rows[0] == ["team", "value", "note"]
    assert rows[1] == ["'=HYPERLINK(\"http://x\")", repr(0.1 + 0.2), ""]
    assert rows[2] == ["'@team", "12", "'-negative noisy value shown as 0"]
    assert rows[3] == ["team-b", "-3.5", "'+1"]  # numbers stay numbers, even negative ones
    assert table.display_rows()[1] == ["@team", "12", "-negative noisy value shown as 0"]
    with pytest.raises(ValueError, match="row has 2 cells"):
        table.add("x", 1)


def test_sessions_expire_when_idle_or_too_old_and_the_store_is_bounded() -> None:
    clock = FakeClock(datetime(2026, 11, 26, 9, 0, tzinfo=UTC))
    store = SessionStore(clock, idle=timedelta(minutes=30), lifetime=timedelta(hours=2), capacity=3)
    first = store.create("secret-token-1", Role.ANALYST)
    assert "secret-token-1" not in repr(first)
    assert store.get(first.id) is first and first.csrf_ok(first.csrf) and not first.csrf_ok("nope")
    for _ in range(4):  # requests every 25 minutes keep it from going idle...
        clock.advance(timedelta(minutes=25))
        assert store.get(first.id) is not None
    clock.advance(timedelta(minutes=25))  # ...but not past its lifetime: 2 h 05 min after sign-in
    assert store.get(first.id) is None
    idle = store.create("t2", Role.AUDITOR)
    clock.advance(timedelta(minutes=31))
    assert store.get(idle.id) is None
    ids = [store.create(f"t{i}", Role.ANALYST).id for i in range(4)]
    assert len(store) == 3 and store.get(ids[0]) is None and store.get(ids[-1]) is not None
    assert store.get(None) is None and store.get("unknown") is None
    store.delete(ids[-1])
    assert store.get(ids[-1]) is None


def test_the_interval_of_a_total_or_a_change_covers_at_least_95_percent() -> None:
    """The noise of independent releases adds: drawn with OpenDP itself, the combined interval of
    a change between two windows (two teams each) holds the sum of four noises at least 95% of
    the time, and is narrower than adding the four intervals."""
    from chorus.server.privacy import mechanisms
    from chorus.server.privacy.epsilon import Epsilon

    mech = mechanisms.calibrate(1, Epsilon.parse("0.5"))
    terms = [(mech.scale, 1.0), (mech.scale, 1.0), (mech.scale, -1.0), (mech.scale, -1.0)]
    half = mechanisms.combined_ci95(terms)
    assert mech.ci95 < half < 4 * mech.ci95
    noise = [v - 1000 for v in mech.release([1000] * 4 * 4000)]
    sums = [noise[i] + noise[i + 1] - noise[i + 2] - noise[i + 3] for i in range(0, len(noise), 4)]
    assert sum(abs(s) < half for s in sums) / len(sums) >= 0.95
    assert mechanisms.combined_ci95([(mech.scale, 1.0)]) == mech.ci95  # one release: its own interval


def test_a_released_company_mean_is_a_point_of_its_trend() -> None:
    """A mean is post-processing (no release id of its own): the company's is drawn where it is released."""
    company = release_pb2.TeamRelease(team=hierarchy.COMPANY, level=release_pb2.NODE_LEVEL_COMPANY, estimates=[
        release_pb2.Estimate(metric="ai.tokens", statistic=common_pb2.STATISTIC_MEAN, value=5200.0, ci95=300.0,
                             derived_from=["sum-id", "count-id"])])
    replies = [release_pb2.ReleaseResponse(window="W1", teams=[company]), None]
    found = answers.points(["W1", "W2"], replies, hierarchy.COMPANY, None, common_pb2.STATISTIC_MEAN, "ai.tokens",
                           500_000.0)
    assert found == [Interval(5200.0, 300.0, 500_000.0), None]


def test_headline_change_compares_the_teams_released_in_both_windows() -> None:
    from chorus.server.dashboard import headline
    from chorus.server.privacy import sums
    from chorus.v1 import common_pb2, release_pb2

    def team(name: str, total: float, active: float, roster: int) -> release_pb2.TeamRelease:
        return release_pb2.TeamRelease(team=name, roster_size=roster, estimates=[
            release_pb2.Estimate(metric="ai.tokens", statistic=common_pb2.STATISTIC_SUM, value=total,
                                 noisy_value=total, scale=1e5, release_id=f"{name}-sum"),
            release_pb2.Estimate(statistic=common_pb2.STATISTIC_ACTIVE, value=active, noisy_value=active,
                                 scale=2.0, release_id=f"{name}-active")])

    now = [team("red", 3e6, 8, 10), team("blue", 1e6, 5, 10), team("new", 5e5, 2, 5)]
    before = [team("red", 2e6, 6, 10), team("blue", 1e6, 5, 10)]
    tile = headline.company(now, before, "W1", "ai.tokens")
    assert tile is not None and tile.value == "4.5M"  # all three teams this window
    assert tile.change == "+1M since W1"  # red and blue only: the new team is no change
    assert "the change compares the 2 team(s) released in both" in tile.basis
    assert "a real change" in tile.verdict  # 1M against a noise of about 0.7M
    adoption = headline.company(now, before, "W1")
    assert adoption is not None and adoption.value == "60.0%" and adoption.change == "+10.0 points since W1"
    half = sums.ci95([(2.0, 1 / 20, sums.DISCRETE_LAPLACE)] * 2 + [(2.0, -1 / 20, sums.DISCRETE_LAPLACE)] * 2)
    assert adoption.change_interval == (f"95% interval of the change {(0.1 - half) * 100:+.1f} points to "
                                        f"{(0.1 + half) * 100:+.1f} points")
    assert "could be no change" in adoption.verdict
    assert headline.ranking([("a", Interval(10, 1)), ("b", Interval(5, 1))]).endswith("ranked as shown.")
    assert headline.ranking([("a", Interval(10, 4)), ("b", Interval(5, 4))]) == (
        "Every row's 95% interval overlaps its neighbour's: these numbers do not rank them.")
    assert headline.overlapping_pairs([("a", Interval(10, 4)), ("b", Interval(5, 4))]) == [("a", "b")]


def test_a_team_number_says_something_within_a_quarter_of_its_range() -> None:
    """One rule for the overview and the trends: adoption within ±25 points, a count within a
    quarter of the roster, a mean within a quarter of the metric's bound, a total within both."""
    metric = release_pb2.Metric(name="ai.tokens", max_per_user=1_000)
    for statistic, roster, edge in ((common_pb2.STATISTIC_ADOPTION, 45, 0.25), (common_pb2.STATISTIC_COUNT, 40, 10.0),
                                    (common_pb2.STATISTIC_MEAN, 40, 250.0), (common_pb2.STATISTIC_SUM, 40, 10_000.0)):
        assert answers.says_something(release_pb2.Estimate(ci95=edge), statistic, roster, metric)
        assert not answers.says_something(release_pb2.Estimate(ci95=edge * 1.01), statistic, roster, metric)
    assert answers.limit_words(common_pb2.STATISTIC_ADOPTION) == "±25 points"


def test_too_few_people_are_named_once_per_org_they_are_counted_in() -> None:
    tree = hierarchy.Hierarchy.of([("a-1", "eng", 8), ("a-2", "eng", 8), ("b-1", "sales", 8), ("c", "", 8)])
    assert answers.too_few(["a-2", "b-1", "a-1", "c"], tree) == [
        "Too few people for a weekly number, counted in the company: c",
        "Too few people for a weekly number, counted in eng: a-1, a-2",
        "Too few people for a weekly number, counted in sales: b-1"]


def test_an_outcome_tile_draws_the_released_ratio_and_compares_intervals_only() -> None:
    edits = answers.OUTCOMES[0]
    ratio = common_pb2.STATISTIC_RATIO
    now = release_pb2.Estimate(statistic=ratio, value=0.45, ci95=0.05)
    tile = answers.outcome_tile(edits, now, release_pb2.Estimate(statistic=ratio, value=0.30, ci95=0.05), "W1", "x")
    assert tile is not None and (tile.value, tile.interval) == ("45.0%", "95% interval 40.0% to 50.0%")
    assert (tile.change, tile.verdict) == ("was 30.0% in W1", "the two 95% intervals do not overlap: a real change")
    close = answers.outcome_tile(edits, now, release_pb2.Estimate(statistic=ratio, value=0.42, ci95=0.05), "W1", "x")
    assert close is not None and close.verdict == "the two 95% intervals overlap: no clear change"
    wide = answers.outcome_tile(edits, release_pb2.Estimate(statistic=ratio, value=0.2, ci95=0.9), None, "", "x")
    assert wide is not None and wide.interval == "95% interval 0.0% to 100.0%: this says nothing yet"
    assert answers.outcome_tile(edits, None, now, "W1", "x") is None


def test_a_title_counts_its_windows_in_words() -> None:
    assert answers.last_windows(8) == "the last 8 windows"
    assert answers.last_windows(1) == "the last window"
    assert answers.last_windows(1, "closed windows") == "the last closed window"


def test_the_adoption_table_says_whether_a_window_is_the_scope_s_own_release_or_its_teams() -> None:
    from chorus.server.dashboard import headline
    part = headline.Part(value=80.0, scale=3.0, roster=100, mechanism="discrete_gaussian")
    data = answers.Series(["W1", "W2", "W3"], [{hierarchy.COMPANY: part}, {"red": part, "blue": part}, None])
    *_, table = answers.company_chart("Company", data)
    assert [row[4:] for row in table.display_rows()] == [["its own release", "100"], ["2 team(s) added up", "200"],
                                                        ["not released", "0"]]
