"""SQLite engine: the embedded default. One file in the data directory, WAL, secure_delete.

All transactions of a process go through one connection under a lock: SQLite allows one
writer anyway, and this keeps `BEGIN IMMEDIATE` waits inside the process cheap. Processes
on the same file (the workers of `chorus serve --workers N`) queue on an exclusive `flock`
of a sidecar file (`<db>.writer-lock`) around each transaction: the kernel wakes the next
writer the moment one commits, where SQLite's busy handler would sleep and poll (up to
100 ms a time). The kernel drops the lock of a killed process. Other programs on the file
(a `sqlite3` shell, a backup) are still serialised by SQLite's busy timeout.

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
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from chorus.server.store import ledger, usage, windows
from chorus.server.store._db import Row, StoreUnavailable, TxStats

T = TypeVar("T")
_log = logging.getLogger(__name__)
_MAX_ATTEMPTS = 50
#: How long a checkpoint waits for readers to leave before reporting the shred pending. It
#: holds the connection's lock meanwhile, so it is short: the closer retries later anyway.
CHECKPOINT_BUSY_MS = 200
#: Primary result codes of failures that pass once an operator acts (frees space, fixes
#: permissions or the device), as opposed to bugs: reported as StoreUnavailable.
_OPERATOR_FIXABLE = {sqlite3.SQLITE_FULL: "disk full", sqlite3.SQLITE_IOERR: "I/O error",
                     sqlite3.SQLITE_READONLY: "read-only", sqlite3.SQLITE_CANTOPEN: "cannot open the file"}


class _SqliteTx:
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

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
        params = [b for bound in bounds for b in (bound, bound)]
        self._conn.executemany(usage.upsert_sql(len(bounds)), [(*row, *params) for row in rows])

    def lock_closer(self) -> bool:
        return True  # BEGIN IMMEDIATE already excludes every other writer


class SqliteDatabase:
    """A SQLite file opened for durable, serialised transactions."""

    dialect = "sqlite"

    def __init__(self, path: Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self.unavailable_count = 0
        self._busy_timeout_ms = busy_timeout_ms
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
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                     timeout=busy_timeout_ms / 1000)
        # A batch of random pseudonyms dirties thousands of B-tree pages; checkpointing every
        # 1000 WAL pages (the default) would copy them back to the main file on almost every
        # commit. 16384 pages (64 MiB at 4 KiB) lets a checkpoint absorb many batches.
        for pragma in (f"busy_timeout={busy_timeout_ms}", "journal_mode=WAL", f"synchronous={synchronous}",
                       "secure_delete=ON", "foreign_keys=ON", "wal_autocheckpoint=16384",
                       "journal_size_limit=0"):
            self._pragma(pragma)
        self._lock = threading.Lock()
        self.stats = TxStats()

    def _pragma(self, pragma: str) -> None:
        # Switching a new file to WAL takes a lock the busy handler does not wait for, so two
        # processes opening a fresh database at once retry here instead of failing.
        for attempt in range(_MAX_ATTEMPTS):
            try:
                self._conn.execute(f"PRAGMA {pragma}")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or attempt == _MAX_ATTEMPTS - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))

    def run(self, fn: Callable[[_SqliteTx], T], *, name: str) -> T:
        try:
            return self._run(fn, name)
        except StoreUnavailable:
            self.unavailable_count += 1
            raise

    def _run(self, fn: Callable[[_SqliteTx], T], name: str) -> T:
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            with self._lock, self._queued():
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    if not _is_busy(exc):
                        self._reraise(exc, name)
                else:
                    try:
                        result = fn(_SqliteTx(self._conn))
                        self._conn.execute("COMMIT")
                        return result
                    except BaseException as exc:
                        self._rollback()
                        if not (isinstance(exc, sqlite3.OperationalError) and _is_busy(exc)):
                            if isinstance(exc, sqlite3.Error):  # the store failed, not the domain rule
                                self.stats.failed(name)
                            self._reraise(exc, name)
            _log.debug("transaction %s busy, attempt %d", name, attempt)
            self.stats.retried(name)
            time.sleep(min(0.5, 0.005 * 2 ** min(attempt, 7)) * random.random())
        self.stats.failed(name)
        raise StoreUnavailable(f"SQLite database {self.path} stayed locked through "
                               f"{_MAX_ATTEMPTS} attempts of {name}")

    @contextlib.contextmanager
    def _queued(self) -> Iterator[None]:
        """Hold the cross-process writer lock (see the module docstring)."""
        if self._writer < 0:  # closed (the closed connection says so), or no lock file
            yield
            return
        fcntl.flock(self._writer, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._writer, fcntl.LOCK_UN)

    def _rollback(self) -> None:
        # After FULL or IOERR SQLite may already have rolled the transaction back itself.
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                _log.warning("SQLite database %s: rollback failed (%s)", self.path, exc)

    def _reraise(self, exc: BaseException, name: str) -> NoReturn:
        """Raise `exc` again, as StoreUnavailable when it is a failure an operator can fix."""
        code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
        what = _OPERATOR_FIXABLE.get((code or 0) & 0xFF)
        if what is None:
            raise exc
        raise StoreUnavailable(f"SQLite database {self.path}: {what} during {name} "
                               f"({getattr(exc, 'sqlite_errorname', '?')}: {exc})") from exc

    def checkpoint(self) -> bool:
        """Copy the WAL into the main file and truncate it; False while a reader pins it."""
        try:
            return self._checkpoint()
        except StoreUnavailable:
            self.unavailable_count += 1
            raise

    def _checkpoint(self) -> bool:
        wal = self.path.with_name(self.path.name + "-wal")
        with self._lock, self._queued():  # no other worker's transaction pins the WAL meanwhile
            # TRUNCATE waits for readers through the busy handler: briefly, see CHECKPOINT_BUSY_MS.
            self._conn.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_MS}")
            try:
                busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as exc:
                self._reraise(exc, "checkpoint")
            finally:
                self._conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            try:
                size = wal.stat().st_size
            except FileNotFoundError:
                size = 0
        return busy == 0 and size == 0

    def close(self) -> None:
        with self._lock:
            self._conn.close()
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
