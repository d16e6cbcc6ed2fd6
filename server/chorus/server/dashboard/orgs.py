"""The organisation page: one node of the tree (the company by default) and the nodes directly
below it, with links down to each org and up to each ancestor, and the trend of each org below.

It shows the overview's numbers (never "not released" for a number another page shows): an org's
or the company's adoption or total is `headline`'s figure, its own release where there is one,
else its teams' releases added up; a team's is its release as released. Where the window holds
releases at several levels the server also sends consistent estimates (an org equal to the sum
of what is below it): they are in the table and the CSV next to the raw release, and the
children not released on their own appear as "Other teams (no release of their own)" when the
server sends their remainder (at least k people). Opening the page reads only (validate_only);
a metric nobody released is listed under "Not released" with its price, not drawn empty.
"""

from __future__ import annotations

from collections.abc import Sequence

from werkzeug.exceptions import BadRequest

from chorus.server.dashboard import answers, charts, headline
from chorus.server.dashboard.charts import Bar, Interval, format_number, format_percent
from chorus.server.dashboard.gateway import Api
from chorus.server.dashboard.pages import (
    MAX_TREND_WINDOWS,
    OVERVIEW_STATISTICS,
    STATISTICS,
    Args,
    Chart,
    Page,
    _ceiling,
    _choice,
    _find,
    _int,
    _not_released,
    _outcome,
    _recent_reads,
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


def label(node: str) -> str:
    return "Company" if node == hierarchy.COMPANY else node


def org_view(api: Api, args: Args) -> Page:
    """Adoption and one statistic of every released metric for a node and each node directly below
    it, as the overview shows them, and the adoption trend of each org below it."""
    windows = closed_windows(api)
    window = _window_choice(args, windows)
    statistic = _choice(args, "statistic", OVERVIEW_STATISTICS, "sum")
    count = _int(args, "n", 8, 2, MAX_TREND_WINDOWS)
    assert statistic is not None
    page = Page("orgs.html", "Organisation", context={
        "window_options": [(w.id, w.id) for w in windows], "window": window, "statistic": statistic,
        "statistics": [(s, STATISTICS[s][1]) for s in OVERVIEW_STATISTICS], "node": hierarchy.COMPANY,
        "not_released": []})
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
    orgs = [c for c in children if tree.level(c) == hierarchy.ORG]
    page.context.update(node=node, node_label=label(node), trail=trail, flat=tree.flat,
                        drill=[(c, c, tree.size(c)) for c in orgs])
    code, name = STATISTICS[statistic]
    # A read: an org's numbers are released by the plan or `chorus report --level org --release`
    # (or --node), never by opening this page.
    reply = api.read(window, [common_pb2.STATISTIC_ADOPTION, code], nodes=[node, *children])
    rows = list(reply.teams)
    ids = [w.id for w in windows]
    recent = list(reversed(windows[ids.index(window):ids.index(window) + count]))
    reads = _recent_reads(api, recent, [hierarchy.COMPANY, *tree.org_nodes()])  # the last is this window's
    # The overview's figures for the orgs and the company: their own releases, else their teams'.
    this_window = reads[-1] or api.read(window, [common_pb2.STATISTIC_ADOPTION, common_pb2.STATISTIC_SUM])
    figure = _Figures(tree, [*rows, *this_window.teams])
    adoption = _chart(window, node, rows, reply.remainders, common_pb2.STATISTIC_ADOPTION, "", "Adoption",
                      format_percent, None, figure)
    if adoption is not None:
        page.charts.append(adoption)
    trend = _trend(tree, node, orgs, [w.id for w in recent], reads)
    if trend is not None:
        page.charts.append(trend)
    for metric in api.list_metrics(window):
        chart = _chart(window, node, rows, reply.remainders, code, metric.name, f"{name} of {metric.name}",
                       format_number, metric, figure)
        if chart is not None:
            page.charts.append(chart)
    page.context["not_released"] = [item for item in _not_released(window, rows)
                                    if not page.chart(_slug(_title(item.statistic, item.metric)))]
    return page


def _title(statistic: str, metric: str) -> str:
    return f"{STATISTICS[statistic][1]} of {metric}" if metric else STATISTICS[statistic][1]


def _trend(tree: hierarchy.Hierarchy, node: str, orgs: Sequence[str], ids: Sequence[str],
           reads: Sequence[release_pb2.ReleaseResponse | None]) -> Chart | None:
    """Each org below the node as a small-multiple adoption trend (the overview's), or the node's
    own line when no org is below it."""
    if orgs:
        found = answers.org_rows(tree, node, ids, reads, "name")
        table = answers.org_table(found, label(node), ids[-1])
        return Chart("org-trends", f"Adoption per org over {answers.last_windows(len(ids))}",
                     f"Each org under {label(node)}: its adoption per window with its 95% band, and in each "
                     "panel's title its latest adoption and its change over the windows shown.",
                     answers.small_multiples(found), table)
    inside = None if node == hierarchy.COMPANY else set(tree.teams_below(node))
    data = answers.series(ids, reads, node, inside)
    if not any(data.parts):
        return None
    title, description, svg, table = answers.company_chart(label(node) if node == hierarchy.COMPANY
                                                           else f"Org {node}", data)
    return Chart("org-trends", title, description, [("", svg)], table)


class _Figures:
    """An org's (or the company's) adoption or total as the overview shows it (`headline`): its
    own release where there is one, else its teams' releases added up (post-processing)."""

    def __init__(self, tree: hierarchy.Hierarchy, teams: Sequence[release_pb2.TeamRelease]) -> None:
        self.tree = tree
        self.teams = teams

    def __call__(self, node: str, code: int, metric: str) -> tuple[Interval, str] | None:
        if code not in (common_pb2.STATISTIC_ADOPTION, common_pb2.STATISTIC_SUM):
            return None
        share = code == common_pb2.STATISTIC_ADOPTION
        found = headline.scoped(self.teams, node, set(self.tree.teams_below(node)), "" if share else metric)
        if not found:
            return None
        how = (f"released for the {self.tree.level(node)} itself" if list(found) == [node] else
               f"from its {len(found)} released team(s) (the {self.tree.level(node)} itself is not released on "
               "its own)")
        return answers.shown(headline.figure(found, share=share), share), how


def _chart(window: str, node: str, rows: list[release_pb2.TeamRelease],
           remainders: Sequence[release_pb2.Remainder], code: int, metric: str, title: str,
           fmt: charts.Formatter, spec: release_pb2.Metric | None, figure: _Figures) -> Chart | None:
    """One statistic for the node and its children, as the overview shows them (the consistent
    estimate beside the raw release in the table); None when nothing of it is released here."""
    table = DataTable(f"{title} under {label(node)}, window {window}",
                      [text("node", "Node"), text("level", "Level"), Column("roster_size", label="Roster size"),
                       text("outcome", "Outcome"), Column("value", fmt, label="Value"),
                       Column("ci95", fmt, label="± (95%)"), text("consistent", "Consistent"),
                       Column("consistent_value", fmt, label="Consistent value"),
                       Column("raw", fmt, label="Raw release"), text("release", "Release")])
    ceiling = _ceiling(code, spec)
    bars = []
    for row in rows:
        estimate = _find(row, code, metric)
        name = label(row.team)
        level = _LEVELS.get(row.level, "")
        consistent = estimate is not None and estimate.HasField("consistent")
        together = (estimate.consistent.value if consistent else None) if estimate is not None else None
        found = figure(row.team, code, metric) if row.level in headline.NODES else None
        if found is not None:
            interval, how = found
            table.add(name, level, row.roster_size, how, interval.value, interval.ci95,
                      "yes" if consistent else "no", together, estimate.value if estimate else None,
                      release_state(estimate) if estimate and estimate.release_id else "post-processing")
            bars.append(Bar(name, interval))
            continue
        if estimate is None:
            outcome = _outcome(row, code, metric)
            table.add(name, level, row.roster_size, outcome, None, None, None, None, None, None)
            bars.append(Bar(name, None, outcome))
            continue
        interval = Interval(max(0.0, estimate.value), estimate.ci95, ceiling)
        table.add(name, level, row.roster_size, "released", interval.value, interval.ci95,
                  "yes" if consistent else "no", together, estimate.value, release_state(estimate))
        # A team is drawn as on the overview: only where its weekly number says something.
        says = row.level in headline.NODES or answers.says_something(estimate, code, row.roster_size, spec)
        bars.append(Bar(name, interval) if says else Bar(name, None, answers.TOO_FEW))
    for rest in remainders:  # adoption is derived: its remainder would be of active people
        if code != common_pb2.STATISTIC_ADOPTION and (rest.parent, rest.statistic, rest.metric) == (node, code, metric):
            # A consistent estimate: in the table beside the others, not drawn next to raw releases.
            interval = Interval(max(0.0, rest.estimate.value), rest.estimate.ci95, ceiling)
            table.add(f"{OTHER}: {', '.join(rest.children)}", "remainder", rest.roster_size, "consistent only",
                      None, None, "yes", interval.value, None, "post-processing")
    if all(b.interval is None for b in bars):
        return None
    description = (f"{title} for {label(node)} and each org and team directly below it, window {window}, as the "
                   "overview shows them. Orgs and the company are charged to every team below them.")
    adoption = code == common_pb2.STATISTIC_ADOPTION
    # The chart rounds large numbers (7.93M) so that they fit a phone; the table keeps them whole.
    svg = charts.responsive(charts.interval_bars, f"chart-{_slug(title)}", title, description, bars,
                            fmt=fmt if adoption else charts.format_compact,
                            include=(0.0, 1.0) if adoption else (0.0,))
    # Adoption is the page's question; each metric's chart waits behind its title.
    return Chart(_slug(title), title, description, [("", svg)], table, collapsed=not adoption)


def release_state(estimate: release_pb2.Estimate) -> str:
    """Whether this answer spent budget now or came from an earlier release."""
    return "cached" if estimate.cached else "newly released"
