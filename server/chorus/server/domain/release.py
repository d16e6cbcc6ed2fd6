"""Team releases: differentially private statistics of closed windows, against an exact budget.

What can be released: per team and closed window, the noisy `sum`, `count` and `histogram`
of each metric and the noisy number of `active` people, each at most once (UNIQUE in
`releases`); `mean` (sum / count) and `adoption` (active / public roster size) are
post-processing of those and cost nothing beyond them. A repeated request returns the
stored release, identical, without a new charge.

One request is one transaction: for each noisy statistic not yet released it draws the
noise, claims the release row, charges the team-window budget with a conditional UPDATE
(never past the cap, even across replicas) and appends a signed ledger entry. If any team
would overspend, the transaction raises and nothing is charged or stored. A retried
transaction starts over from a rolled-back state, so it cannot charge twice. The check before
drawing reads the budgets before the stored releases: on PostgreSQL each read has its own
snapshot, and the other order refused the loser of a race for the statistics it was about to
receive as cached answers.

Rules a request meets before anything is drawn: the window exists, is closed and within
retention (`retention_windows` window lengths after its end); every named team and metric
exists in it; teams with fewer than k people on the frozen roster are suppressed, charged
nothing.

The release plan frozen in a window's policy is released by the closer right after the window
closes (`release_plan`), through this same path, one request per plan entry, each ledger
entry marked `"plan": true`. The window's `plan_released_at` is set only once every entry is
released, so a crash in between is completed by the next tick, and repeats are answered from
storage: the plan is charged once. Until then only the plan may spend the window's budget
(a request at a team or at any node of the tree is refused),
so no early request can take what the plan needs.

A `validate_only` request (AIP-163) reads: it runs the same checks and answers with what is
already released, plus for each statistic not released yet what releasing it would charge and
its expected interval. It draws, stores and charges nothing, whatever the budget left.

Nodes of the organisation tree (`chorus.server.model.hierarchy`): a request may also name orgs at any
depth or the company. A node's noisy statistic is computed over every team below it (each
person counts for one team, so the sensitivities are a team's), and its epsilon is charged to
*every* team-window below it, in the same transaction, refused whole when any of them lacks
budget; a person's loss stays bounded by their team's cap. k applies per node (its roster size
is the sum of its teams'). The ledger entry names the node, its level and the teams charged,
with each team's spent-after. When a window holds releases of a sum, count or active at
nested levels, answers also carry the consistent estimates (`privacy.consistency`): a
deterministic function of the stored releases and the frozen tree, so a repeated request
gets identical numbers until another level of the same statistic is released.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from chorus.server import store
from chorus.server.domain import roster
from chorus.server.domain import windows as window_store
from chorus.server.domain.ledger import Ledger
from chorus.server.model import hierarchy
from chorus.server.model.calendar import parse_window_id
from chorus.server.model.clock import Clock
from chorus.server.model.policy import MetricPolicy, Policy, expected_ci95
from chorus.server.model.policy import sensitivity as policy_sensitivity
from chorus.server.model.statistics import ACTIVE, NOISY_PARTS
from chorus.server.model.statistics import REQUESTABLE as STATISTICS
from chorus.server.privacy import consistency, mechanisms
from chorus.server.privacy.budget import Budget, refusal
from chorus.server.privacy.epsilon import ZERO, Loss
from chorus.server.store import Database, Tx

_log = logging.getLogger(__name__)

#: The `metric` of team-level statistics (active, adoption).
TEAM_LEVEL = ""
#: Who releases the plan, as the ledger's `by` names it.
PLAN_ACTOR = "closer"
# Noisy statistics each requested statistic needs, per metric ("" = team level).
_NEEDS = NOISY_PARTS

# (team or node, metric, noisy statistic)
Key = tuple[str, str, str]
#: Statistics made consistent across the levels of the tree (scalars; histograms are not).
CONSISTENT = ("sum", "count", ACTIVE)


class ReleaseError(Exception):
    """A request that cannot be answered; the message names the value and the rule."""


class InvalidRequest(ReleaseError):
    """Malformed: an unknown statistic, a bad epsilon. `field` names the request field."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class NotFound(ReleaseError):
    """An unknown window, team or metric."""


class Refused(ReleaseError):
    """Well-formed but not releasable now: the window is open or past retention."""


class PlanPending(Refused):
    """A spending release while the window's release plan is not complete: it can pass later
    (the closer completes the plan on its next pass)."""


@dataclass(frozen=True, slots=True)
class Overspend:
    team: str
    window: str
    requested: Loss
    remaining: Loss
    cap: Loss


