"""The `team_windows` and `team_metrics` tables: a closed window's exact per-team statistics.

Invariants: written once, by the window's close, in the transaction that deletes the
window's usage rows and key (`write`); read only by releases (the mechanism inputs) and
listings of roster sizes; deleted when the window passes retention (`delete_window`),
after which the window can no longer be released. `roster_size` is the team's roster at
close (public); `active` and the totals are exact and leave the server only through noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chorus.server.store._db import Tx

__all__ = ["TeamMetric", "TeamWindow", "delete_window", "metrics", "teams", "write"]


@dataclass(frozen=True, slots=True)
class TeamWindow:
    team: str
    roster_size: int
    active: int
    #: The team's org path frozen at close ("" directly under the company).
    org: str = ""


@dataclass(frozen=True, slots=True)
class TeamMetric:
    team: str
    metric: str
    total: int
    people: int
    #: JSON list of bucket counts.
    histogram: str


def write(tx: Tx, window: str, teams: Sequence[TeamWindow], metrics: Sequence[TeamMetric]) -> None:
    tx.insert_rows("team_windows", ("window_id", "team", "roster_size", "active", "org"),
                   [(window, t.team, t.roster_size, t.active, t.org) for t in teams])
    tx.insert_rows("team_metrics", ("window_id", "team", "metric", "total", "people", "histogram"),
                   [(window, m.team, m.metric, m.total, m.people, m.histogram) for m in metrics])


def teams(tx: Tx, window: str) -> list[TeamWindow]:
    """The window's teams by name."""
    return [TeamWindow(t, int(n), int(a), o) for t, n, a, o in tx.query(
        "SELECT team, roster_size, active, org FROM team_windows WHERE window_id = ? ORDER BY team", (window,))]


def metrics(tx: Tx, window: str) -> list[TeamMetric]:
    return [TeamMetric(t, m, int(total), int(people), h) for t, m, total, people, h in tx.query(
        "SELECT team, metric, total, people, histogram FROM team_metrics WHERE window_id = ?", (window,))]


def delete_window(tx: Tx, window: str) -> None:
    tx.execute("DELETE FROM team_metrics WHERE window_id = ?", (window,))
    tx.execute("DELETE FROM team_windows WHERE window_id = ?", (window,))
