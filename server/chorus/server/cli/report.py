"""`chorus report`: team statistics of closed windows with 95% intervals, as an analyst sees them.

A client of ReleaseService like any other. The first report of a window charges each
team-window's privacy budget; asking again returns the same stored answers for free.
"""

from __future__ import annotations

import csv
import enum
import io
import json
from collections.abc import Iterator
from typing import Annotated, Any

import grpc
import typer
from rich.table import Table

from chorus.server.cli._common import (
    CaOpt,
    CertOpt,
    Connection,
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
from chorus.server.privacy.epsilon import Epsilon
from chorus.v1 import common_pb2, release_pb2, release_pb2_grpc


class Statistic(enum.StrEnum):
    SUM = "sum"
    COUNT = "count"
    MEAN = "mean"
    HISTOGRAM = "histogram"
    ADOPTION = "adoption"

    @property
    def proto(self) -> str:
        """The wire enum's value name, e.g. STATISTIC_SUM."""
        return f"STATISTIC_{self.name}"

    @classmethod
    def of(cls, proto: int) -> Statistic:
        return cls[common_pb2.Statistic.Name(proto).removeprefix("STATISTIC_")]


class Format(enum.StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


#: The flat record written by --format csv and json, one per team and estimate.
FIELDS = ("window", "team", "roster_size", "outcome", "message", "metric", "statistic", "value", "ci95",
          "bucket_counts", "histogram_edges", "epsilon", "epsilon_charged", "cached", "mechanism", "note",
          "release_id", "budget_cap", "budget_remaining", "team_epsilon_charged")


def report(
    window: Annotated[str | None, typer.Option("--window", "-w", help="Window id, e.g. 2026-11-25 or "
                                               "2026-W48; default: the latest closed window.")] = None,
    statistic: Annotated[list[Statistic] | None, typer.Option(
        "--statistic", help="Statistic per metric; repeat for several. Default: sum. The table always "
        "adds adoption.")] = None,
    metric: Annotated[list[str] | None, typer.Option("--metric", "-m", help="Metric name; repeat for "
                                                     "several. Default: every metric.")] = None,
    team: Annotated[list[str] | None, typer.Option("--team", "-t", help="Team name; repeat for several. "
                                                   "Default: every team.")] = None,
    epsilon: Annotated[str | None, typer.Option("--epsilon", help="Epsilon per noisy statistic released "
                                                "now, e.g. 0.1. Default: the window's defaults.")] = None,
    trend: Annotated[int | None, typer.Option("--trend", min=1, max=520, help="Instead: one statistic "
                                              "of one --metric per team over the last N closed "
                                              "windows.")] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="table, csv or json.")] = Format.TABLE,
    server: ServerOpt = "127.0.0.1:7355", token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, client_cert: CertOpt = None, client_key: KeyOpt = None,
) -> None:
    """Team statistics with 95% intervals for a closed window, or a trend over closed windows.

    Teams below the minimum size are listed as suppressed, with the reason. The first
    release of a statistic charges the team-window's privacy budget; repeats are free and
    return the same numbers.
    """
    statistics = list(dict.fromkeys(statistic or [Statistic.SUM]))
    if epsilon is not None:
        try:
            Epsilon.parse(epsilon)
        except ValueError as exc:
            raise fail(f"--epsilon: {exc}", 2) from None
    if trend is not None and (len(statistics) != 1 or (statistics[0] != Statistic.ADOPTION
                                                       and len(metric or []) != 1)):
        raise fail("--trend shows one statistic of one metric: pass one --statistic and one --metric "
                   "(or --statistic adoption)", 2)
    with connect(server, token, token_file, ca, client_cert, client_key) as conn:
        stub = release_pb2_grpc.ReleaseServiceStub(conn.channel)
        closed = _closed_windows(conn, stub)
        if trend is not None:
            replies = _trend(conn, stub, closed[:trend][::-1], team or [], metric or [], statistics[0],
                             epsilon)
        else:
            if window is None:
                if not closed:
                    raise fail("no closed window yet: a window is released only after it closes "
                               "(its end plus the grace period)")
                window = closed[0]
            if Statistic.ADOPTION not in statistics and fmt is Format.TABLE:
                statistics.append(Statistic.ADOPTION)
            replies = [conn.call(stub.Release, _request(window, team or [], metric or [], statistics,
                                                        epsilon))]
    if fmt is Format.JSON:
        print(json.dumps(list(_records(replies)), indent=2))
    elif fmt is Format.CSV:
        print(_csv(_records(replies)), end="")
    elif trend is not None:
        _print_trend(replies, statistics[0])
    else:
        _print_report(replies[0], statistics)


def _closed_windows(conn: Connection, stub: release_pb2_grpc.ReleaseServiceStub) -> list[str]:
    """Closed window ids, newest first."""
    reply = conn.call(stub.ListWindows, release_pb2.ListWindowsRequest())
    return [w.id for w in reply.windows if w.state == common_pb2.WINDOW_STATE_CLOSED]


def _request(window: str, teams: list[str], metrics: list[str], statistics: list[Statistic],
             epsilon: str | None) -> release_pb2.ReleaseRequest:
    return release_pb2.ReleaseRequest(
        window=window, teams=teams, metrics=metrics,
        statistics=[release_pb2.StatisticRequest(statistic=s.proto, epsilon=epsilon or "")
                    for s in statistics])