class BudgetExceeded(ReleaseError):
    """At least one team-window would go over its cap; nothing was charged or stored."""

    def __init__(self, window: str, overspends: list[Overspend]) -> None:
        self.overspends = overspends
        parts = "; ".join(f"team {o.team} {refusal(o.requested, o.remaining, o.cap)}" for o in overspends)
        super().__init__(f"privacy budget of window {window} exhausted: {parts}. Nothing was "
                         "released or charged; request fewer statistics or a smaller epsilon")


@dataclass(frozen=True, slots=True)
class StatisticRequest:
    statistic: str
    #: None: the window's default epsilon for each noisy statistic it needs.
    epsilon: Loss | None = None


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


#: A stored release's result (value, ci95, scale, sensitivity), as parsed from its JSON.
_Result = tuple[int | list[int], float, float, int]
#: Results parsed before, by their JSON text: a stored release never changes, and every replay
#: of a report reads thousands of them again. Bounded (cleared when full); nothing here is
#: secret (every stored result is a published release). Never mutated once parsed.
_PARSED: dict[str, _Result] = {}
_PARSED_MAX = 500_000


class _Stored(NamedTuple):
    """A noisy release as stored (and as first answered)."""

    release_id: str
    value: int | list[int]
    ci95: float
    scale: float
    sensitivity: int
    epsilon: Loss
    #: What this request charged for it: ZERO when it was released before.
    charged: Loss
    #: The window's mechanism (privacy.mechanisms.LAPLACE or GAUSSIAN).
    mechanism: str


def suppression_reason(team: str, roster_size: int, k: int, level: str = hierarchy.TEAM) -> str:
    """Why a team (or node) below k is not released, or "" when it is eligible."""
    if roster_size >= k:
        return ""
    people = "person" if roster_size == 1 else "people"
    return f"{hierarchy.describe(team, level)} has {roster_size} {people} on the roster; releases need at least {k}"




class Releases:
    """Lists what can be released and releases it: claims, charges (through the `Budget` accountant and
    `store.budgets.charge`) and ledgers each new release in one transaction."""

    def __init__(self, db: Database, ledger: Ledger, clock: Clock, policy: Policy) -> None:
        self._db = db
        self._ledger = ledger
        self._clock = clock
        self._policy = policy  # the policy the next window will freeze

    def list_metrics(self, window: str = "") -> tuple[MetricPolicy, ...]:
        """The metrics frozen in `window`, or of the next window when empty."""
        if not window:
            return self._policy.metrics
        return self._db.run(lambda tx: _window(tx, window), name="list_metrics").policy.metrics

    def list_teams(self, window: str = "") -> TeamList:
        """Teams with roster sizes: frozen at close for a closed window, else the current roster."""

        def read(tx: Tx) -> TeamList:
            record = _window(tx, window) if window else None
            if record is not None and record.state == window_store.CLOSED:
                tree = _tree(tx, record.id)
                sizes, orgs = dict(tree.sizes), dict(tree.orgs)
            else:
                sizes, orgs = roster.team_sizes(tx), roster.current_orgs(tx)
            k = (record.policy if record is not None else self._policy).min_team_size
            return TeamList(tuple(TeamInfo(t, n, n >= k, suppression_reason(t, n, k), orgs.get(t, ""))
                                  for t, n in sorted(sizes.items())), k)

        return self._db.run(read, name="list_teams")

    def release(self, window: str, teams: Sequence[str], metrics: Sequence[str],
                statistics: Sequence[StatisticRequest], requester: str,
                nodes: Sequence[str] = (), *, validate_only: bool = False) -> ReleaseResult:
        """Answer a release request in one transaction; see the module docstring for the rules.

        Empty `teams`, `metrics` or `statistics` mean all of them (statistics at their
        default epsilon), except that with `nodes` (org paths, hierarchy.COMPANY or team
        names) and no teams only the nodes are released. Raises InvalidRequest, NotFound,
        Refused or BudgetExceeded, in which case nothing was stored. `validate_only` reads
        and never spends.
        """
        if not window:
            raise InvalidRequest("window is required, e.g. 2026-11-25 or 2026-W48", "window")
        return self._release(window, teams, metrics, _statistics(statistics), requester, nodes,
                             validate_only=validate_only, plan=False)

    def pending_plans(self) -> list[str]:
        """Closed windows, oldest first, whose release plan is not yet complete."""
        return self._db.run(store.windows.plan_pending, name="pending_plans")

    def release_plan(self, window: str) -> None:
        """Release the plan frozen in `window`'s policy, one request per entry, then mark it done.

        Safe to repeat and to run on several replicas at once: entries already released are
        answered from storage, uncharged. A window the plan can no longer be released for (past
        retention) is marked done with what was released, and the reason logged.
        """
        record = self._db.run(lambda tx: _window(tx, window), name="plan_window")
        tree = self._db.run(lambda tx: _tree(tx, window), name="plan_tree")
        try:
            for entry in record.policy.release_plan:
                nodes = {hierarchy.ROOT: [hierarchy.COMPANY], hierarchy.ORG: tree.org_nodes()}.get(entry.level, [])
                if entry.level != hierarchy.TEAM and not nodes:
                    continue  # org entries in a company without orgs: nothing to release
                self._release(window, (), (entry.metric,) if entry.metric else (),
                              {entry.statistic: entry.charge}, PLAN_ACTOR, nodes, validate_only=False, plan=True)
        except (Refused, BudgetExceeded) as exc:
            _log.error("release plan of window %s stopped: %s", window, exc)
        at = int(self._clock.now().timestamp())
        self._db.run(lambda tx: store.windows.mark_plan_released(tx, window, at), name="plan_done")

    def _release(self, window: str, teams: Sequence[str], metrics: Sequence[str],
                 requested: dict[str, Loss | None], requester: str, nodes: Sequence[str] = (), *,
                 validate_only: bool, plan: bool) -> ReleaseResult:
        now = self._clock.now()
        result = self._db.run(
            lambda tx: _Release(tx, self._ledger, now, window, requester, plan=plan,
                                validate_only=validate_only).run(teams, metrics, requested, nodes),
            name="read_releases" if validate_only else "release")
        if not validate_only:  # a read changes nothing worth a log line per page view
            fresh = sum(1 for t in result.teams for e in t.estimates
                        if not e.cached and e.mechanism != mechanisms.POST_PROCESSING)
            _log.info("release for window %s%s: %d team(s), %d new noisy release(s)", window,
                      " (release plan)" if plan else "", len(result.teams), fresh)
        return result


