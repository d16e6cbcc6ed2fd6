"""Page builders: from the gRPC API and the query string to charts, tables and template context.

Each builder is a plain function of an `Api` and the request arguments. The HTML view and the
CSV download of a page call the same builder, so a download always holds the numbers on screen.

Reading never spends: every page reads with `Api.read` (validate_only), which shows what the
release plan and earlier releases published and prices the rest as "not released". The one
call that spends is `release_confirmed`, reached only by the confirmed form of the release
page after a preview of its cost.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC
from decimal import Decimal
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from markupsafe import Markup
from werkzeug.exceptions import BadRequest

from chorus.server.dashboard import answers, charts, headline
from chorus.server.dashboard.charts import Bar, BudgetBar, Formatter, Interval, format_number, format_percent
from chorus.server.dashboard.gateway import Api, GatewayError
from chorus.server.dashboard.tables import Cell, Column, DataTable, text
from chorus.server.dashboard.verification import ChainCache
from chorus.server.front import spending
from chorus.server.front.numbers import format_compact
from chorus.server.front.statement import (
    StatementFormat,
    YearlyBound,
    render_statement,
    statement_sections,
    yearly_bound,
)
from chorus.server.model import hierarchy
from chorus.server.model.calendar import WindowLength
from chorus.server.model.ledger_format import Entry
from chorus.server.model.policy import Policy
from chorus.server.model.statistics import Statistic
from chorus.server.privacy.epsilon import Epsilon, Rho
from chorus.v1 import audit_pb2, common_pb2, release_pb2

Args = Mapping[str, str]

NOISE_NOTE = ("Values are noisy: differential-privacy noise was added before release, so small "
              "differences between teams or windows may mean nothing. Whiskers and bands show the 95% "
              "interval: the value before noise lies inside it with 95% probability. Intervals are cut "
              "at the range a value can take (never below 0; adoption at most 100%).")
EXACT_NOTE = "Exact accounting, no noise: the privacy budget (epsilon) is tracked in whole micro-epsilon."
LEDGER_PAGE = 50
MAX_TREND_WINDOWS = 52

STATISTICS: dict[str, tuple[common_pb2.Statistic, str]] = {
    Statistic.SUM: (Statistic.SUM.proto, "Total"),
    Statistic.COUNT: (Statistic.COUNT.proto, "People using it"),
    Statistic.MEAN: (Statistic.MEAN.proto, "Mean per person using it"),
    Statistic.ADOPTION: (Statistic.ADOPTION.proto, "Adoption"),
    Statistic.HISTOGRAM: (Statistic.HISTOGRAM.proto, "Distribution"),
}
SPEND_STATISTICS = (Statistic.SUM, Statistic.COUNT, Statistic.MEAN, Statistic.HISTOGRAM, Statistic.ADOPTION)
OVERVIEW_STATISTICS = (Statistic.SUM, Statistic.COUNT, Statistic.MEAN)
TREND_STATISTICS = (Statistic.ADOPTION, Statistic.SUM, Statistic.COUNT, Statistic.MEAN)
# A trend keeps going past a window it cannot show; these failures concern that window only.
_PER_WINDOW_FAILURES = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
                        grpc.StatusCode.NOT_FOUND)


@dataclass(slots=True)
class Chart:
    """A figure (one or more SVG panels) with the table of its numbers and a note on reading it."""

    slug: str
    title: str
    description: str
    panels: list[tuple[str, Markup]]
    table: DataTable
    #: What the intervals allow saying about the order of the rows; empty when nothing.
    ranking: str = ""
    #: The neighbouring rows whose intervals overlap (behind a disclosure under `ranking`).
    overlaps: list[tuple[str, str]] = field(default_factory=list)
    #: Drawn closed behind its title (details a VP rarely needs on the landing page).
    collapsed: bool = False
    #: Short lines under the description (the teams with too few people for a weekly number).
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Page:
    """What a view renders: a template, its charts (each downloadable as CSV) and other context."""

    template: str
    title: str
    charts: list[Chart] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    #: How to read the page's numbers, shown once per page.
    note: str = NOISE_NOTE

    def chart(self, slug: str) -> Chart | None:
        return next((c for c in self.charts if c.slug == slug), None)


# Query-string arguments: anything unexpected is a 400 that names the value and what is allowed.

def _choice(args: Args, name: str, allowed: Sequence[str], default: str | None) -> str | None:
    value = args.get(name) or default
    if value is not None and value not in allowed:
        shown = value if len(value) <= 64 else value[:61] + "..."
        raise BadRequest(f"{name}={shown!r} is not one of: {', '.join(allowed) or 'none available'}")
    return value


def _int(args: Args, name: str, default: int, low: int, high: int) -> int:
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(f"{name}={raw[:20]!r} must be a whole number from {low} to {high}")
    return int(raw)


def _window_choice(args: Args, windows: Sequence[common_pb2.Window]) -> str | None:
    """The requested closed window, by default the latest one; None when none has closed yet."""
    return _choice(args, "window", [w.id for w in windows], windows[0].id if windows else None)


@dataclass(frozen=True, slots=True)
class NotReleased:
    """A statistic the page asked for that is not released for some teams (or orgs), and its price.

    Its link to the release page names exactly these teams and nodes, so the form it opens
    previews and sends only them."""

    window: str
    statistic: str
    metric: str
    teams: tuple[str, ...]
    #: Epsilon per team (the largest, when teams differ).
    epsilon: str
    #: Orgs (or "/" for the company) not released, each charging every team below it.
    nodes: tuple[str, ...] = ()
    #: The teams and nodes in words: "team red", "4 orgs and the company".
    where: str = ""

    @property
    def subject(self) -> str:
        return f"{STATISTIC_WORDS[self.statistic]} of {self.metric}" if self.metric else STATISTIC_WORDS[self.statistic]

    def link(self) -> dict[str, Any]:
        """The release page's query string for exactly this."""
        return {"window": self.window, "statistic": self.statistic, "metric": self.metric,
                "team": list(self.teams), "node": list(self.nodes), "preview": 1}


STATISTIC_WORDS = {"sum": "total", "count": "people using it", "mean": "mean per person", "histogram": "distribution",
                   "adoption": "adoption"}


