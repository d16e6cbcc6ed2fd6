"""The `otlp_points` and `otlp_series` tables: OTLP's exactly-once keys and cumulative state.

Invariants: a delta point counts once across replicas because its key is recorded by a
multi-row `INSERT ... ON CONFLICT DO NOTHING RETURNING` (`record_points`), which reports
exactly the rows it inserted (a concurrent export of the same point waits on the row lock,
then finds the conflict); keys go in sorted so concurrent transactions lock in one order. A
cumulative series keeps only its latest point per window (`remember`: an older point never
replaces a newer), keyed with the window's key by the domain
(chorus.server.domain.otlp.series). Both tables' rows of a window are deleted at its close
(`delete_window`).
"""

from __future__ import annotations

from collections.abc import Sequence

from chorus.server.store._db import Tx

__all__ = ["delete_window", "latest", "record_points", "remember"]

#: Rows per multi-row INSERT of point keys (two parameters each; well under either engine's limit).
_CHUNK = 500


def record_points(tx: Tx, keys: Sequence[tuple[str, bytes]]) -> set[tuple[str, bytes]]:
    """Record sorted, distinct (window id, point key) pairs; return those not recorded before."""
    fresh: set[tuple[str, bytes]] = set()
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i:i + _CHUNK]
        rows = tx.query("INSERT INTO otlp_points (window_id, point_key) VALUES "
                        + ", ".join(["(?, ?)"] * len(chunk))
                        + " ON CONFLICT (window_id, point_key) DO NOTHING RETURNING window_id, point_key",
                        [v for pair in chunk for v in pair])
        fresh.update((w, bytes(k)) for w, k in rows)
    return fresh


def latest(tx: Tx, window: str, series_key: bytes) -> tuple[int, int, float] | None:
    """(start_ns, time_ns, value) of a series' latest point in `window`, if recorded."""
    rows = tx.query("SELECT start_ns, time_ns, value FROM otlp_series WHERE window_id = ? AND series_key = ?",
                    (window, series_key))
    return (int(rows[0][0]), int(rows[0][1]), float(rows[0][2])) if rows else None


def remember(tx: Tx, window: str, series_key: bytes, start_ns: int, time_ns: int, value: float,
             sealed: bytes) -> None:
    """Store a series' point in `window` unless a later one is stored."""
    tx.execute("INSERT INTO otlp_series (window_id, series_key, start_ns, time_ns, value, sealed) "
               "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (window_id, series_key) DO UPDATE SET "
               "start_ns = excluded.start_ns, time_ns = excluded.time_ns, value = excluded.value, "
               "sealed = excluded.sealed WHERE otlp_series.time_ns < excluded.time_ns",
               (window, series_key, start_ns, time_ns, value, sealed))


def delete_window(tx: Tx, window: str) -> None:
    tx.execute("DELETE FROM otlp_series WHERE window_id = ?", (window,))
    tx.execute("DELETE FROM otlp_points WHERE window_id = ?", (window,))
