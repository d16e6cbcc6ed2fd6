"""The organisation page: one node of the tree (the company by default) and the nodes directly
below it, with links down to each org and up to each ancestor.

One Release request per view names the node and its children (`ReleaseRequest.nodes`), so
each org's numbers charge every team-window below it, like any release at a node, and a
repeat view is answered from storage. Where the window holds releases at several levels, the
consistent estimates are shown (the raw ones are in the CSV), and the children not released on
their own appear as "Other teams (no release of their own)" when the server sends their remainder (at least k
people).
"""

from __future__ import annotations

from collections.abc import Sequence

from werkzeug.exceptions import BadRequest

from chorus.server.dashboard import charts, headline
from chorus.server.dashboard.charts import Bar, Interval, format_number, format_percent
from chorus.server.dashboard.gateway import Api
from chorus.server.dashboard.pages import (
    OVERVIEW_STATISTICS,
    STATISTICS,
    Args,
    Chart,
    Page,
    _ceiling,
    _choice,
    _find,
    _outcome,
    _slug,
    _window_choice,
    closed_windows,
)
from chorus.server.dashboard.tables import Column, DataTable, text
from chorus.server.model import hierarchy
from chorus.v1 import common_pb2, release_pb2

OTHER = "Other teams (no release of their own)"
_LEVELS = {release_pb2.NODE_LEVEL_TEAM: "team", release_pb2.NODE_LEVEL_ORG: "org",
           release_pb2.NODE_LEVEL_COMPANY: "company"}


def _tally(teams: Sequence[release_pb2.TeamRelease]) -> dict[str, int]:
    """How many noisy releases this view made and how many came from storage (a derived
    statistic such as adoption is not a release of its own)."""
    tally = {"new": 0, "cached": 0}
    for team in teams:
        for estimate in team.estimates:
            if estimate.release_id:
                tally["cached" if estimate.cached else "new"] += 1
    return tally


def release_state(estimate: release_pb2.Estimate) -> str:
    """Whether this answer spent budget now or came from an earlier release."""
    return "cached" if estimate.cached else "newly released"


def label(node: str) -> str:
    return "Company" if node == hierarchy.COMPANY else node


def org_view(api: Api, args: Args) -> Page:
    """Adoption and one statistic of every metric for a node and each node directly below it."""
    windows = closed_windows(api)
    window = _window_choice(args, windows)
    statistic = _choice(args, "statistic", OVERVIEW_STATISTICS, "sum")
    assert statistic is not None
    page = Page("orgs.html", "Organisation", context={
        "window_options": [(w.id, w.id) for w in windows], "window": window, "statistic": statistic,
        "statistics": [(s, STATISTICS[s][1]) for s in OVERVIEW_STATISTICS], "node": hierarchy.COMPANY})
    if window is None:
        return page
    teams = api.list_teams(window).teams
    tree = hierarchy.Hierarchy.of((t.name, t.org, t.roster_size) for t in teams)
    node = args.get("node") or args.get("org") or hierarchy.COMPANY  # the overview's org filter, carried
    if node not in tree:
        shown = node if len(node) <= 64 else node[:61] + "..."
        raise BadRequest(f"node={shown!r} is not in the organisation tree of window {window}")
    children = tree.children(node)
    trail: list[tuple[str, str]] = []
    parent = tree.parent(node)
    while parent is not None:
        trail.insert(0, (parent, label(parent)))
        parent = tree.parent(parent)
    page.context.update(node=node, node_label=label(node), trail=trail, flat=tree.flat,
                        drill=[(c, c, tree.size(c)) for c in children if tree.level(c) == hierarchy.ORG])
    code, name = STATISTICS[statistic]
    # A read: an org's numbers are released by `chorus report --level org --release` (or --node),
    # never by opening this page.
    reply = api.read(window, [common_pb2.STATISTIC_ADOPTION, code], nodes=[node, *children])
    page.context["tally"] = _tally(reply.teams)
    rows = list(reply.teams)
    # What the overview shows for an org nobody released at its node: its teams' releases added up.
    teams_read = api.read(window, [common_pb2.STATISTIC_ADOPTION, common_pb2.STATISTIC_SUM])
    derive = _Derived(tree, teams_read.teams)
    page.charts.append(_chart(window, node, rows, reply.remainders, common_pb2.STATISTIC_ADOPTION, "",
                              "Adoption", format_percent, None, derive))
    for metric in api.list_metrics(window):
        page.charts.append(_chart(window, node, rows, reply.remainders, code, metric.name,
                                  f"{name} of {metric.name}", format_number, metric, derive))
    return page