def _not_released(window: str, replies: Sequence[release_pb2.TeamRelease]) -> list[NotReleased]:
    """What a read left unreleased, grouped by statistic and metric."""
    found: dict[tuple[str, str], tuple[list[release_pb2.TeamRelease], Epsilon]] = {}
    for team in replies:
        for u in team.unreleased:
            nodes, cost = found.setdefault((_statistic_name(u.statistic), u.metric), ([], Epsilon(0)))
            nodes.append(team)
            found[(_statistic_name(u.statistic), u.metric)] = (nodes, max(cost, Epsilon.parse(u.epsilon),
                                                                          key=lambda e: e.micros))
    return [NotReleased(window, stat, metric,
                        tuple(n.team for n in nodes if spending.level_of(n) == hierarchy.TEAM), str(cost),
                        tuple(n.team for n in nodes if spending.level_of(n) != hierarchy.TEAM),
                        spending.naming(nodes))
            for (stat, metric), (nodes, cost) in found.items()]


def _many(args: Args, name: str) -> list[str]:
    """Every value of a repeated query argument (`team=a&team=b`), each once."""
    getlist = getattr(args, "getlist", None)
    values = getlist(name) if getlist is not None else [args.get(name) or ""]
    return list(dict.fromkeys(v for v in values if v))


def _statistic_name(code: int) -> str:
    return common_pb2.Statistic.Name(code).removeprefix("STATISTIC_").lower()


def _unreleased(team: release_pb2.TeamRelease, statistic: int,
                metric: str = "") -> release_pb2.UnreleasedStatistic | None:
    return next((u for u in team.unreleased if u.statistic == statistic and u.metric == metric), None)


def closed_windows(api: Api) -> list[common_pb2.Window]:
    """Closed windows, newest first: only those can be released."""
    return [w for w in api.list_windows() if w.state == common_pb2.WINDOW_STATE_CLOSED]


def duration(seconds: int) -> str:
    """A policy's duration in words: 21600 -> "6 hours", 90 -> "1 minute 30 seconds"."""
    parts = []
    for size, word in ((86_400, "day"), (3_600, "hour"), (60, "minute"), (1, "second")):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {word}{'' if count == 1 else 's'}")
    return " ".join(parts) or "none"


def utc(ts: Timestamp) -> str:
    """A protobuf timestamp as "2026-11-25 00:00 UTC"."""
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M UTC")


# Estimates: the cells every table of released numbers shares.

def _find(team: release_pb2.TeamRelease, statistic: int, metric: str = "") -> release_pb2.Estimate | None:
    return next((e for e in team.estimates if e.statistic == statistic and e.metric == metric), None)


def _outcome(team: release_pb2.TeamRelease, statistic: int | None = None, metric: str = "") -> str:
    if team.outcome == release_pb2.TEAM_OUTCOME_SUPPRESSED:
        return f"suppressed: {team.message}" if team.message else "suppressed"
    missing = _unreleased(team, statistic, metric) if statistic is not None else None
    if missing is not None:
        return f"not released (would cost epsilon {missing.epsilon})"
    return "released"


_TEAM = text("team", "Team")
_WINDOW = text("window", "Window")
_OUTCOME = text("outcome", "Outcome")


def _estimate_columns(fmt: Formatter) -> list[Column]:
    return [Column("value", fmt, label="Value"), Column("ci95", fmt, label="± (95%)"),
            Column("low", fmt, label="95% low"), Column("high", fmt, label="95% high"),
            text("epsilon", "Epsilon"), text("note", "Note")]


def _estimate_cells(estimate: release_pb2.Estimate | None, interval: Interval | None) -> tuple[Cell, ...]:
    if estimate is None or interval is None:
        return (None,) * 6
    return (interval.value, interval.ci95, interval.low, interval.high, estimate.epsilon, estimate.note)


def _ceiling(statistic: int, metric: release_pb2.Metric | None) -> float:
    """The most a statistic can be: adoption is a share, a mean is capped by the metric's bound."""
    if statistic == common_pb2.STATISTIC_ADOPTION:
        return 1.0
    if statistic == common_pb2.STATISTIC_MEAN and metric is not None:
        return float(metric.max_per_user)
    return math.inf


def _interval(estimate: release_pb2.Estimate | None, ceiling: float) -> Interval | None:
    return Interval(estimate.value, estimate.ci95, ceiling) if estimate is not None else None


def _bar(team: release_pb2.TeamRelease, interval: Interval | None, statistic: int, metric: str = "") -> Bar:
    if team.outcome == release_pb2.TEAM_OUTCOME_SUPPRESSED:
        return Bar(team.team, interval, "suppressed: too few people")
    missing = _unreleased(team, statistic, metric)
    return Bar(team.team, interval, f"not released (epsilon {missing.epsilon})" if missing else "not released")


def _slug(text_: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text_.lower())


# Leadership (analyst)

def _read_or_none(api: Api, window: str | None, statistics: list[int]) -> release_pb2.ReleaseResponse | None:
    """A read of `window`, or None when there is none or it cannot be read any more (past retention)."""
    if window is None:
        return None
    try:
        return api.read(window, statistics)
    except GatewayError as exc:
        if exc.code not in _PER_WINDOW_FAILURES:
            raise
        return None


N_CHOICES = (4, 8, 12, 26, 52)


def _with_nodes(api: Api, window: str, reply: release_pb2.ReleaseResponse | None, nodes: Sequence[str],
                statistics: Sequence[int] = (common_pb2.STATISTIC_ADOPTION, common_pb2.STATISTIC_SUM),
                metrics: Sequence[str] = (), denominator: Sequence[str] = ()) -> release_pb2.ReleaseResponse | None:
    """A window's team answers with what is released at the company and each org (the plan may
    release them directly); the teams alone where the window's tree has not these orgs."""
    if reply is None:
        return None
    try:
        extra = api.read(window, list(statistics), nodes=nodes, metrics=metrics, denominator=denominator)
    except GatewayError:
        return reply
    return release_pb2.ReleaseResponse(window=reply.window, teams=[*reply.teams, *extra.teams],
                                       remainders=reply.remainders)


def _recent_reads(api: Api, recent: Sequence[common_pb2.Window],
                  nodes: Sequence[str]) -> list[release_pb2.ReleaseResponse | None]:
    """Each window's released adoption and sums, for the teams and at `nodes` (None for a window
    that cannot be read any more): what the adoption trends and org rows add up."""
    both: list[int] = [common_pb2.STATISTIC_ADOPTION, common_pb2.STATISTIC_SUM]
    return [_with_nodes(api, w.id, _read_or_none(api, w.id, both), nodes) for w in recent]


