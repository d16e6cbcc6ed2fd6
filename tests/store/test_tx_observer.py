"""`Database.observe`: every transaction's name, outcome, duration and attempts, as the metrics
report them (transport/metrics.py), from the one transaction loop of both engines."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from chorus.server.store import COMMITTED, FAILED, ROLLED_BACK, Database
from chorus.server.store.sqlite import SqliteDatabase

from .conftest import Store

Seen = list[tuple[str, str, int]]


def _watch(db: Database) -> Seen:
    seen: Seen = []
    db.observe(lambda name, outcome, seconds, attempts: seen.append((name, outcome, attempts)))
    return seen


def test_sqlite_reports_retries_and_outcomes_by_transaction(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "s.db", busy_timeout_ms=2000)
    db.run(lambda tx: tx.execute("CREATE TABLE t (x INTEGER)"), name="setup")
    seen = _watch(db)
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another program holds the write lock for a moment
    release = threading.Timer(0.3, other.execute, args=("COMMIT",))
    release.start()
    db.run(lambda tx: tx.execute("INSERT INTO t VALUES (1)"), name="insert")  # waits for it
    release.join()
    with pytest.raises(sqlite3.OperationalError):
        db.run(lambda tx: tx.execute("INSERT INTO missing VALUES (1)"), name="broken")
    with pytest.raises(LookupError):  # a domain error is not a store error
        db.run(lambda tx: (_ for _ in ()).throw(LookupError("no such thing")), name="domain")
    assert seen == [("insert", COMMITTED, 1), ("broken", FAILED, 1), ("domain", ROLLED_BACK, 1)]
    other.close()
    db.close()


def test_both_engines_report_store_errors_apart_from_domain_errors(store: Store) -> None:
    db = store.chorus().db
    seen = _watch(db)
    with pytest.raises(Exception, match="missing"):
        db.run(lambda tx: tx.execute("INSERT INTO missing VALUES (1)"), name="broken")
    with pytest.raises(LookupError):
        db.read(lambda tx: (_ for _ in ()).throw(LookupError("no such thing")), name="domain")
    assert db.read(lambda tx: tx.query("SELECT 1"), name="one") == [(1,)]
    assert seen == [("broken", FAILED, 1), ("domain", ROLLED_BACK, 1), ("one", COMMITTED, 1)]
