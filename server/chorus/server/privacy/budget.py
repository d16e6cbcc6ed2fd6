"""The privacy budget of one team-window as an accountant: cap, spent, charge, refuse, remaining.

The one owner of budget arithmetic. Releases (before charging, and in what they answer), the
audit service (what GetBudget reports) and the offline verifier (what it recomputes from the
ledger) all ask a `Budget`, so "remaining" cannot differ between them, even at the edge where
a (tampered or corrupt) record shows more spent than the cap: remaining is then zero, never
negative and never an error. Pure arithmetic on the exact `Loss` (epsilon or rho): no store, no gRPC, no
clock, so the offline verifier imports it without server internals. Persistence (the
conditional charge that enforces the cap across replicas) is `chorus.server.store.budgets`.

Modelled on tumult-analytics' `PrivacyBudget`: an immutable value; charging returns the
budget after the charge or raises `BudgetRefused` naming the amounts.
"""

from __future__ import annotations

from dataclasses import dataclass

from chorus.server.privacy.epsilon import ZERO, Epsilon, Loss, Rho
from chorus.server.privacy.mechanisms import approx_dp

__all__ = ["DELTA", "Budget", "BudgetRefused", "WorstCase", "refusal", "worst_case"]

#: The delta at which a zCDP loss is stated as (epsilon, delta): one in a hundred million.
DELTA = 1e-8


def refusal(requested: Loss, remaining: Loss, cap: Loss) -> str:
    """The words of a refusal, with the amounts: what was asked, what is left, of what cap."""
    return f"requested {cap.UNIT} {requested} but has {remaining} left of {cap}"


class BudgetRefused(ValueError):
    """A charge that would take a budget past its cap; nothing was charged."""

    def __init__(self, requested: Loss, budget: Budget) -> None:
        self.requested = requested
        self.remaining = budget.remaining
        self.cap = budget.cap
        super().__init__(refusal(requested, self.remaining, self.cap))


@dataclass(frozen=True, slots=True)
class Budget:
    """What a team-window may spend (`cap`) and has spent, exact, in one unit (epsilon or rho)."""

    cap: Loss
    spent: Loss = ZERO

    @property
    def remaining(self) -> Loss:
        """What may still be charged: cap - spent, and zero (not an error) when spent > cap."""
        return type(self.cap)(max(self.cap.micros - self.spent.micros, 0))

    @property
    def overspent(self) -> bool:
        """More spent than the cap allows: impossible in the store, a finding in a ledger."""
        return self.spent > self.cap

    def allows(self, amount: Loss) -> bool:
        """Whether `amount` can be charged without going past the cap."""
        return self.spent + amount <= self.cap

    def charge(self, amount: Loss) -> Budget:
        """The budget after charging `amount`; raises BudgetRefused (with the amounts) past the cap."""
        if not self.allows(amount):
            raise BudgetRefused(amount, self)
        return Budget(self.cap, self.spent + amount)

    def record(self, amount: Loss) -> Budget:
        """The budget after `amount` was spent, even past the cap: for recomputing what a ledger
        says was charged (the verifier flags `overspent` rather than refusing)."""
        return Budget(self.cap, self.spent + amount)


@dataclass(frozen=True, slots=True)
class WorstCase:
    """A person's loss over `windows` windows whose budgets are all spent: `total` in the policy's
    unit (pure epsilon adds up, so does rho), and as (epsilon, delta) for comparison."""

    windows: int
    total: Loss
    epsilon: float
    delta: float


def worst_case(per_window: Loss, windows: int, delta: float = DELTA) -> WorstCase:
    """The loss of `windows` fully spent windows: pure epsilon is itself (delta 0); rho is turned
    into (epsilon, delta) by OpenDP (`mechanisms.approx_dp`)."""
    total = type(per_window)(per_window.micros * windows)
    if isinstance(total, Rho):
        return WorstCase(windows, total, approx_dp(total, delta), delta)
    assert isinstance(total, Epsilon)
    return WorstCase(windows, total, total.as_float, 0.0)