def _org_filter(args: Args, tree: hierarchy.Hierarchy) -> str:
    """The ?org= filter: an org of the window's tree, or the company (empty)."""
    org = _choice(args, "org", [hierarchy.COMPANY, *tree.org_nodes()], hierarchy.COMPANY)
    return org or hierarchy.COMPANY


def _scope_name(org: str) -> str:
    return "Company" if org == hierarchy.COMPANY else f"Org {org}"


def overview(api: Api, args: Args) -> Page:
    """The landing page, the answers first: is adoption growing (the company, or the org picked,
    over the last N windows: a line in its band, the slope with its interval and a verdict, the
    change against N windows ago), the headline tiles of the chosen window, where (each org as a
    row, sorted, with small multiples), then adoption and one statistic of every metric per team.
    Reads only: it never spends."""
    windows = closed_windows(api)
    window = _window_choice(args, windows)
    statistic = _choice(args, "statistic", OVERVIEW_STATISTICS, Statistic.SUM)
    count = _int(args, "n", 8, 2, MAX_TREND_WINDOWS)
    sort = _choice(args, "sort", answers.SORTS, "adoption")
    assert statistic is not None and sort is not None
    page = Page("overview.html", "Overview", context={
        "window_options": [(w.id, w.id) for w in windows], "window": window, "statistic": statistic,
        "statistics": [(s, STATISTICS[s][1]) for s in OVERVIEW_STATISTICS], "tiles": [], "not_released": [],
        "previous": None, "n": count, "n_options": [(k, f"{k} windows") for k in sorted({*N_CHOICES, count})],
        "sort": sort, "sort_options": [("adoption", "Adoption"), ("change", "Change"), ("name", "Name")],
        "org": hierarchy.COMPANY, "org_options": [], "answer": None, "too_few": [], "unit": "window"})
    if window is None:
        return page
    ids = [w.id for w in windows]
    at = ids.index(window)
    chosen = windows[at]
    recent = list(reversed(windows[at:at + count]))
    previous = ids[at + 1] if at + 1 < len(ids) else None
    tree = hierarchy.Hierarchy.of((t.name, t.org, t.roster_size) for t in api.list_teams(window).teams)
    org = _org_filter(args, tree)
    inside = None if org == hierarchy.COMPANY else set(tree.teams_below(org))
    scope = _scope_name(org)
    per = answers.unit(chosen)
    page.context.update(org=org, unit=per, scope=scope, org_options=[
        (hierarchy.COMPANY, "The whole company"), *((o, o) for o in tree.org_nodes())])
    code, label = STATISTICS[statistic]
    metrics = api.list_metrics(window)
    wanted = list(dict.fromkeys([common_pb2.STATISTIC_ADOPTION, common_pb2.STATISTIC_SUM, code]))
    both: list[int] = [common_pb2.STATISTIC_ADOPTION, common_pb2.STATISTIC_SUM]
    nodes = [hierarchy.COMPANY, *tree.org_nodes()]
    reads = _recent_reads(api, recent[:-1], nodes)
    reply = api.read(window, wanted)
    current = _with_nodes(api, window, reply, nodes) or reply
    reads.append(current)
    mine = [t for t in reply.teams if inside is None or t.team in inside]
    before = reads[-2] if len(reads) > 1 and recent[-2].id == previous else _with_nodes(
        api, previous or "", _read_or_none(api, previous, both), nodes)
    page.context["previous"] = previous
    # Adoption, then is it helping (the outcomes), then the usage totals but those an outcome shows.
    outcomes = _outcomes(api, window, previous, org, {m.name for m in metrics})
    shown = {name for o, _ in outcomes for name in (o.metric, *o.denominator)}
    tiles = [headline.company(current.teams, before.teams if before else None, previous or "", "", org, inside),
             *(tile for _, tile in outcomes)]
    tiles += [headline.company(current.teams, before.teams if before else None, previous or "", m.name, org,
                               inside) for m in metrics if m.name not in shown]
    if inside is not None:
        tiles = [replace(t, label=t.label.replace("Company", scope, 1)) if t else None for t in tiles]
    page.context["tiles"] = [t for t in tiles if t is not None]
    page.context["not_released"] = _not_released(window, reply.teams)
    data = answers.series([w.id for w in recent], reads, org, inside)
    page.context["answer"] = answers.answer(scope, data, per)
    moved = data.change()
    if moved is not None:
        delta = moved[0]
        page.context["since"] = (moved[1], headline.points(delta.value),
                                 f"{headline.points(delta.value - delta.ci95)} to "
                                 f"{headline.points(delta.value + delta.ci95)}", headline.change_verdict(delta))
    if any(data.parts):
        title, description, svg, table = answers.company_chart(scope, data)
        page.charts.append(Chart("company-adoption", title, description, [("", svg)], table))
    rows = answers.org_rows(tree, org, [w.id for w in recent], reads, sort)
    if rows:
        table = answers.org_table(rows, _scope_name(org), window)
        intervals = [(r.org, answers.shown(r.now) if r.now else None) for r in rows]
        by = {"adoption": "adoption", "change": f"change since {rows[0].since or 'the first window'}",
              "name": "name"}[sort]
        page.charts.append(Chart(
            "orgs", f"Where: adoption per org, sorted by {by}",
            f"Each org under {'the company' if org == hierarchy.COMPANY else org}: its adoption in window "
            f"{window} and its change over the windows shown (in each panel's title): its own release, else its "
            "teams' added up.",
            answers.small_multiples(rows), table, headline.ranking(intervals), headline.overlapping_pairs(intervals)))
    if any(_find(team, common_pb2.STATISTIC_ADOPTION) for team in mine):
        chart, too_few = _adoption_chart(window, mine, tree)
        page.charts.append(chart)
        page.context["too_few"] = too_few
        if too_few:
            page.charts.append(_averaged_chart(answers.team_parts(reads), [w.id for w in recent], too_few,
                                               "Adoption", True))
    for metric in metrics:
        if not any(_find(team, code, metric.name) for team in mine):
            continue  # nothing released: listed under "Not released" with its cost, not drawn empty
        table = DataTable(f"{label} of {metric.name} per team, window {window}",
                          [_TEAM, _OUTCOME, *_estimate_columns(format_number)])
        bars = []
        for team in mine:
            estimate = _find(team, code, metric.name)
            interval = _interval(estimate, _ceiling(code, metric))
            table.add(team.team, _outcome(team, code, metric.name), *_estimate_cells(estimate, interval))
            bars.append(_bar(team, interval, code, metric.name))
        title = f"{label} of {metric.name} per team"
        description = (f"{metric.description}. Each person's total is capped at {metric.max_per_user:,} "
                       f"before it counts. Window {window}.")
        svg = charts.responsive(charts.interval_bars, f"chart-{_slug(metric.name)}", title, description, bars)
        ranked = [(b.label, b.interval) for b in bars]
        page.charts.append(Chart(_slug(metric.name), title, description, [("", svg)], table,
                                 headline.ranking(ranked), headline.overlapping_pairs(ranked), collapsed=True))
    return page