def _trend(conn: Connection, stub: release_pb2_grpc.ReleaseServiceStub, windows: list[str],
           teams: list[str], metrics: list[str], statistic: Statistic,
           epsilon: str | None) -> list[release_pb2.ReleaseResponse]:
    """One release per window, oldest first; a window past retention is shown as unavailable."""
    replies = []
    for window in windows:
        try:
            replies.append(stub.Release(_request(window, teams, metrics, [statistic], epsilon),
                                        metadata=conn.metadata, timeout=60))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                with rpc_errors(conn.server):
                    raise
            err_console.print(f"{window}: {exc.details()}")
            replies.append(release_pb2.ReleaseResponse(window=window))
    return replies


def _records(replies: list[release_pb2.ReleaseResponse]) -> Iterator[dict[str, Any]]:
    for reply in replies:
        for t in reply.teams:
            base = {"window": reply.window, "team": t.team, "roster_size": t.roster_size,
                    "outcome": "released" if t.outcome == release_pb2.TEAM_OUTCOME_RELEASED else "suppressed",
                    "message": t.message, "budget_cap": t.budget_cap, "budget_remaining": t.budget_remaining,
                    "team_epsilon_charged": t.epsilon_charged}
            if not t.estimates:
                yield {f: base.get(f, "") for f in FIELDS}
            for e in t.estimates:
                yield {**base, "metric": e.metric, "statistic": Statistic.of(e.statistic).value,
                       "value": e.value, "ci95": e.ci95, "bucket_counts": list(e.bucket_counts),
                       "histogram_edges": list(e.histogram_edges), "epsilon": e.epsilon,
                       "epsilon_charged": e.epsilon_charged, "cached": e.cached, "mechanism": e.mechanism,
                       "note": e.note, "release_id": e.release_id}


def _csv(records: Iterator[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()})
    return out.getvalue()


def _cell(e: release_pb2.Estimate) -> str:
    """value ± 95% half-width, in the statistic's natural unit; * when post-processed."""
    mark = "*" if e.note else ""
    stat = Statistic.of(e.statistic)
    if stat is Statistic.HISTOGRAM:
        return f"{'·'.join(map(str, e.bucket_counts))} ±{e.ci95:,.0f}{mark}"
    if stat is Statistic.ADOPTION:
        return f"{e.value:.0%} ± {e.ci95:.0%}{mark}"
    if stat is Statistic.MEAN:
        return f"{e.value:,.1f} ± {e.ci95:,.1f}{mark}"
    return f"{e.value:,.0f} ± {e.ci95:,.0f}{mark}"


def _footer(replies: list[release_pb2.ReleaseResponse]) -> None:
    if any(e.note for r in replies for t in r.teams for e in t.estimates):
        console.print("* post-processed: a negative noisy value is shown as 0 (or a ratio clamped to its "
                      "range); the noisy values are in --format json")
    charges = sorted(c for r in replies for t in r.teams if (c := Epsilon.parse(t.epsilon_charged)).micros)
    if not charges:
        console.print("Nothing was charged: every answer was released before, and repeats are identical.")
        return
    each = str(charges[0]) if charges[0] == charges[-1] else f"{charges[0]} to {charges[-1]}"
    console.print(f"Charged now: epsilon {each} to each of {len(charges)} team-window budget(s); asking "
                  "again is free and returns the same numbers.")


def _print_report(reply: release_pb2.ReleaseResponse, statistics: list[Statistic]) -> None:
    per_metric = [s for s in statistics if s is not Statistic.ADOPTION]
    released = [t for t in reply.teams if t.outcome == release_pb2.TEAM_OUTCOME_RELEASED]
    columns = list(dict.fromkeys((e.metric, Statistic.of(e.statistic)) for t in released for e in t.estimates
                                 if Statistic.of(e.statistic) is not Statistic.ADOPTION))
    what = ", ".join(s.value for s in per_metric) or "adoption"
    table = Table(title=f"Window {reply.window}: {what} per team (value ± 95% interval)")
    table.add_column("team")
    table.add_column("people", justify="right")
    for metric, stat in columns:
        table.add_column(metric if len(per_metric) == 1 else f"{metric} {stat.value}", justify="right")
    if Statistic.ADOPTION in statistics:
        table.add_column("adoption", justify="right")
    table.add_column("budget left", justify="right")
    for t in released:
        cells = {(e.metric, Statistic.of(e.statistic)): _cell(e) for e in t.estimates}
        row = [t.team, str(t.roster_size), *(cells.get(c, "") for c in columns)]
        if Statistic.ADOPTION in statistics:
            row.append(cells.get(("", Statistic.ADOPTION), ""))
        now = f" (-{t.epsilon_charged} now)" if t.epsilon_charged != "0" else ""
        table.add_row(*row, f"{t.budget_remaining} of {t.budget_cap}{now}")
    console.print(table)
    for t in reply.teams:
        if t.outcome == release_pb2.TEAM_OUTCOME_SUPPRESSED:
            console.print(f"suppressed: {t.message}")
    _footer([reply])


def _print_trend(replies: list[release_pb2.ReleaseResponse], statistic: Statistic) -> None:
    estimates = [e for r in replies for t in r.teams for e in t.estimates]
    metric = estimates[0].metric if estimates else ""
    table = Table(title=f"{statistic.value} of {metric or 'activity'} per team, last {len(replies)} closed "
                        "window(s) (value ± 95% interval)")
    table.add_column("team")
    for r in replies:
        table.add_column(r.window, justify="right")
    cells: dict[str, dict[str, str]] = {}
    for r in replies:
        for t in r.teams:
            row = cells.setdefault(t.team, {})
            row[r.window] = (_cell(t.estimates[0]) if t.estimates
                             else f"suppressed ({t.roster_size} people)")
    for name in sorted(cells):
        table.add_row(name, *(cells[name].get(r.window, "-") for r in replies))
    console.print(table)
    _footer(replies)
