"""Page builders: from the gRPC API and the query string to charts, tables and template context.

Each builder is a plain function of an `Api` and the request arguments. The HTML view and the
CSV download of a page call the same builder, so a download always holds the numbers on screen;
because Release answers repeats from storage, building a page twice never spends budget twice.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from decimal import Decimal
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from markupsafe import Markup
from werkzeug.exceptions import BadRequest

from chorus.server.dashboard import charts
from chorus.server.dashboard.charts import (
    Bar,
    BudgetBar,
    Formatter,
    Interval,
    format_number,
    format_percent,
)
from chorus.server.dashboard.gateway import Api, GatewayError
from chorus.server.dashboard.tables import Cell, Column, DataTable, text
from chorus.server.dashboard.verification import ChainCache
from chorus.server.ledger_format import Entry
from chorus.server.policy import Policy
from chorus.server.presentation.numbers import format_compact
from chorus.server.presentation.statement import StatementFormat, render_statement, statement_sections
from chorus.server.statistics import Statistic
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
}
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
    note: str = NOISE_NOTE


@dataclass(slots=True)
class Page:
    """What a view renders: a template, its charts (each downloadable as CSV) and other context."""

    template: str
    title: str
    charts: list[Chart] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)

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


def _tally(teams: Sequence[release_pb2.TeamRelease], tally: dict[str, int] | None = None) -> dict[str, int]:
    """How many noisy releases this request made and how many came from storage (a derived
    statistic such as adoption is not a release of its own)."""
    tally = tally if tally is not None else {"new": 0, "cached": 0}
    for team in teams:
        for estimate in team.estimates:
            if estimate.release_id:
                tally["cached" if estimate.cached else "new"] += 1
    return tally


def closed_windows(api: Api) -> list[common_pb2.Window]:
    """Closed windows, newest first: only those can be released."""
    return [w for w in api.list_windows() if w.state == common_pb2.WINDOW_STATE_CLOSED]


def utc(ts: Timestamp) -> str:
    """A protobuf timestamp as "2026-11-25 00:00 UTC"."""
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M UTC")


# Estimates: the cells every table of released numbers shares.

def _find(team: release_pb2.TeamRelease, statistic: int, metric: str = "") -> release_pb2.Estimate | None:
    return next((e for e in team.estimates if e.statistic == statistic and e.metric == metric), None)


def release_state(estimate: release_pb2.Estimate) -> str:
    """Whether this answer spent budget now or came from an earlier release."""
    return "cached" if estimate.cached else "newly released"


def _outcome(team: release_pb2.TeamRelease) -> str:
    if team.outcome == release_pb2.TEAM_OUTCOME_SUPPRESSED:
        return f"suppressed: {team.message}" if team.message else "suppressed"
    return "released"


_TEAM = text("team", "Team")
_WINDOW = text("window", "Window")
_OUTCOME = text("outcome", "Outcome")


def _estimate_columns(fmt: Formatter) -> list[Column]:
    return [Column("value", fmt, label="Value"), Column("ci95", fmt, label="± (95%)"),
            Column("low", fmt, label="95% low"), Column("high", fmt, label="95% high"),
            text("epsilon", "Epsilon"), text("release", "Release"), text("note", "Note")]


def _estimate_cells(estimate: release_pb2.Estimate | None, interval: Interval | None) -> tuple[Cell, ...]:
    if estimate is None or interval is None:
        return (None,) * 7
    return (interval.value, interval.ci95, interval.low, interval.high, estimate.epsilon,
            release_state(estimate), estimate.note)


def _ceiling(statistic: int, metric: release_pb2.Metric | None) -> float:
    """The most a statistic can be: adoption is a share, a mean is capped by the metric's bound."""
    if statistic == common_pb2.STATISTIC_ADOPTION:
        return 1.0
    if statistic == common_pb2.STATISTIC_MEAN and metric is not None:
        return float(metric.max_per_user)
    return math.inf


def _interval(estimate: release_pb2.Estimate | None, ceiling: float) -> Interval | None:
    return Interval(estimate.value, estimate.ci95, ceiling) if estimate is not None else None


def _bar(team: release_pb2.TeamRelease, interval: Interval | None) -> Bar:
    note = _outcome(team) if team.outcome == release_pb2.TEAM_OUTCOME_SUPPRESSED else "not released"
    return Bar(team.team, interval, note)


def _slug(text_: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text_.lower())


# Leadership (analyst)