def _outcomes(api: Api, window: str, previous: str | None, org: str,
              metrics: set[str]) -> list[tuple[answers.Outcome, headline.Tile]]:
    """Is it helping: each outcome's ratio for the scope itself, this window and the previous one,
    as released (a read: the plan releases them at close)."""
    where = "the company itself" if org == hierarchy.COMPANY else f"org {org} itself"

    def read(at: str | None, outcome: answers.Outcome) -> release_pb2.Estimate | None:
        if at is None:
            return None
        try:
            reply = api.read(at, [common_pb2.STATISTIC_RATIO], metrics=[outcome.metric], nodes=[org],
                             denominator=outcome.denominator)
        except GatewayError as exc:  # a window past retention, or one whose policy lacks the metrics
            if exc.code not in (*_PER_WINDOW_FAILURES, grpc.StatusCode.INVALID_ARGUMENT):
                raise
            return None
        return answers.ratio_of(reply, org, outcome)
    found = [(o, answers.outcome_tile(o, read(window, o), read(previous, o), previous or "", where))
             for o in answers.OUTCOMES if {o.metric, *o.denominator} <= metrics]
    return [(o, t) for o, t in found if t is not None]


def _averaged_chart(data: Sequence[headline.Parts | None], ids: Sequence[str], teams: Sequence[str], subject: str,
                    share: bool, *, collapsed: bool = True) -> Chart:
    """The teams with too few people for a weekly number, over all the windows shown: active people
    over rosters (adoption), or the total per window."""
    found = answers.averaged(data, teams, share=share)
    fmt = format_percent if share else format_number
    table = DataTable(f"{subject} per team over windows {ids[0]} to {ids[-1]}", [
        _TEAM, Column("windows", label="Windows released"), Column("value", fmt, label=subject if share else
                                                                    "Per window"),
        Column("ci95", fmt, label="± (95%)")])
    bars = []
    for a in found:
        interval = Interval(min(max(a.value, 0.0), 1.0), a.ci95, 1.0) if share else Interval(max(a.value, 0.0), a.ci95)
        table.add(a.team, a.windows, interval.value, a.ci95)
        bars.append(Bar(a.team, interval))
    title = (f"Teams with too few people for a weekly number: {subject.lower() if share else subject} over the "
             f"last {len(ids)} windows")
    description = (("Each of these teams' active people over all the windows shown, against its rosters"
                    if share else "Each of these teams' total per window, over all the windows shown") +
                   ": one number from several windows' releases, with a narrower interval. Largest first.")
    svg = charts.responsive(charts.interval_bars, "chart-adoption-average", title, description, bars,
                            fmt=fmt if share else format_compact, include=(0.0, 1.0) if share else (0.0,))
    ranked = [(b.label, b.interval) for b in bars]
    return Chart("adoption-average" if share else "average", title, description, [("", svg)], table,
                 headline.ranking(ranked), headline.overlapping_pairs(ranked), collapsed=collapsed)


def _adoption_chart(window: str, teams: Sequence[release_pb2.TeamRelease],
                    tree: hierarchy.Hierarchy) -> tuple[Chart, list[str]]:
    """Adoption per team in one window, drawn only for teams whose number says something; and the
    teams drawn as too few people (their numbers stay in the table)."""
    code = common_pb2.STATISTIC_ADOPTION
    table = DataTable(f"Adoption per team, window {window}",
                      [_TEAM, Column("roster_size", label="Roster size"), _OUTCOME,
                       *_estimate_columns(format_percent), text("budget_remaining", "Budget left")])
    bars, too_few = [], []
    for team in teams:
        estimate = _find(team, code)
        interval = _interval(estimate, _ceiling(code, None))
        table.add(team.team, team.roster_size, _outcome(team, code), *_estimate_cells(estimate, interval),
                  team.budget_remaining)
        bar = answers.team_bar(team, estimate)
        if estimate is not None and bar is None:
            too_few.append(team.team)  # in the table and the averaged view, not drawn
            continue
        bars.append(bar or _bar(team, interval, code))
    bars.sort(key=lambda b: (b.interval is None, -(b.interval.value if b.interval else 0.0), b.label))
    title = "Adoption per team"
    description = (f"Share of each team's roster active with AI tools in window {window}: people with any "
                   "usage divided by the roster size, largest first.")
    if too_few:
        description += (f" Teams with {answers.TOO_FEW} (a 95% interval wider than {answers.limit_words(code)}) are "
                        "not drawn: their numbers are in the table, their average over the windows shown below.")
    svg = charts.responsive(charts.interval_bars, "chart-adoption", title, description, bars, fmt=format_percent,
                            include=(0.0, 1.0))
    ranked = [(b.label, b.interval) for b in bars]
    return Chart("adoption", title, description, [("", svg)], table, headline.ranking(ranked),
                 headline.overlapping_pairs(ranked), collapsed=True, notes=answers.too_few(too_few, tree)), too_few


