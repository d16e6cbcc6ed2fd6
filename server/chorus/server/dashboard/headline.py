"""Company-wide figures from team releases, and what their intervals allow saying about them.

Where the window has a release for the company (or an org) itself, that one release is the
figure (`scoped`): one noise, far smaller than its teams' together. Otherwise a company total
is the sum of the teams' noisy releases as released (`Estimate.noisy_value`:
a negative noisy sum counts as negative), never of the values shown (clamped at 0, which adds
an upward bias of about half a noise scale per team). Company adoption is the released active
people over the public roster sizes of the same teams. A change subtracts an earlier window's
figure over the teams released in both (a team joining or leaving is no change); the trend is
the least-squares slope of company adoption over the windows shown. Each is a weighted sum of
independent release noises, so its 95% interval is that sum's exact one (`privacy.sums`):
it covers the figure before noise in 95% of draws, both ways (tests/dashboard/
test_headline_coverage.py measures it). All of it is post-processing: it costs nothing.

A figure is shown cut to the range its truth lies in (adoption in [0, 100%], a total at least
0); the cut never changes whether the truth is inside the interval.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from chorus.server.dashboard.charts import Interval, format_compact, format_percent
from chorus.server.privacy import sums
from chorus.v1 import common_pb2, release_pb2


@dataclass(frozen=True, slots=True)
class Part:
    """One team's release inside a company figure: its noisy value as released and its noise."""

    value: float
    scale: float
    roster: int
    mechanism: str


@dataclass(frozen=True, slots=True)
class Figure:
    """A derived value (raw: it may lie outside the range) with its exact 95% half-width."""

    value: float
    ci95: float
    #: The noise terms (scale, weight, mechanism) it adds up, for combining it further.
    terms: tuple[sums.Term, ...] = ()

    @property
    def distinct(self) -> bool:
        """Whether 0 lies outside the interval: the figure is larger than its noise."""
        return abs(self.value) > self.ci95


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


Parts = dict[str, Part]


def additive(statistic: int) -> int | None:
    """The noisy release a statistic adds up from (adoption: active people), or None for one that
    does not add up (a mean is a ratio of two releases)."""
    return _ADDS_UP.get(statistic)


_ADDS_UP: dict[int, int] = {common_pb2.STATISTIC_ADOPTION: common_pb2.STATISTIC_ACTIVE,
                            common_pb2.STATISTIC_ACTIVE: common_pb2.STATISTIC_ACTIVE,
                            common_pb2.STATISTIC_SUM: common_pb2.STATISTIC_SUM,
                            common_pb2.STATISTIC_COUNT: common_pb2.STATISTIC_COUNT}


def _released(metric: str, statistic: int | None) -> int:
    """The release to add up: by default active people, or the sum of `metric`."""
    if statistic is None:
        return common_pb2.STATISTIC_SUM if metric else common_pb2.STATISTIC_ACTIVE
    return additive(statistic) or common_pb2.STATISTIC_UNSPECIFIED


def parts(teams: Sequence[release_pb2.TeamRelease], metric: str = "", statistic: int | None = None) -> Parts:
    """Team -> its release of active people (`metric` empty) or of the sum of `metric` (or of the
    additive `statistic` named)."""
    statistic = _released(metric, statistic)
    out = {}
    for team in teams:
        if team.level not in (release_pb2.NODE_LEVEL_UNSPECIFIED, release_pb2.NODE_LEVEL_TEAM):
            continue
        for e in team.estimates:
            if e.statistic == statistic and e.metric == metric and e.release_id:
                out[team.team] = Part(e.noisy_value, e.scale, team.roster_size, e.mechanism or sums.DISCRETE_LAPLACE)
    return out


NODES = (release_pb2.NODE_LEVEL_ORG, release_pb2.NODE_LEVEL_COMPANY)


def scoped(teams: Sequence[release_pb2.TeamRelease], node: str, below: set[str] | None,
           metric: str = "", statistic: int | None = None) -> Parts:
    """A scope's parts: the org's (or company's) own release when the window has one (one noise,
    far smaller than its teams' together), else the releases of its teams (`below`; None: all)."""
    statistic = _released(metric, statistic)
    for team in teams:
        if team.team == node and team.level in NODES:
            for e in team.estimates:
                if e.statistic == statistic and e.metric == metric and e.release_id:
                    return {node: Part(e.noisy_value, e.scale, team.roster_size,
                                       e.mechanism or sums.DISCRETE_LAPLACE)}
    found = parts(teams, metric, statistic)
    return found if below is None else {k: v for k, v in found.items() if k in below}


def figure(found: Parts, names: Sequence[str] | None = None, *, share: bool) -> Figure:
    """The company total over `names` (default: all), or its share of the rosters' people."""
    chosen = sorted(found) if names is None else list(names)
    people = sum(found[n].roster for n in chosen) or 1
    weight = 1 / people if share else 1.0
    terms = tuple((found[n].scale, weight, found[n].mechanism) for n in chosen)
    return Figure(sum(found[n].value for n in chosen) * weight, sums.ci95(terms), terms)


