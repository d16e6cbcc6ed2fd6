"""The `windows` and `window_keys` tables: windows with their frozen policy, state and HMAC key.

Invariants: a window row is created once (`create`, `ON CONFLICT DO NOTHING`: of two
replicas opening it, one wins and the other reads the winner's row) with its policy frozen
as canonical JSON, and its key is stored in the same transaction. `mark_closed` and
`mark_purged` are conditional UPDATEs that take the row lock, so of two closers only one
folds and only one purges. `plan_released_at` stays NULL until the closer has released the
window's whole release plan (`mark_plan_released`, conditional as well). The key row is
deleted at close (`delete_key`): after that no pseudonym of the window can be recomputed.
Times are epoch seconds; the domain (window_store.py) turns rows into `WindowRecord`s with
their parsed policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from chorus.server.store._db import Tx

__all__ = ["WindowRow", "closed_unpurged", "closed_until", "containing", "count_by_state", "count_overdue",
           "create", "delete_key", "due", "get", "key", "latest_closed", "mark_closed", "mark_plan_released",
           "mark_purged",
           "newest_policy_overlapping", "oldest_open_start", "open_ids", "open_keys", "overlapping",
           "plan_pending", "plan_released", "with_key"]

_COLUMNS = "id, start_at, end_at, closes_at, state, policy, closed_at"


@dataclass(frozen=True, slots=True)
class WindowRow:
    id: str
    start_at: int
    end_at: int
    closes_at: int
    state: str
    policy_json: str
    closed_at: int | None


def _row(row: tuple) -> WindowRow:
    ident, start, end, closes, state, policy_json, closed = row
    return WindowRow(ident, int(start), int(end), int(closes), state, policy_json,
                     None if closed is None else int(closed))


def get(tx: Tx, window: str) -> WindowRow | None:
    rows = tx.query(f"SELECT {_COLUMNS} FROM windows WHERE id = ?", (window,))
    return _row(rows[0]) if rows else None


def overlapping(tx: Tx, start: int, end: int) -> list[WindowRow]:
    """Windows overlapping [start, end), newest first."""
    return [_row(r) for r in tx.query(f"SELECT {_COLUMNS} FROM windows WHERE end_at > ? AND start_at < ? "
                                      "ORDER BY start_at DESC", (start, end))]


def containing(tx: Tx, at: int) -> tuple[str, int, int] | None:
    """(id, start, end) of the window containing the instant `at`, if one exists."""
    rows = tx.query("SELECT id, start_at, end_at FROM windows WHERE start_at <= ? AND end_at > ?", (at, at))
    return (rows[0][0], int(rows[0][1]), int(rows[0][2])) if rows else None


def newest_policy_overlapping(tx: Tx, start: int, end: int) -> str | None:
    """The policy JSON of the newest window overlapping [start, end), if any."""
    rows = tx.query("SELECT policy FROM windows WHERE start_at < ? AND end_at > ? "
                    "ORDER BY start_at DESC LIMIT 1", (end, start))
    return rows[0][0] if rows else None


def with_key(tx: Tx, window: str, *, share: bool = True) -> tuple[WindowRow, bytes | None] | None:
    """The window and its key (None once closed), share-locked on PostgreSQL: a concurrent close
    (`mark_closed`) waits until this transaction commits, so the close folds what it wrote.
    `share=False` for a read-only transaction (which may not lock rows)."""
    # SQLite's BEGIN IMMEDIATE already serialises the two.
    lock = " FOR SHARE OF w" if share and tx.dialect == "postgresql" else ""
    rows = tx.query(f"SELECT {', '.join('w.' + c for c in _COLUMNS.split(', '))}, k.hmac_key "
                    f"FROM windows w LEFT JOIN window_keys k ON k.window_id = w.id WHERE w.id = ?{lock}",
                    (window,))
    if not rows:
        return None
    key_ = rows[0][-1]
    return _row(rows[0][:-1]), None if key_ is None else bytes(key_)


def create(tx: Tx, window: str, start: int, end: int, closes_at: int, policy_json: str,
           opened_at: int, hmac_key: bytes) -> bool:
    """Create an open window with its key; False (nothing written) when it exists already."""
    if not tx.execute("INSERT INTO windows (id, start_at, end_at, closes_at, state, policy, opened_at) "
                      "VALUES (?, ?, ?, ?, 'open', ?, ?) ON CONFLICT (id) DO NOTHING",
                      (window, start, end, closes_at, policy_json, opened_at)):
        return False
    tx.execute("INSERT INTO window_keys (window_id, hmac_key) VALUES (?, ?)", (window, hmac_key))
    return True


def due(tx: Tx, now: int) -> list[str]:
    """Open windows whose close time has passed, oldest first."""
    return [r[0] for r in tx.query("SELECT id FROM windows WHERE state = 'open' AND closes_at <= ? "
                                   "ORDER BY start_at", (now,))]


def mark_closed(tx: Tx, window: str, at: int) -> bool:
    """Mark an open window closed, taking its row lock; False when it was not open."""
    return bool(tx.execute("UPDATE windows SET state = 'closed', closed_at = ? WHERE id = ? AND state = 'open'",
                           (at, window)))


def key(tx: Tx, window: str) -> bytes | None:
    """The window's HMAC key; None once it is closed."""
    rows = tx.query("SELECT hmac_key FROM window_keys WHERE window_id = ?", (window,))
    return bytes(rows[0][0]) if rows else None


