"""The `usage` table: one row per (open window, pseudonym), the person's running totals.

Invariants: a row holds a window's HMAC pseudonym, never a user id; `team` is written by
the person's first contribution in the window and never updated; each total slot `t<i>` is
clamped to its metric's bound in the same statement that adds to it (`add`), so no reader
ever sees a total past its bound. Rows live only while their window is open: the close
reads them once (`totals`) and deletes them (`delete_window`) in the same transaction.

`add` is the ingest hot path. Its rows arrive sorted by (window, pseudonym), so concurrent
batches take row locks in one order and cannot deadlock. Each engine implements it
(`Tx.add_usage`): SQLite runs `upsert_sql` per row; PostgreSQL runs it through psycopg's
pipelined executemany for a few rows and through COPY into a staging table plus one merge
for many (store/postgres.py, measured in bench/bench_ingest_pg.py).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from chorus.server.store._db import Row, Tx

__all__ = ["add", "columns", "count", "delete_window", "set_clause", "totals", "upsert_sql"]


def columns(metrics: int) -> str:
    """The inserted columns for a policy of `metrics` metrics."""
    return ", ".join(["window_id", "pseudonym", "team", *(f"t{i}" for i in range(metrics))])


@functools.lru_cache(maxsize=64)
def set_clause(bounds: tuple[int, ...]) -> str:
    """ON CONFLICT's update: add to each slot, clamped to its bound. The bounds are written into
    the statement (integers of the validated policy, one statement per policy): a row binds
    only its own values."""
    return ", ".join(f"t{i} = CASE WHEN usage.t{i} + excluded.t{i} > {int(bound)} THEN {int(bound)} "
                     f"ELSE usage.t{i} + excluded.t{i} END" for i, bound in enumerate(bounds))


@functools.lru_cache(maxsize=64)
def upsert_sql(bounds: tuple[int, ...]) -> str:
    """One row's upsert: (window, pseudonym, team, totals...), each total clamped to its bound."""
    return (f"INSERT INTO usage ({columns(len(bounds))}) VALUES (?, ?, ?{', ?' * len(bounds)}) "
            f"ON CONFLICT (window_id, pseudonym) DO UPDATE SET {set_clause(bounds)}")


def add(tx: Tx, bounds: tuple[int, ...], rows: Sequence[Row]) -> None:
    """Add (window, pseudonym, team, total per metric) rows, sorted by (window, pseudonym), to
    the running totals, each clamped to its bound in `bounds` (one per metric slot)."""
    tx.add_usage(bounds, rows)


def totals(tx: Tx, window: str, metrics: int) -> list[Row]:
    """(team, total per metric) of every person of `window`."""
    slots = ", ".join(f"t{i}" for i in range(metrics))
    return tx.query(f"SELECT team, {slots} FROM usage WHERE window_id = ?", (window,))


def delete_window(tx: Tx, window: str) -> None:
    """Delete every person's row of `window` (at its close)."""
    tx.execute("DELETE FROM usage WHERE window_id = ?", (window,))


def count(tx: Tx) -> int:
    """Per-person rows of every open window."""
    return int(tx.query("SELECT COUNT(*) FROM usage")[0][0])
