"""`chorus bounds`: whether each metric's per-person bound bites, and a bound the data suggest.

A client of ReleaseService that only reads (validate_only): the company histograms the release
plan published for the last closed windows, added up bucket by bucket, read by
`front.bounds` (free post-processing). Nothing is released or charged; a metric without a
company histogram in those windows is listed as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer
from rich.table import Table

from chorus.server.cli._common import (
    DEFAULT_SERVER,
    CaOpt,
    CertOpt,
    ExitCode,
    KeyOpt,
    ServerOpt,
    TokenFileOpt,
    TokenOpt,
    connect,
    console,
    fail,
)
from chorus.server.cli._output import Format, FormatOpt, emit
from chorus.server.cli.report import closed_windows
from chorus.server.front import bounds as bound_reading
from chorus.server.front.numbers import format_compact
from chorus.server.model import hierarchy
from chorus.v1 import common_pb2, release_pb2, release_pb2_grpc

FIELDS = ("metric", "bound", "windows", "people", "at_bound", "at_bound_ci95", "last_edge_is_bound",
          "suggested_bound", "above_suggested", "above_suggested_ci95")


def histograms(replies: Sequence[release_pb2.ReleaseResponse], metrics: dict[str, release_pb2.Metric],
               ) -> dict[str, tuple[list[bound_reading.Histogram], str]]:
    """metric -> its company histograms (newest window first) and their mechanism: only those with
    the newest window's buckets and the mechanism of its newest histogram, so that one interval
    is never computed over two kinds of noise."""
    found: dict[str, tuple[list[bound_reading.Histogram], str]] = {}
    for e in (e for reply in replies for t in reply.teams for e in t.estimates):
        m = metrics.get(e.metric)
        if m is None or list(e.histogram_edges) != list(m.histogram_edges):  # other buckets
            continue
        kept, mechanism = found.setdefault(e.metric, ([], e.mechanism))
        if e.mechanism == mechanism:
            kept.append(bound_reading.Histogram(tuple(e.noisy_bucket_counts), e.scale))
    return found


def bounds(
    windows: Annotated[int, typer.Option("--windows", min=1, max=520, help="Add up the company histograms of "
                                         "the last N closed windows (a bound is a slow choice; more windows, "
                                         "less noise).")] = 8,
    fmt: FormatOpt = Format.TABLE,
    server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, client_cert: CertOpt = None, client_key: KeyOpt = None,
) -> None:
    """Per metric: the share of people at its bound, and a bound at or above which at most 5% of totals lie.

    Read from the company histograms the release plan publishes (free: nothing is charged). Change a bound in the
    config (max_per_user); the next window freezes it. A lower bound means less noise in every sum, and clamps
    more heavy users (burning tokens past the bound counts for nothing).
    """
    with connect(server, token, token_file, ca, client_cert, client_key) as conn:
        stub = release_pb2_grpc.ReleaseServiceStub(conn.channel)
        closed = closed_windows(conn, stub)[:windows]
        if not closed:
            raise fail("no closed window yet: the company histograms are released when a window closes",
                       ExitCode.FAILED_PRECONDITION)
        listed = conn.call(stub.ListMetrics, release_pb2.ListMetricsRequest(window=closed[0]))
        metrics = {m.name: m for m in listed.metrics}
        replies = [conn.call(stub.Release, release_pb2.ReleaseRequest(
            window=window, nodes=[hierarchy.COMPANY], validate_only=True,
            statistics=[release_pb2.StatisticRequest(statistic=common_pb2.STATISTIC_HISTOGRAM)])) for window in closed]
    found = histograms(replies, metrics)
    readings = [bound_reading.read(name, metrics[name].max_per_user, list(metrics[name].histogram_edges),
                                   *found[name]) for name in metrics if name in found]
    missing = [name for name in metrics if name not in found]

    def table() -> None:
        out = Table("metric", "bound", "people a window", "at the bound", "suggested bound", "at or above it",
                    title=f"Per-person bounds, from the company histograms of the last {len(closed)} closed "
                          "window(s) (95% intervals)")
        for r in readings:
            at = f"{r.at_bound[0]:.1%} ± {r.at_bound[1]:.1%}" + ("" if r.last_edge_is_bound else " (top bucket)")
            suggested = (f"{format_compact(r.suggested)}" if r.suggested is not None else "raise it: more than "
                         f"{bound_reading.SHARE_ABOVE:.0%} are at the bound")
            above = f"{r.above_suggested[0]:.1%} ± {r.above_suggested[1]:.1%}" if r.suggested is not None else "-"
            out.add_row(r.metric, format_compact(r.bound), f"{r.people:,.0f}", at, suggested, above)
        console.print(out)
        if missing:
            console.print(f"no company histogram released for: {', '.join(missing)} (the release plan decides "
                          "which; `chorus report --level company --statistic histogram --release` spends for one)",
                          highlight=False)
        console.print("Nothing was charged: these are post-processing of released histograms. A bound is changed "
                      "in the config (max_per_user) and frozen by the next window.")

    emit(fmt, FIELDS, [{"metric": r.metric, "bound": r.bound, "windows": r.windows, "people": r.people,
                        "at_bound": r.at_bound[0], "at_bound_ci95": r.at_bound[1],
                        "last_edge_is_bound": r.last_edge_is_bound, "suggested_bound": r.suggested,
                        "above_suggested": r.above_suggested[0] if r.suggested is not None else None,
                        "above_suggested_ci95": r.above_suggested[1] if r.suggested is not None else None}
                       for r in readings], table)
