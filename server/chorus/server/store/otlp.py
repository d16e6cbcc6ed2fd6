"""The `otlp_points` and `otlp_series` tables: OTLP's exactly-once keys and cumulative state.

Invariants: a delta point counts once across replicas because its key is recorded by a
multi-row `INSERT ... ON CONFLICT DO NOTHING RETURNING` (`record_points`), which reports
exactly the rows it inserted (a concurrent export of the same point waits on the row lock,
then finds the conflict); keys go in sorted so concurrent transactions lock in one order. A
cumulative series keeps only its latest point per window (`remember`: an older point never
replaces a newer), keyed with the window's key by the domain
(chorus.server.domain.otlp.series). Both tables' rows of a window are deleted at its close
(`delete_window`). Both are read and written in bulk, a chunk of keys per statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

from chorus.server.store._db import Tx

__all__ = ["delete_window", "latest", "record_points", "remember"]

#: Rows per multi-row INSERT of point keys (two parameters each; well under either engine's limit).
_CHUNK = 500


def record_points(tx: Tx, keys: Sequence[tuple[str, bytes]]) -> set[tuple[str, bytes]]:
    """Record sorted, distinct (window id, point key) pairs; return those not recorded before."""
    fresh: set[tuple[str, bytes]] = set()
    by_window: dict[str, list[bytes]] = {}
    for window, key in keys:
        by_window.setdefault(window, []).append(key)
    for window, window_keys in by_window.items():
        for i in range(0, len(window_keys), _CHUNK):
            chunk = window_keys[i:i + _CHUNK]
            rows = tx.query("INSERT INTO otlp_points (window_id, point_key) VALUES "
                            + ", ".join(["(?, ?)"] * len(chunk))
                            + " ON CONFLICT (window_id, point_key) DO NOTHING RETURNING point_key",
                            _pairs(window, chunk))
            if len(rows) == len(chunk):  # usually every key is new: then the rows need no reading
                fresh.update(zip(repeat(window), chunk))
            else:
                fresh.update((window, bytes(key)) for key, in rows)
    return fresh


def _pairs(window: str, keys: Sequence[bytes]) -> list[object]:
    """window, key, window, key, ...: the parameters of a multi-row VALUES list."""
    params: list[object] = [window] * (2 * len(keys))
    params[1::2] = keys
    return params


def latest(tx: Tx, window: str, series_keys: Sequence[bytes]) -> dict[bytes, tuple[int, int, float]]:
    """(start_ns, time_ns, value) of each series' latest point in `window`, for those recorded."""
    found: dict[bytes, tuple[int, int, float]] = {}
    for i in range(0, len(series_keys), _CHUNK):
        chunk = series_keys[i:i + _CHUNK]
        for key, start_ns, time_ns, value in tx.query(
                "SELECT series_key, start_ns, time_ns, value FROM otlp_series WHERE window_id = ? AND series_key IN ("
                + ", ".join(["?"] * len(chunk)) + ")", [window, *chunk]):
            found[bytes(key)] = (int(start_ns), int(time_ns), float(value))
    return found


def remember(tx: Tx, rows: Sequence[tuple[str, bytes, int, int, float, bytes]]) -> None:
    """Store series' points, (window, series_key, start_ns, time_ns, value, sealed) in order,
    each unless a later one is stored."""
    if rows:
        tx.executemany("INSERT INTO otlp_series (window_id, series_key, start_ns, time_ns, value, sealed) "
                       "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (window_id, series_key) DO UPDATE SET "
                       "start_ns = excluded.start_ns, time_ns = excluded.time_ns, value = excluded.value, "
                       "sealed = excluded.sealed WHERE otlp_series.time_ns < excluded.time_ns", rows)


def delete_window(tx: Tx, window: str) -> None:
    tx.execute("DELETE FROM otlp_series WHERE window_id = ?", (window,))
    tx.execute("DELETE FROM otlp_points WHERE window_id = ?", (window,))
