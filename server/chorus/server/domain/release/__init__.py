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
closes (`release_plan`), through this same path: every entry one request (at every team,
every org node or the company, as its `level` says), all of them in one transaction over one
snapshot of the window, each ledger entry marked `"plan": true`. The window's `plan_released_at` is set after that
transaction, so a crash in between is completed by the next tick, and repeats are answered from
storage: the plan is charged once. Until then only the plan may spend the window's budget
(a request at a team or at any node of the tree is refused),
so no early request can take what the plan needs.

A `validate_only` request (AIP-163) reads: it runs the same checks and answers with what is
already released, plus for each statistic not released yet what releasing it would charge and
its expected interval. It draws, stores and charges nothing, whatever the budget left. Every
request is first answered that way, in a read transaction (no writer lock); only one that has
something to draw runs again, from the start, as the write transaction above. A replay's
stored releases are parsed once per process and its answers built once
(`postprocess.Replay`), and a window's releases are read again only when their count has
changed (`postprocess.WindowReleases`: releases are only ever added).

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

The package by step: `request` (the validated request, a frozen `Request`), `snapshot` (what
one transaction reads of the window, once: its record and frozen policy, tree, budgets and
stored releases), `steps` (functions of the snapshot returning values: select what to answer
and draw, check the spending, draw, claim-charge-ledger, answer), `transaction` (the steps
composed: one request, or a window's whole release plan, in one transaction), `postprocess`
(stored releases read back; mean, adoption, ratio and the consistent estimates, at no privacy
cost; the replay caches), `answers` (the frozen values returned), `errors`, and `service`
(`Releases`, which the composition root builds).
"""

from __future__ import annotations

from chorus.server.domain.release.answers import (
    Estimate,
    ReleaseResult,
    RemainderResult,
    TeamInfo,
    TeamList,
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
    ReleaseError,
)
from chorus.server.domain.release.request import TEAM_LEVEL, StatisticRequest
from chorus.server.domain.release.service import PLAN_ACTOR, Releases

__all__ = ["PLAN_ACTOR", "TEAM_LEVEL", "BudgetExceeded", "Estimate", "InvalidRequest", "NotFound", "Overspend",
           "PlanPending", "Refused", "ReleaseError", "ReleaseResult", "Releases", "RemainderResult",
           "StatisticRequest", "TeamInfo", "TeamList", "TeamResult", "Unreleased", "suppression_reason"]
