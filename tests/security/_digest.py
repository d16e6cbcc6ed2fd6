"""A digest of every table of a Chorus SQLite store, to prove a rejected request changed nothing."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path


def store_digest(db_file: Path) -> dict[str, str]:
    """SHA-256 of each table's rows (order-independent), read through a separate read-only connection.

    A dict rather than one hash so a failing comparison names the table that changed.
    """
    conn = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("BEGIN")  # one snapshot for all tables
        tables = [name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        digest = {}
        for table in tables:
            rows = sorted(repr(row) for row in conn.execute(f'SELECT * FROM "{table}"'))
            digest[table] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
        return digest
    finally:
        conn.close()
