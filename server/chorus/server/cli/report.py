"""`chorus report`: team statistics of closed windows with 95% intervals, as an analyst sees them.

A client of ReleaseService like any other. By default it only reads (validate_only): the
numbers already released, by the window's release plan or by anyone before, and for each
statistic never released what it would cost. It spends only with --release, after a read of
the same request shows that every team's budget covers it; a request that would overspend is
refused here, before anything is sent. Asking again for released numbers is free.
`--level org|company` and `--node` read (or with --release, release) at nodes of the
organisation tree instead (each release charging every team-window below the node); when the
window holds releases at several levels, the table shows the consistent estimates the server
computed.
"""

from __future__ import annotations

import enum
import math
import sys
from collections.abc import Callable
from typing import Annotated

import grpc
import typer
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from chorus.server.cli._common import (
    DEFAULT_SERVER,
    CaOpt,
    CertOpt,
    Connection,
    ExitCode,
    KeyOpt,
    ServerOpt,
    TokenFileOpt,
    TokenOpt,
    connect,
    console,
    err_console,
    fail,
    rpc_errors,
)
from chorus.server.cli._output import Format, FormatOpt, emit
from chorus.server.front import spending
from chorus.server.front.numbers import format_compact
from chorus.server.front.paging import every_page
from chorus.server.front.report_records import FIELDS, org_nodes, records
from chorus.server.model import hierarchy
from chorus.server.model.statistics import Statistic, name_of
from chorus.server.privacy.epsilon import Epsilon
from chorus.v1 import common_pb2, release_pb2, release_pb2_grpc


class Level(enum.StrEnum):
    TEAM = "team"
    ORG = "org"
    COMPANY = "company"


#: How the table names a remainder of children not released on their own.
OTHER = "Other teams (no release of their own)"


