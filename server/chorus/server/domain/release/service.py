"""`Releases`: the release service the composition root builds (list, release, the plan)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from chorus.server import store
from chorus.server.domain import roster
from chorus.server.domain import windows as window_store
from chorus.server.domain.ledger import Ledger
from chorus.server.domain.release import snapshot as snapshots
from chorus.server.domain.release import transaction
from chorus.server.domain.release.answers import ReleaseResult, TeamInfo, TeamList, suppression_reason
from chorus.server.domain.release.errors import BudgetExceeded, InvalidRequest, Refused
from chorus.server.domain.release.postprocess import WindowReleases
from chorus.server.domain.release.request import Request, StatisticRequest, denominator_of, validated_statistics
from chorus.server.domain.release.snapshot import tree_of, window_of
from chorus.server.domain.release.transaction import PLAN_ACTOR, drawn_now, respond
from chorus.server.model.clock import Clock
from chorus.server.model.policy import MetricPolicy, Policy
from chorus.server.store import Database, Tx

__all__ = ["PLAN_ACTOR", "Releases"]

_log = logging.getLogger(__name__)


class Releases:
    """Lists what can be released and releases it: claims, charges (through the `Budget` accountant and
    `store.budgets.charge`) and ledgers each new release in one transaction."""

    def __init__(self, db: Database, ledger: Ledger, clock: Clock, policy: Policy) -> None:
        self._db = db
        self._ledger = ledger
        self._clock = clock
        self._policy = policy  # the policy the next window will freeze
        self._known = WindowReleases()  # for read transactions only

    def list_metrics(self, window: str = "") -> tuple[MetricPolicy, ...]:
        """The metrics frozen in `window`, or of the next window when empty."""
        if not window:
            return self._policy.metrics
        return self._db.read(lambda tx: window_of(tx, window), name="list_metrics").policy.metrics

    def list_teams(self, window: str = "") -> TeamList:
        """Teams with roster sizes: frozen at close for a closed window, else the current roster."""

        def read(tx: Tx) -> TeamList:
            record = window_of(tx, window) if window else None
            if record is not None and record.state == window_store.CLOSED:
                tree = tree_of(tx, record.id)
                sizes, orgs = dict(tree.sizes), dict(tree.orgs)
            else:
                sizes, orgs = roster.team_sizes(tx), roster.current_orgs(tx)
            k = (record.policy if record is not None else self._policy).min_team_size
            return TeamList(tuple(TeamInfo(t, n, n >= k, suppression_reason(t, n, k), orgs.get(t, ""))
                                  for t, n in sorted(sizes.items())), k)

        return self._db.read(read, name="list_teams")

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
        request = Request(window, tuple(teams), tuple(metrics), validated_statistics(statistics), tuple(nodes),
                          requester, validate_only=validate_only, denominator=denominator_of(statistics))
        now = self._clock.now()
        # A request whose releases are all stored (a validate_only one, a replay) writes nothing,
        # so it is answered in a read transaction: no writer lock. Only one that must draw runs
        # again as a write transaction, from the start.
        answered = self._db.read(lambda tx: respond(tx, self._ledger, now, request,
                                                    snapshots.read(tx, window, self._known), draw=False),
                                 name="read_releases")
        if answered is None:
            answered = self._db.run(lambda tx: respond(tx, self._ledger, now, request, snapshots.read(tx, window)),
                                    name="release")
        assert answered is not None  # a write transaction draws what is missing
        result = answered[0]
        if not validate_only:  # a read changes nothing worth a log line per page view
            _log.info("release for window %s: %d team(s), %d new noisy release(s)", window, len(result.teams),
                      drawn_now(result))
        return result

    def pending_plans(self) -> list[str]:
        """Closed windows, oldest first, whose release plan is not yet complete."""
        return self._db.read(store.windows.plan_pending, name="pending_plans")

    def release_plan(self, window: str) -> None:
        """Release the plan frozen in `window`'s policy, every entry in one transaction (each
        entry one request inside it, over one snapshot of the window), then mark it done.

        Safe to repeat and to run on several replicas at once: entries already released are
        answered from storage, uncharged; a crash or a refusal rolls the whole plan back, and the
        next tick starts it again. A window the plan can no longer be released for (past
        retention, or over a budget: a nested org tree deeper than the plan was checked for) is
        marked done with what was released, and the reason logged.
        """
        now = self._clock.now()
        try:
            fresh = self._db.run(lambda tx: transaction.release_plan(tx, self._ledger, now, window),
                                 name="release_plan")
            _log.info("release plan of window %s: %d new noisy release(s)", window, fresh)
        except (Refused, BudgetExceeded) as exc:
            _log.error("release plan of window %s stopped: %s", window, exc)
        at = int(self._clock.now().timestamp())
        self._db.run(lambda tx: store.windows.mark_plan_released(tx, window, at), name="plan_done")
