"""The landing page's answers: is adoption growing (the company, or one org, over the last N
windows), where (each org as a row), and which teams' numbers say something at all.

Everything here is post-processing of released team numbers (`headline`): the reads that feed
it are the overview's, so opening the page spends nothing. A team's weekly adoption "says
something" when its 95% half-width is at most `SAYS_SOMETHING` (25 points); a team past it is
drawn as "too few people for a weekly number" and appears in the averaged view instead (its
active people over the windows shown, against its rosters: a narrower interval for free).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

from chorus.server.dashboard import charts, headline
from chorus.server.dashboard.charts import Bar, Interval, format_percent
from chorus.server.dashboard.tables import Column, DataTable, text
from chorus.server.model import hierarchy
from chorus.server.privacy import sums
from chorus.v1 import common_pb2, release_pb2

#: Widest 95% half-width, as a share of the range a number can take, at which one window's team
#: number is worth drawing (adoption: 25 points).
SAYS_SOMETHING = 0.25
TOO_FEW = "too few people for a weekly number"
SORTS = ("adoption", "change", "name")


def unit(window: common_pb2.Window) -> str:
    """How the page names one window's length: a week, a day, or a window."""
    days = (window.end.seconds - window.start.seconds) / 86_400
    return "week" if 6 <= days <= 8 else "day" if 0.9 <= days <= 1.1 else "window"


def shown(found: headline.Figure, share: bool = True) -> Interval:
    """A share cut to [0, 1] (a total to at least 0) for display, its interval around the raw value."""
    if share:
        return Interval(min(max(found.value, 0.0), 1.0), found.ci95, 1.0)
    return Interval(max(found.value, 0.0), found.ci95)


def span(statistic: int, roster: int, metric: release_pb2.Metric | None) -> float:
    """The range one team's number can take in a window, which its interval is judged against."""
    if statistic in (common_pb2.STATISTIC_ADOPTION, common_pb2.STATISTIC_RATIO):  # shares (OUTCOMES)
        return 1.0
    if statistic == common_pb2.STATISTIC_COUNT:
        return float(roster)
    bound = float(metric.max_per_user) if metric is not None else math.inf
    return bound if statistic == common_pb2.STATISTIC_MEAN else roster * bound


def says_something(estimate: release_pb2.Estimate, statistic: int, roster: int,
                   metric: release_pb2.Metric | None = None) -> bool:
    """Whether a team's weekly number is worth drawing: its 95% interval is at most ±SAYS_SOMETHING
    of the range the number can take."""
    return estimate.ci95 <= SAYS_SOMETHING * span(statistic, roster, metric)


def limit_words(statistic: int) -> str:
    """`says_something`'s limit in words: "±25 points" for adoption."""
    if statistic == common_pb2.STATISTIC_ADOPTION:
        return f"±{SAYS_SOMETHING * 100:.0f} points"
    return f"±{SAYS_SOMETHING:.0%} of the most it can be"


def too_few(teams: Sequence[str], tree: hierarchy.Hierarchy) -> list[str]:
    """The teams whose numbers say nothing, one line per org they are counted in."""
    by_org: dict[str, list[str]] = {}
    for team in teams:
        by_org.setdefault(tree.parent(team) or hierarchy.COMPANY, []).append(team)
    return [f"{TOO_FEW.capitalize()}, counted in {'the company' if org == hierarchy.COMPANY else org}: "
            f"{', '.join(sorted(names))}" for org, names in sorted(by_org.items())]


def pct_range(found: headline.Figure) -> str:
    i = shown(found)
    return f"{format_percent(i.low)} to {format_percent(i.high)}"


@dataclass(frozen=True, slots=True)
class Series:
    """One scope's adoption per window (None where nothing was released for it)."""

    windows: list[str]
    parts: list[headline.Parts | None]
    #: The scope: the company or an org path (a window's parts are its own release, or its teams').
    node: str = hierarchy.COMPANY

    def figures(self) -> list[headline.Figure | None]:
        return [headline.figure(p, share=True) if p else None for p in self.parts]

    def change(self) -> tuple[headline.Figure, str] | None:
        """Last window against the first one with releases: (change, that first window)."""
        first = next((i for i, p in enumerate(self.parts) if p), None)
        last = self.parts[-1] if self.parts else None
        if first is None or last is None or first == len(self.parts) - 1:
            return None
        found = headline.change(last, self.parts[first] or {}, share=True)
        return (found[0], self.windows[first]) if found else None