def _statistics(requests: Sequence[StatisticRequest]) -> dict[str, Loss | None]:
    """Requested statistics in order, validated; empty means all at their defaults."""
    if not requests:
        return dict.fromkeys(STATISTICS)
    out: dict[str, Loss | None] = {}
    for i, r in enumerate(requests):
        if r.statistic not in STATISTICS:
            raise InvalidRequest(f"statistic {r.statistic!r} is unknown; allowed: {', '.join(STATISTICS)}",
                                 f"statistics[{i}].statistic")
        if r.statistic in out:
            raise InvalidRequest(f"statistics[{i}].statistic: {r.statistic} is requested more than once",
                                 f"statistics[{i}].statistic")
        if r.epsilon is not None and r.epsilon.micros == 0:
            # "0" fits the grammar (answers use it: a derived estimate charges nothing), but a
            # release at epsilon 0 is infinite noise: no mechanism draws it.
            raise InvalidRequest(f"statistics[{i}].epsilon is 0 for {r.statistic}; a release needs an epsilon "
                                 f"greater than 0 (at least 0.000001; empty: the window's default)",
                                 f"statistics[{i}].epsilon")
        out[r.statistic] = r.epsilon
    return out


def _window(tx: Tx, window: str) -> window_store.WindowRecord:
    try:
        parse_window_id(window)
    except ValueError as exc:
        raise InvalidRequest(str(exc), "window") from None
    try:
        return window_store.get(tx, window)
    except window_store.WindowNotFound:
        raise NotFound(f"window {window!r} not found") from None


def _tree(tx: Tx, window: str) -> hierarchy.Hierarchy:
    """The organisation tree frozen with the window at close."""
    return hierarchy.Hierarchy.of((t.team, t.org, t.roster_size) for t in store.team_stats.teams(tx, window))


@functools.lru_cache(maxsize=64)
def _plan(nodes: tuple[consistency.Node, ...], mechanism: str) -> consistency.Plan:
    """The consistency plan of one tree and set of scales (deterministic; cached: a 500-team
    company's intervals take a while to compute)."""
    return consistency.plan(nodes, mechanism=mechanism)


def _team_windows(tx: Tx, window: str) -> list[tuple[str, int, int]]:
    return [(t.team, t.roster_size, t.active) for t in store.team_stats.teams(tx, window)]