class _Derived:
    """An org's (or the company's) adoption or total from its teams' releases, as the overview
    derives it (`headline`): post-processing, for a node not released on its own."""

    def __init__(self, tree: hierarchy.Hierarchy, teams: Sequence[release_pb2.TeamRelease]) -> None:
        self.tree = tree
        self.teams = teams

    def __call__(self, node: str, code: int, metric: str) -> tuple[Interval, str] | None:
        if code not in (common_pb2.STATISTIC_ADOPTION, common_pb2.STATISTIC_SUM):
            return None
        share = code == common_pb2.STATISTIC_ADOPTION
        below = set(self.tree.teams_below(node))
        found = {k: v for k, v in headline.parts(self.teams, "" if share else metric).items() if k in below}
        if not found:
            return None
        value = headline.figure(found, share=share)
        shown = Interval(min(max(value.value, 0.0), 1.0) if share else max(value.value, 0.0), value.ci95,
                         1.0 if share else float("inf"))
        return shown, (f"from its {len(found)} released team(s) (the {self.tree.level(node)} itself is not "
                       "released on its own)")


def _chart(window: str, node: str, rows: list[release_pb2.TeamRelease],
           remainders: Sequence[release_pb2.Remainder], code: int, metric: str, title: str,
           fmt: charts.Formatter, spec: release_pb2.Metric | None, derive: _Derived) -> Chart:
    """One statistic for the node and its children (consistent where the server made it so)."""
    table = DataTable(f"{title} under {label(node)}, window {window}",
                      [text("node", "Node"), text("level", "Level"), Column("roster_size", label="Roster size"),
                       text("outcome", "Outcome"), Column("value", fmt, label="Value"),
                       Column("ci95", fmt, label="± (95%)"), text("consistent", "Consistent"),
                       Column("raw", fmt, label="Raw release"), text("release", "Release")])
    ceiling = _ceiling(code, spec)
    bars = []
    for row in rows:
        estimate = _find(row, code, metric)
        name = label(row.team) + (" (all)" if row.team == node else "")
        derived = derive(row.team, code, metric) if estimate is None and row.level in (
            release_pb2.NODE_LEVEL_ORG, release_pb2.NODE_LEVEL_COMPANY) else None
        if derived is not None:
            interval, how = derived
            table.add(name, _LEVELS.get(row.level, ""), row.roster_size, how, interval.value, interval.ci95,
                      "no", None, "post-processing")
            bars.append(Bar(name, interval))
            continue
        if estimate is None:
            outcome = _outcome(row, code, metric)
            table.add(name, _LEVELS.get(row.level, ""), row.roster_size, outcome, None, None, None, None, None)
            bars.append(Bar(name, None, outcome))
            continue
        consistent = estimate.HasField("consistent")
        value, ci95 = (estimate.consistent.value, estimate.consistent.ci95) if consistent else (estimate.value,
                                                                                                  estimate.ci95)
        interval = Interval(max(0.0, value), ci95, ceiling)
        table.add(name, _LEVELS.get(row.level, ""), row.roster_size, "released", interval.value, interval.ci95,
                  "yes" if consistent else "no", estimate.value, release_state(estimate))
        bars.append(Bar(name, interval))
    for rest in remainders:  # adoption is derived: its remainder would be of active people
        if code != common_pb2.STATISTIC_ADOPTION and (rest.parent, rest.statistic, rest.metric) == (node, code, metric):
            interval = Interval(max(0.0, rest.estimate.value), rest.estimate.ci95, ceiling)
            table.add(f"{OTHER}: {', '.join(rest.children)}", "remainder", rest.roster_size, "released",
                      interval.value, interval.ci95, "yes", None, "post-processing")
            bars.append(Bar(OTHER, interval))
    description = (f"{title} for {label(node)} and each org and team directly below it, window {window}. "
                   "Orgs and the company are charged to every team below them.")
    adoption = code == common_pb2.STATISTIC_ADOPTION
    # The chart rounds large numbers (7.93M) so that they fit a phone; the table keeps them whole.
    svg = charts.responsive(charts.interval_bars, f"chart-{_slug(title)}", title, description, bars,
                            fmt=fmt if adoption else charts.format_compact,
                            include=(0.0, 1.0) if adoption else (0.0,))
    return Chart(_slug(title), title, description, [("", svg)], table)