def series(windows: Sequence[str], replies: Sequence[release_pb2.ReleaseResponse | None],
           node: str = hierarchy.COMPANY, teams: set[str] | None = None,
           statistic: int = common_pb2.STATISTIC_ADOPTION, metric: str = "") -> Series:
    """A scope's parts of an additive statistic (adoption by default) per window: its own release
    where there is one, else its teams' (`teams`, all when None)."""
    return Series(list(windows), [headline.scoped(r.teams, node, teams, metric, statistic) or None if r else None
                                  for r in replies], node)


def team_parts(replies: Sequence[release_pb2.ReleaseResponse | None], statistic: int = common_pb2.STATISTIC_ADOPTION,
               metric: str = "") -> list[headline.Parts | None]:
    """Each window's team releases of an additive statistic (never an org's or the company's)."""
    return [headline.parts(r.teams, metric, statistic) or None if r else None for r in replies]


def points(windows: Sequence[str], replies: Sequence[release_pb2.ReleaseResponse | None], node: str,
           teams: set[str] | None, statistic: int, metric: str, ceiling: float) -> list[Interval | None]:
    """A scope's value per window for display: an additive statistic from its own release or its
    teams' added up; a mean only where the scope itself is released (a mean does not add up; it is
    post-processing of the scope's released sum and count, with no release id of its own)."""
    if headline.additive(statistic) is not None:
        share = statistic == common_pb2.STATISTIC_ADOPTION
        found = series(windows, replies, node, teams, statistic, metric).parts
        return [shown(headline.figure(p, share=share), share) if p else None for p in found]
    out: list[Interval | None] = []
    for reply in replies:
        own = next((e for t in (reply.teams if reply else ()) if t.team == node and t.level in headline.NODES
                    for e in t.estimates if e.statistic == statistic and e.metric == metric), None)
        out.append(Interval(max(own.value, 0.0), own.ci95, ceiling) if own else None)
    return out


def last_windows(n: int, kind: str = "windows") -> str:
    """"the last 8 windows", or "the last window" for one (a title a VP reads)."""
    return f"the last {kind[:-1]}" if n == 1 else f"the last {n} {kind}"


@dataclass(frozen=True, slots=True)
class Answer:
    """The headline sentence and the figures behind it, for the company or one org."""

    scope: str
    sentence: str
    detail: str
    growing: bool


def answer(scope: str, data: Series, per: str) -> Answer | None:
    trend = headline.slope(data.parts)
    if trend is None:
        return None
    verdict = headline.trend_verdict(trend, per)
    low, high = trend.value - trend.ci95, trend.value + trend.ci95
    used = [w for w, p in zip(data.windows, data.parts, strict=True) if p]
    detail = (f"Slope over the {len(used)} windows {used[0]} to {used[-1]}: {headline.points(trend.value)} a {per}, "
              f"95% interval {headline.points(low)} to {headline.points(high)} a {per}.")
    return Answer(scope, f"{scope} adoption: {verdict}.", detail, trend.distinct and trend.value > 0)


def company_chart(scope: str, data: Series) -> tuple[str, str, Markup, DataTable]:
    """The scope's adoption over the windows as a line in its 95% band, with its table."""
    figures = data.figures()
    points = [shown(f) if f else None for f in figures]
    table = DataTable(f"{scope} adoption per window", [
        text("window", "Window"), Column("value", format_percent, label="Adoption"),
        Column("low", format_percent, label="95% low"), Column("high", format_percent, label="95% high"),
        text("released", "Released as"), Column("people", label="People on their rosters")])
    for window, parts, point in zip(data.windows, data.parts, points, strict=True):
        if parts and point:
            released = "its own release" if list(parts) == [data.node] else f"{len(parts)} team(s) added up"
            table.add(window, point.value, point.low, point.high, released, sum(p.roster for p in parts.values()))
        else:
            table.add(window, None, None, None, "not released", 0)
    title = f"{scope} adoption over {last_windows(len(data.windows))}"
    description = (f"Share of the people on the released teams' rosters active with AI tools, per window, "
                   f"{data.windows[0]} to {data.windows[-1]}; the band is the 95% interval.")
    domain = [v for p in points if p for v in (p.low, p.high)] + [0.0]
    svg = charts.responsive(charts.trend_panel, f"chart-{_slug(scope)}-adoption", title, description, data.windows,
                            points, domain, fmt=format_percent)
    return title, description, svg, table


