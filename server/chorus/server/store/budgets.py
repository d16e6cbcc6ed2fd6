"""The `budgets` table: one row per closed team-window, the persistence of `privacy.budget.Budget`.

Invariants: a row is created once, at the window's close, with the window's frozen cap
(`open_window`); `spent` only grows, by `charge`, a single conditional UPDATE that takes
the row lock and re-checks `spent + amount <= cap` against the committed row, so the cap
holds across replicas (READ COMMITTED, see store/postgres.py) and the table's CHECK
constraint is never the one that refuses. The arithmetic itself (remaining, allows) is the
accountant's; this module only stores and reads it. Amounts are stored as micro-units of the
window's unit (epsilon or rho, from its frozen policy); readers name the unit (`unit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chorus.server.privacy.budget import Budget
from chorus.server.privacy.epsilon import Loss
from chorus.server.store._db import Tx

__all__ = ["BudgetRow", "charge", "of_window", "open_window", "page", "totals"]


@dataclass(frozen=True, slots=True)
class BudgetRow:
    """One team-window's budget as GetBudget lists it, in micro-units of the window's unit (which
    the window's frozen policy names, not this table); `start_at` orders and pages the listing."""

    start_at: int
    window: str
    team: str
    cap_micros: int
    spent_micros: int
    releases: int


def open_window(tx: Tx, window: str, teams: Sequence[str], cap: Loss) -> None:
    """Create the budgets of a window being closed: one per team, nothing spent."""
    tx.insert_rows("budgets", ("window_id", "team", "cap_micros"), [(window, t, cap.micros) for t in teams])


def of_window(tx: Tx, window: str, unit: type[Loss]) -> dict[str, Budget]:
    """team -> budget in `unit` (the window's frozen policy's), for every team of `window` (empty
    while it is open)."""
    return {t: Budget(unit(cap), unit(spent)) for t, cap, spent in tx.query(
        "SELECT team, cap_micros, spent_micros FROM budgets WHERE window_id = ?", (window,))}


def charge(tx: Tx, window: str, team: str, amount: Loss) -> Budget | None:
    """Charge one release to a team-window and count it; the budget after, or None (nothing
    changed) when it would go past the cap or the team-window has no budget."""
    rows = tx.query(
        "UPDATE budgets SET spent_micros = spent_micros + ?, releases = releases + 1 "
        "WHERE window_id = ? AND team = ? AND spent_micros + ? <= cap_micros "
        "RETURNING spent_micros, cap_micros",
        (amount.micros, window, team, amount.micros))
    if not rows:
        return None
    (spent, cap), = rows
    return Budget(type(amount)(cap), type(amount)(spent))


def page(tx: Tx, window: str, after: tuple[int, str, str] | None, limit: int) -> list[BudgetRow]:
    """Up to `limit` budgets, newest window first then by window id and team, of one window
    (or of all for ""), strictly after the keyset position (start_at, window, team)."""
    sql = ("SELECT w.start_at, b.window_id, b.team, b.cap_micros, b.spent_micros, b.releases "
           "FROM budgets b JOIN windows w ON w.id = b.window_id WHERE 1 = 1")
    params: tuple[object, ...] = ()
    if window:
        sql += " AND b.window_id = ?"
        params = (window,)
    if after is not None:
        start, last_window, team = after
        sql += (" AND (w.start_at < ? OR (w.start_at = ? AND (b.window_id > ? OR "
                "(b.window_id = ? AND b.team > ?))))")
        params += (start, start, last_window, last_window, team)
    rows = tx.query(sql + " ORDER BY w.start_at DESC, b.window_id, b.team LIMIT ?", (*params, limit))
    return [BudgetRow(int(s), w, t, int(cap), int(spent), int(n)) for s, w, t, cap, spent, n in rows]


def totals(tx: Tx) -> dict[str, tuple[int, int]]:
    """window -> (releases, micro-units spent) summed over its team-windows (for metrics; the unit
    is the window's frozen policy's, which the caller knows and this table does not)."""
    return {w: (int(releases), int(spent)) for w, releases, spent in tx.query(
        "SELECT window_id, SUM(releases), SUM(spent_micros) FROM budgets GROUP BY window_id")}
