"""The one owner of SQL: typed operations per aggregate, two engines, the versioned schema.

Domain code opens a transaction with `Database.run(fn)` (retried, so `fn` must be safe to
run twice), or `Database.read(fn)` when fn writes nothing (no writer lock), and, inside
it, calls the operations of the aggregate it works on, e.g.
`store.usage.add(tx, bounds, rows)` or `store.budgets.charge(tx, window, team, epsilon)`.
No module outside this package writes SQL (tests/server/test_sql_ownership.py checks it).
SQLite (the embedded default, a file in the data directory) and PostgreSQL (for several
replicas sharing one database) run the same statements, except where an engine implements
an operation itself (the usage upsert's COPY path); see docs/architecture.md.

It imports only the vocabulary (`model/`) and `privacy/` of the server, never the domain, a
transport or a front end (tests/test_layers.py).
"""

from __future__ import annotations

from pathlib import Path

from chorus.server.store import (
    batches,
    budgets,
    ledger,
    otlp,
    releases,
    roster,
    shreds,
    team_stats,
    tokens,
    usage,
    windows,
)
from chorus.server.store._db import (
    COMMITTED,
    FAILED,
    REPLY_MARGIN_SECONDS,
    ROLLED_BACK,
    UNAVAILABLE,
    Database,
    StoreUnavailable,
    Tx,
    TxObserver,
    deadline,
)
from chorus.server.store._schema import migrate

__all__ = ["COMMITTED", "FAILED", "REPLY_MARGIN_SECONDS", "ROLLED_BACK", "UNAVAILABLE", "Database",
           "StoreUnavailable", "Tx", "TxObserver", "batches", "budgets", "deadline", "ledger", "migrate",
           "open_database", "otlp", "probe_write", "releases", "roster", "shreds", "team_stats", "tokens",
           "usage", "windows"]

SQLITE_FILE = "chorus.db"


def open_database(url: str, data_dir: Path, *, sqlite_synchronous: str = "FULL") -> Database:
    """Open (and migrate) the database: a postgresql:// URL, else SQLite in data_dir."""
    db: Database
    if url.startswith(("postgresql://", "postgres://")):
        from chorus.server.store.postgres import PostgresDatabase

        db = PostgresDatabase(url)
    elif url in ("", "sqlite"):
        from chorus.server.store.sqlite import SqliteDatabase

        data_dir.mkdir(parents=True, exist_ok=True)
        db = SqliteDatabase(data_dir / SQLITE_FILE, synchronous=sqlite_synchronous)
    else:
        raise ValueError(f"database {url!r}: expected empty (SQLite in the data directory) "
                         "or a postgresql:// URL")
    migrate(db)
    return db


def probe_write(db: Database) -> None:
    """Commit a tiny write that leaves no state: raises (StoreUnavailable for a full disk, a
    read-only or lost store) when the store cannot write, which `SELECT 1` would not notice."""

    def probe(tx: Tx) -> None:
        tx.execute("INSERT INTO store_probe (id) VALUES (1) ON CONFLICT (id) DO NOTHING")
        tx.execute("DELETE FROM store_probe WHERE id = 1")

    db.run(probe, name="health_probe")