@dataclass(frozen=True, slots=True)
class OrgRow:
    """One org of the chosen level: its adoption now, its change, and its series."""

    org: str
    people: int
    teams: int
    now: headline.Figure | None
    change: headline.Figure | None
    since: str
    data: Series

    @property
    def says(self) -> str:
        if self.change is None:
            return ""
        return headline.change_verdict(self.change)


def org_rows(tree: hierarchy.Hierarchy, scope: str, windows: Sequence[str],
             replies: Sequence[release_pb2.ReleaseResponse | None], sort: str) -> list[OrgRow]:
    """The orgs directly below `scope`, sorted by `sort` (adoption or change, largest first; or name)."""
    rows = []
    for org in tree.children(scope):
        if tree.level(org) != hierarchy.ORG:
            continue
        data = series(windows, replies, org, set(tree.teams_below(org)))
        figures = data.figures()
        moved = data.change()
        rows.append(OrgRow(org, tree.size(org), len(tree.teams_below(org)), figures[-1] if figures else None,
                           moved[0] if moved else None, moved[1] if moved else "", data))

    def key(row: OrgRow) -> tuple[int, float, str]:
        if sort == "name":
            return (0, 0.0, row.org)
        found = row.now if sort == "adoption" else row.change
        return (found is None, -(found.value if found else 0.0), row.org)
    return sorted(rows, key=key)


def org_table(rows: Sequence[OrgRow], scope: str, window: str) -> DataTable:
    table = DataTable(f"Adoption per org under {scope}, window {window}", [
        text("org", "Org"), Column("people", label="People"), Column("value", format_percent, label="Adoption"),
        text("interval", "95% interval"), text("change", "Change"),
        text("change_interval", "95% interval of the change"),
        text("verdict", "Verdict")])
    for row in rows:
        change = row.change
        table.add(row.org, row.people, shown(row.now).value if row.now else None,
                  pct_range(row.now) if row.now else "not released",
                  f"{headline.points(change.value)} since {row.since}" if change else "",
                  f"{headline.points(change.value - change.ci95)} to {headline.points(change.value + change.ci95)}"
                  if change else "", row.says)
    return table


def small_multiples(rows: Sequence[OrgRow]) -> list[tuple[str, Markup]]:
    """One adoption panel per org, on one shared scale, titled with its adoption now and its change."""
    panels = []
    for row in rows:
        now = f"{format_percent(shown(row.now).value)}" if row.now else "not released"
        moved = f", {headline.points(row.change.value)}" if row.change else ""
        panels.append((f"{row.org}: {now}{moved}", f"{row.org}: adoption",
                       f"Adoption of org {row.org} per window with its 95% band.",
                       [shown(f) if f else None for f in row.data.figures()]))
    return grid(panels, rows[0].data.windows if rows else [], "chart-org", format_percent)


def grid(panels: Sequence[tuple[str, str, str, Sequence[Interval | None]]], windows: Sequence[str], prefix: str,
         fmt: charts.Formatter, empty: Sequence[str] = ()) -> list[tuple[str, Markup]]:
    """Trend panels (heading, title, description, points) on one shared scale, 0 included; `empty`
    says, per panel, why it has no point at all."""
    domain = [v for *_, found in panels for p in found if p for v in (p.low, p.high)] + [0.0]
    return [(heading, charts.responsive(charts.trend_panel, f"{prefix}-{number}", title, description, windows,
                                        list(found), domain, fmt=fmt,
                                        **({"empty": empty[number]} if empty else {})))
            for number, (heading, title, description, found) in enumerate(panels)]


