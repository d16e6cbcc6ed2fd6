"""The `batches` table: the exactly-once record of ingested batch ids.

Invariants: a batch id is claimed in its batch's own transaction (`claim`), with the digest
of its contents, by a single `INSERT ... ON CONFLICT DO NOTHING`, so of two replicas applying
the same batch exactly one counts it. Ids are pruned (`prune`) only once a retry of the
batch could no longer count anything (see window_store.FUTURE_TOLERANCE).
"""

from __future__ import annotations

from chorus.server.store._db import Tx

__all__ = ["claim", "prune"]


def claim(tx: Tx, batch_id: str, received_at: int, digest: bytes) -> bytes | None:
    """Record a batch id; None when it is new, else the digest stored with it before."""
    if tx.execute("INSERT INTO batches (batch_id, received_at, digest) VALUES (?, ?, ?) "
                  "ON CONFLICT (batch_id) DO NOTHING", (batch_id, received_at, digest)):
        return None
    (stored,), = tx.query("SELECT digest FROM batches WHERE batch_id = ?", (batch_id,))
    return bytes(stored) if stored else b""


def prune(tx: Tx, received_before: int) -> None:
    """Forget batch ids received before `received_before` (epoch seconds)."""
    tx.execute("DELETE FROM batches WHERE received_at < ?", (received_before,))
