"""What only the SQLite engine does: failures an operator can fix are StoreUnavailable, and the
checkpoint reports whether the WAL was truncated."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from chorus.server.store import StoreUnavailable, Tx
from chorus.server.store.sqlite import SqliteDatabase


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqliteDatabase]:
    database = SqliteDatabase(tmp_path / "t.db")
    database.run(lambda tx: tx.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)"), name="setup")
    yield database
    database.close()


def _fill(tx: Tx) -> None:
    tx.executemany("INSERT INTO t (v) VALUES (?)", [(b"x" * 4000,)] * 50)


def test_a_full_database_is_store_unavailable_and_recovers_when_space_returns(db: SqliteDatabase) -> None:
    # max_page_count makes SQLite answer SQLITE_FULL exactly as a full disk does.
    (pages,), = db.run(lambda tx: tx.query("PRAGMA page_count"), name="t")
    db.run(lambda tx: tx.query(f"PRAGMA max_page_count = {pages}"), name="t")
    with pytest.raises(StoreUnavailable, match="disk full") as raised:
        db.run(_fill, name="fill")
    assert isinstance(raised.value.__cause__, sqlite3.Error) and db.unavailable_count == 1
    assert db.run(lambda tx: tx.query("SELECT COUNT(*) FROM t"), name="t") == [(0,)]  # rolled back whole
    db.run(lambda tx: tx.query("PRAGMA max_page_count = 1073741823"), name="t")
    db.run(_fill, name="fill")  # the same connection works again
    assert db.run(lambda tx: tx.query("SELECT COUNT(*) FROM t"), name="t") == [(50,)]


def test_a_read_only_database_is_store_unavailable(db: SqliteDatabase) -> None:
    db.run(lambda tx: tx.query("PRAGMA query_only = ON"), name="t")  # SQLITE_READONLY on any write
    with pytest.raises(StoreUnavailable, match="read-only"):
        db.run(lambda tx: tx.execute("INSERT INTO t (v) VALUES (x'00')"), name="write")


def test_a_bug_is_not_store_unavailable(db: SqliteDatabase) -> None:
    with pytest.raises(sqlite3.OperationalError):
        db.run(lambda tx: tx.execute("SELECT * FROM no_such_table"), name="bug")
    assert db.unavailable_count == 0


def test_the_checkpoint_reports_a_reader_that_pins_the_wal(db: SqliteDatabase) -> None:
    db.run(_fill, name="fill")
    reader = sqlite3.connect(db.path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM t").fetchall()
    db.run(lambda tx: tx.execute("DELETE FROM t"), name="delete")
    assert db.checkpoint() is False
    assert db.path.with_name("t.db-wal").stat().st_size > 0
    reader.execute("ROLLBACK")
    reader.close()
    assert db.checkpoint() is True
    assert db.path.with_name("t.db-wal").stat().st_size == 0


def test_the_wal_shrinks_back_after_a_complete_checkpoint(db: SqliteDatabase) -> None:
    """journal_size_limit = 0: stale frames (old page versions) do not outlive a WAL restart."""
    wal = db.path.with_name("t.db-wal")
    for _ in range(10):
        db.run(_fill, name="fill")
    grown = wal.stat().st_size
    other = sqlite3.connect(db.path, isolation_level=None)
    assert other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0  # complete, no truncation
    other.close()
    db.run(lambda tx: tx.execute("DELETE FROM t WHERE k = 1"), name="small")  # the WAL restarts here
    assert grown > 1_000_000 and wal.stat().st_size < 64 * 1024


def test_writers_of_two_connections_queue_on_the_writer_lock(tmp_path: Path) -> None:
    """Two SqliteDatabase objects on one file (as two workers of `serve --workers` are): the
    second writer waits on the writer lock and starts the moment the first commits, not at the
    next poll of SQLite's busy handler (which sleeps up to 100 ms at a time)."""
    import threading
    import time

    first, second = SqliteDatabase(tmp_path / "q.db"), SqliteDatabase(tmp_path / "q.db")
    try:
        first.run(lambda tx: tx.execute("CREATE TABLE t (x INTEGER)"), name="setup")
        held, times = threading.Event(), {}

        def hold(tx: Tx) -> None:
            tx.execute("INSERT INTO t VALUES (1)")
            held.set()
            time.sleep(0.45)  # SQLite's busy handler would next look at ~0.53 s
            times["released"] = time.monotonic()

        def follow(tx: Tx) -> None:
            times["began"] = time.monotonic()
            tx.execute("INSERT INTO t VALUES (2)")

        seen: list[tuple[str, str, int]] = []
        second.observe(lambda name, outcome, seconds, attempts: seen.append((name, outcome, attempts)))
        holder = threading.Thread(target=first.run, args=(hold,), kwargs={"name": "hold"})
        holder.start()
        held.wait()
        second.run(follow, name="follow")
        holder.join()
        assert 0 <= times["began"] - times["released"] < 0.05
        assert seen == [("follow", "committed", 1)]  # waited in the queue, never retried
        assert (tmp_path / "q.db.writer-lock").stat().st_mode & 0o777 == 0o600
        assert second.run(lambda tx: tx.query("SELECT x FROM t ORDER BY x"), name="read") == [(1,), (2,)]
    finally:
        first.close()
        second.close()
