"""Company-wide numbers from team releases, and what the intervals allow saying about them.

A company total is the sum of the released team values; its noise is the sum of their
independent noises, so its 95% interval comes from `mechanisms.combined_ci95` over the teams'
noise scales. Company adoption is the released active people over the public roster sizes of
the same teams. The change from the previous window subtracts that window's total over the
teams released in both (so a team joining or leaving does not look like a change); both
windows' noises add to the interval of the change. All of it is post-processing of released
numbers: it costs nothing.

Values are the released ones as shown (a negative noisy value shown as 0 counts as 0), which
for totals of real usage is almost never the case.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from chorus.server.dashboard.charts import Interval, format_compact, format_percent
from chorus.server.privacy.mechanisms import combined_ci95
from chorus.v1 import common_pb2, release_pb2

#: (value, noise scale, roster size) of one team's release.
_Part = tuple[float, float, int]


@dataclass(frozen=True, slots=True)
class Tile:
    """A headline number: this window's company value with its interval, and the change."""

    label: str
    value: str
    interval: str
    #: Empty when there is no previous window to compare with (or nothing in common).
    change: str = ""
    change_interval: str = ""
    #: Whether the change is larger than its noise, in words.
    verdict: str = ""
    #: Which teams it covers.
    basis: str = ""


def _parts(teams: Sequence[release_pb2.TeamRelease], statistic: int, metric: str) -> dict[str, _Part]:
    out = {}
    for team in teams:
        for e in team.estimates:
            if e.statistic == statistic and e.metric == metric and e.release_id:
                out[team.team] = (e.value, e.scale, team.roster_size)
    return out


def _total(parts: dict[str, _Part], names: Sequence[str], ratio: bool) -> tuple[float, list[tuple[float, float]]]:
    """The company value over `names` and its noise terms (scale, weight)."""
    people = sum(parts[n][2] for n in names) or 1
    weight = 1 / people if ratio else 1.0
    return sum(parts[n][0] for n in names) * weight, [(parts[n][1], weight) for n in names]


def company(current: Sequence[release_pb2.TeamRelease], previous: Sequence[release_pb2.TeamRelease] | None,
            previous_window: str, metric: str = "") -> Tile | None:
    """Company adoption (`metric` empty) or the company total of a metric; None if nothing released."""
    statistic = common_pb2.STATISTIC_SUM if metric else common_pb2.STATISTIC_ACTIVE
    ratio = not metric
    now = _parts(current, statistic, metric)
    if not now:
        return None
    value, terms = _total(now, sorted(now), ratio)
    ci = combined_ci95(terms)
    fmt = format_percent if ratio else format_compact
    # Adoption is a share: a noisy total past the roster is shown as 100% (post-processing
    # towards the range that holds the true value, like each team's own adoption).
    shown = Interval(min(value, 1.0) if ratio else value, ci, 1.0 if ratio else float("inf"))
    people = sum(p[2] for p in now.values())
    label = "Company adoption" if ratio else f"Company total of {metric}"
    tile = Tile(label, fmt(shown.value), f"95% interval {fmt(shown.low)} to {fmt(shown.high)}",
                basis=f"{len(now)} released team(s), {people:,} people on their rosters")
    before = _parts(previous or (), statistic, metric)
    common = sorted(set(now) & set(before))
    if not common:
        return tile
    new, new_terms = _total(now, common, ratio)
    old, old_terms = _total(before, common, ratio)
    change_ci = combined_ci95(new_terms + [(scale, -w) for scale, w in old_terms])
    change = new - old
    low, high = change - change_ci, change + change_ci
    if ratio:  # a change of a share lies in [-1, 1]: the value and its interval are cut there
        change, low, high = (max(-1.0, min(1.0, x)) for x in (change, low, high))
    if ratio:
        fmt_change = _points
    else:
        def fmt_change(x: float) -> str:
            return ("+" if x > 0 else "") + format_compact(x)
    distinct = abs(change) > change_ci
    verdict = (f"{'up' if change > 0 else 'down'} by more than the noise: a real change at 95%" if distinct
               else "within the noise: this could be no change at all")
    return Tile(tile.label, tile.value, tile.interval, f"{fmt_change(change)} since {previous_window}",
                f"95% interval of the change {fmt_change(low)} to {fmt_change(high)}",
                verdict, tile.basis + ("" if len(common) == len(now) else
                                       f"; the change compares the {len(common)} team(s) released in both"))


def _points(x: float) -> str:
    return f"{x * 100:+.1f} points"


def ranking(rows: Sequence[tuple[str, Interval | None]]) -> str:
    """What the intervals allow saying about the order of the teams, in words."""
    shown = sorted(((name, i) for name, i in rows if i is not None), key=lambda r: -r[1].value)
    if len(shown) < 2:
        return ""
    overlapping = [(a, b) for (a, i), (b, j) in itertools.pairwise(shown) if i.low <= j.high]
    if not overlapping:
        return "The 95% intervals do not overlap: the teams can be ranked as shown."
    pairs = "; ".join(f"{a} and {b}" for a, b in overlapping)
    return (f"The 95% intervals overlap for {pairs}: these numbers do not say which of them is higher, "
            "so they cannot be ranked.")
