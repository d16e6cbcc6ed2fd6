"""Why a release request is refused: each error names the value and the rule; nothing was stored."""

from __future__ import annotations

from dataclasses import dataclass

from chorus.server.privacy.budget import Budget, refusal
from chorus.server.privacy.epsilon import Loss


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



def overspend(team: str, window: str, need: Loss, budget: Budget) -> Overspend:
    """The refusal of `need` by `budget`, with the amounts the accountant reports."""
    return Overspend(team, window, need, budget.remaining, budget.cap)

