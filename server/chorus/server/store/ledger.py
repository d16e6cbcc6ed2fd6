"""The `ledger` and `ledger_head` tables: the append-only, hash-chained, signed ledger.

Invariants: entries are only appended, in the appender's transaction, and never updated or
deleted. `advance_head` is a single conditional UPDATE that takes the head row's lock, so
appends are linear across replicas: each gets the next seq and the previous entry's hash,
and `append` stores the entry and moves the head's hash in the same transaction. Hashing,
signing and the canonical form are the domain's (chorus.server.domain.ledger).
"""

from __future__ import annotations

from typing import cast

from chorus.server.store._db import Tx

__all__ = ["EntryRow", "advance_head", "append", "head", "last_payload", "lock_head", "read"]

#: (seq, at, kind, payload, prev_hash, hash, signature), the order of ledger.Entry's fields.
EntryRow = tuple[int, str, str, str, str, str, str]


def advance_head(tx: Tx) -> tuple[int, str]:
    """Lock the head and take the next seq; returns (seq, hash of the previous entry)."""
    (seq, prev_hash), = tx.query("UPDATE ledger_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
    return int(seq), str(prev_hash)


def append(tx: Tx, entry: EntryRow) -> None:
    """Store the entry whose seq `advance_head` gave, and make its hash the head's."""
    tx.execute("INSERT INTO ledger (seq, at, kind, payload, prev_hash, hash, signature) "
               "VALUES (?, ?, ?, ?, ?, ?, ?)", entry)
    tx.execute("UPDATE ledger_head SET hash = ? WHERE id = 1", (entry[5],))


def lock_head(tx: Tx) -> None:
    """Take the head's row lock without appending (to decide on an append race-free)."""
    tx.execute("UPDATE ledger_head SET seq = seq WHERE id = 1")


def head(tx: Tx) -> tuple[int, str]:
    """(seq, hash) of the newest entry; (0, 64 zeros) for an empty ledger."""
    (seq, digest), = tx.query("SELECT seq, hash FROM ledger_head WHERE id = 1")
    return int(seq), str(digest)


def read(tx: Tx, from_seq: int, limit: int) -> list[EntryRow]:
    """Up to `limit` entries from `from_seq` on, in order."""
    return cast(list[EntryRow], tx.query(
        "SELECT seq, at, kind, payload, prev_hash, hash, signature FROM ledger WHERE seq >= ? ORDER BY seq LIMIT ?",
        (from_seq, limit)))


def last_payload(tx: Tx, kind: str) -> str | None:
    """The payload of the newest entry of `kind`, if any."""
    rows = tx.query("SELECT payload FROM ledger WHERE kind = ? ORDER BY seq DESC LIMIT 1", (kind,))
    return rows[0][0] if rows else None