def overview(api: Api, args: Args) -> Page:
    """Adoption and one statistic of every metric, per team, for one closed window."""
    windows = closed_windows(api)
    window = _window_choice(args, windows)
    statistic = _choice(args, "statistic", OVERVIEW_STATISTICS, Statistic.SUM)
    assert statistic is not None
    page = Page("overview.html", "Team overview", context={
        "window_options": [(w.id, w.id) for w in windows], "window": window, "statistic": statistic,
        "statistics": [(s, STATISTICS[s][1]) for s in OVERVIEW_STATISTICS]})
    if window is None:
        return page
    code, label = STATISTICS[statistic]
    metrics = api.list_metrics(window)
    reply = api.release(window, [common_pb2.STATISTIC_ADOPTION, code])
    page.context["tally"] = _tally(reply.teams)
    page.charts.append(_adoption_chart(window, reply.teams))
    for metric in metrics:
        table = DataTable(f"{label} of {metric.name} per team, window {window}",
                          [_TEAM, _OUTCOME, *_estimate_columns(format_number)])
        bars = []
        for team in reply.teams:
            estimate = _find(team, code, metric.name)
            interval = _interval(estimate, _ceiling(code, metric))
            table.add(team.team, _outcome(team), *_estimate_cells(estimate, interval))
            bars.append(_bar(team, interval))
        title = f"{label} of {metric.name} per team"
        description = (f"{metric.description}. Each person's total is capped at {metric.max_per_user:,} "
                       f"before it counts. Window {window}.")
        svg = charts.interval_bars(f"chart-{_slug(metric.name)}", title, description, bars)
        page.charts.append(Chart(_slug(metric.name), title, description, [("", svg)], table))
    return page


def _adoption_chart(window: str, teams: Sequence[release_pb2.TeamRelease]) -> Chart:
    code = common_pb2.STATISTIC_ADOPTION
    table = DataTable(f"Adoption per team, window {window}",
                      [_TEAM, Column("roster_size", label="Roster size"), _OUTCOME,
                       *_estimate_columns(format_percent), text("budget_remaining", "Budget left")])
    bars = []
    for team in teams:
        estimate = _find(team, code)
        interval = _interval(estimate, _ceiling(code, None))
        table.add(team.team, team.roster_size, _outcome(team), *_estimate_cells(estimate, interval),
                  team.budget_remaining)
        bars.append(_bar(team, interval))
    title = "Adoption per team"
    description = (f"Share of each team's roster active with AI tools in window {window}: people with any "
                   "usage divided by the roster size.")
    svg = charts.interval_bars("chart-adoption", title, description, bars, fmt=format_percent,
                               include=(0.0, 1.0))
    return Chart("adoption", title, description, [("", svg)], table)


def trends(api: Api, args: Args) -> Page:
    """One statistic over the last N closed windows, one small chart per team on a shared scale."""
    windows = closed_windows(api)
    count = _int(args, "n", 8, 2, MAX_TREND_WINDOWS)
    recent = list(reversed(windows[:count]))
    statistic = _choice(args, "statistic", TREND_STATISTICS, Statistic.ADOPTION)
    assert statistic is not None
    metrics = {m.name: m for m in api.list_metrics(recent[-1].id)} if recent else {}
    names = list(metrics)
    metric = _choice(args, "metric", names, names[0] if names else None)
    page = Page("trends.html", "Trends", context={
        "n": count, "statistic": statistic, "metric": metric, "metrics": names, "problems": [], "tally": None,
        "statistics": [(s, STATISTICS[s][1]) for s in TREND_STATISTICS]})
    if not recent:
        return page
    code, label = STATISTICS[statistic]
    adoption = statistic == Statistic.ADOPTION
    fmt, chart_fmt = (format_percent, format_percent) if adoption else (format_number, format_compact)
    subject = label if adoption else f"{label} of {metric}"
    table = DataTable(f"{subject} per team over the last {len(recent)} closed windows",
                      [_WINDOW, _TEAM, _OUTCOME, *_estimate_columns(fmt)])
    series: dict[str, list[Interval | None]] = {}
    for index, window in enumerate(recent):
        try:
            reply = api.release(window.id, [code], metrics=[] if adoption or metric is None else [metric])
        except GatewayError as exc:
            if exc.code not in _PER_WINDOW_FAILURES:
                raise
            page.context["problems"].append((window.id, exc.message))
            continue
        page.context["tally"] = _tally(reply.teams, page.context["tally"])
        for team in reply.teams:
            estimate = _find(team, code, "" if adoption else metric or "")
            interval = _interval(estimate, _ceiling(code, metrics.get(metric or "")))
            table.add(window.id, team.team, _outcome(team), *_estimate_cells(estimate, interval))
            series.setdefault(team.team, [None] * len(recent))[index] = interval
    domain = [v for points in series.values() for p in points if p for v in (p.low, p.high)]
    ids = [w.id for w in recent]
    panels = []
    for number, team in enumerate(sorted(series)):
        title = f"{team}: {subject}"
        description = (f"{subject} of team {team} in windows {ids[0]} to {ids[-1]}, with the 95% interval "
                       "as a band; gaps are windows with nothing released for this team.")
        panels.append((team, charts.trend_panel(f"chart-trend-{number}", title, description, ids,
                                                series[team], domain or [0.0], fmt=chart_fmt)))
    title = f"{subject} per team over time"
    description = f"One panel per team, all on the same scale, windows {ids[0]} to {ids[-1]}."
    page.charts.append(Chart("trend", title, description, panels, table))
    return page