def trends(api: Api, args: Args) -> Page:
    """One statistic over the last N closed windows: the company (or the org picked), each org
    below it on one scale, then the teams whose weekly numbers say something (`answers`), the
    others named as too few people, counted in their org, and averaged over the windows. Reads only."""
    windows = closed_windows(api)
    count = _int(args, "n", 8, 2, MAX_TREND_WINDOWS)
    recent = list(reversed(windows[:count]))
    metrics = {m.name: m for m in api.list_metrics(recent[-1].id)} if recent else {}
    names = list(metrics)
    # Is it helping, over time: the landing page's outcome, where the window defines its metrics.
    outcome = next((o for o in answers.OUTCOMES if {o.metric, *o.denominator} <= set(names)), None)
    offered = [(s, STATISTICS[s][1]) for s in TREND_STATISTICS]
    offered += [(Statistic.RATIO, outcome.label)] if outcome else []
    statistic = _choice(args, "statistic", [s for s, _ in offered], Statistic.ADOPTION)
    assert statistic is not None
    metric = _choice(args, "metric", names, names[0] if names else None)
    page = Page("trends.html", "Trends", context={
        "n": count, "statistic": statistic, "metric": metric, "metrics": names, "problems": [],
        "not_released": [], "statistics": offered,
        "org": hierarchy.COMPANY, "org_options": [(hierarchy.COMPANY, "The whole company")]})
    if not recent:
        return page
    tree = hierarchy.Hierarchy.of((t.name, t.org, t.roster_size) for t in api.list_teams(recent[-1].id).teams)
    org = _org_filter(args, tree)
    inside = None if org == hierarchy.COMPANY else set(tree.teams_below(org))
    scope = _scope_name(org)
    page.context.update(org=org, scope=scope, org_options=[(hierarchy.COMPANY, "The whole company"),
                                                           *((o, o) for o in tree.org_nodes())])
    ratio = statistic == Statistic.RATIO and outcome is not None
    code, label = (common_pb2.STATISTIC_RATIO, outcome.label) if ratio and outcome else STATISTICS[statistic]
    adoption = statistic == Statistic.ADOPTION
    share = adoption or ratio  # the outcome is a share (answers.Outcome.share)
    name = outcome.metric if ratio and outcome else "" if adoption else metric or ""
    denominator = outcome.denominator if ratio and outcome else ()
    spec = metrics.get(name)
    ceiling = 1.0 if share else _ceiling(code, spec)
    fmt, chart_fmt = (format_percent, format_percent) if share else (format_number, format_compact)
    worded: dict[str, str] = {Statistic.COUNT: f"People using {metric}",
                              Statistic.MEAN: f"Mean {metric} per person using it"}
    subject = label if share else worded.get(statistic, f"{label} of {metric}")
    ids = [w.id for w in recent]
    nodes = [hierarchy.COMPANY, *tree.org_nodes()]
    replies: list[release_pb2.ReleaseResponse | None] = []
    for window in recent:
        try:
            reply = api.read(window.id, [code], metrics=[name] if name else [], denominator=denominator)
        except GatewayError as exc:
            if exc.code not in _PER_WINDOW_FAILURES:
                raise
            page.context["problems"].append((window.id, exc.message))
            replies.append(None)
            continue
        if not ratio:  # a ratio is released through its sums: the release page does not offer it
            page.context["not_released"] += _not_released(
                window.id, [t for t in reply.teams if inside is None or t.team in inside])
        replies.append(_with_nodes(api, window.id, reply, nodes, [code], [name] if name else [], denominator))
    page.context["yearly"] = _yearly(recent[-1], replies[-1])
    page.charts.append(_scope_trend(scope, org, inside, subject, ids, replies, code, name, ceiling, chart_fmt, fmt))
    orgs = [o for o in tree.children(org) if tree.level(o) == hierarchy.ORG]
    by_org = _org_trends(tree, orgs, subject, ids, replies, code, name, ceiling, chart_fmt, fmt) if orgs else None
    by_team, too_few = _team_trends(tree.teams_below(org), subject, ids, replies, code, name, spec, chart_fmt, fmt)
    # A level with nothing released in any window shown is said in one line, not drawn as empty panels.
    page.context["unreleased_levels"] = ["org"] if orgs and by_org is None else []
    if by_team is None:
        page.context["unreleased_levels"].append("team")
    if by_org is not None:
        page.charts.append(by_org)
    if by_team is not None:
        by_team.notes = answers.too_few(too_few, tree)
        page.charts.append(by_team)
    if too_few and headline.additive(code) is not None:
        page.charts.append(_averaged_chart(answers.team_parts(replies, code, name), ids, too_few, subject, adoption,
                                           collapsed=False))
    return page


def _yearly(window: common_pb2.Window, reply: release_pb2.ReleaseResponse | None) -> YearlyBound | None:
    """The yearly bound of the window's per-team budget, as the answer states it (its unit and a
    team-window's cap): the statement's own computation (`front.statement.yearly_bound`)."""
    team = next((t for t in reply.teams if t.budget_cap), None) if reply is not None else None
    length = answers.unit(window)
    if team is None or length not in tuple(WindowLength):
        return None
    return yearly_bound((Rho if team.unit == Rho.UNIT else Epsilon).parse(team.budget_cap), WindowLength(length))


def _scope_trend(scope: str, org: str, inside: set[str] | None, subject: str, ids: list[str],
                 replies: Sequence[release_pb2.ReleaseResponse | None], code: int, metric: str, ceiling: float,
                 chart_fmt: Formatter, fmt: Formatter) -> Chart:
    """The company's (or the org's) statistic per window: its own release, else its teams' added up."""
    found = answers.points(ids, replies, org, inside, code, metric, ceiling)
    table = DataTable(f"{scope}: {subject} per window", [_WINDOW, *_estimate_columns(fmt)[:4]])
    for window, point in zip(ids, found, strict=True):
        table.add(window, *((point.value, point.ci95, point.low, point.high) if point else (None,) * 4))
    title = f"{scope} {subject[0].lower()}{subject[1:]} over {answers.last_windows(len(ids))}"
    how = ("its own release where there is one, else its released teams added up" if headline.additive(code)
           else "its own release (it does not add up from its teams)")
    description = (f"{subject} of {'the company' if org == hierarchy.COMPANY else 'org ' + org} per window, "
                   f"{ids[0]} to {ids[-1]}, in its 95% band: {how}.")
    svg = answers.grid([("", title, description, found)], ids, "chart-scope", chart_fmt,
                       ["nothing released in these windows"])[0][1]
    return Chart("trend-scope", title, description, [("", svg)], table)