class _Release:
    """One release request inside its transaction."""

    def __init__(self, tx: Tx, ledger: Ledger, now: datetime, window: str, requester: str, *,
                 plan: bool = False, validate_only: bool = False) -> None:
        self.plan = plan
        self.validate_only = validate_only
        self.tx = tx
        self.ledger = ledger
        self.now = now
        self.requester = requester
        self.record = _window(tx, window)
        self.window = window
        self.policy = self.record.policy
        self.tree = _tree(tx, window)
        self._rows: list[store.releases.Release] | None = None  # read once per request (release_rows)

    def run(self, teams: Sequence[str], metrics: Sequence[str],
            statistics: dict[str, Loss | None], nodes: Sequence[str] = ()) -> ReleaseResult:
        self.check_releasable()
        chosen_metrics = self.metrics(metrics)
        wanted = self.wanted(chosen_metrics, statistics)
        tree = self.tree
        chosen = self.teams(teams, tree.sizes) if teams or not nodes else []
        chosen += [n for n in self.nodes(nodes) if n not in chosen]
        sizes = {s: tree.size(s) for s in chosen}
        k = self.policy.min_team_size
        eligible = [s for s in chosen if sizes[s] >= k]
        # Budgets first, then releases. Each read has its own snapshot on PostgreSQL (READ
        # COMMITTED), and a concurrent request commits its releases and its charge together:
        # read in this order, one that commits in between shows its releases (so they are not
        # missing here) without its charge, never its charge without its releases, which would
        # refuse the loser of a race for the very statistics it is about to get as cached. The
        # conditional UPDATE in charge_and_record, not this check, is what enforces the cap.
        budgets = self.budgets()
        stored = self.stored(eligible)
        missing = {t: [key for key in wanted if (t, *key) not in stored] for t in eligible}
        if not self.validate_only:
            if any(missing.values()):
                self.check_plan_done()
            self.check_budgets({t: keys for t, keys in missing.items() if keys}, wanted, budgets)
        charged_to: dict[str, Loss] = {}
        if any(missing.values()) and not self.validate_only:
            stored.update(self.release_missing(missing, wanted, charged_to))
            budgets = self.budgets()
        consistent, remainders = self.consistent(list(missing))
        results = []
        for subject in chosen:
            level = tree.level(subject)
            below = tree.teams_below(subject)
            cap = budgets.get(below[0], _NO_BUDGET).cap if below else self.policy.budget_per_window
            # The least any team below has left; for a team, its own.
            left = min((budgets.get(t, _NO_BUDGET).remaining for t in below), default=cap)
            # What this request charged, not the difference of two reads: another replica may
            # charge the same team-window in between.
            charged = charged_to.get(subject, ZERO)
            unreleased: list[Unreleased] = []
            required = ZERO
            if subject in missing:
                estimates = tuple(self.answers(subject, chosen_metrics, statistics, stored, sizes[subject],
                                               consistent, unreleased, wanted))
                required = sum((wanted[key] for key in missing[subject] if (subject, *key) not in stored), ZERO)
                message = ""
            else:
                estimates, message = (), suppression_reason(subject, sizes[subject], k, level)
            imprecise = level == hierarchy.TEAM and any(
                e.statistic == "adoption" and e.ci95 * 100 > self.policy.imprecise_adoption_points for e in estimates)
            results.append(TeamResult(subject, subject in missing, message, estimates, cap, left,
                                      sizes[subject], charged, tuple(unreleased), required, level,
                                      () if level == hierarchy.TEAM else below, imprecise,
                                      (tree.parent(subject) or hierarchy.COMPANY) if imprecise else ""))
        return ReleaseResult(self.window, tuple(results), tuple(remainders))

    def check_releasable(self) -> None:
        record = self.record
        if record.state != window_store.CLOSED:
            raise Refused(f"window {record.id} is still open; it closes at {_when(record.closes_at)}. "
                          "Only closed windows are released")
        until = record.policy.retention_end(record.end)
        if self.now >= until:
            raise Refused(f"window {record.id} is past retention: windows are released for "
                          f"{record.policy.retention_windows} {record.policy.window_length.value}(s) "
                          f"after they end, until {_when(until)} for this one")

    def check_plan_done(self) -> None:
        """Before a window's plan is complete, only the plan may spend its budget."""
        if self.plan or not self.policy.release_plan:
            return
        if not store.windows.plan_released(self.tx, self.window):
            raise PlanPending(f"the release plan of window {self.window} is being released (the closer does "
                          "it right after the window closes); until it is complete nothing else is "
                          "released. Try again in a minute")

    def metrics(self, names: Sequence[str]) -> list[MetricPolicy]:
        if not names:
            return list(self.policy.metrics)
        out = []
        for name in dict.fromkeys(names):
            metric = self.policy.metric(name)
            if metric is None:
                known = ", ".join(m.name for m in self.policy.metrics)
                raise NotFound(f"metric {name!r} is not in the policy of window {self.window}; "
                               f"its metrics are {known}")
            out.append(metric)
        return out

    def wanted(self, metrics: list[MetricPolicy],
               statistics: dict[str, Loss | None]) -> dict[tuple[str, str], Loss]:
        """(metric, noisy statistic) -> epsilon for everything the answer needs.

        An epsilon given for a statistic itself wins over one given for mean or adoption
        (which applies to each noisy statistic they need), which wins over the default.
        """
        cap = self.policy.budget_per_window
        # A request's amounts are in the window's unit (epsilon or rho, its frozen mechanism's).
        statistics = {stat: None if eps is None else self.policy.unit(eps.micros) for stat, eps in statistics.items()}
        for i, (stat, eps) in enumerate(statistics.items()):  # in the request's order
            if eps is not None and eps > cap:
                raise InvalidRequest(f"statistics[{i}].epsilon {eps} for {stat} exceeds the budget of a "
                                     f"team-window in {self.window}, {cap}", f"statistics[{i}].epsilon")
        wanted: dict[tuple[str, str], Loss] = {}
        explicit: set[tuple[str, str]] = set()
        for stat, eps in statistics.items():
            for noisy in _NEEDS[stat]:
                for metric in ((TEAM_LEVEL,) if noisy == ACTIVE else (m.name for m in metrics)):
                    key = (metric, noisy)
                    if key in explicit:
                        continue
                    if eps is not None and noisy == stat:
                        explicit.add(key)
                    if eps is not None or key not in wanted:
                        wanted[key] = eps if eps is not None else self.policy.default_charge[noisy]
        return wanted

    def teams(self, names: Sequence[str], sizes: Mapping[str, int]) -> list[str]:
        if not names:
            return sorted(sizes)
        unknown = [t for t in dict.fromkeys(names) if t not in sizes]
        if unknown:
            raise NotFound(f"team {unknown[0]!r} has no statistics in window {self.window} (it was not "
                           "on the roster when the window closed)")
        return list(dict.fromkeys(names))

    def nodes(self, names: Sequence[str]) -> list[str]:
        """Named nodes of the window's frozen tree, in request order."""
        out = []
        for name in dict.fromkeys(names):
            node = name if name in self.tree else _org_or_name(name)
            if node not in self.tree:
                orgs = self.tree.org_nodes()
                known = f"its orgs are {', '.join(orgs[:10])}{', ...' if len(orgs) > 10 else ''}" if orgs \
                    else "it has no orgs (the roster gave none when it closed)"
                raise NotFound(f"node {name!r} is not in the organisation tree of window {self.window}: "
                               f"name an org path, {hierarchy.COMPANY!r} for the company, or a team; {known}")
            out.append(node)
        return out

    def stored(self, teams: list[str]) -> dict[Key, _Stored]:
        """The releases already made for these teams (or nodes) in this window."""
        wanted = set(teams)
        return self.parsed([row for row in self.release_rows() if row.team in wanted])

    def release_rows(self) -> list[store.releases.Release]:
        """Every release of the window: read once per request, again after it claims some."""
        if self._rows is None:
            self._rows = store.releases.of_window(self.tx, self.window)
        return self._rows

    def parsed(self, rows: list[store.releases.Release]) -> dict[Key, _Stored]:
        known = [_PARSED.get(row.result) for row in rows]
        unparsed = [row.result for row, r in zip(rows, known, strict=True) if r is None]
        fresh: dict[str, _Result] = {}
        if unparsed:  # one JSON document for all of them: a full report replays thousands
            if len(_PARSED) + len(unparsed) > _PARSED_MAX:
                _PARSED.clear()
            for text, r in zip(unparsed, json.loads(f"[{','.join(unparsed)}]"), strict=True):
                fresh[text] = _PARSED[text] = (r["value"], r["ci95"], r["scale"], r["sensitivity"])
        unit, mechanism = self.policy.unit, self.policy.mechanism  # the window's (epsilon or rho)
        epsilons = {micros: unit(micros) for micros in {row.epsilon_micros for row in rows}}  # a few values
        out: dict[Key, _Stored] = {}
        for row, r in zip(rows, known, strict=True):
            value, ci95, scale, sensitivity = fresh[row.result] if r is None else r
            out[(row.team, row.metric, row.statistic)] = _Stored(row.release_id, value, ci95, scale, sensitivity,
                                                                 epsilons[row.epsilon_micros], ZERO, mechanism)
        return out

    def budgets(self) -> dict[str, Budget]:
        """team -> its budget in this window."""
        return store.budgets.of_window(self.tx, self.window, self.policy.unit)

    def check_budgets(self, missing: dict[str, list[tuple[str, str]]],
                      wanted: dict[tuple[str, str], Loss],
                      budgets: dict[str, Budget]) -> None:
        """Raise BudgetExceeded naming every team that would overspend."""
        over = []
        for team, need in sorted(self.needs(missing, wanted).items()):
            budget = budgets.get(team, _NO_BUDGET)
            if not budget.allows(need):
                over.append(_overspend(team, self.window, need, budget))
        if over:
            raise BudgetExceeded(self.window, over)

    def needs(self, missing: dict[str, list[tuple[str, str]]],
              wanted: dict[tuple[str, str], Loss]) -> dict[str, Loss]:
        """team -> what the request charges its team-window: its own releases plus those of
        every node above it."""
        out: dict[str, Loss] = {}
        for subject, keys in missing.items():
            need = sum((wanted[key] for key in keys), ZERO)
            for team in self.tree.teams_below(subject):
                out[team] = out.get(team, ZERO) + need
        return out

    def release_missing(self, missing: dict[str, list[tuple[str, str]]], wanted: dict[tuple[str, str], Loss],
                        charged_to: dict[str, Loss]) -> dict[Key, _Stored]:
        """Draw, claim, charge and record every missing release; returns what is now stored and
        adds what it charged to `charged_to` per team."""
        drawn = self.draw(missing, wanted)
        at = int(self.now.timestamp())
        # Claim first: a row that a concurrent request (another replica) inserted since our
        # read wins, and our draw for it is discarded uncharged.
        store.releases.claim(self.tx, self.window, [
            store.releases.Release(item.release_id, *key, _result_json(item), item.epsilon.micros)
            for key, item in drawn.items()], at)
        self._rows = None
        claimed = store.releases.ids(self.tx, self.window)
        fresh = {key: item for key, item in drawn.items() if item.release_id in claimed}
        needs = self.needs(missing, wanted)
        store.releases.set_ledger_seq(self.tx, [(self.charge_and_record(key, item, needs), item.release_id)
                                                for key, item in fresh.items()])
        for (team, _, _), item in fresh.items():
            charged_to[team] = charged_to.get(team, ZERO) + item.epsilon
        taken = [key for key in drawn if key not in fresh]
        if taken:
            theirs = self.stored(sorted({team for team, _, _ in taken}))
            fresh.update({key: theirs[key] for key in taken})
        return fresh

    def draw(self, missing: dict[str, list[tuple[str, str]]],
             wanted: dict[tuple[str, str], Loss]) -> dict[Key, _Stored]:
        """Noise for every missing release: one OpenDP call per (metric, statistic), all teams."""
        scalars, histograms = self.inputs(list(missing))
        teams_for: dict[tuple[str, str], list[str]] = {}
        for team, keys in missing.items():
            for key in keys:
                teams_for.setdefault(key, []).append(team)
        drawn: dict[Key, _Stored] = {}
        for (metric, stat), teams in teams_for.items():
            sensitivity = policy_sensitivity(stat, self.policy.metric(metric))
            mech = mechanisms.calibrate(sensitivity, wanted[(metric, stat)], stat == "histogram")
            subjects = [(team, metric, stat) for team in teams]
            values: Sequence[int | list[int]] = (
                mech.release_histograms([histograms[k] for k in subjects]) if mech.vector
                else mech.release([scalars[k] for k in subjects]))
            for subject, value in zip(subjects, values, strict=True):
                drawn[subject] = _Stored(uuid.uuid4().hex, value, mech.ci95, mech.scale, sensitivity,
                                         mech.epsilon, mech.epsilon, mech.mechanism)
        # Ledger order: team by team, as requested.
        return {(team, *key): drawn[(team, *key)] for team, keys in missing.items() for key in keys}

    def charge_and_record(self, key: Key, item: _Stored, needs: dict[str, Loss]) -> int:
        """Charge one release against its team-window, or a node's against every team-window
        below it (never past a cap); ledger it; return seq.

        `needs` is what the whole request needs from each team-window, reported if refused."""
        subject, metric, stat = key
        level = self.tree.level(subject)
        after: dict[str, str] = {}
        cap = ZERO
        for team in self.tree.teams_below(subject):
            charged = store.budgets.charge(self.tx, self.window, team, item.epsilon)
            if charged is None:  # spent concurrently since our check (another replica): refuse it all
                budget = self.budgets().get(team, _NO_BUDGET)
                raise BudgetExceeded(self.window, [_overspend(team, self.window, needs[team], budget)])
            after[team], cap = str(charged.spent), charged.cap
        where: dict[str, Any] = ({"team": subject} if level == hierarchy.TEAM
                                 else {"node": subject, "level": level, "teams": sorted(after)})
        entry = self.ledger.append(self.tx, "release", {
            "release_id": item.release_id, "window": self.window, **where, "metric": metric,
            "statistic": stat, "mechanism": self.policy.mechanism, "sensitivity": item.sensitivity,
            "scale": item.scale, item.epsilon.UNIT: str(item.epsilon), "ci95": item.ci95,
            # Decimal strings: a noisy sum can exceed the integers a JSON number holds exactly.
            "value": [str(v) for v in item.value] if isinstance(item.value, list) else str(item.value),
            "budget_cap": str(cap),
            # A node's entry: each team's spent-after, so the verifier recomputes every team.
            "budget_spent_after": after[subject] if level == hierarchy.TEAM else dict(sorted(after.items())),
            "by": self.requester, **({"plan": True} if self.plan else {})}, self.now)
        return entry.seq

    def inputs(self, subjects: list[str]) -> tuple[dict[Key, int], dict[Key, list[int]]]:
        """The folded statistics of this window as mechanism inputs (values, histograms): per
        team, and per node in `subjects` the sums over its teams."""
        scalars: dict[Key, int] = {}
        histograms: dict[Key, list[int]] = {}
        for row in store.team_stats.metrics(self.tx, self.window):
            scalars[(row.team, row.metric, "sum")] = row.total
            scalars[(row.team, row.metric, "count")] = row.people
            histograms[(row.team, row.metric, "histogram")] = [int(v) for v in json.loads(row.histogram)]
        for team, _, active in _team_windows(self.tx, self.window):
            scalars[(team, TEAM_LEVEL, ACTIVE)] = active
        for node in subjects:
            if self.tree.level(node) == hierarchy.TEAM:
                continue
            below = self.tree.teams_below(node)
            for team, metric, stat in list(scalars):
                if team == below[0]:
                    scalars[(node, metric, stat)] = sum(scalars[(t, metric, stat)] for t in below)
            for team, metric, stat in list(histograms):
                if team == below[0]:
                    histograms[(node, metric, stat)] = [sum(column) for column in zip(
                        *(histograms[(t, metric, stat)] for t in below), strict=True)]
        return scalars, histograms

    def consistent(self, released: list[str]) -> tuple[dict[Key, tuple[float, float]], list[RemainderResult]]:
        """Consistent estimates of the released subjects' sums, counts and active, for every such
        statistic the window holds at nested levels; and the remainders under released nodes
        that hold at least k people. Computed from all of the window's stored releases."""
        rows = self.release_rows()
        if not any(self.tree.level(row.team) != hierarchy.TEAM for row in rows):
            return {}, []  # teams only: nothing nested (and a full report's replay stays cheap)
        everything = self.parsed([row for row in rows if row.statistic in CONSISTENT])
        by_statistic: dict[tuple[str, str], dict[str, _Stored]] = {}
        for (node, metric, stat), item in everything.items():
            if stat in CONSISTENT and node in self.tree:
                by_statistic.setdefault((metric, stat), {})[node] = item
        out: dict[Key, tuple[float, float]] = {}
        remainders: list[RemainderResult] = []
        k = self.policy.min_team_size
        for (metric, stat), items in sorted(by_statistic.items()):
            if not any(self.released_above(node, items) for node in items):
                continue  # one level only: the raw releases are already consistent
            plan = _plan(tuple(consistency.Node(n, p, items[n].scale if n in items else None)
                               for n, p in self.tree.nodes()), self.policy.mechanism)
            result = plan.estimate({n: int(item.value) for n, item in items.items()  # type: ignore[arg-type]
                                    if n in plan.released})
            for subject in released:
                if subject in result.estimates and subject in items:
                    e = result.estimates[subject]
                    out[(subject, metric, stat)] = (float(e.value), e.ci95)
                rest = result.remainders.get(subject)
                if rest is not None and subject in items:
                    size = sum(self.tree.size(m) for m in rest.members)
                    if size >= k:
                        remainders.append(RemainderResult(subject, rest.members, size, metric, stat,
                                                          float(rest.estimate.value), rest.estimate.ci95))
        return out, remainders

    def released_above(self, node: str, items: Mapping[str, _Stored]) -> bool:
        parent = self.tree.parent(node)
        while parent is not None:
            if parent in items:
                return True
            parent = self.tree.parent(parent)
        return False

    def answers(self, team: str, metrics: list[MetricPolicy], statistics: dict[str, Loss | None],
                stored: dict[Key, _Stored], roster_size: int,
                consistent: dict[Key, tuple[float, float]], unreleased: list[Unreleased],
                wanted: dict[tuple[str, str], Loss]) -> list[Estimate]:
        """The team's estimates: every noisy release the request needs, once each, and after
        them the derived statistics naming those they are computed from. A derived statistic
        charges nothing itself, so the estimates' charges add up to the team's. A statistic
        with a part not stored (only after a validate_only request) goes to `unreleased`."""
        out: list[Estimate] = []
        shown: set[Key] = set()

        def noisy(name: str, edges: tuple[int, ...], stat: str) -> None:
            if (team, name, stat) not in shown:
                shown.add((team, name, stat))
                out.append(_noisy(name, edges, stat, stored[(team, name, stat)], consistent.get((team, name, stat))))

        def available(metric: MetricPolicy | None, stat: str) -> bool:
            name = metric.name if metric is not None else TEAM_LEVEL
            absent = [part for part in _parts(name, stat) if (team, *part) not in stored]
            if absent:
                cost = sum((wanted[part] for part in absent), ZERO)
                unreleased.append(Unreleased(name, stat, cost, self.expected_ci95(metric, stat, roster_size,
                                                                                   wanted)))
            return not absent

        for metric in metrics:
            for stat in statistics:
                if stat == "adoption" or not available(metric, stat):
                    continue
                for need in _NEEDS[stat]:
                    noisy(metric.name, metric.histogram_edges, need)
                if stat == "mean":
                    out.append(_mean(metric, stored[(team, metric.name, "sum")],
                                     stored[(team, metric.name, "count")]))
        if "adoption" in statistics and available(None, "adoption"):
            noisy(TEAM_LEVEL, (), ACTIVE)
            out.append(_adoption(stored[(team, TEAM_LEVEL, ACTIVE)], roster_size))
        return out

    @staticmethod
    def expected_ci95(metric: MetricPolicy | None, stat: str, roster_size: int,
                      wanted: dict[tuple[str, str], Loss]) -> float:
        """The 95% half-width a statistic will have once released (it depends on no data, except
        a mean's: 0.0 there)."""
        if stat == "mean":
            return 0.0
        if metric is None:  # adoption: the active count's interval over the public roster size
            return expected_ci95("adoption", None, wanted[(TEAM_LEVEL, ACTIVE)], roster_size)
        return expected_ci95(stat, metric, wanted[(metric.name, stat)], roster_size)