def report(
    window: Annotated[str | None, typer.Option("--window", "-w", help="Window id, e.g. 2026-11-25 or "
                                               "2026-W48; default: the latest closed window.")] = None,
    statistic: Annotated[list[Statistic] | None, typer.Option(
        "--statistic", help="Statistic per metric; repeat for several. Default: sum. A read adds adoption (the "
        "share of each team's roster active in the window), in every format; --release releases only what is "
        "asked; --trend shows only the one statistic given.")] = None,
    metric: Annotated[list[str] | None, typer.Option("--metric", "-m", help="Metric name; repeat for "
                                                     "several. Default: every metric.")] = None,
    team: Annotated[list[str] | None, typer.Option("--team", "-t", help="Team name; repeat for several. "
                                                   "Default: every team.")] = None,
    level: Annotated[Level | None, typer.Option("--level", help="Release at every node of a level of the "
                                                "organisation tree: org (every org, at any depth) or "
                                                "company; team is the default.")] = None,
    node: Annotated[list[str] | None, typer.Option("--node", "-n", help="A node of the organisation tree: an "
                                                   "org path (engineering, engineering/platform), / for the "
                                                   "company, or a team; repeat for several.")] = None,
    denominator: Annotated[list[str] | None, typer.Option(
        "--denominator", help="For --statistic ratio: a metric whose sum is part of the denominator; repeat for "
        "several (each --metric is a numerator), e.g. --metric ai.suggestions_accepted --denominator "
        "ai.suggestions_accepted --denominator ai.suggestions_rejected: the share of AI edits accepted.")] = None,
    epsilon: Annotated[str | None, typer.Option("--epsilon", help="Epsilon per noisy statistic released "
                                                "now, e.g. 0.1. Default: the window's defaults.")] = None,
    spend: Annotated[bool, typer.Option("--release", help="Release what is not released yet, spending "
                                        "privacy budget: its cost is shown first and asked to be confirmed "
                                        "(an overspend is refused before anything is sent). Without it "
                                        "nothing is spent.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="With --release: spend without asking (for scripts); "
                                      "without a terminal, --release refuses unless --yes is given.")] = False,
    trend: Annotated[int | None, typer.Option("--trend", min=1, max=520, help="Instead: one statistic "
                                              "of one --metric per team over the last N closed "
                                              "windows.")] = None,
    fmt: FormatOpt = Format.TABLE,
    server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, client_cert: CertOpt = None, client_key: KeyOpt = None,
) -> None:
    """Team statistics with 95% intervals for a closed window, or a trend over closed windows.

    Teams below the minimum size are listed as suppressed, with the reason.

    Reading is free: without --release it shows what is released and what the rest would cost.

    With --release, a first release charges the team-window's privacy budget; repeats are free and identical.

    The table shows large numbers rounded (7.93M ± 3.00M) when the full ones do not fit; csv and json keep them.
    """
    statistics = list(dict.fromkeys(statistic or [Statistic.SUM]))
    over = list(dict.fromkeys(denominator or []))
    if (Statistic.RATIO in statistics) != bool(over):
        raise fail("--statistic ratio needs --denominator (the metrics whose sums divide each --metric's), and "
                   "--denominator is only for --statistic ratio", ExitCode.USAGE)
    if epsilon is not None:
        try:
            Epsilon.parse(epsilon)
        except ValueError as exc:
            raise fail(f"--epsilon: {exc}", ExitCode.USAGE) from None
    if trend is not None and (len(statistics) != 1 or (statistics[0] != Statistic.ADOPTION
                                                       and len(metric or []) != 1)):
        raise fail("--trend shows one statistic of one metric: pass one --statistic and one --metric "
                   "(or --statistic adoption)", ExitCode.USAGE)
    nodes = list(node or [])
    with connect(server, token, token_file, ca, client_cert, client_key) as conn:
        stub = release_pb2_grpc.ReleaseServiceStub(conn.channel)
        closed = closed_windows(conn, stub)
        if not closed and (trend is not None or window is None):
            raise fail("no closed window yet: a window is released only after it closes "
                       "(its end plus the grace period)", ExitCode.FAILED_PRECONDITION)
        if level is Level.COMPANY:
            nodes.insert(0, hierarchy.COMPANY)
        elif level is Level.ORG:
            nodes[:0] = _orgs(conn, stub, window or closed[0])
            if not nodes:
                raise fail(f"window {window or closed[0]} has no orgs: the roster gave no org column when it "
                           "closed", ExitCode.FAILED_PRECONDITION)
        if trend is not None:
            windows = closed[:trend][::-1]
            if spend:
                _confirm(_trend(conn, stub, windows, team or [], metric or [], statistics[0], epsilon, nodes,
                                over, True), yes)
            replies = _trend(conn, stub, windows, team or [], metric or [], statistics[0], epsilon, nodes,
                             over, not spend)
        else:
            if window is None:
                window = closed[0]
            if not spend and Statistic.ADOPTION not in statistics:  # a read is free: show adoption too
                statistics.append(Statistic.ADOPTION)
            request = _request(window, team or [], metric or [], statistics, epsilon, nodes, over)
            if spend:
                preview = _request(window, team or [], metric or [], statistics, epsilon, nodes, over,
                                   read=True)
                _confirm([conn.call(stub.Release, preview)], yes)
            else:
                request.validate_only = True
            replies = [conn.call(stub.Release, request)]
    emit(fmt, FIELDS, records(replies),
         lambda: _print_trend(replies, statistics[0]) if trend is not None else _print_report(replies[0], statistics))


def closed_windows(conn: Connection, stub: release_pb2_grpc.ReleaseServiceStub) -> list[str]:
    """Closed window ids, newest first."""
    windows = every_page(lambda r: conn.call(stub.ListWindows, r), release_pb2.ListWindowsRequest(), "windows")
    return [w.id for w in windows if w.state == common_pb2.WINDOW_STATE_CLOSED]


def _orgs(conn: Connection, stub: release_pb2_grpc.ReleaseServiceStub, window: str) -> list[str]:
    """Every org of the window's frozen tree, parents first."""
    return org_nodes(conn.call(stub.ListTeams, release_pb2.ListTeamsRequest(window=window)).teams)


def _request(window: str, teams: list[str], metrics: list[str], statistics: list[Statistic],
             epsilon: str | None, nodes: list[str] | None = None, denominator: list[str] | None = None, *,
             read: bool = False) -> release_pb2.ReleaseRequest:
    return release_pb2.ReleaseRequest(
        window=window, teams=teams, metrics=metrics, nodes=nodes or [], validate_only=read,
        statistics=[release_pb2.StatisticRequest(statistic=s.proto, epsilon=epsilon or "",
                                                 denominator=denominator if s is Statistic.RATIO else [])
                    for s in statistics])


