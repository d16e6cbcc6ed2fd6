"""One release request in its transaction, and a window's whole release plan in one: the steps
(`steps`) composed over one snapshot of the window (`snapshot`). See the package docstring for
the rules.

A request reads the snapshot, selects, and when nothing is missing (or it is validate_only)
answers from it: that writes nothing, so it can run in a read transaction (`respond` with
`draw=False` then says None when something must be drawn). Otherwise it checks the spending,
draws, claims and charges, reads the budgets and releases again and answers. A retried
transaction starts over from a rolled-back state and a fresh snapshot, so it cannot charge twice.
"""

from __future__ import annotations

from datetime import datetime

from chorus.server.domain.ledger import Ledger
from chorus.server.domain.release import snapshot as snapshots
from chorus.server.domain.release import steps
from chorus.server.domain.release.answers import ReleaseResult
from chorus.server.domain.release.request import Request
from chorus.server.domain.release.snapshot import Snapshot
from chorus.server.model import hierarchy
from chorus.server.privacy import mechanisms
from chorus.server.store import Tx

#: Who releases the plan, as the ledger's `by` names it.
PLAN_ACTOR = "closer"


def respond(tx: Tx, ledger: Ledger, now: datetime, request: Request, snapshot: Snapshot, *,
            draw: bool = True) -> tuple[ReleaseResult, Snapshot] | None:
    """Answer `request` over `snapshot` (read in `tx`), drawing, charging and ledgering what is
    not released yet; the answer, and the snapshot as it stands after. With `draw=False`, None
    instead of drawing (a validate_only request never draws: it always gets its answer)."""
    selection = steps.select(request, snapshot, now)
    if request.validate_only or not selection.to_draw:
        return steps.answer(selection, snapshot, snapshot.stored, {}), snapshot
    if not draw:
        return None
    steps.check_spending(tx, request, selection, snapshot)
    charged = steps.charge(tx, ledger, now, request, selection, snapshot, steps.draw(tx, selection, snapshot))
    after = snapshots.after_claims(tx, snapshot)
    # As charged now where this request claimed the row; as stored where a concurrent one did.
    return steps.answer(selection, after, {**after.stored, **charged.claimed}, charged.charged_to), after


def release_plan(tx: Tx, ledger: Ledger, now: datetime, window: str) -> int:
    """Release the plan frozen in `window`'s policy, every entry one request over one snapshot
    of the window (read once, its budgets and releases again after each entry that drew), in
    the transaction `tx`; how many noisy releases were drawn. Raises Refused or
    BudgetExceeded (the transaction then rolls back whole)."""
    snapshot = snapshots.read(tx, window)
    fresh = 0
    for entry in snapshot.policy.release_plan:
        nodes = {hierarchy.ROOT: [hierarchy.COMPANY], hierarchy.ORG: snapshot.tree.org_nodes()}.get(entry.level, [])
        if entry.level != hierarchy.TEAM and not nodes:
            continue  # org entries in a company without orgs: nothing to release
        request = Request(window, (), (entry.metric,) if entry.metric else (), {entry.statistic: entry.charge},
                          tuple(nodes), PLAN_ACTOR, plan=True, denominator=entry.denominator)
        answered = respond(tx, ledger, now, request, snapshot)
        assert answered is not None  # it draws what is missing
        result, snapshot = answered
        fresh += drawn_now(result)
    return fresh


def drawn_now(result: ReleaseResult) -> int:
    """How many noisy releases a result drew now (not cached, not post-processing)."""
    return sum(1 for t in result.teams for e in t.estimates
               if not e.cached and e.mechanism != mechanisms.POST_PROCESSING)
