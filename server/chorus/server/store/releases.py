"""The `releases` table: every noisy statistic released, at most once per (window, team, metric,
statistic).

Invariants: rows are only added (a release stays for audit after its window's statistics are
purged): nothing here deletes one or changes it, but for its `ledger_seq`. A release is claimed
(`claim`, `INSERT ... ON CONFLICT DO NOTHING`) before its team-window is charged, so of two
replicas drawing the same statistic only the one whose row landed charges and ledgers it, and
the other answers with the winner's value; `ledger_seq` is set in the same transaction, after
the ledger entry exists (`set_ledger_seq`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chorus.server.store._db import Tx

__all__ = ["Release", "Row", "claim", "count", "ids", "of_window", "set_ledger_seq"]


@dataclass(frozen=True, slots=True)
class Release:
    """One row of `releases`, as claimed and as read back."""
    release_id: str
    team: str
    metric: str
    statistic: str
    #: JSON of the value, interval, scale and sensitivity.
    result: str
    epsilon_micros: int


#: A release as read back: (release_id, team, metric, statistic, result, epsilon_micros), the
#: fields of a `Release` in its order. A plain tuple, not a Release: a full report's replay reads
#: 7,500 and the domain keys its parse cache by them (chorus.server.domain.release.postprocess).
Row = tuple[str, str, str, str, str, int]


def of_window(tx: Tx, window: str) -> list[Row]:
    """Every release of `window`, in one query."""
    return tx.query("SELECT release_id, team, metric, statistic, result, epsilon_micros FROM releases "
                    "WHERE window_id = ?", (window,))


def count(tx: Tx, window: str) -> int:
    """How many releases `window` has (its index alone answers). No release is ever deleted or
    changed but its `ledger_seq`, so in one database two equal counts mean the same rows."""
    (n,), = tx.query("SELECT count(*) FROM releases WHERE window_id = ?", (window,))
    return int(n)


def claim(tx: Tx, window: str, releases: Sequence[Release], released_at: int) -> None:
    """Insert releases not made yet; a (team, metric, statistic) already released keeps its row."""
    tx.executemany(
        "INSERT INTO releases (release_id, window_id, team, metric, statistic, result, epsilon_micros, "
        "released_at, ledger_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0) "
        "ON CONFLICT (window_id, team, metric, statistic) DO NOTHING",
        [(r.release_id, window, r.team, r.metric, r.statistic, r.result, r.epsilon_micros, released_at)
         for r in releases])


def ids(tx: Tx, window: str) -> set[str]:
    """The release ids stored for `window`."""
    return {rid for (rid,) in tx.query("SELECT release_id FROM releases WHERE window_id = ?", (window,))}


def set_ledger_seq(tx: Tx, seqs: Sequence[tuple[int, str]]) -> None:
    """Record (ledger seq, release id): the ledger entry of each release."""
    tx.executemany("UPDATE releases SET ledger_seq = ? WHERE release_id = ?", seqs)
