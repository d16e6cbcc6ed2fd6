"""What a release answers: estimates with intervals and costs, per team or node, as frozen values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from chorus.server.model import hierarchy
from chorus.server.privacy.epsilon import ZERO, Loss


class Estimate(NamedTuple):
    """One answer: a released value (or histogram) with its interval and cost.

    A NamedTuple rather than a dataclass: a full report builds ten thousand of them.
    """

    metric: str
    statistic: str
    value: float
    ci95: float
    bucket_counts: tuple[int, ...]
    histogram_edges: tuple[int, ...]
    epsilon_charged: Loss
    epsilon: Loss
    mechanism: str
    sensitivity: int
    scale: float
    cached: bool
    #: The stored release behind a noisy statistic; empty for a derived one (mean, adoption).
    release_id: str
    #: Post-processing applied to the value, in words; empty when none.
    note: str
    #: For a derived statistic, the release ids it is computed from (each also answered in the
    #: same TeamResult); empty for a noisy one.
    derived_from: tuple[str, ...] = ()
    #: (value, ci95) consistent across the tree's levels, when the window has nested releases
    #: of this statistic; None otherwise.
    consistent: tuple[float, float] | None = None
    #: For a sum, count or active: the noisy value as released, before a negative one is shown as
    #: 0 in `value` (what derived figures must add up); None when `value` is it.
    noisy_value: float | None = None
    #: For a ratio: the metrics whose sums make its denominator (`metric` is its numerator).
    denominator: tuple[str, ...] = ()
    #: For a histogram: the noisy people per bucket as released, negative ones included.
    noisy_buckets: tuple[int, ...] = ()


class Unreleased(NamedTuple):
    """A requested statistic that is not released: what releasing it now would charge."""

    metric: str
    statistic: str
    #: The epsilon of its noisy parts not released yet (a part shared with another statistic
    #: of the same request counts for each of them; TeamResult.epsilon_required counts it once).
    epsilon: Loss
    #: The half-width of its 95% interval once released; 0.0 for a mean, whose interval depends
    #: on the count it will be divided by.
    expected_ci95: float


@dataclass(frozen=True, slots=True)
class TeamResult:
    team: str
    released: bool
    #: Why nothing was released for a suppressed team; empty otherwise.
    message: str
    estimates: tuple[Estimate, ...]
    budget_cap: Loss
    budget_remaining: Loss
    roster_size: int
    #: What this request charged the team-window in total (for a node: each team below it).
    epsilon_charged: Loss
    #: Requested statistics not released (only a validate_only request leaves any).
    unreleased: tuple[Unreleased, ...] = ()
    #: What releasing all of `unreleased` would charge, each noisy part once.
    epsilon_required: Loss = ZERO
    #: hierarchy.TEAM, ORG or ROOT.
    level: str = hierarchy.TEAM
    #: For an org or the company: every team below it, each charged epsilon_charged.
    teams_charged: tuple[str, ...] = ()
    #: A team whose adoption here is wider than the policy's imprecise_adoption_points: too few
    #: people for a weekly number; `counted_in` is the org path it is counted in ("/": the company).
    imprecise: bool = False
    counted_in: str = ""


@dataclass(frozen=True, slots=True)
class RemainderResult:
    """An org's children not released on their own, estimated together (at least k people)."""

    parent: str
    members: tuple[str, ...]
    roster_size: int
    metric: str
    statistic: str
    value: float
    ci95: float


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    window: str
    teams: tuple[TeamResult, ...]
    remainders: tuple[RemainderResult, ...] = ()


@dataclass(frozen=True, slots=True)
class TeamInfo:
    name: str
    roster_size: int
    eligible: bool
    reason: str
    #: The team's org path; "" directly under the company.
    org: str = ""


@dataclass(frozen=True, slots=True)
class TeamList:
    teams: tuple[TeamInfo, ...]
    min_team_size: int


def suppression_reason(team: str, roster_size: int, k: int, level: str = hierarchy.TEAM) -> str:
    """Why a team (or node) below k is not released, or "" when it is eligible."""
    if roster_size >= k:
        return ""
    people = "person" if roster_size == 1 else "people"
    return f"{hierarchy.describe(team, level)} has {roster_size} {people} on the roster; releases need at least {k}"
