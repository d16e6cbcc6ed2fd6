"""The steps of one release request, as functions over one `Snapshot` returning values:
`select` (what to answer and what to draw), `check_spending` (the plan and the budgets allow
it), `draw` (OpenDP noise), `charge` (claim, charge, ledger) and `answer`. Only `charge` writes;
`transaction` composes them. The accountant decides a charge (`privacy.budget.Budget.charge`);
the store's conditional UPDATE enforces it across replicas. See the package docstring for the
rules.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chorus.server import store
from chorus.server.domain import windows as window_store
from chorus.server.domain.ledger import Ledger
from chorus.server.domain.release.answers import (
    Estimate,
    ReleaseResult,
    TeamResult,
    Unreleased,
    suppression_reason,
)
from chorus.server.domain.release.errors import (
    BudgetExceeded,
    InvalidRequest,
    NotFound,
    Overspend,
    PlanPending,
    Refused,
    overspend,
)
from chorus.server.domain.release.postprocess import (
    Key,
    Replay,
    Stored,
    consistent_estimates,
    parts,
    ratio_estimate,
    result_json,
)
from chorus.server.domain.release.request import TEAM_LEVEL, Request
from chorus.server.domain.release.snapshot import Snapshot, org_or_name, team_windows, when
from chorus.server.model import hierarchy
from chorus.server.model.policy import MetricPolicy, expected_ci95
from chorus.server.model.policy import sensitivity as policy_sensitivity
from chorus.server.model.statistics import ACTIVE, NOISY_PARTS
from chorus.server.privacy import mechanisms
from chorus.server.privacy.budget import Budget, BudgetRefused
from chorus.server.privacy.epsilon import ZERO, Loss
from chorus.server.store import Tx

#: The budget of a team without a row (not on the roster at close): nothing to spend.
NO_BUDGET = Budget(ZERO)
#: (metric, noisy statistic): one noisy part of the answers, for every subject.
Part = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Selection:
    """A request resolved against its window: what it answers, and what of that is not
    released yet (what `draw` would draw)."""

    metrics: tuple[MetricPolicy, ...]
    #: statistic -> its epsilon, as requested (the window's unit applies in `wanted`).
    statistics: Mapping[str, Loss | None]
    #: Every noisy part the answers need -> what releasing it charges, in the window's unit.
    wanted: Mapping[Part, Loss]
    #: Teams, then nodes, in request order.
    subjects: tuple[str, ...]
    #: subject -> its roster size (a node's: the sum of its teams').
    sizes: Mapping[str, int]
    #: Each subject of at least k people -> its wanted parts not stored yet, in `wanted`'s order.
    missing: Mapping[str, tuple[Part, ...]]
    #: A ratio's denominator (metrics of the window), () without a ratio.
    denominator: tuple[str, ...] = ()

    @property
    def to_draw(self) -> dict[str, tuple[Part, ...]]:
        """The subjects with something missing, and what."""
        return {subject: keys for subject, keys in self.missing.items() if keys}


# -- select ---------------------------------------------------------------------------------------

def select(request: Request, snapshot: Snapshot, now: datetime) -> Selection:
    """Resolve `request` against the window; raises Refused, NotFound or InvalidRequest (in
    that order of checks) naming the value and the rule."""
    _check_releasable(snapshot.record, now)
    metrics = _metrics(snapshot, request.metrics)
    _check_ratio(snapshot, request)
    wanted = _wanted(snapshot, metrics, request.statistics, request.denominator)
    tree = snapshot.tree
    chosen = _teams(snapshot, request.teams) if request.teams or not request.nodes else []
    chosen += [n for n in _nodes(snapshot, request.nodes) if n not in chosen]
    sizes = {s: tree.size(s) for s in chosen}
    k = snapshot.policy.min_team_size
    stored = snapshot.stored
    missing = {s: tuple(key for key in wanted if (s, *key) not in stored) for s in chosen if sizes[s] >= k}
    return Selection(tuple(metrics), request.statistics, wanted, tuple(chosen), sizes, missing, request.denominator)


def _check_releasable(record: window_store.WindowRecord, now: datetime) -> None:
    if record.state != window_store.CLOSED:
        raise Refused(f"window {record.id} is still open; it closes at {when(record.closes_at)}. "
                      "Only closed windows are released")
    until = record.policy.retention_end(record.end)
    if now >= until:
        raise Refused(f"window {record.id} is past retention: windows are released for "
                      f"{record.policy.retention_windows} {record.policy.window_length.value}(s) "
                      f"after they end, until {when(until)} for this one")


def _metrics(snapshot: Snapshot, names: Sequence[str]) -> list[MetricPolicy]:
    policy = snapshot.policy
    if not names:
        return list(policy.metrics)
    out = []
    for name in dict.fromkeys(names):
        metric = policy.metric(name)
        if metric is None:
            known = ", ".join(m.name for m in policy.metrics)
            raise NotFound(f"metric {name!r} is not in the policy of window {snapshot.window}; "
                           f"its metrics are {known}")
        out.append(metric)
    return out


def _check_ratio(snapshot: Snapshot, request: Request) -> None:
    """A ratio's denominator is of the window's metrics, and a ratio names its numerators."""
    if "ratio" not in request.statistics:
        return
    denominator = request.denominator
    _metrics(snapshot, denominator)  # NotFound for a metric not in the window's policy
    if not request.metrics:
        raise InvalidRequest("metrics is empty: a ratio divides the sum of each requested metric by its "
                             f"denominator's ({', '.join(denominator)}); name the numerator metric(s)", "metrics")
    if len(denominator) == 1 and denominator[0] in request.metrics:
        raise InvalidRequest(f"a ratio of {denominator[0]} over itself is 1; name another denominator",
                             "statistics.denominator")


def _wanted(snapshot: Snapshot, metrics: list[MetricPolicy], statistics: Mapping[str, Loss | None],
            denominator: tuple[str, ...]) -> dict[Part, Loss]:
    """(metric, noisy statistic) -> epsilon for everything the answer needs (a ratio's: the sums
    of its numerators and of its denominator's metrics).

    An epsilon given for a statistic itself wins over one given for mean or adoption (which
    applies to each noisy statistic they need), which wins over the default.
    """
    policy = snapshot.policy
    cap = policy.budget_per_window
    # A request's amounts are in the window's unit (epsilon or rho, its frozen mechanism's).
    amounts = {stat: None if eps is None else policy.unit(eps.micros) for stat, eps in statistics.items()}
    for i, (stat, eps) in enumerate(amounts.items()):  # in the request's order
        if eps is not None and eps > cap:
            raise InvalidRequest(f"statistics[{i}].epsilon {eps} for {stat} exceeds the budget of a "
                                 f"team-window in {snapshot.window}, {cap}", f"statistics[{i}].epsilon")
    wanted: dict[Part, Loss] = {}
    explicit: set[Part] = set()
    names = [m.name for m in metrics]
    for stat, eps in amounts.items():
        for noisy in NOISY_PARTS[stat]:
            for metric in ((TEAM_LEVEL,) if noisy == ACTIVE else
                           dict.fromkeys([*names, *denominator]) if stat == "ratio" else names):
                key = (metric, noisy)
                if key in explicit:
                    continue
                if eps is not None and noisy == stat:
                    explicit.add(key)
                if eps is not None or key not in wanted:
                    wanted[key] = eps if eps is not None else policy.default_charge[noisy]
    return wanted


def _teams(snapshot: Snapshot, names: Sequence[str]) -> list[str]:
    sizes = snapshot.tree.sizes
    if not names:
        return sorted(sizes)
    unknown = [t for t in dict.fromkeys(names) if t not in sizes]
    if unknown:
        raise NotFound(f"team {unknown[0]!r} has no statistics in window {snapshot.window} (it was not "
                       "on the roster when the window closed)")
    return list(dict.fromkeys(names))


def _nodes(snapshot: Snapshot, names: Sequence[str]) -> list[str]:
    """Named nodes of the window's frozen tree, in request order."""
    tree = snapshot.tree
    out = []
    for name in dict.fromkeys(names):
        node = name if name in tree else org_or_name(name)
        if node not in tree:
            orgs = tree.org_nodes()
            known = f"its orgs are {', '.join(orgs[:10])}{', ...' if len(orgs) > 10 else ''}" if orgs \
                else "it has no orgs (the roster gave none when it closed)"
            raise NotFound(f"node {name!r} is not in the organisation tree of window {snapshot.window}: "
                           f"name an org path, {hierarchy.COMPANY!r} for the company, or a team; {known}")
        out.append(node)
    return out


# -- check_spending -------------------------------------------------------------------------------

def check_spending(tx: Tx, request: Request, selection: Selection, snapshot: Snapshot) -> None:
    """Raise PlanPending while the window's plan is not complete (only the plan may spend until
    then), and BudgetExceeded naming every team that would overspend: the accountant decides
    (`Budget.charge` refuses past the cap), this only collects its refusals."""
    if not request.plan and snapshot.policy.release_plan and not store.windows.plan_released(tx, snapshot.window):
        raise PlanPending(f"the release plan of window {snapshot.window} is being released (the closer does "
                          "it right after the window closes); until it is complete nothing else is "
                          "released. Try again in a minute")
    over = []
    for team, need in sorted(needs(selection, snapshot).items()):
        try:
            snapshot.budgets.get(team, NO_BUDGET).charge(need)
        except BudgetRefused as refused:
            over.append(Overspend(team, snapshot.window, refused.requested, refused.remaining, refused.cap))
    if over:
        raise BudgetExceeded(snapshot.window, over)


def needs(selection: Selection, snapshot: Snapshot) -> dict[str, Loss]:
    """team -> what the request charges its team-window: its own releases plus those of every
    node above it."""
    out: dict[str, Loss] = {}
    for subject, keys in selection.to_draw.items():
        need = sum((selection.wanted[key] for key in keys), ZERO)
        for team in snapshot.tree.teams_below(subject):
            out[team] = out.get(team, ZERO) + need
    return out


# -- draw -----------------------------------------------------------------------------------------

def draw(tx: Tx, selection: Selection, snapshot: Snapshot) -> dict[Key, Stored]:
    """Noise for every missing release, one OpenDP call per (metric, statistic) for all subjects,
    in ledger order (subject by subject, as requested). Charged as drawn; nothing is stored."""
    to_draw = selection.to_draw
    scalars, histograms = inputs(tx, snapshot, list(to_draw))
    subjects_of: dict[Part, list[str]] = {}
    for subject, keys in to_draw.items():
        for key in keys:
            subjects_of.setdefault(key, []).append(subject)
    drawn: dict[Key, Stored] = {}
    for (metric, stat), subjects in subjects_of.items():
        sensitivity = policy_sensitivity(stat, snapshot.policy.metric(metric))
        mech = mechanisms.calibrate(sensitivity, selection.wanted[(metric, stat)], stat == "histogram")
        full = [(subject, metric, stat) for subject in subjects]
        values: Sequence[int | list[int]] = (
            mech.release_histograms([histograms[k] for k in full]) if mech.vector
            else mech.release([scalars[k] for k in full]))
        for subject_key, value in zip(full, values, strict=True):
            drawn[subject_key] = Stored(uuid.uuid4().hex, value, mech.ci95, mech.scale, sensitivity, mech.epsilon,
                                mech.epsilon, mech.mechanism)
    return {(subject, *key): drawn[(subject, *key)] for subject, keys in to_draw.items() for key in keys}


def inputs(tx: Tx, snapshot: Snapshot, subjects: list[str]) -> tuple[dict[Key, int], dict[Key, list[int]]]:
    """The folded statistics of the window as mechanism inputs (values, histograms): per team,
    and per node in `subjects` the sums over its teams. Read only when something is drawn."""
    scalars: dict[Key, int] = {}
    histograms: dict[Key, list[int]] = {}
    for row in store.team_stats.metrics(tx, snapshot.window):
        scalars[(row.team, row.metric, "sum")] = row.total
        scalars[(row.team, row.metric, "count")] = row.people
        histograms[(row.team, row.metric, "histogram")] = [int(v) for v in json.loads(row.histogram)]
    for team, _, active in team_windows(tx, snapshot.window):
        scalars[(team, TEAM_LEVEL, ACTIVE)] = active
    tree = snapshot.tree
    for node in subjects:
        if tree.level(node) == hierarchy.TEAM:
            continue
        below = tree.teams_below(node)
        for team, metric, stat in list(scalars):
            if team == below[0]:
                scalars[(node, metric, stat)] = sum(scalars[(t, metric, stat)] for t in below)
        for team, metric, stat in list(histograms):
            if team == below[0]:
                histograms[(node, metric, stat)] = [sum(column) for column in zip(
                    *(histograms[(t, metric, stat)] for t in below), strict=True)]
    return scalars, histograms


# -- charge ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Charged:
    """What `charge` stored and charged."""

    #: The drawn releases whose rows this transaction claimed, as charged now (a draw whose row
    #: a concurrent request claimed first is not here: the stored one answers for it).
    claimed: Mapping[Key, Stored]
    #: subject -> what this request charged it (for a node: each team below it).
    charged_to: Mapping[str, Loss]


def charge(tx: Tx, ledger: Ledger, now: datetime, request: Request, selection: Selection,
           snapshot: Snapshot, drawn: Mapping[Key, Stored]) -> Charged:
    """Claim every drawn release, charge and ledger the ones claimed; raises BudgetExceeded when
    a concurrent charge took the budget since `check_spending` (the transaction then rolls back
    whole)."""
    # Claim first: a row that a concurrent request (another replica) inserted since our read
    # wins, and our draw for it is discarded uncharged.
    store.releases.claim(tx, snapshot.window, [
        store.releases.Release(item.release_id, *key, result_json(item), item.epsilon.micros)
        for key, item in drawn.items()], int(now.timestamp()))
    ids = store.releases.ids(tx, snapshot.window)
    claimed = {key: item for key, item in drawn.items() if item.release_id in ids}
    need = needs(selection, snapshot)
    store.releases.set_ledger_seq(tx, [(_charge_one(tx, ledger, now, request, snapshot, key, item, need),
                                        item.release_id) for key, item in claimed.items()])
    charged_to: dict[str, Loss] = {}
    for (subject, _, _), item in claimed.items():
        charged_to[subject] = charged_to.get(subject, ZERO) + item.epsilon
    return Charged(claimed, charged_to)


def _charge_one(tx: Tx, ledger: Ledger, now: datetime, request: Request, snapshot: Snapshot, key: Key,
                item: Stored, need: Mapping[str, Loss]) -> int:
    """Charge one release against its team-window, or a node's against every team-window below
    it (never past a cap); ledger it; return its seq. `need` is what the whole request needs
    from each team-window, reported if refused."""
    subject, metric, stat = key
    tree, window, policy = snapshot.tree, snapshot.window, snapshot.policy
    level = tree.level(subject)
    after: dict[str, str] = {}
    cap = ZERO
    for team in tree.teams_below(subject):
        charged = store.budgets.charge(tx, window, team, item.epsilon)
        if charged is None:  # spent concurrently since our check (another replica): refuse it all
            budget = store.budgets.of_window(tx, window, policy.unit).get(team, NO_BUDGET)
            raise BudgetExceeded(window, [overspend(team, window, need[team], budget)])
        after[team], cap = str(charged.spent), charged.cap
    where: dict[str, Any] = ({"team": subject} if level == hierarchy.TEAM
                             else {"node": subject, "level": level, "teams": sorted(after)})
    entry = ledger.append(tx, "release", {
        "release_id": item.release_id, "window": window, **where, "metric": metric,
        "statistic": stat, "mechanism": policy.mechanism, "sensitivity": item.sensitivity,
        "scale": item.scale, item.epsilon.UNIT: str(item.epsilon), "ci95": item.ci95,
        # Decimal strings: a noisy sum can exceed the integers a JSON number holds exactly.
        "value": [str(v) for v in item.value] if isinstance(item.value, list) else str(item.value),
        "budget_cap": str(cap),
        # A node's entry: each team's spent-after, so the verifier recomputes every team.
        "budget_spent_after": after[subject] if level == hierarchy.TEAM else dict(sorted(after.items())),
        "by": request.requester, **({"plan": True} if request.plan else {})}, now)
    return entry.seq


# -- answer ---------------------------------------------------------------------------------------

def answer(selection: Selection, snapshot: Snapshot, stored: Mapping[Key, Stored],
           charged_to: Mapping[str, Loss]) -> ReleaseResult:
    """The answer for every subject: its estimates (`stored` holds each release the selection
    needs, as charged now or stored before), budget and charges, or why it is suppressed; and
    the consistent estimates and remainders of nested levels (computed from `snapshot`'s
    releases)."""
    tree, policy = snapshot.tree, snapshot.policy
    consistent, remainders = consistent_estimates(tree, policy, snapshot.stored, list(selection.missing))
    k = policy.min_team_size
    replay = snapshot.replay
    results = []
    for subject in selection.subjects:
        level = tree.level(subject)
        below = tree.teams_below(subject)
        cap = snapshot.budgets.get(below[0], NO_BUDGET).cap if below else policy.budget_per_window
        # The least any team below has left; for a team, its own.
        left = min((snapshot.budgets.get(t, NO_BUDGET).remaining for t in below), default=cap)
        # What this request charged, not the difference of two reads: another replica may
        # charge the same team-window in between.
        charged = charged_to.get(subject, ZERO)
        size = selection.sizes[subject]
        unreleased: tuple[Unreleased, ...] = ()
        required = ZERO
        if subject in selection.missing:
            missing = selection.missing[subject]
            estimates, unreleased = _estimates(subject, selection, replay, stored, consistent, missing)
            required = sum((selection.wanted[key] for key in missing if (subject, *key) not in stored), ZERO)
            message = ""
        else:
            estimates, message = (), suppression_reason(subject, size, k, level)
        imprecise = level == hierarchy.TEAM and any(
            e.statistic == "adoption" and e.ci95 * 100 > policy.imprecise_adoption_points for e in estimates)
        results.append(TeamResult(subject, subject in selection.missing, message, estimates, cap, left, size,
                                  charged, unreleased, required, level, () if level == hierarchy.TEAM else below,
                                  imprecise, (tree.parent(subject) or hierarchy.COMPANY) if imprecise else ""))
    return ReleaseResult(snapshot.window, tuple(results), tuple(remainders))


def _estimates(subject: str, selection: Selection, replay: Replay, stored: Mapping[Key, Stored],
               consistent: Mapping[Key, tuple[float, float]],
               missing: tuple[Part, ...]) -> tuple[tuple[Estimate, ...], tuple[Unreleased, ...]]:
    """The subject's estimates: every noisy release the request needs, once each, and after them
    the derived statistics naming those they are computed from. A derived statistic charges
    nothing itself, so the estimates' charges add up to the subject's. A statistic with a part
    not stored (only in a validate_only answer) is unreleased instead, with what it would
    charge. `missing`: what the subject lacked before this request drew (nothing: all stored)."""
    out: list[Estimate] = []
    unreleased: list[Unreleased] = []
    shown: set[Part] = set()
    size = selection.sizes[subject]

    def add_noisy(name: str, edges: tuple[int, ...], stat: str) -> None:
        if (name, stat) not in shown:
            shown.add((name, stat))
            key = (subject, name, stat)
            out.append(replay.noisy(name, edges, stat, stored[key], consistent.get(key)))

    def available(metric: MetricPolicy | None, stat: str) -> bool:
        if not missing:
            return True  # every part of every requested statistic is stored
        name = metric.name if metric is not None else TEAM_LEVEL
        absent = [part for part in parts(name, stat, selection.denominator) if (subject, *part) not in stored]
        if absent:
            cost = sum((selection.wanted[part] for part in absent), ZERO)
            unreleased.append(Unreleased(name, stat, cost,
                                         _expected_ci95(metric, stat, size, selection.wanted)))
        return not absent

    for metric in selection.metrics:
        for stat in selection.statistics:
            if stat == "adoption" or not available(metric, stat):
                continue
            for need in NOISY_PARTS[stat]:
                add_noisy(metric.name, metric.histogram_edges, need)
            if stat == "mean":
                out.append(replay.mean(metric, stored[(subject, metric.name, "sum")],
                                       stored[(subject, metric.name, "count")]))
            if stat == "ratio":
                for name in selection.denominator:
                    add_noisy(name, (), "sum")
                out.append(ratio_estimate(metric.name, selection.denominator, stored[(subject, metric.name, "sum")],
                                          [stored[(subject, d, "sum")] for d in selection.denominator
                                           if d != metric.name]))
    if "adoption" in selection.statistics and available(None, "adoption"):
        add_noisy(TEAM_LEVEL, (), ACTIVE)
        out.append(replay.adoption(stored[(subject, TEAM_LEVEL, ACTIVE)], size))
    return tuple(out), tuple(unreleased)


def _expected_ci95(metric: MetricPolicy | None, stat: str, roster_size: int, wanted: Mapping[Part, Loss]) -> float:
    """The 95% half-width a statistic will have once released (it depends on no data, except a
    mean's and a ratio's: 0.0 there)."""
    if stat in ("mean", "ratio"):
        return 0.0
    if metric is None:  # adoption: the active count's interval over the public roster size
        return expected_ci95("adoption", None, wanted[(TEAM_LEVEL, ACTIVE)], roster_size)
    return expected_ci95(stat, metric, wanted[(metric.name, stat)], roster_size)
