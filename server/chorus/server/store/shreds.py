"""The `pending_shreds` table: deletions of secrets not yet final in the database files.

Invariants: a subject is recorded (`record`) in the transaction that deletes its secret;
recording it again while pending bumps its version, so `clear` (after a checkpoint made the
deletions final) removes only the versions it saw and a deletion recorded meanwhile stays
pending. Times are epoch seconds.
"""

from __future__ import annotations

from collections.abc import Sequence

from chorus.server.store._db import Tx

__all__ = ["clear", "pending", "record"]


def record(tx: Tx, subject: str, since: int) -> None:
    tx.execute("INSERT INTO pending_shreds (subject, since) VALUES (?, ?) "
               "ON CONFLICT (subject) DO UPDATE SET version = pending_shreds.version + 1", (subject, since))


def pending(tx: Tx) -> list[tuple[str, int, int]]:
    """(subject, since, version) of every pending shred, oldest first."""
    return [(subject, int(since), int(version)) for subject, since, version in tx.query(
        "SELECT subject, since, version FROM pending_shreds ORDER BY since, subject")]


def clear(tx: Tx, done: Sequence[tuple[str, int]]) -> None:
    """Forget the (subject, version) pairs whose deletions are now final."""
    tx.executemany("DELETE FROM pending_shreds WHERE subject = ? AND version = ?", done)