def change(now: Parts, before: Parts, *, share: bool) -> tuple[Figure, int] | None:
    """now - before over the teams released in both; with how many teams that is."""
    common = sorted(set(now) & set(before))
    if not common:
        return None
    new, old = figure(now, common, share=share), figure(before, common, share=share)
    terms = new.terms + tuple((s, -w, m) for s, w, m in old.terms)
    return Figure(new.value - old.value, sums.ci95(terms), terms), len(common)


def slope(series: Sequence[Parts | None]) -> Figure | None:
    """The least-squares slope of company adoption per window over the windows with releases."""
    points = [(t, p) for t, p in enumerate(series) if p]
    if len(points) < 2:
        return None
    mid = sum(t for t, _ in points) / len(points)
    spread = sum((t - mid) ** 2 for t, _ in points)
    value, terms = 0.0, []
    for t, found in points:
        level = figure(found, share=True)
        c = (t - mid) / spread
        value += c * level.value
        terms += [(s, c * w, m) for s, w, m in level.terms]
    return Figure(value, sums.ci95(terms), tuple(terms))


def points(x: float) -> str:
    return f"{x * 100:+.1f} points"


def trend_verdict(found: Figure, unit: str) -> str:
    """The slope in plain words: growing, falling, or no trend the noise allows claiming."""
    size = f"{abs(found.value) * 100:.1f} points a {unit}"
    if not found.distinct:
        return f"no clear trend: {points(found.value)} a {unit} is within the noise"
    return f"{'growing' if found.value > 0 else 'falling'} about {size}; this is not noise"


def change_verdict(found: Figure) -> str:
    if found.distinct:
        return f"{'up' if found.value > 0 else 'down'} by more than the noise: a real change at 95%"
    return "within the noise: this could be no change at all"


def company(current: Sequence[release_pb2.TeamRelease], previous: Sequence[release_pb2.TeamRelease] | None,
            previous_window: str, metric: str = "", node: str = "/", below: set[str] | None = None) -> Tile | None:
    """Company (or `node`'s) adoption (`metric` empty) or total of a metric; None if nothing released."""
    share = not metric
    now = scoped(current, node, below, metric)
    if not now:
        return None
    level = figure(now, share=share)
    fmt = format_percent if share else format_compact
    shown = Interval(min(max(level.value, 0.0), 1.0) if share else max(level.value, 0.0), level.ci95,
                     1.0 if share else float("inf"))
    people = sum(p.roster for p in now.values())
    label = "Company adoption" if share else f"Company total of {metric}"
    direct = list(now) == [node]
    tile = Tile(label, fmt(shown.value), f"95% interval {fmt(shown.low)} to {fmt(shown.high)}",
                basis=(f"released for the {'company' if node == '/' else 'org'} itself, {people:,} people"
                       if direct else f"{len(now)} released team(s), {people:,} people on their rosters"))
    found = change(now, scoped(previous or (), node, below, metric), share=share)
    if found is None:
        return tile
    delta, common = found
    low, high = delta.value - delta.ci95, delta.value + delta.ci95
    value = delta.value
    if share:  # a change of a share lies in [-1, 1]: the value and its interval are cut there
        value, low, high = (max(-1.0, min(1.0, x)) for x in (value, low, high))
        fmt_change = points
    else:
        def fmt_change(x: float) -> str:
            return ("+" if x > 0 else "") + format_compact(x)
    return Tile(tile.label, tile.value, tile.interval, f"{fmt_change(value)} since {previous_window}",
                f"95% interval of the change {fmt_change(low)} to {fmt_change(high)}",
                change_verdict(delta), tile.basis + ("" if common == len(now) else
                                                     f"; the change compares the {common} team(s) released in both"))


def ranking(rows: Sequence[tuple[str, Interval | None]]) -> str:
    """What the intervals allow saying about the order of the rows, in one short sentence."""
    shown = sorted(((name, i) for name, i in rows if i is not None), key=lambda r: -r[1].value)
    if len(shown) < 2:
        return ""
    overlapping = [(a, b) for (a, i), (b, j) in itertools.pairwise(shown) if i.low <= j.high]
    if not overlapping:
        return "The 95% intervals do not overlap: the rows can be ranked as shown."
    if len(overlapping) == len(shown) - 1:
        return "Every row's 95% interval overlaps its neighbour's: these numbers do not rank them."
    return (f"{len(overlapping)} of {len(shown) - 1} neighbouring pairs have overlapping 95% intervals: "
            "only the rows whose intervals are apart can be ranked.")


def overlapping_pairs(rows: Sequence[tuple[str, Interval | None]]) -> list[tuple[str, str]]:
    """The neighbouring rows (by value) whose intervals overlap, for the details behind `ranking`."""
    shown = sorted(((name, i) for name, i in rows if i is not None), key=lambda r: -r[1].value)
    return [(a, b) for (a, i), (b, j) in itertools.pairwise(shown) if i.low <= j.high]