def _trend(conn: Connection, stub: release_pb2_grpc.ReleaseServiceStub, windows: list[str],
           teams: list[str], metrics: list[str], statistic: Statistic,
           epsilon: str | None, nodes: list[str], denominator: list[str],
           read: bool) -> list[release_pb2.ReleaseResponse]:
    """One release (or read) per window, oldest first; a window past retention is shown as unavailable."""
    replies = []
    for window in windows:
        try:
            replies.append(stub.Release(_request(window, teams, metrics, [statistic], epsilon, nodes, denominator,
                                                 read=read),
                                        metadata=conn.metadata, timeout=60))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                with rpc_errors(conn.server, conn.token_source):
                    raise
            err_console.print(f"{window}: {exc.details()}")
            replies.append(release_pb2.ReleaseResponse(window=window))
    return replies


def _confirm(previews: list[release_pb2.ReleaseResponse], yes: bool) -> None:
    """Before anything is sent: refuse a release some budget cannot pay for, then show what it
    would charge and have it confirmed (on a terminal, or by --yes; without either, refuse)."""
    found = spending.charges(previews)
    over = spending.overspent(found)
    if over:
        raise fail("RESOURCE_EXHAUSTED, not sent: this release would overspend the privacy budget: " + "; ".join(over)
                   + ". Nothing was released or charged; ask for fewer statistics, fewer teams or a smaller "
                   "--epsilon", ExitCode.RESOURCE_EXHAUSTED)
    if not found or yes:  # the table's footer says what was charged
        return
    if not sys.stdin.isatty():
        raise fail(f"not sent: {spending.summary(found)} Nothing was released or charged: confirm on a terminal, "
                   "or pass --yes to spend from a script", ExitCode.USAGE)
    err_console.print(spending.summary(found), highlight=False)
    if not typer.confirm("Release and spend it?", default=False, err=True):
        raise fail("not sent: nothing was released or charged", ExitCode.USAGE)


#: A cell's parts: the value, the 95% half-width, and "*" when post-processed (or "" each).
Parts = tuple[str, str, str]


def _number(x: float, decimals: int, compact: bool) -> str:
    """x with thousands separators; when compact, from 100,000 up: 3 significant digits and K, M, B or T."""
    if compact and abs(x) >= 100_000:
        return format_compact(x, fixed=True)
    return f"{x:,.{decimals}f}"


def _parts(e: release_pb2.Estimate, compact: bool) -> Parts:
    """value and 95% half-width in the statistic's natural unit; csv and json keep full precision.
    A consistent estimate, when there is one, is shown instead of the raw release, marked †."""
    if e.HasField("consistent"):
        return _number(e.consistent.value, 0, compact), _number(e.consistent.ci95, 0, compact), "†"
    mark = "*" if e.note else ""
    stat = Statistic.of(e.statistic)
    if stat is Statistic.HISTOGRAM:
        return "·".join(_number(c, 0, compact) for c in e.bucket_counts), _number(e.ci95, 0, compact), mark
    if stat is Statistic.ADOPTION or (stat is Statistic.RATIO and e.metric in e.denominator):  # a share
        return f"{e.value:.0%}", f"{e.ci95:.0%}", mark
    if stat is Statistic.RATIO:
        return _number(e.value, 2, compact), "∞" if math.isinf(e.ci95) else _number(e.ci95, 2, compact), mark
    decimals = 1 if stat is Statistic.MEAN else 0
    return _number(e.value, decimals, compact), _number(e.ci95, decimals, compact), mark


def _number_column(table: Table, header: str, column: list[Parts | str]) -> list[str]:
    """Add a column of "value ± ci" cells, never wrapped, padded so that the ± signs line up; its cells.

    Every cell is padded to the column's width (trailing space included, where another cell has
    a * mark), so the column is left-justified: a right-justified one would strip that space.
    """
    parts = [c for c in column if not isinstance(c, str)]
    value_width = max((len(v) for v, _, _ in parts), default=0)
    ci_width = max((len(ci) for _, ci, _ in parts), default=0)
    mark_width = max((len(m) for _, _, m in parts), default=0)
    cells = [c if isinstance(c, str) else f"{c[0]:>{value_width}} ± {c[1]:>{ci_width}}{c[2]:<{mark_width}}"
             for c in column]
    width = max([len(header), *map(len, cells)])  # no cell at all: every window past retention
    table.add_column(Text(header, justify="right"), justify="left", no_wrap=True)
    return [c.rjust(width) for c in cells]


