"""The budget accountant: one arithmetic for releases, the audit service and the verifier."""

from __future__ import annotations

import pytest

from chorus.server.domain.audit import TeamWindowBudget
from chorus.server.privacy.budget import Budget, BudgetRefused
from chorus.server.privacy.epsilon import ZERO, Epsilon
from chorus.server.verifier.verify import TeamWindowTotal

E = Epsilon.parse


def test_charge_returns_the_budget_after_and_refuses_past_the_cap_with_the_amounts() -> None:
    budget = Budget(E("1"))
    after = budget.charge(E("0.75"))
    assert (after.spent, after.remaining) == (E("0.75"), E("0.25"))
    assert after.charge(E("0.25")).remaining == ZERO  # exactly the cap is allowed
    with pytest.raises(BudgetRefused, match=r"requested epsilon 0.5 but has 0.25 left of 1") as refused:
        after.charge(E("0.5"))
    assert (refused.value.requested, refused.value.remaining, refused.value.cap) == (E("0.5"), E("0.25"), E("1"))


@pytest.mark.parametrize(("cap", "spent"), [("1", "0"), ("1", "0.999999"), ("1", "1"), ("1", "1.5"), ("0", "0.1")])
def test_audit_and_verifier_report_the_same_remaining_even_past_the_cap(cap: str, spent: str) -> None:
    """The edge: a record with more spent than the cap (a tampered or corrupt ledger; the store's
    CHECK forbids it). The audit's remaining used to raise (a negative Epsilon) where the
    verifier's was zero; both now ask the accountant."""
    audit = TeamWindowBudget("2026-11-25", "t", E(cap), E(spent), 1)
    verifier = TeamWindowTotal("2026-11-25", "t", E(cap), E(spent), 1)
    assert audit.remaining == verifier.remaining == Budget(E(cap), E(spent)).remaining
    assert Budget(E(cap), E(spent)).overspent == (E(spent) > E(cap))


def test_record_keeps_what_a_ledger_says_was_spent_even_past_the_cap() -> None:
    over = Budget(E("1"), E("0.5")).record(E("1"))
    assert (over.spent, over.remaining, over.overspent) == (E("1.5"), ZERO, True)
