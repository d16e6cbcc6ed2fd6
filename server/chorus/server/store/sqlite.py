"""SQLite engine: the embedded default. One file in the data directory, WAL, secure_delete.

Writes: all write transactions of a process go through one connection under a lock: SQLite
allows one writer anyway, and this keeps `BEGIN IMMEDIATE` waits inside the process cheap.
Processes on the same file (the workers of `chorus serve --workers N`) queue on an exclusive
`flock` of a sidecar file (`<db>.writer-lock`) around each transaction, tried every 0.2-1 ms
until the deadline (a blocking flock could not be given up at the deadline), where SQLite's
busy handler would sleep up to 100 ms a time. The kernel drops the lock of a killed process.
Other programs on the file (a `sqlite3` shell, a backup) are serialised by SQLite's busy
handler, for what is left of the deadline. Every wait is bounded by the transaction's
deadline (store/_db.py); while this process's writer has waited more than STALL_SECONDS for
a lock that another program or worker holds, the process's other writers with a deadline (RPCs)
are refused at once (StoreUnavailable, not retried), so the RPC threads stay free for reads and
health checks; background writers (the closer, a plan release, OTLP/HTTP) wait within their budget.

Reads (`Database.read`): a deferred WAL read transaction on a connection of the calling
thread with `query_only=ON`: no thread lock, no flock, no BEGIN IMMEDIATE. It reads one
snapshot and never waits for a writer (nor a writer for it).

Deleted bytes: secure_delete zeroes deleted cells and freed pages in the new page versions,
but the WAL still holds the old versions until a checkpoint copies the new ones back and
truncates it. `checkpoint()` does that and reports whether it worked: another connection's
read transaction (a `sqlite3` shell, a backup tool) pins the WAL, and then the caller keeps
the shred pending (chorus.server.domain.shred). journal_size_limit=0 truncates the WAL whenever
SQLite restarts it after a complete checkpoint, so stale frames never outlive a restart.

Failures an operator can fix (disk full, I/O error, read-only file or directory, file that
cannot be opened) raise StoreUnavailable, which clients retry, rather than a bare
sqlite3 error that would read as a server bug.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chorus.server.store import ledger, usage, windows
from chorus.server.store._db import Database, LockTimeout, Row, StoreUnavailable, Tx

_log = logging.getLogger(__name__)
_PRAGMA_ATTEMPTS = 50
#: How long this process's writer may wait for a lock another holds before the process's
#: other writers are refused at once (UNAVAILABLE) instead of queueing behind it.
STALL_SECONDS = 0.5
#: The longest pause between two tries of the writer flock (another worker holds it).
_FLOCK_POLL_MAX = 0.001
#: A read transaction waits this long through SQLite's busy handler (WAL readers wait only
#: while a WAL is being recovered); the transaction loop retries within the deadline.
_READ_BUSY_MS = 100
#: How long a checkpoint waits for readers to leave before reporting the shred pending. It
#: holds the connection's lock meanwhile, so it is short: the closer retries later anyway.
CHECKPOINT_BUSY_MS = 200
#: Primary result codes of failures that pass once an operator acts (frees space, fixes
#: permissions or the device), as opposed to bugs: reported as StoreUnavailable.
_OPERATOR_FIXABLE = {sqlite3.SQLITE_FULL: "disk full", sqlite3.SQLITE_IOERR: "I/O error",
                     sqlite3.SQLITE_READONLY: "read-only", sqlite3.SQLITE_CANTOPEN: "cannot open the file"}


class _SqliteTx:
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, *, writer: bool = False) -> None:
        self._conn = self.conn = conn
        #: True while this transaction holds the process's write lock and the writer flock.
        self.writer = writer

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._conn.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                               rows)

    def add_usage(self, bounds: tuple[int, ...], rows: Sequence[Row]) -> None:
        self._conn.executemany(usage.upsert_sql(bounds), rows)

    def lock_closer(self) -> bool:
        return True  # BEGIN IMMEDIATE already excludes every other writer


class SqliteDatabase(Database):
    """A SQLite file opened for durable, serialised write transactions and lock-free reads."""

    dialect = "sqlite"
    error = sqlite3.Error

    def __init__(self, path: Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 10_000) -> None:
        """busy_timeout_ms: how long a transaction without a deadline waits for the write lock."""
        super().__init__(budget_s=busy_timeout_ms / 1000)
        self.path = path
        self.where = f"SQLite database {path}"
        if not path.exists():
            # Owner-only from the start: SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        try:
            self._writer = os.open(path.parent / f"{path.name}.writer-lock",
                                   os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:  # e.g. a read-only directory: SQLite's busy handler still serialises
            _log.warning("SQLite database %s: no writer lock file (%s); writers of several processes "
                         "poll for the lock instead of queueing", path, exc.strerror)
            self._writer = -1
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # busy_timeout 0: BEGIN IMMEDIATE first tries without waiting, so a wait is known to be
        # one (see _begin_write); statements inside a WAL write transaction never wait.
        # A batch of random pseudonyms dirties thousands of B-tree pages; checkpointing every
        # 1000 WAL pages (the default) would copy them back to the main file on almost every
        # commit. 16384 pages (64 MiB at 4 KiB) lets a checkpoint absorb many batches.
        for pragma in ("busy_timeout=0", "journal_mode=WAL", f"synchronous={synchronous}",
                       "secure_delete=ON", "foreign_keys=ON", "wal_autocheckpoint=16384",
                       "journal_size_limit=0"):
            self._pragma(self._conn, pragma)
        self._lock = threading.Lock()
        #: When this process's writer started waiting for a lock another holds (None: not waiting).
        self._waiting_since: float | None = None
        self._readers = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False

    @staticmethod
    def _pragma(conn: sqlite3.Connection, pragma: str) -> None:
        # Switching a new file to WAL takes a lock the busy handler does not wait for, so two
        # processes opening a fresh database at once retry here instead of failing.
        for attempt in range(_PRAGMA_ATTEMPTS):
            try:
                conn.execute(f"PRAGMA {pragma}")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or attempt == _PRAGMA_ATTEMPTS - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))

    def begin(self, *, read_only: bool, until: float, limit: float | None) -> _SqliteTx:
        if read_only:
            conn = self._reader()
            conn.execute("BEGIN")  # deferred: a WAL snapshot at the first read, no lock
            return _SqliteTx(conn, writer=False)
        return self._begin_write(until, refuse_when_stalled=limit is not None)

    def _begin_write(self, until: float, *, refuse_when_stalled: bool) -> _SqliteTx:
        """The thread lock, the cross-process writer flock, then BEGIN IMMEDIATE, each waited
        for until `until` at most. While this process's writer waits for a lock that another
        holds, for more than STALL_SECONDS, other writers of the process with a deadline
        (`refuse_when_stalled`) are refused at once, as StoreUnavailable so that the retry loop
        does not wait on: they would only time out later, holding the RPC threads that reads and
        health checks need meanwhile."""
        waiting = self._waiting_since
        if refuse_when_stalled and waiting is not None and time.monotonic() - waiting > STALL_SECONDS:
            raise StoreUnavailable(f"{self.where}: the write lock has been held by another program or worker "
                                   f"for {time.monotonic() - waiting:.1f} s; refused at once")
        if not self._lock.acquire(timeout=max(0.0, until - time.monotonic())):
            raise LockTimeout("another transaction of this process held the write lock past the deadline")
        try:
            self._queue(until)
            try:
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc):
                        raise
                    self._wait_for_sqlite(until)
                return _SqliteTx(self._conn, writer=True)
            except BaseException:
                self._dequeue()
                raise
        except BaseException:
            self._lock.release()
            raise

    def _wait_for_sqlite(self, until: float) -> None:
        """BEGIN IMMEDIATE through SQLite's busy handler for what is left: another program
        (a `sqlite3` shell, a backup, a process that did not take the flock) holds the lock."""
        self._waiting_since = time.monotonic()
        try:
            self._conn.execute(f"PRAGMA busy_timeout={max(0, int((until - time.monotonic()) * 1000))}")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            finally:
                self._conn.execute("PRAGMA busy_timeout=0")
        finally:
            self._waiting_since = None

    def _queue(self, until: float) -> None:
        """Take the cross-process writer lock (see the module docstring) by `until`."""
        if self._writer < 0:  # closed (the closed connection says so), or no lock file
            return
        try:
            fcntl.flock(self._writer, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        self._waiting_since = time.monotonic()
        pause = 0.0002
        try:
            while True:
                left = until - time.monotonic()
                if left <= 0:
                    raise LockTimeout("another worker held the writer lock past the deadline")
                time.sleep(min(pause, left))
                pause = min(2 * pause, _FLOCK_POLL_MAX)
                try:
                    fcntl.flock(self._writer, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    pass
        finally:
            self._waiting_since = None

    def _dequeue(self) -> None:
        if self._writer >= 0:
            fcntl.flock(self._writer, fcntl.LOCK_UN)

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection (one per thread: a connection holds one transaction)."""
        conn: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            if self._closed:
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            for pragma in (f"busy_timeout={_READ_BUSY_MS}", "query_only=ON", "foreign_keys=ON"):
                self._pragma(conn, pragma)
            self._readers.conn = conn
            with self._readers_lock:
                self._reader_conns.append(conn)
        return conn

    def commit(self, tx: Tx) -> None:
        assert isinstance(tx, _SqliteTx)
        tx.conn.execute("COMMIT")
        self._release(tx)

    def rollback(self, tx: Tx) -> None:
        assert isinstance(tx, _SqliteTx)
        # After FULL or IOERR SQLite may already have rolled the transaction back itself.
        if tx.conn.in_transaction:
            try:
                tx.conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                _log.warning("SQLite database %s: rollback failed (%s)", self.path, exc)
        self._release(tx)

    def _release(self, tx: _SqliteTx) -> None:
        if tx.writer:
            tx.writer = False
            self._dequeue()
            self._lock.release()

    def is_transient(self, exc: Exception) -> bool:
        return isinstance(exc, LockTimeout) or (isinstance(exc, sqlite3.OperationalError) and _is_busy(exc))

    def unavailable(self, exc: Exception, name: str, *, read_only: bool) -> StoreUnavailable | None:
        """StoreUnavailable when `exc` is a failure an operator can fix (a write refused by a
        read transaction's query_only is a bug instead)."""
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF if isinstance(exc, sqlite3.Error) else 0
        what = _OPERATOR_FIXABLE.get(code)
        if what is None or (read_only and code == sqlite3.SQLITE_READONLY):
            return None
        return StoreUnavailable(f"SQLite database {self.path}: {what} during {name} "
                                f"({getattr(exc, 'sqlite_errorname', '?')}: {exc})")

    def checkpoint(self) -> bool:
        """Copy the WAL into the main file and truncate it; False while a reader pins it."""
        try:
            return self._checkpoint()
        except StoreUnavailable:
            self.unavailable_count += 1
            raise

    def _checkpoint(self) -> bool:
        wal = self.path.with_name(self.path.name + "-wal")
        until = time.monotonic() + self.budget_s
        with self._lock, self._held(until):  # no other worker's transaction pins the WAL meanwhile
            # TRUNCATE waits for readers through the busy handler: briefly, see CHECKPOINT_BUSY_MS.
            self._conn.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_MS}")
            try:
                busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as exc:
                unavailable = self.unavailable(exc, "checkpoint", read_only=False)
                if unavailable is not None:
                    raise unavailable from exc
                raise
            finally:
                self._conn.execute("PRAGMA busy_timeout=0")
            try:
                size = wal.stat().st_size
            except FileNotFoundError:
                size = 0
        return busy == 0 and size == 0

    @contextlib.contextmanager
    def _held(self, until: float) -> Iterator[None]:
        try:
            self._queue(until)
        except LockTimeout as exc:
            raise StoreUnavailable(f"SQLite database {self.path}: checkpoint: {exc}") from exc
        try:
            yield
        finally:
            self._dequeue()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._conn.close()
            with self._readers_lock:
                for conn in self._reader_conns:
                    conn.close()
                self._reader_conns.clear()
            if self._writer >= 0:
                os.close(self._writer)
                self._writer = -1


def _is_busy(exc: sqlite3.Error) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


@dataclass(frozen=True, slots=True)
class BackupSummary:
    """What a backup copy holds: its ledger head, the open windows (with keys and per-person
    rows in the copy) and how many per-person rows."""

    ledger_seq: int
    ledger_hash: str
    open_windows: list[str]
    usage_rows: int


def backup(source: Path, target: Path, *, busy_timeout_s: float) -> BackupSummary:
    """Copy a live database file in one step (one consistent snapshot, WAL readers block no
    writer) into `target`, a self-contained file; raises sqlite3.Error, and DatabaseError when
    the copy fails its integrity check."""
    src = sqlite3.connect(source, timeout=busy_timeout_s)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # pages=-1: the whole database in one step, one consistent snapshot
            dst.execute("PRAGMA journal_mode=DELETE")  # a self-contained file: no -wal beside it
            (check,), = dst.execute("PRAGMA quick_check").fetchall()
            if check != "ok":
                raise sqlite3.DatabaseError(f"the copy failed its integrity check: {check}")
            tx = _SqliteTx(dst)
            seq, digest = ledger.head(tx)
            return BackupSummary(seq, digest, windows.open_ids(tx), usage.count(tx))
        finally:
            dst.close()
    finally:
        src.close()