#: The budget of a team without a row (not on the roster at close): nothing to spend.
_NO_BUDGET = Budget(ZERO)


def _overspend(team: str, window: str, need: Loss, budget: Budget) -> Overspend:
    """The refusal of `need` by `budget`, with the amounts the accountant reports."""
    return Overspend(team, window, need, budget.remaining, budget.cap)


def _org_or_name(name: str) -> str:
    """An org path written loosely (spaces around segments, a trailing slash) in its form."""
    try:
        return hierarchy.org_path(name.strip().rstrip("/")) or name
    except hierarchy.HierarchyError:
        return name


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _result_json(item: _Stored) -> str:
    return json.dumps({"value": item.value, "ci95": item.ci95, "scale": item.scale,
                       "sensitivity": item.sensitivity}, separators=(",", ":"))


@functools.cache
def _parts(metric: str, stat: str) -> tuple[tuple[str, str], ...]:
    """The (metric, noisy statistic) releases a statistic of `metric` is made of."""
    return tuple((TEAM_LEVEL if need == ACTIVE else metric, need) for need in _NEEDS[stat])


def _noisy(metric: str, histogram_edges: tuple[int, ...], stat: str, item: _Stored,
           consistent: tuple[float, float] | None) -> Estimate:
    """A sum, count, histogram or active; negative noisy values are shown as 0 and the answer
    says so."""
    if isinstance(item.value, list):
        buckets = tuple(max(0, v) for v in item.value)
        negative = [i for i, v in enumerate(item.value) if v < 0]
        note = (f"negative noisy counts in bucket(s) {', '.join(map(str, negative))} shown as 0 "
                f"(noisy values {item.value})" if negative else "")
        value = 0.0
        edges = histogram_edges
    else:
        buckets, edges = (), ()
        value = float(max(0, item.value))
        note = f"noisy {stat} {item.value} was negative; shown as 0" if item.value < 0 else ""
    return Estimate(metric, stat, value, item.ci95, buckets, edges, item.charged, item.epsilon,
                    item.mechanism, item.sensitivity, item.scale, not item.charged.micros,
                    item.release_id, note, (), consistent,
                    noisy_value=None if isinstance(item.value, list) else float(item.value))