def _bucket_labels(edges: Sequence[int]) -> list[str]:
    """Bucket names for edges e0 < ... < en: "< e0", "e0 to e1-1" with a dash, ..., "≥ en".

    Totals are whole numbers, so the bucket [e0, e1) is written with its last member e1 - 1.
    """
    if not edges:
        return ["all"]
    labels = [f"< {edges[0]:,}"]
    labels += [f"{low:,}\u2013{high - 1:,}" for low, high in itertools.pairwise(edges)]
    return [*labels, f"≥ {edges[-1]:,}"]


def histogram(api: Api, args: Args) -> Page:
    """How one metric's per-person totals spread over fixed buckets inside one team."""
    windows = closed_windows(api)
    window = _window_choice(args, windows)
    page = Page("histogram.html", "Distribution", context={
        "window_options": [(w.id, w.id) for w in windows], "window": window})
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
    reply = api.release(window, [code], teams=[team], metrics=[metric])
    released = reply.teams[0] if reply.teams else None
    page.context["tally"] = _tally(reply.teams)
    if released is None or released.outcome == release_pb2.TEAM_OUTCOME_SUPPRESSED:
        page.context["suppressed"] = _outcome(released) if released else "nothing released"
        return page
    estimate = _find(released, code, metric)
    if estimate is None:
        page.context["suppressed"] = "nothing released"
        return page
    table = DataTable(f"People per {metric} range in team {team}, window {window}",
                      [text("bucket", "Range"), *_estimate_columns(format_number)])
    buckets = []
    for label, people in zip(_bucket_labels(estimate.histogram_edges), estimate.bucket_counts, strict=False):
        interval = Interval(float(people), estimate.ci95)
        buckets.append(interval)
        table.add(label, *_estimate_cells(estimate, interval))
    title = f"Distribution of {metric} in team {team}"
    description = (f"People in team {team} per range of their {metric} total in window {window}, lowest "
                   "range first, with the range edges marked between the bars; only people with some usage "
                   "count.")
    svg = charts.histogram_bars("chart-histogram", title, description, buckets, estimate.histogram_edges)
    page.charts.append(Chart("histogram", title, description, [("", svg)], table))
    return page


# Privacy officer (auditor)

# Exact decimal strings from the server, shown and exported as they are.
_BUDGET_FIELDS = ("cap", "spent", "remaining")


def budget(api: Api, args: Args) -> Page:
    """Cap, spent and remaining epsilon per team for one window."""
    budgets = api.get_budget()
    windows = sorted({b.window for b in budgets}, reverse=True)
    window = _choice(args, "window", windows, windows[0] if windows else None)
    page = Page("budget.html", "Privacy budget", context={"windows": windows, "window": window})
    if window is None:
        return page
    table = DataTable(f"Privacy budget per team, window {window}",
                      [_TEAM, _WINDOW, *(Column(name, None, label=name.title()) for name in _BUDGET_FIELDS),
                       Column("releases", label="Releases")])
    bars = []
    for row in (b for b in budgets if b.window == window):
        table.add(row.team, row.window, row.cap, row.spent, row.remaining, row.releases)
        bars.append(BudgetBar(row.team, float(Decimal(row.cap)), float(Decimal(row.spent)),
                              f"{row.spent} of {row.cap} spent"))
    title = f"Budget spent per team, window {window}"
    description = ("For each team, the filled part of the bar is the epsilon spent on releases so far and "
                   "the outline is the team-window's cap; nothing more can be released once it is full.")
    svg = charts.budget_bars("chart-budget", title, description, bars)
    page.charts.append(Chart("budget", title, description, [("", svg)], table, note=EXACT_NOTE))
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


def ledger(api: Api, args: Args) -> Page:
    """One page of the signed ledger, with the verifier's verdict on the whole chain."""
    status = _CHAIN.status(api.ledger, api.public_key())
    last_page = max(1, status.head_seq - LEDGER_PAGE + 1)
    start = _int(args, "from", last_page, 1, max(status.head_seq, 1))
    rows = [_row(e) for e in api.ledger(start, LEDGER_PAGE)]
    return Page("ledger.html", "Ledger", context={
        "status": status, "rows": rows, "start": start, "first": 1, "last": last_page,
        "previous": max(1, start - LEDGER_PAGE) if start > 1 else None,
        "next": start + LEDGER_PAGE if start + LEDGER_PAGE <= status.head_seq else None})


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
        page.context["sections"] = statement_sections(selected.window.id,
                                                                Policy.from_json(selected.policy))
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
