"""The `roster`, `roster_orgs` and `roster_version` tables: who is on which team, and where
each team sits in the organisation tree, now.

Invariants: the roster is replaced whole (`replace`), after `bump_version` has taken the
version row's lock, so two concurrent imports serialise and the second's DELETE removes the
first's rows; every replica's in-memory copy reloads when `version` changes. Only the
current roster is kept; its hash and team sizes go to the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chorus.server.store._db import Tx

__all__ = ["bump_version", "members", "replace", "team_orgs", "team_sizes", "user_ids", "version"]


def bump_version(tx: Tx, roster_hash: str) -> None:
    """Take the version row's lock and record a new roster's hash."""
    tx.execute("UPDATE roster_version SET version = version + 1, roster_hash = ? WHERE id = 1", (roster_hash,))


def replace(tx: Tx, rows: Sequence[tuple[str, str]], orgs: Mapping[str, str]) -> None:
    """Replace every (user id, team) row and every team's org path (after `bump_version` in the
    same transaction)."""
    tx.execute("DELETE FROM roster")
    tx.insert_rows("roster", ("user_id", "team"), rows)
    tx.execute("DELETE FROM roster_orgs")
    tx.insert_rows("roster_orgs", ("team", "org"), sorted(orgs.items()))


def team_orgs(tx: Tx) -> dict[str, str]:
    """team -> org path, for the teams that have one."""
    return dict(tx.query("SELECT team, org FROM roster_orgs ORDER BY team"))


def user_ids(tx: Tx) -> set[str]:
    return {user for (user,) in tx.query("SELECT user_id FROM roster")}


def team_sizes(tx: Tx) -> dict[str, int]:
    """team -> people on the roster, by team name."""
    return {t: int(n) for t, n in tx.query("SELECT team, COUNT(*) FROM roster GROUP BY team ORDER BY team")}


def version(tx: Tx) -> int:
    (v,), = tx.query("SELECT version FROM roster_version WHERE id = 1")
    return int(v)


def members(tx: Tx) -> dict[str, str]:
    """user id -> team."""
    return dict(tx.query("SELECT user_id, team FROM roster"))