def team_bar(team: release_pb2.TeamRelease, estimate: release_pb2.Estimate | None) -> Bar | None:
    """A team's weekly adoption bar, or None when it is drawn as too few people."""
    if estimate is None or not says_something(estimate, common_pb2.STATISTIC_ADOPTION, team.roster_size):
        return None
    return Bar(team.team, Interval(estimate.value, estimate.ci95, 1.0))


@dataclass(frozen=True, slots=True)
class Averaged:
    team: str
    value: float
    ci95: float
    windows: int


def averaged(data: Sequence[headline.Parts | None], teams: Sequence[str], *, share: bool = True) -> list[Averaged]:
    """Each team's number over all the windows shown (`team_parts`): its active people over its
    rosters (`share`), or its total per window."""
    out = []
    for team in teams:
        mine = [p[team] for p in data if p and team in p]
        if not mine:
            continue
        weight = 1 / sum(p.roster for p in mine) if share else 1 / len(mine)
        terms = [(p.scale, weight, p.mechanism or sums.DISCRETE_LAPLACE) for p in mine]
        out.append(Averaged(team, sum(p.value for p in mine) * weight, sums.ci95(terms), len(mine)))
    return sorted(out, key=lambda a: (-a.value, a.team))


def _slug(text_: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text_.lower())


@dataclass(frozen=True, slots=True)
class Outcome:
    """An "is it helping" figure: a ratio of released sums, value and 95% interval both computed
    by the release path (`STATISTIC_RATIO`, Fieller's interval); the dashboard only draws it."""

    label: str
    metric: str
    denominator: tuple[str, ...]
    meaning: str

    @property
    def share(self) -> bool:
        """A numerator inside its denominator makes a share, within [0, 1]."""
        return self.metric in self.denominator


#: The outcomes the landing page asks for next to adoption (where the window defines their
#: metrics). The default release plan releases edit acceptance for the company and every org,
#: so reading it is free; a scope the plan left out shows no tile.
OUTCOMES = (Outcome("Edits accepted", "ai.suggestions_accepted", ("ai.suggestions_accepted", "ai.suggestions_rejected"),
                    "share of the AI edits people decided on that they kept"),)


def ratio_of(reply: release_pb2.ReleaseResponse | None, node: str, outcome: Outcome) -> release_pb2.Estimate | None:
    """The node's own released ratio for `outcome` in a read, if any."""
    return next((e for t in (reply.teams if reply is not None else ()) if t.team == node
                 for e in t.estimates if e.statistic == common_pb2.STATISTIC_RATIO and e.metric == outcome.metric
                 and tuple(e.denominator) == outcome.denominator), None)


def outcome_tile(outcome: Outcome, now: release_pb2.Estimate | None, before: release_pb2.Estimate | None,
                 previous: str, where: str) -> headline.Tile | None:
    """The outcome's tile: this window's ratio with its interval and, beside the previous window's,
    whether the two intervals are apart (two 95% intervals that do not overlap differ for real;
    no interval of the change is claimed, none comes from the release path)."""
    if now is None:
        return None
    ceiling = 1.0 if outcome.share else math.inf
    fmt = format_percent if outcome.share else charts.format_number

    def interval(e: release_pb2.Estimate) -> tuple[Interval, str]:
        i = Interval(e.value, e.ci95, ceiling)
        if not math.isfinite(i.high):
            return i, "95% interval unbounded: this says nothing yet"
        whole = i.low <= 0 and i.high >= ceiling  # the interval is the whole range
        return i, f"95% interval {fmt(i.low)} to {fmt(i.high)}" + (": this says nothing yet" if whole else "")

    shown, words = interval(now)
    parts = " and ".join(dict.fromkeys((outcome.metric, *outcome.denominator)))
    tile = headline.Tile(f"Company {outcome.label.lower()}", fmt(shown.value), words,
                         basis=f"{outcome.meaning}, from the released totals of {parts}; released for {where}")
    if before is None:
        return tile
    earlier, earlier_words = interval(before)
    apart = shown.low > earlier.high or earlier.low > shown.high
    return headline.Tile(tile.label, tile.value, tile.interval, f"was {fmt(earlier.value)} in {previous}",
                         earlier_words, "the two 95% intervals do not overlap: a real change" if apart else
                         "the two 95% intervals overlap: no clear change", tile.basis)