def _org_trends(tree: hierarchy.Hierarchy, orgs: Sequence[str], subject: str, ids: list[str],
                replies: Sequence[release_pb2.ReleaseResponse | None], code: int, metric: str, ceiling: float,
                chart_fmt: Formatter, fmt: Formatter) -> Chart | None:
    """Each org's statistic per window, small multiples on one scale (None: nothing released for
    any org; an org with nothing released is left out)."""
    table = DataTable(f"{subject} per org over {answers.last_windows(len(ids))}",
                      [text("org", "Org"), _WINDOW, *_estimate_columns(fmt)[:4]])
    panels, shown = [], set()
    for org in orgs:
        found = answers.points(ids, replies, org, set(tree.teams_below(org)), code, metric, ceiling)
        if not any(found):
            continue
        shown.add(org)
        for window, point in zip(ids, found, strict=True):
            table.add(org, window, *((point.value, point.ci95, point.low, point.high) if point else (None,) * 4))
        latest = next((p for p in reversed(found) if p), None)
        panels.append((f"{org}: {fmt(latest.value)}" if latest else org, f"{org}: {subject}",
                       f"{subject} of org {org} per window with its 95% band.", found))
    if not panels:
        return None
    title = f"{subject} per org"
    description = (f"One panel per org, all on the same scale, windows {ids[0]} to {ids[-1]}; the latest value in "
                   "each title.")
    if len(panels) < len(orgs):
        description += f" Nothing released in these windows for {', '.join(o for o in orgs if o not in shown)}."
    return Chart("trend-orgs", title, description,
                 answers.grid(panels, ids, "chart-trend-org", chart_fmt), table)


def _team_trends(teams: Sequence[str], subject: str, ids: list[str],
                 replies: Sequence[release_pb2.ReleaseResponse | None], code: int, metric: str,
                 spec: release_pb2.Metric | None, chart_fmt: Formatter,
                 fmt: Formatter) -> tuple[Chart | None, list[str]]:
    """One panel per team whose latest released number says something (and per suppressed team,
    with its reason); the teams with too few people for a weekly number, not drawn."""
    ceiling = _ceiling(code, spec)
    table = DataTable(f"{subject} per team over {answers.last_windows(len(ids), 'closed windows')}",
                      [_WINDOW, _TEAM, _OUTCOME, *_estimate_columns(fmt)])
    series: dict[str, list[Interval | None]] = {}
    latest: dict[str, tuple[release_pb2.TeamRelease, release_pb2.Estimate]] = {}
    reasons: dict[str, str] = {}
    wanted = set(teams)
    for index, (window, reply) in enumerate(zip(ids, replies, strict=True)):
        for team in reply.teams if reply else ():
            if team.team not in wanted or team.level in headline.NODES:
                continue
            estimate = _find(team, code, metric)
            interval = _interval(estimate, ceiling)
            table.add(window, team.team, _outcome(team, code, metric), *_estimate_cells(estimate, interval))
            series.setdefault(team.team, [None] * len(ids))[index] = interval
            if estimate is not None:
                latest[team.team] = (team, estimate)
            elif team.outcome == release_pb2.TEAM_OUTCOME_SUPPRESSED:
                reasons[team.team] = f"suppressed: {team.roster_size} people, below the minimum"
    too_few = sorted(t for t, (team, e) in latest.items()
                     if not answers.says_something(e, code, team.roster_size, spec))
    drawn = sorted(t for t in series if (t in latest and t not in too_few) or (t not in latest and t in reasons))
    if not latest and not reasons:
        return None, too_few
    unreleased = len(series) - len(latest) - len(set(reasons) - set(latest))
    title = f"{subject} per team over time"
    description = (f"One panel per team with enough people for a weekly number (a 95% interval within "
                   f"{answers.limit_words(code)}), all on the same scale, windows {ids[0]} to {ids[-1]}.")
    if unreleased:
        description += f" Not released for {unreleased} team(s) in these windows (listed under Not released)."
    panels = [(team, f"{team}: {subject}",
               f"{subject} of team {team} in windows {ids[0]} to {ids[-1]}, with the 95% interval as a band (a "
               "whisker for a window without released neighbours); gaps are windows with nothing released.",
               series[team]) for team in drawn]
    return Chart("trend", title, description,
                 answers.grid(panels, ids, "chart-trend", chart_fmt,
                              [reasons.get(t, "nothing released in these windows") for t in drawn]), table), too_few


def histogram(api: Api, args: Args) -> Page:
    """How one metric's per-person totals spread over fixed buckets inside one team. Reads only."""
    windows = closed_windows(api)
    window = _window_choice(args, windows)
    page = Page("histogram.html", "Distribution", context={
        "window_options": [(w.id, w.id) for w in windows], "window": window, "not_released": []})
    if window is None:
        return page
    teams = list(api.list_teams(window).teams)
    names = [m.name for m in api.list_metrics(window)]
    eligible = [t.name for t in teams if t.eligible] or [t.name for t in teams]
    team = _choice(args, "team", [t.name for t in teams], eligible[0] if eligible else None)
    metric = _choice(args, "metric", names, names[0] if names else None)
    page.context.update(teams=teams, team=team, metrics=names, metric=metric)
    if team is None or metric is None:
        return page
    code = common_pb2.STATISTIC_HISTOGRAM
    reply = api.read(window, [code], teams=[team], metrics=[metric])
    released = reply.teams[0] if reply.teams else None
    if released is None or released.outcome == release_pb2.TEAM_OUTCOME_SUPPRESSED:
        page.context["suppressed"] = _outcome(released) if released else "nothing released"
        return page
    estimate = _find(released, code, metric)
    if estimate is None:
        page.context["not_released"] = _not_released(window, reply.teams)
        return page
    table = DataTable(f"People per {metric} range in team {team}, window {window}",
                      [text("bucket", "Range"), *_estimate_columns(format_number)])
    buckets = []
    for label, people in zip(charts.bucket_labels(estimate.histogram_edges), estimate.bucket_counts, strict=False):
        interval = Interval(float(people), estimate.ci95)
        buckets.append(interval)
        table.add(label, *_estimate_cells(estimate, interval))
    title = f"Distribution of {metric} in team {team}"
    description = (f"People in team {team} per range of their {metric} total in window {window}, lowest "
                   "range first; only people with some usage count.")
    svg = charts.responsive(charts.histogram_bars, "chart-histogram", title, description, buckets,
                            estimate.histogram_edges)
    page.charts.append(Chart("histogram", title, description, [("", svg)], table))
    return page