def _print_fitted(build: Callable[[bool], Table]) -> None:
    """Print the table with full numbers if it fits the terminal, else with compact numbers.

    Every column is no_wrap, so no cell is ever wrapped or cut; if even the compact table is
    wider than the terminal, it is printed wider (a pipe keeps its lines whole).
    """
    for compact in (False, True):
        table = build(compact)
        natural = console.measure(table, options=console.options.update_width(1_000_000)).maximum
        if natural <= console.width:
            break
    else:
        table.width = natural
    if isinstance(table.title, str) and cell_len(table.title) > natural:  # above the table, not wrapped in it
        console.print(Text(table.title, style="table.title"))
        table.title = None
    console.print(table, crop=False)


def _footer(replies: list[release_pb2.ReleaseResponse]) -> None:
    if any(e.HasField("consistent") for r in replies for t in r.teams for e in t.estimates):
        console.print("† consistent across the levels of the organisation tree: every org equals the sum of "
                      "its teams (weighted least squares over the window's releases, no extra charge); the raw "
                      "releases are in --format json")
    if any(e.note for r in replies for t in r.teams for e in t.estimates):
        console.print("* post-processed: a negative noisy value is shown as 0 (or a ratio clamped to its "
                      "range); the noisy values are in --format json")
    unreleased: dict[str, dict[str, release_pb2.TeamRelease]] = {}
    for r in replies:
        for t in r.teams:
            for u in t.unreleased:
                what = f"{name_of(u.statistic)} of {u.metric}" if u.metric else name_of(u.statistic)
                per = "per team" if t.level in (release_pb2.NODE_LEVEL_TEAM, 0) else "per team below it"
                unreleased.setdefault(f"{what} ({t.unit or 'epsilon'} {u.epsilon} {per})", {})[t.team] = t
    for what, nodes in unreleased.items():
        console.print(f"not released: {what} for {spending.naming(nodes.values())}; `--release` spends it",
                      highlight=False)
    # A node's charge goes to every team-window below it.
    charges = sorted(c for r in replies for t in r.teams if (c := Epsilon.parse(t.epsilon_charged)).micros
                     for _ in (t.teams_charged or [t.team]))
    if not charges:
        console.print("Nothing was charged: reading released numbers is free, and repeats are identical.")
        return
    each = str(charges[0]) if charges[0] == charges[-1] else f"{charges[0]} to {charges[-1]}"
    unit = next((t.unit for r in replies for t in r.teams if t.unit), "epsilon")
    console.print(f"Charged now: {unit} {each} to each of {len(charges)} team-window budget(s); asking "
                  "again is free and returns the same numbers.")


