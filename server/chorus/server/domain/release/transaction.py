"""One release request inside its transaction: plan what to draw, draw, claim, charge (the
accountant decides: `privacy.budget.Budget.charge`; the store's conditional UPDATE enforces
it across replicas), ledger, answer. See the package docstring for the rules."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from chorus.server import store
from chorus.server.domain import windows as window_store
from chorus.server.domain.ledger import Ledger
from chorus.server.domain.release.answers import (
    Estimate,
    ReleaseResult,
    RemainderResult,
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
    Stored,
    WindowReleases,
    consistency_plan,
    parts,
    ratio_estimate,
    replay_of,
    result_json,
)
from chorus.server.domain.release.request import TEAM_LEVEL
from chorus.server.domain.release.snapshot import org_or_name, team_windows, tree_of, when, window_of
from chorus.server.model import hierarchy
from chorus.server.model.policy import MetricPolicy, expected_ci95
from chorus.server.model.policy import sensitivity as policy_sensitivity
from chorus.server.model.statistics import ACTIVE, NOISY_PARTS
from chorus.server.privacy import consistency, mechanisms
from chorus.server.privacy.budget import Budget, BudgetRefused
from chorus.server.privacy.epsilon import ZERO, Loss
from chorus.server.store import Tx

#: The budget of a team without a row (not on the roster at close): nothing to spend.
NO_BUDGET = Budget(ZERO)
#: Statistics made consistent across the levels of the tree (scalars; histograms are not).
CONSISTENT = ("sum", "count", ACTIVE)


class RequestTransaction:
    """One release request inside its transaction."""

    def __init__(self, tx: Tx, ledger: Ledger, now: datetime, window: str, requester: str, *,
                 plan: bool = False, validate_only: bool = False, known: WindowReleases | None = None,
                 denominator: tuple[str, ...] = ()) -> None:
        """`known`: the windows' stored releases read before; only in a read transaction.
        `denominator`: the metrics of the request's ratio's denominator, () without a ratio."""
        self.plan = plan
        self.validate_only = validate_only
        self.tx = tx
        self.ledger = ledger
        self.now = now
        self.requester = requester
        self.record = window_of(tx, window)
        self.window = window
        self.policy = self.record.policy
        self.tree = tree_of(tx, window)
        self.replay = replay_of(self.policy)
        self._known = known
        self._stored: dict[Key, Stored] | None = None  # read once per request (stored)
        self.denominator = denominator

    def run(self, teams: Sequence[str], metrics: Sequence[str],
            statistics: dict[str, Loss | None], nodes: Sequence[str] = ()) -> ReleaseResult:
        """Answer the request, drawing, charging and ledgering what is not released yet."""
        result = self._answer(teams, metrics, statistics, nodes, draw=True)
        assert result is not None  # it draws what is missing
        return result

    def answer_if_stored(self, teams: Sequence[str], metrics: Sequence[str],
                         statistics: dict[str, Loss | None], nodes: Sequence[str] = ()) -> ReleaseResult | None:
        """The answer `run` gives when every noisy statistic it needs is stored already (it then
        writes nothing, so this runs in a read transaction); None when one must be drawn. A
        validate_only request never draws: it always gets its answer here."""
        return self._answer(teams, metrics, statistics, nodes, draw=False)

    def _answer(self, teams: Sequence[str], metrics: Sequence[str], statistics: dict[str, Loss | None],
                nodes: Sequence[str], *, draw: bool) -> ReleaseResult | None:
        self.check_releasable()
        chosen_metrics = self.metrics(metrics)
        self.check_ratio(metrics, statistics)
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
        stored = self.stored()
        missing = {t: [key for key in wanted if (t, *key) not in stored] for t in eligible}
        if not self.validate_only:
            if any(missing.values()):
                if not draw:
                    return None
                self.check_plan_done()
            self.check_budgets({t: keys for t, keys in missing.items() if keys}, wanted, budgets)
        charged_to: dict[str, Loss] = {}
        if any(missing.values()) and not self.validate_only:
            stored = {**stored, **self.release_missing(missing, wanted, charged_to)}
            budgets = self.budgets()
        consistent, remainders = self.consistent(list(missing))
        results = []
        for subject in chosen:
            level = tree.level(subject)
            below = tree.teams_below(subject)
            cap = budgets.get(below[0], NO_BUDGET).cap if below else self.policy.budget_per_window
            # The least any team below has left; for a team, its own.
            left = min((budgets.get(t, NO_BUDGET).remaining for t in below), default=cap)
            # What this request charged, not the difference of two reads: another replica may
            # charge the same team-window in between.
            charged = charged_to.get(subject, ZERO)
            unreleased: list[Unreleased] = []
            required = ZERO
            if subject in missing:
                estimates = tuple(self.answers(subject, chosen_metrics, statistics, stored, sizes[subject],
                                               consistent, unreleased, wanted, missing[subject]))
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
            raise Refused(f"window {record.id} is still open; it closes at {when(record.closes_at)}. "
                          "Only closed windows are released")
        until = record.policy.retention_end(record.end)
        if self.now >= until:
            raise Refused(f"window {record.id} is past retention: windows are released for "
                          f"{record.policy.retention_windows} {record.policy.window_length.value}(s) "
                          f"after they end, until {when(until)} for this one")

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

    def check_ratio(self, metrics: Sequence[str], statistics: dict[str, Loss | None]) -> None:
        """A ratio's denominator is of the window's metrics, and a ratio names its numerators."""
        if "ratio" not in statistics:
            return
        denominator = self.denominator
        self.metrics(denominator)  # NotFound for a metric not in the window's policy
        if not metrics:
            raise InvalidRequest("metrics is empty: a ratio divides the sum of each requested metric by its "
                                 f"denominator's ({', '.join(denominator)}); name the numerator metric(s)", "metrics")
        if len(denominator) == 1 and denominator[0] in metrics:
            raise InvalidRequest(f"a ratio of {denominator[0]} over itself is 1; name another denominator",
                                 "statistics.denominator")

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
        names = [m.name for m in metrics]
        for stat, eps in statistics.items():
            for noisy in NOISY_PARTS[stat]:
                for metric in ((TEAM_LEVEL,) if noisy == ACTIVE else
                               dict.fromkeys([*names, *self.denominator]) if stat == "ratio" else names):
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
            node = name if name in self.tree else org_or_name(name)
            if node not in self.tree:
                orgs = self.tree.org_nodes()
                known = f"its orgs are {', '.join(orgs[:10])}{', ...' if len(orgs) > 10 else ''}" if orgs \
                    else "it has no orgs (the roster gave none when it closed)"
                raise NotFound(f"node {name!r} is not in the organisation tree of window {self.window}: "
                               f"name an org path, {hierarchy.COMPANY!r} for the company, or a team; {known}")
            out.append(node)
        return out

    def stored(self) -> dict[Key, Stored]:
        """Every release of the window, keyed (team or node, metric, statistic): read in one
        query once per request, again after it claims some. Never mutated."""
        if self._stored is None:
            self._stored = (self._known.read(self.tx, self.window, self.replay) if self._known is not None
                            else self.replay.stored(store.releases.of_window(self.tx, self.window)))
        return self._stored

    def budgets(self) -> dict[str, Budget]:
        """team -> its budget in this window."""
        return store.budgets.of_window(self.tx, self.window, self.policy.unit)

    def check_budgets(self, missing: dict[str, list[tuple[str, str]]],
                      wanted: dict[tuple[str, str], Loss],
                      budgets: dict[str, Budget]) -> None:
        """Raise BudgetExceeded naming every team that would overspend: the accountant decides
        (`Budget.charge` refuses past the cap), this only collects its refusals."""
        over = []
        for team, need in sorted(self.needs(missing, wanted).items()):
            try:
                budgets.get(team, NO_BUDGET).charge(need)
            except BudgetRefused as refused:
                over.append(Overspend(team, self.window, refused.requested, refused.remaining, refused.cap))
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
                        charged_to: dict[str, Loss]) -> dict[Key, Stored]:
        """Draw, claim, charge and record every missing release; returns what is now stored and
        adds what it charged to `charged_to` per team."""
        drawn = self.draw(missing, wanted)
        at = int(self.now.timestamp())
        # Claim first: a row that a concurrent request (another replica) inserted since our
        # read wins, and our draw for it is discarded uncharged.
        store.releases.claim(self.tx, self.window, [
            store.releases.Release(item.release_id, *key, result_json(item), item.epsilon.micros)
            for key, item in drawn.items()], at)
        self._stored = None
        claimed = store.releases.ids(self.tx, self.window)
        fresh = {key: item for key, item in drawn.items() if item.release_id in claimed}
        needs = self.needs(missing, wanted)
        store.releases.set_ledger_seq(self.tx, [(self.charge_and_record(key, item, needs), item.release_id)
                                                for key, item in fresh.items()])
        for (team, _, _), item in fresh.items():
            charged_to[team] = charged_to.get(team, ZERO) + item.epsilon
        taken = [key for key in drawn if key not in fresh]
        if taken:
            theirs = self.stored()
            fresh.update({key: theirs[key] for key in taken})
        return fresh

    def draw(self, missing: dict[str, list[tuple[str, str]]],
             wanted: dict[tuple[str, str], Loss]) -> dict[Key, Stored]:
        """Noise for every missing release: one OpenDP call per (metric, statistic), all teams."""
        scalars, histograms = self.inputs(list(missing))
        teams_for: dict[tuple[str, str], list[str]] = {}
        for team, keys in missing.items():
            for key in keys:
                teams_for.setdefault(key, []).append(team)
        drawn: dict[Key, Stored] = {}
        for (metric, stat), teams in teams_for.items():
            sensitivity = policy_sensitivity(stat, self.policy.metric(metric))
            mech = mechanisms.calibrate(sensitivity, wanted[(metric, stat)], stat == "histogram")
            subjects = [(team, metric, stat) for team in teams]
            values: Sequence[int | list[int]] = (
                mech.release_histograms([histograms[k] for k in subjects]) if mech.vector
                else mech.release([scalars[k] for k in subjects]))
            for subject, value in zip(subjects, values, strict=True):
                drawn[subject] = Stored(uuid.uuid4().hex, value, mech.ci95, mech.scale, sensitivity,
                                         mech.epsilon, mech.epsilon, mech.mechanism)
        # Ledger order: team by team, as requested.
        return {(team, *key): drawn[(team, *key)] for team, keys in missing.items() for key in keys}

    def charge_and_record(self, key: Key, item: Stored, needs: dict[str, Loss]) -> int:
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
                budget = self.budgets().get(team, NO_BUDGET)
                raise BudgetExceeded(self.window, [overspend(team, self.window, needs[team], budget)])
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
        for team, _, active in team_windows(self.tx, self.window):
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
        everything = self.stored()
        if all(self.tree.level(subject) == hierarchy.TEAM for subject in {key[0] for key in everything}):
            return {}, []  # teams only: nothing nested (and a full report's replay stays cheap)
        by_statistic: dict[tuple[str, str], dict[str, Stored]] = {}
        for (node, metric, stat), item in everything.items():
            if stat in CONSISTENT and node in self.tree:
                by_statistic.setdefault((metric, stat), {})[node] = item
        out: dict[Key, tuple[float, float]] = {}
        remainders: list[RemainderResult] = []
        k = self.policy.min_team_size
        for (metric, stat), items in sorted(by_statistic.items()):
            if not any(self.released_above(node, items) for node in items):
                continue  # one level only: the raw releases are already consistent
            plan = consistency_plan(tuple(consistency.Node(n, p, items[n].scale if n in items else None)
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

    def released_above(self, node: str, items: Mapping[str, Stored]) -> bool:
        parent = self.tree.parent(node)
        while parent is not None:
            if parent in items:
                return True
            parent = self.tree.parent(parent)
        return False

    def answers(self, team: str, metrics: list[MetricPolicy], statistics: dict[str, Loss | None],
                stored: dict[Key, Stored], roster_size: int,
                consistent: dict[Key, tuple[float, float]], unreleased: list[Unreleased],
                wanted: dict[tuple[str, str], Loss], missing: list[tuple[str, str]]) -> list[Estimate]:
        """The team's estimates: every noisy release the request needs, once each, and after
        them the derived statistics naming those they are computed from. A derived statistic
        charges nothing itself, so the estimates' charges add up to the team's. A statistic
        with a part not stored (only after a validate_only request) goes to `unreleased`.
        `missing`: what the team lacked before this request drew (nothing: all is stored)."""
        out: list[Estimate] = []
        shown: set[tuple[str, str]] = set()
        replay = self.replay

        def add_noisy(name: str, edges: tuple[int, ...], stat: str) -> None:
            if (name, stat) not in shown:
                shown.add((name, stat))
                key = (team, name, stat)
                out.append(replay.noisy(name, edges, stat, stored[key], consistent.get(key)))

        def available(metric: MetricPolicy | None, stat: str) -> bool:
            if not missing:
                return True  # every part of every requested statistic is stored
            name = metric.name if metric is not None else TEAM_LEVEL
            absent = [part for part in parts(name, stat, self.denominator) if (team, *part) not in stored]
            if absent:
                cost = sum((wanted[part] for part in absent), ZERO)
                unreleased.append(Unreleased(name, stat, cost, self.expected_ci95(metric, stat, roster_size,
                                                                                   wanted)))
            return not absent

        for metric in metrics:
            for stat in statistics:
                if stat == "adoption" or not available(metric, stat):
                    continue
                for need in NOISY_PARTS[stat]:
                    add_noisy(metric.name, metric.histogram_edges, need)
                if stat == "mean":
                    out.append(replay.mean(metric, stored[(team, metric.name, "sum")],
                                           stored[(team, metric.name, "count")]))
                if stat == "ratio":
                    for name in self.denominator:
                        add_noisy(name, (), "sum")
                    out.append(ratio_estimate(metric.name, self.denominator, stored[(team, metric.name, "sum")],
                                              [stored[(team, d, "sum")] for d in self.denominator if d != metric.name]))
        if "adoption" in statistics and available(None, "adoption"):
            add_noisy(TEAM_LEVEL, (), ACTIVE)
            out.append(replay.adoption(stored[(team, TEAM_LEVEL, ACTIVE)], roster_size))
        return out

    @staticmethod
    def expected_ci95(metric: MetricPolicy | None, stat: str, roster_size: int,
                      wanted: dict[tuple[str, str], Loss]) -> float:
        """The 95% half-width a statistic will have once released (it depends on no data, except
        a mean's and a ratio's: 0.0 there)."""
        if stat in ("mean", "ratio"):
            return 0.0
        if metric is None:  # adoption: the active count's interval over the public roster size
            return expected_ci95("adoption", None, wanted[(TEAM_LEVEL, ACTIVE)], roster_size)
        return expected_ci95(stat, metric, wanted[(metric.name, stat)], roster_size)