def delete_key(tx: Tx, window: str) -> None:
    """Delete the window's key (crypto-shredding at close)."""
    tx.execute("DELETE FROM window_keys WHERE window_id = ?", (window,))


def open_keys(tx: Tx) -> list[tuple[str, bytes]]:
    """(id, key) of every open window."""
    return [(w, bytes(k)) for w, k in tx.query(
        "SELECT w.id, k.hmac_key FROM windows w JOIN window_keys k ON k.window_id = w.id WHERE w.state = 'open'")]


def oldest_open_start(tx: Tx) -> int | None:
    """The start of the oldest open window, if any is open."""
    (oldest,), = tx.query("SELECT MIN(start_at) FROM windows WHERE state = 'open'")
    return None if oldest is None else int(oldest)


def closed_unpurged(tx: Tx) -> list[WindowRow]:
    """Closed windows whose exact team statistics are still kept, oldest first."""
    return [_row(r) for r in tx.query(f"SELECT {_COLUMNS} FROM windows WHERE state = 'closed' "
                                      "AND purged_at IS NULL ORDER BY start_at")]


def mark_purged(tx: Tx, window: str, at: int) -> bool:
    """Record that a window's exact team statistics were deleted; False when already recorded."""
    return bool(tx.execute("UPDATE windows SET purged_at = ? WHERE id = ? AND purged_at IS NULL", (at, window)))


def plan_pending(tx: Tx) -> list[str]:
    """Closed, unpurged windows whose release plan is not marked released, oldest first."""
    return [r[0] for r in tx.query("SELECT id FROM windows WHERE state = 'closed' AND plan_released_at IS NULL "
                                   "AND purged_at IS NULL ORDER BY start_at")]


def plan_released(tx: Tx, window: str) -> bool:
    """Whether the window's release plan is marked released (False for an unknown window)."""
    rows = tx.query("SELECT plan_released_at FROM windows WHERE id = ?", (window,))
    return bool(rows) and rows[0][0] is not None


def mark_plan_released(tx: Tx, window: str, at: int) -> bool:
    """Record that the window's release plan is complete; False when already recorded."""
    return bool(tx.execute("UPDATE windows SET plan_released_at = ? WHERE id = ? AND plan_released_at IS NULL",
                           (at, window)))


def count_by_state(tx: Tx) -> dict[str, int]:
    """state -> number of windows (for metrics)."""
    return {state: int(n) for state, n in tx.query("SELECT state, COUNT(*) FROM windows GROUP BY state")}


def count_overdue(tx: Tx, now: int) -> int:
    """Open windows whose close time is before `now`."""
    return int(tx.query("SELECT COUNT(*) FROM windows WHERE state = 'open' AND closes_at < ?", (now,))[0][0])


def closed_until(tx: Tx) -> int | None:
    """The latest end of a closed window, if any is closed."""
    (end,), = tx.query("SELECT MAX(end_at) FROM windows WHERE state = 'closed'")
    return None if end is None else int(end)


def latest_closed(tx: Tx) -> str | None:
    """The id of the window closed last by close time, if any is closed."""
    rows = tx.query("SELECT id FROM windows WHERE state = 'closed' ORDER BY closes_at DESC LIMIT 1")
    return rows[0][0] if rows else None


def open_ids(tx: Tx) -> list[str]:
    """Ids of the open windows, in id order."""
    return [w for (w,) in tx.query("SELECT id FROM windows WHERE state = 'open' ORDER BY id")]