@dataclass(frozen=True, slots=True)
class PreviewRow:
    """What a release would do to one team: its cost, the budget left after, the interval."""

    team: str
    epsilon: str
    remaining: str
    remaining_after: str
    interval: str
    over: bool
    note: str


@dataclass(frozen=True, slots=True)
class SpendRequest:
    """The release page's form, validated: what to release, for which teams and nodes (named one by
    one: nothing is ever released for "every team" unless every team is named), at what epsilon."""

    window: str
    statistic: str
    metric: str
    epsilon: str
    teams: tuple[str, ...] = ()
    #: Orgs, or "/" for the company.
    nodes: tuple[str, ...] = ()
    #: Every team of the window (name, eligible) and every org node, for the form's choices.
    team_options: tuple[tuple[str, bool], ...] = ()
    node_options: tuple[str, ...] = ()

    def fields(self) -> list[tuple[str, str]]:
        """The confirmed form's hidden fields: exactly what the preview showed."""
        return [("window", self.window), ("statistic", self.statistic), ("metric", self.metric),
                ("epsilon", self.epsilon), *(("team", t) for t in self.teams), *(("node", n) for n in self.nodes)]

    @property
    def where(self) -> str:
        return spending.naming([*((t, hierarchy.TEAM) for t in self.teams),
                                *((n, hierarchy.ROOT if n == hierarchy.COMPANY else hierarchy.ORG)
                                  for n in self.nodes)])


def _spend_request(api: Api, args: Args, windows: Sequence[common_pb2.Window]) -> tuple[SpendRequest | None, list[str]]:
    window = _window_choice(args, windows)
    if window is None:
        return None, []
    names = [m.name for m in api.list_metrics(window)]
    roster = api.list_teams(window).teams
    tree = hierarchy.Hierarchy.of((t.name, t.org, t.roster_size) for t in roster)
    node_options = () if tree.flat else (hierarchy.COMPANY, *tree.org_nodes())
    teams, nodes = _many(args, "team"), _many(args, "node")
    for name, chosen, allowed in (("team", teams, [t.name for t in roster]), ("node", nodes, node_options)):
        for value in chosen:
            _choice({name: value}, name, allowed, None)
    statistic = _choice(args, "statistic", SPEND_STATISTICS, "histogram")
    assert statistic is not None
    metric = "" if statistic == "adoption" else _choice(args, "metric", names, names[0] if names else "") or ""
    epsilon = (args.get("epsilon") or "").strip()
    if epsilon:
        try:
            if Epsilon.parse(epsilon).micros == 0:
                raise ValueError("must be greater than 0")
        except ValueError as exc:
            raise BadRequest(f"epsilon={epsilon[:20]!r}: {exc}") from None
    return SpendRequest(window, statistic, metric, epsilon, tuple(teams), tuple(nodes),
                        tuple((t.name, t.eligible) for t in roster), tuple(node_options)), names


def spend(api: Api, args: Args) -> Page:
    """The one way to spend budget from the dashboard: pick a statistic, preview its cost per team
    (epsilon, budget left after, expected interval), then confirm. An overspend is said here and
    offers no confirmation, so nothing is sent."""
    windows = closed_windows(api)
    request, names = _spend_request(api, args, windows)
    page = Page("spend.html", "Release more", note="", context={
        "window_options": [(w.id, w.id) for w in windows], "request": request, "metrics": names,
        "statistics": [(s, STATISTIC_WORDS[s]) for s in SPEND_STATISTICS], "rows": [], "preview": False,
        "over": [], "nothing": False, "unchosen": False})
    if request is None or "preview" not in args:
        return page
    if not request.teams and not request.nodes:
        page.context["unchosen"] = True  # nothing is previewed (or sent) for teams nobody named
        return page
    code = STATISTICS[request.statistic][0]
    reply = api.read(request.window, [code], metrics=[request.metric] if request.metric else [],
                     epsilon=request.epsilon, teams=request.teams, nodes=request.nodes)
    rows = []
    for team in reply.teams:
        if team.outcome == release_pb2.TEAM_OUTCOME_SUPPRESSED:
            continue
        who = spending.describe(team)
        missing = _unreleased(team, code, request.metric)
        if missing is None:
            rows.append(PreviewRow(who, "0", team.budget_remaining, team.budget_remaining, "", False,
                                   "already released: free"))
            continue
        cost, left = Epsilon.parse(team.epsilon_required), Epsilon.parse(team.budget_remaining)
        over = cost > left
        after = "refused: over budget" if over else str(left - cost)
        width = (format_percent(missing.expected_ci95) if request.statistic == "adoption"
                 else f"{format_number(missing.expected_ci95)}" if missing.expected_ci95 else "depends on the count")
        note = f"charged to each of its {len(team.teams_charged)} teams" if team.teams_charged else ""
        rows.append(PreviewRow(who, str(cost), str(left), after, width, over, note))
    found = spending.charges([reply])
    page.context.update(rows=rows, preview=True, over=spending.overspent(found),
                        nothing=not found, summary=spending.summary(found),
                        cost=" or ".join(sorted({r.epsilon for r in rows if r.epsilon != "0"})))
    return page


def release_confirmed(api: Api, form: Args) -> release_pb2.ReleaseResponse:
    """Spend: the confirmed form of the release page. The server re-checks the budget in the
    releasing transaction, so a team that spent in between is refused with nothing charged."""
    windows = closed_windows(api)
    request, _ = _spend_request(api, form, windows)
    if request is None:
        raise BadRequest("no closed window to release")
    if not request.teams and not request.nodes:
        raise BadRequest("name at least one team or org to release for (team=... or node=...)")
    code = STATISTICS[request.statistic][0]
    return api.release(request.window, [code], metrics=[request.metric] if request.metric else [],
                       epsilon=request.epsilon, teams=request.teams, nodes=request.nodes)


# Privacy officer (auditor)

# Exact decimal strings from the server, shown and exported as they are.
_BUDGET_FIELDS = ("cap", "spent", "remaining")