def _print_report(reply: release_pb2.ReleaseResponse, requested: list[Statistic]) -> None:
    """The requested statistics only: the parts a mean or adoption is derived from are in csv and json."""
    released = [t for t in reply.teams if t.outcome == release_pb2.TEAM_OUTCOME_RELEASED]
    estimates = {(t.team, e.metric, Statistic.of(e.statistic)): e for t in released for e in t.estimates
                 if e.statistic != common_pb2.STATISTIC_ACTIVE}  # shown through adoption
    stats = list(dict.fromkeys(s for _, _, s in estimates if s is not Statistic.ADOPTION and s in requested))
    metrics = list(dict.fromkeys(m for _, m, s in estimates if s is not Statistic.ADOPTION and s in requested))
    ratio = next((e for e in estimates.values() if e.statistic == common_pb2.STATISTIC_RATIO), None)
    over = f"; ratio: each metric's sum over the sum of {' + '.join(ratio.denominator)}" if ratio else ""

    unit = "team" if all(t.level in (release_pb2.NODE_LEVEL_TEAM, 0) for t in reply.teams) else "node"

    def per_metric(compact: bool) -> Table:
        what = ", ".join(s.value for s in stats)
        table = Table(title=f"Window {reply.window}: {what} per {unit} (value ± 95% interval{over})")
        table.add_column("metric", no_wrap=True)
        table.add_column(unit, no_wrap=True)
        keys = [(t.team, m) for m in metrics for t in released]
        columns = []
        for stat in stats:
            columns.append(_number_column(table, stat.value, [_parts(e, compact) if (e := estimates.get((*k, stat)))
                                                              else "" for k in keys]))
        for i, (team, metric) in enumerate(keys):
            first, last = i % len(released) == 0, i % len(released) == len(released) - 1
            table.add_row(metric if first else "", team, *(c[i] for c in columns), end_section=last)
        return table

    def per_team(compact: bool) -> Table:
        adoption = any(s is Statistic.ADOPTION for _, _, s in estimates)
        charged = any(t.epsilon_charged != "0" for t in released)
        what = f"{'Adoption and privacy' if adoption else 'Privacy'} budget per {unit}"
        table = Table(title=what if stats else f"Window {reply.window}: {what[0].lower()}{what[1:]}")
        table.add_column(unit, no_wrap=True)
        table.add_column("people", justify="right", no_wrap=True)
        if adoption:
            shares = _number_column(table, "adoption", [
                _parts(e, compact) if (e := estimates.get((t.team, "", Statistic.ADOPTION))) else "" for t in released])
        table.add_column("budget left", justify="right", no_wrap=True)
        if charged:
            table.add_column("charged now", justify="right", no_wrap=True)
        for i, t in enumerate(released):
            table.add_row(t.team, str(t.roster_size), *([shares[i]] if adoption else []),
                          f"{t.budget_remaining} of {t.budget_cap}",
                          *([t.epsilon_charged if t.epsilon_charged != "0" else "-"] if charged else []))
        return table

    if not released:
        console.print(f"Window {reply.window}: no team could be released.")
    else:
        if stats:
            _print_fitted(per_metric)
        _print_fitted(per_team)
    for r in reply.remainders:
        if r.statistic != common_pb2.STATISTIC_ACTIVE and (Statistic.of(r.statistic) not in requested
                                                           or r.metric not in metrics):
            continue  # the parts of a ratio are in csv and json
        what = f"{name_of(r.statistic)} of {r.metric}" if r.metric else "active people"
        console.print(f"{OTHER} under {'the company' if r.parent == hierarchy.COMPANY else r.parent}: {what} "
                      f"{_number(r.estimate.value, 0, False)} ± {_number(r.estimate.ci95, 0, False)}† "
                      f"({', '.join(r.children)}: {r.roster_size} people)", highlight=False)
    for t in reply.teams:
        if t.outcome == release_pb2.TEAM_OUTCOME_SUPPRESSED:
            console.print(f"suppressed: {t.message}")
    _footer([reply])


def _print_trend(replies: list[release_pb2.ReleaseResponse], statistic: Statistic) -> None:
    """One row per team and window, oldest window first within each team."""
    wanted = statistic.proto
    estimates = [e for r in replies for t in r.teams for e in t.estimates if e.statistic == wanted]
    metric = estimates[0].metric if estimates else ""
    teams = sorted({t.team for r in replies for t in r.teams})
    found = {(t.team, r.window): t for r in replies for t in r.teams}

    def cell(t: release_pb2.TeamRelease | None, compact: bool) -> Parts | str:
        if t is None:
            return "-"  # the window could not be released (past retention)
        if not t.estimates:
            return f"suppressed ({t.roster_size} people)"
        return _parts(next(e for e in t.estimates if e.statistic == wanted), compact)

    def build(compact: bool) -> Table:
        table = Table(title=f"{statistic.value} of {metric or 'activity'} per team, last {len(replies)} closed "
                            "window(s) (value ± 95% interval)")
        table.add_column("team", no_wrap=True)
        table.add_column("window", no_wrap=True)
        keys = [(name, r.window) for name in teams for r in replies]
        cells = _number_column(table, statistic.value, [cell(found.get(k), compact) for k in keys])
        for i, (name, window) in enumerate(keys):
            first, last = i % len(replies) == 0, i % len(replies) == len(replies) - 1
            table.add_row(name if first else "", window, cells[i], end_section=last and len(replies) > 1)
        return table

    _print_fitted(build)
    _footer(replies)
