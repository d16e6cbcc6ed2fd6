"""`Database.stats`: retries and store errors by transaction name, as the metrics report them."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from chorus.server.store.sqlite import SqliteDatabase

from .conftest import Store


def test_sqlite_counts_retries_and_errors_by_transaction(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "s.db", busy_timeout_ms=1)
    db.run(lambda tx: tx.execute("CREATE TABLE t (x INTEGER)"), name="setup")
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock for a moment
    release = threading.Timer(0.3, other.execute, args=("COMMIT",))
    release.start()
    db.run(lambda tx: tx.execute("INSERT INTO t VALUES (1)"), name="insert")  # waits, retrying
    release.join()
    with pytest.raises(sqlite3.OperationalError):
        db.run(lambda tx: tx.execute("INSERT INTO missing VALUES (1)"), name="broken")
    with pytest.raises(LookupError):  # a domain error is not a store error
        db.run(lambda tx: (_ for _ in ()).throw(LookupError("no such thing")), name="domain")
    retries, failures = db.stats.snapshot()
    assert retries.keys() == {"insert"} and retries["insert"] >= 1
    assert failures == {"broken": 1}
    other.close()
    db.close()


def test_both_engines_count_store_errors_not_domain_errors(store: Store) -> None:
    db = store.chorus().db
    with pytest.raises(Exception, match="missing"):
        db.run(lambda tx: tx.execute("INSERT INTO missing VALUES (1)"), name="broken")
    with pytest.raises(LookupError):
        db.run(lambda tx: (_ for _ in ()).throw(LookupError("no such thing")), name="domain")
    assert db.stats.snapshot()[1] == {"broken": 1}