def budget(api: Api, args: Args) -> Page:
    """Cap, spent and remaining budget per team for one window, in the window's unit (rho or epsilon)."""
    budgets = api.get_budget()
    windows = sorted({b.window for b in budgets}, reverse=True)
    window = _choice(args, "window", windows, windows[0] if windows else None)
    page = Page("budget.html", "Privacy budget", context={"windows": windows, "window": window}, note=EXACT_NOTE)
    if window is None:
        return page
    table = DataTable(f"Privacy budget per team, window {window}",
                      [_TEAM, _WINDOW, *(Column(name, None, label=name.title()) for name in _BUDGET_FIELDS),
                       Column("releases", label="Releases")])
    bars = []
    rows = [b for b in budgets if b.window == window]
    unit = (rows[0].unit or "epsilon") if rows else "epsilon"  # servers before the discrete Gaussian named none
    for row in rows:
        table.add(row.team, row.window, row.cap, row.spent, row.remaining, row.releases)
        bars.append(BudgetBar(row.team, float(Decimal(row.cap)), float(Decimal(row.spent)),
                              f"{unit} {row.spent} of {row.cap} spent"))
    title = f"Budget spent per team, window {window}"
    description = (f"For each team, the filled part of the bar is the {unit} spent on releases so far and "
                   "the outline is the team-window's cap; nothing more can be released once it is full.")
    svg = charts.responsive(charts.budget_bars, "chart-budget", title, description, bars)
    page.charts.append(Chart("budget", title, description, [("", svg)], table))
    return page


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One ledger entry as the ledger page shows it."""

    seq: int
    time: str
    kind: str
    payload: str  # indented JSON for reading; the canonical form is what was hashed
    prev_hash: str
    hash: str
    signature: str


def _row(signed: audit_pb2.LedgerEntry) -> LedgerRow:
    try:
        e = Entry.from_signed(signed.body, signed.hash, signed.signature)
    except ValueError:  # shown as received; the chain status already reports it
        return LedgerRow(0, "", "", signed.body, "", signed.hash, signed.signature)
    return LedgerRow(e.seq, e.at, e.kind, json.dumps(json.loads(e.payload), indent=2, ensure_ascii=False),
                     e.prev_hash, e.hash, e.signature)


#: One per dashboard process: every auditor sees the same ledger, verified once, then incrementally.
_CHAIN = ChainCache()


LEDGER_KINDS = ("config", "roster_import", "window_open", "window_close", "window_purge", "release",
                "token_create", "token_revoke")


def _about(row: LedgerRow, kind: str, window: str, team: str) -> bool:
    """Whether a ledger entry matches the filters: its kind, its window, and a team it names (a
    release at an org or the company names every team it charged)."""
    if kind and row.kind != kind:
        return False
    if not (window or team):
        return True
    try:
        payload = json.loads(row.payload)
    except ValueError:
        return False
    if window and payload.get("window") != window:
        return False
    return not team or payload.get("team") == team or team in payload.get("teams", ())


def ledger(api: Api, args: Args) -> Page:
    """One page of the signed ledger, with the verifier's verdict on the whole chain; filtered by
    kind, window and team ("everything released about team X": kind release, team X)."""
    status = _CHAIN.status(api.ledger, api.public_key())
    kind = _choice(args, "kind", ("", *LEDGER_KINDS), "") or ""
    window, team = (args.get("window") or "").strip()[:64], (args.get("team") or "").strip()[:128]
    filters = {k: v for k, v in (("kind", kind), ("window", window), ("team", team)) if v}
    context: dict[str, Any] = {"status": status, "filters": filters, "kinds": LEDGER_KINDS, "kind": kind,
                               "window": window, "team": team, "matched": None}
    if not filters:
        last_page = max(1, status.head_seq - LEDGER_PAGE + 1)
        start = _int(args, "from", last_page, 1, max(status.head_seq, 1))
        rows = [_row(e) for e in api.ledger(start, LEDGER_PAGE)]
        total = status.head_seq
    else:  # the whole chain, filtered here; `from` is a position among the matches
        matched = [r for r in map(_row, api.ledger(1, None)) if _about(r, kind, window, team)]
        total = len(matched)
        last_page = max(1, total - LEDGER_PAGE + 1)
        start = _int(args, "from", last_page, 1, max(total, 1))
        rows = matched[start - 1:start - 1 + LEDGER_PAGE]
        context["matched"] = total
    return Page("ledger.html", "Ledger", context=context | {
        "rows": rows, "start": start, "first": 1, "last": last_page,
        "previous": max(1, start - LEDGER_PAGE) if start > 1 else None,
        "next": start + LEDGER_PAGE if start + LEDGER_PAGE <= total else None})


@dataclass(frozen=True, slots=True)
class PolicyRow:
    """A window with its frozen policy, parsed and as the canonical JSON the ledger holds."""

    window: common_pb2.Window
    policy: dict[str, Any]
    policy_json: str


def _policy_rows(api: Api, args: Args) -> tuple[list[PolicyRow], PolicyRow | None]:
    """Every window's frozen policy, newest first, and the one picked by ?window= (default newest)."""
    rows = sorted((PolicyRow(p.window, json.loads(p.policy_json), p.policy_json)
                   for p in api.list_policies()), key=lambda r: r.window.start.seconds, reverse=True)
    window = _choice(args, "window", [r.window.id for r in rows], rows[0].window.id if rows else None)
    return rows, next((r for r in rows if r.window.id == window), None)


def policies(api: Api, args: Args) -> Page:
    """The frozen policy of every window, and the details of one."""
    rows, selected = _policy_rows(api, args)
    return Page("policies.html", "Policies", context={
        "rows": rows, "window": selected.window.id if selected else None, "selected": selected})


def statement(api: Api, args: Args) -> Page:
    """The plain-language privacy statement of one window's policy, worded as `chorus privacy-statement`."""
    rows, selected = _policy_rows(api, args)
    page = Page("statement.html", "Privacy statement", context={
        "window_options": [(r.window.id, r.window.id) for r in rows], "selected": selected,
        "window": selected.window.id if selected else None, "sections": []})
    if selected is not None:
        policy = Policy.from_json(selected.policy)
        page.context["sections"] = statement_sections(selected.window.id, policy)
        page.context["yearly"] = yearly_bound(policy.budget_per_window, policy.window_length)
    return page


def statement_markdown(api: Api, args: Args) -> tuple[str, str] | None:
    """(window id, Markdown text) of the statement the page shows; None before any window opened."""
    _, selected = _policy_rows(api, args)
    if selected is None:
        return None
    policy = Policy.from_json(selected.policy)
    return selected.window.id, render_statement(selected.window.id, policy,
                                                          StatementFormat.MARKDOWN)


Builder = Callable[[Api, Args], Page]