def _mean(metric: MetricPolicy, total: _Stored, count: _Stored) -> Estimate:
    assert isinstance(total.value, int) and isinstance(count.value, int)
    value, ci95 = mechanisms.mean_interval(total.value, total.scale, count.value, count.scale,
                                           metric.max_per_user, total.mechanism)
    raw = total.value / max(count.value, 1)
    note = ""
    if count.value < 1 or not 0 <= raw <= metric.max_per_user:
        note = (f"noisy sum {total.value} over noisy count {count.value} (at least 1) is clamped to "
                f"[0, {metric.max_per_user}]")
    return _post_processed(metric.name, "mean", value, ci95, (total, count), note)


def _adoption(active: _Stored, roster_size: int) -> Estimate:
    assert isinstance(active.value, int)
    value, ci95 = mechanisms.adoption_interval(active.value, active.scale, roster_size, active.mechanism)
    note = (f"noisy active people {active.value} over roster size {roster_size} is outside [0, 1]; "
            "clamped" if not 0 <= active.value <= roster_size else "")
    return _post_processed(TEAM_LEVEL, "adoption", value, ci95, (active,), note)


def _post_processed(metric: str, stat: str, value: float, ci95: float, parts: tuple[_Stored, ...],
                    note: str) -> Estimate:
    """An answer computed from stored releases: it charges nothing itself (its parts carry the
    charges) and names them; cached when every part was."""
    return Estimate(metric, stat, value, ci95, (), (), ZERO, ZERO, mechanisms.POST_PROCESSING, 0, 0.0,
                    all(not p.charged.micros for p in parts), "", note, tuple(p.release_id for p in parts))

