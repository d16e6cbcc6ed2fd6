"""The privacy budget of one team-window as an accountant: cap, spent, charge, refuse, remaining.

The one owner of budget arithmetic. Releases (before charging, and in what they answer), the
audit service (what GetBudget reports) and the offline verifier (what it recomputes from the
ledger) all ask a `Budget`, so "remaining" cannot differ between them, even at the edge where
a (tampered or corrupt) record shows more spent than the cap: remaining is then zero, never
negative and never an error. Pure arithmetic on the exact `Epsilon`: no store, no gRPC, no
clock, so the offline verifier imports it without server internals. Persistence (the
conditional charge that enforces the cap across replicas) is `chorus.server.store.budgets`.

Modelled on tumult-analytics' `PrivacyBudget`: an immutable value; charging returns the
budget after the charge or raises `BudgetRefused` naming the amounts.
"""

from __future__ import annotations

from dataclasses import dataclass

from chorus.server.privacy.epsilon import ZERO, Epsilon

__all__ = ["Budget", "BudgetRefused", "refusal"]


def refusal(requested: Epsilon, remaining: Epsilon, cap: Epsilon) -> str:
    """The words of a refusal, with the amounts: what was asked, what is left, of what cap."""
    return f"requested epsilon {requested} but has {remaining} left of {cap}"


class BudgetRefused(ValueError):
    """A charge that would take a budget past its cap; nothing was charged."""

    def __init__(self, requested: Epsilon, budget: Budget) -> None:
        self.requested = requested
        self.remaining = budget.remaining
        self.cap = budget.cap
        super().__init__(refusal(requested, self.remaining, self.cap))


@dataclass(frozen=True, slots=True)
class Budget:
    """What a team-window may spend (`cap`) and has spent, in exact epsilon."""

    cap: Epsilon
    spent: Epsilon = ZERO

    @property
    def remaining(self) -> Epsilon:
        """What may still be charged: cap - spent, and zero (not an error) when spent > cap."""
        return Epsilon(max(self.cap.micros - self.spent.micros, 0))

    @property
    def overspent(self) -> bool:
        """More spent than the cap allows: impossible in the store, a finding in a ledger."""
        return self.spent > self.cap

    def allows(self, amount: Epsilon) -> bool:
        """Whether `amount` can be charged without going past the cap."""
        return self.spent + amount <= self.cap

    def charge(self, amount: Epsilon) -> Budget:
        """The budget after charging `amount`; raises BudgetRefused (with the amounts) past the cap."""
        if not self.allows(amount):
            raise BudgetRefused(amount, self)
        return Budget(self.cap, self.spent + amount)

    def record(self, amount: Epsilon) -> Budget:
        """The budget after `amount` was spent, even past the cap: for recomputing what a ledger
        says was charged (the verifier flags `overspent` rather than refusing)."""
        return Budget(self.cap, self.spent + amount)
