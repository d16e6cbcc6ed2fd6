"""PostgreSQL engine: several stateless replicas share one database.

Isolation level: READ COMMITTED, chosen deliberately. The store's SQL never reads a value
and writes back a decision taken on it without a row lock; every read-modify-write is a
single statement that locks the row it changes (`INSERT ... ON CONFLICT`, `UPDATE ...
SET x = x + 1 ... RETURNING`, `UPDATE ... WHERE spent + ? <= cap`). Under READ COMMITTED
such a statement that finds the row locked waits for the other transaction, then
re-evaluates its WHERE clause against the newly committed row version, so the check and
the write see the same state: exactly-once batch ids, clamped running totals, linear
ledger sequence numbers and budget caps hold without SERIALIZABLE's false-positive aborts.
Each statement also takes a fresh snapshot, which is what lets a statement after such a
lock (e.g. the re-read after `ON CONFLICT DO NOTHING` lost a race) see the winner's row.
Serialization failures and deadlocks can still happen (a deadlock between two
transactions locking rows in different orders) and are retried like lost connections.

Retries: `run` retries the whole transaction function with jittered exponential backoff
on serialization failures, deadlocks, an exhausted or unreachable pool and lost
connections. A connection lost mid-transaction means the server rolled it back, so
running the function again is safe; this is the same contract as SQLite's busy retries
(the function must be safe to run twice). A connection lost during COMMIT itself leaves
the outcome unknown: the retry is then a second attempt of a transaction that may have
committed, which the domain absorbs (a repeated ingest batch id is acknowledged as a
duplicate).

Failures an operator can fix and that a retry within the budget will not: the server out of
disk, memory or connections (class 53), an I/O or system error (class 58), a read-only
server (25006, e.g. a standby after failover). They raise StoreUnavailable at once, which
clients retry later, rather than a bare psycopg error that would read as a server bug.

Stuck transactions: every connection sets `statement_timeout` and
`idle_in_transaction_session_timeout`, so neither a runaway statement nor a replica that
hangs (or is paused) inside a transaction holds row locks for longer than those bounds.

Deletion and MVCC: `checkpoint()` does nothing and returns True, because nothing a client
can do makes deleted bytes go away. Rows deleted at window close stay on disk as dead
tuples until (auto)vacuum reclaims their space and later writes overwrite it, and in WAL
segments, archives and backups until those expire; there is no per-transaction
equivalent of SQLite's WAL truncation. See docs/privacy.md and docs/deployment.md for
what an operator configures instead.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
import psycopg_pool
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict

from chorus.server.store import usage
from chorus.server.store._db import Database, LockTimeout, Row, StoreUnavailable, Tx

_log = logging.getLogger(__name__)

#: How long after setting a transaction's lock and statement timeouts they are set again before
#: the next statement (see _PostgresTx).
_RESET_AFTER_S = 0.05
#: How long a transaction waits for a row or table lock before the transaction loop decides
#: (store/_db.py, `patience_s`): our own transactions hold the locks ingest and releases
#: contend for for milliseconds, so a longer wait means a foreign session or a long close.
LOCK_PATIENCE_SECONDS = 0.25

# Arbitrary constant key for the window-closer advisory lock ("clos"); the migration lock
# in _schema.py uses another key.
_CLOSER_LOCK = 0x636C6F73

# SQLSTATEs after which the transaction is known to be rolled back and may be run again:
# connection exceptions (class 08), the server shutting down or restarting (57P0x), our
# own session killed by idle_in_transaction_session_timeout (25P03), a lock not granted
# within lock_timeout (55P03) and a statement cancelled by statement_timeout (57014): both
# the transaction's deadline, so the loop retries only if time is left, else StoreUnavailable.
_RETRY_SQLSTATE_PREFIXES = ("08", "57P01", "57P02", "57P03", "25P03", "55P03", "57014")
# SQLSTATEs of failures an operator must fix (see the module doc): StoreUnavailable at once.
_OPERATOR_FIXABLE_SQLSTATE_PREFIXES = ("53", "58", "25006")


class _PostgresTx:
    """One open transaction on a pooled connection; `?` placeholders become `%s`.

    Deadline: PostgreSQL's lock_timeout and statement_timeout bound each lock wait and each
    statement, not the transaction. So when a caller's deadline bounds the transaction, before
    a statement, once `_RESET_AFTER_S` has passed since the bounds were last set (an earlier
    statement waited), they are set again to what is left: however many statements wait, it
    ends in time.
    """

    dialect = "postgresql"

    def __init__(self, conn: psycopg.Connection[Any], cursor: psycopg.Cursor[Any], wait_s: float,
                 limit: float | None, statement_timeout_ms: int) -> None:
        #: The connection while the transaction is open (None once committed or rolled back).
        self.conn: psycopg.Connection[Any] | None = conn
        self._cur = cursor
        self._wait_s, self._limit, self._statement_timeout_ms = wait_s, limit, statement_timeout_ms
        self._set_at: float | None = None

    def bound(self, begin: str = "") -> None:
        """Set lock_timeout (each lock wait: `wait_s`, and no later than `limit`) and
        statement_timeout (to `limit`); again before a statement only when a deadline `limit`
        bounds the transaction and `_RESET_AFTER_S` has passed since (an earlier statement
        waited). LockTimeout when the deadline has passed. `begin`: the statement that opens
        the transaction, sent in the same round trip."""
        now = time.monotonic()
        if self._set_at is not None and (self._limit is None or now - self._set_at < _RESET_AFTER_S):
            return
        wait_s, statement = self._wait_s, ""
        if self._limit is not None:
            left = self._limit - now
            if left <= 0:
                raise LockTimeout("the transaction's deadline passed between two statements")
            wait_s = min(wait_s, left)
            statement = f"; SET LOCAL statement_timeout = {min(max(1, int(left * 1000)), self._statement_timeout_ms)}"
        # Integers formatted by us, no parameters: one simple-protocol round trip.
        bounds = f"SET LOCAL lock_timeout = {max(1, int(wait_s * 1000))}{statement}"
        self._cur.execute(f"{begin}; {bounds}" if begin else bounds)  # type: ignore[arg-type]
        self._set_at = now

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.bound()
        self._cur.execute(placeholders(sql), params)
        return self._cur.rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self.bound()
        self._cur.execute(placeholders(sql), params)
        return self._cur.fetchall()

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.bound()
        # psycopg sends all rows in one pipeline (libpq >= 14): one round trip, not one per row.
        self._cur.executemany(placeholders(sql), rows)

    def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.bound()
        if len(rows) < BULK_MIN_ROWS:
            self._cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) "
                                  f"VALUES ({', '.join(['%s'] * len(columns))})", rows)
            return
        with self._cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def add_usage(self, bounds: tuple[int, ...], rows: Sequence[Row]) -> None:
        self.bound()
        if len(rows) < BULK_MIN_ROWS or len({(r[0], r[1]) for r in rows}) != len(rows):
            # Few rows, or a person twice (DO UPDATE cannot touch a row twice in one statement).
            self._cur.executemany(placeholders(usage.upsert_sql(bounds)), rows)
            return
        _copy_usage(self._cur, bounds, rows)

    def lock_closer(self) -> bool:
        (locked,), = self.query("SELECT pg_try_advisory_xact_lock(?)", (_CLOSER_LOCK,))
        return bool(locked)


# The bulk paths (the usage upsert's, and `insert_rows` for plain inserts such as a roster),
# measured in bench/bench_ingest_pg.py: the usage upsert run for many
# rows through psycopg's executemany costs ingest ~17 us of Python per contribution; COPY
# into a staging table followed by one INSERT ... SELECT ... ON CONFLICT costs ~5 us, and
# less PostgreSQL CPU, for 1.5-2.5x the rate. The extra statements cost round trips: on
# one connection both paths take the same time at ~128 rows (2.1 ms); at 16 rows the bulk
# path takes 1.5 ms against 0.7 ms.
BULK_MIN_ROWS = 128


def _copy_usage(cur: psycopg.Cursor[Any], bounds: tuple[int, ...], rows: Sequence[Row]) -> None:
    """store.usage.add for many rows: COPY them into a staging table, then merge them in one
    statement with the same ON CONFLICT clause as the row-by-row upsert.

    The staging table lives as long as the connection (ON COMMIT DELETE ROWS; one per number
    of metric slots) and has an ordinal column, so the merge takes row locks in the caller's
    (window, pseudonym) order and concurrent batches cannot deadlock.
    """
    stage = f"chorus_stage_usage_{len(bounds)}"
    cols = usage.columns(len(bounds))
    cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
                f"SELECT 0::BIGINT AS chorus_ord, {cols} FROM usage WITH NO DATA")
    with cur.copy(f"COPY {stage} (chorus_ord, {cols}) FROM STDIN") as copy:
        for i, row in enumerate(rows):
            copy.write_row((i, *row))
    cur.execute(f"INSERT INTO usage ({cols}) SELECT {cols} FROM {stage} ORDER BY chorus_ord "
                f"ON CONFLICT (window_id, pseudonym) DO UPDATE SET {placeholders(usage.set_clause(bounds))}")
    cur.execute(f"DELETE FROM {stage}")  # the operation may run again in this transaction


@functools.lru_cache(maxsize=1024)
def placeholders(sql: str) -> str:
    """Rewrite `?` placeholders to psycopg's `%s` and escape literal `%`, outside quotes.

    The store's SQL is a small fixed set of strings, so each is converted once.
    """
    out: list[str] = []
    quote = ""
    for char in sql:
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "?":
            out.append("%s")
            continue
        out.append("%%" if char == "%" else char)
    return "".join(out)


def _retryable(exc: psycopg.Error | psycopg_pool.PoolTimeout) -> bool:
    if isinstance(exc, errors.SerializationFailure | errors.DeadlockDetected | psycopg_pool.PoolTimeout):
        return True
    if exc.sqlstate is None:
        # Raised by the client without a server error: the connection broke (server crash,
        # network failure, killed backend). A client-side usage error would be a bug, not
        # an OperationalError.
        return isinstance(exc, psycopg.OperationalError)
    return exc.sqlstate.startswith(_RETRY_SQLSTATE_PREFIXES)


def _primary(exc: psycopg.Error) -> str:
    """The error's primary message only: DETAIL and CONTEXT may quote row values."""
    return exc.diag.message_primary or next(iter(str(exc).strip().splitlines()), type(exc).__name__)


def describe(url: str) -> str:
    """host:port/dbname of a connection URL, for messages: never the user or password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "PostgreSQL (unparseable URL)"
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"


class PostgresDatabase(Database):
    """A pool of connections to one PostgreSQL database, running retried transactions."""

    dialect = "postgresql"
    error = psycopg.Error

    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 16,
                 statement_timeout_ms: int = 60_000, idle_in_transaction_timeout_ms: int = 60_000,
                 connect_timeout_s: float = 10.0, pool_timeout_s: float = 10.0,
                 retry_budget_s: float = 20.0) -> None:
        """Connect (failing fast with StoreUnavailable if unreachable) and open the pool.

        max_size: concurrent transactions of this replica; the gRPC server runs 16 workers.
        statement_timeout_ms / idle_in_transaction_timeout_ms: upper bounds on how long a
        slow statement or a hung replica holds locks; the window close of a very large
        window must fit in statement_timeout_ms.
        retry_budget_s: how long a transaction without a deadline waits for locks and retries.
        """
        super().__init__(budget_s=retry_budget_s, patience_s=LOCK_PATIENCE_SECONDS)
        self.where = f"PostgreSQL at {describe(url)}"
        self._statement_timeout_ms = statement_timeout_ms
        self._settings = {"statement_timeout": str(statement_timeout_ms),
                          "idle_in_transaction_session_timeout": str(idle_in_transaction_timeout_ms)}
        self._pool_timeout_s = pool_timeout_s
        try:
            # Probe once so a wrong URL or a down server fails now with libpq's own reason.
            psycopg.connect(url, connect_timeout=max(1, round(connect_timeout_s))).close()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to {self.where}: {_primary(exc)}") from None
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=min_size, max_size=max_size, timeout=pool_timeout_s,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(connect_timeout_s))},
            configure=self._configure, name="chorus", open=True)

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        # Autocommit so that only begin() opens transactions, with the isolation level spelled
        # out rather than inherited from the server's default.
        conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        for name, value in self._settings.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))

    def begin(self, *, read_only: bool, until: float, limit: float | None) -> _PostgresTx:
        """A pooled connection (waited for until `until`), BEGIN, and the transaction's bounds
        (`_PostgresTx.bound`) in the same round trip: lock_timeout to `until` (the loop's
        patience or the deadline), statement_timeout to the caller's deadline `limit` when
        there is one: a lock another session holds is given up in time, and no statement
        outlives the call."""
        conn = self._pool.getconn(timeout=max(0.001, min(until - time.monotonic(), self._pool_timeout_s)))
        try:
            tx = _PostgresTx(conn, conn.cursor(), max(0.001, until - time.monotonic()), limit,
                             self._statement_timeout_ms)
            tx.bound(begin=f"BEGIN ISOLATION LEVEL READ COMMITTED{' READ ONLY' if read_only else ''}")
            return tx
        except BaseException:
            self._put(conn)
            raise

    def commit(self, tx: Tx) -> None:
        assert isinstance(tx, _PostgresTx) and tx.conn is not None
        tx.conn.execute("COMMIT")
        self._put(tx.conn)
        tx.conn = None

    def rollback(self, tx: Tx) -> None:
        assert isinstance(tx, _PostgresTx)
        if tx.conn is None:
            return
        conn, tx.conn = tx.conn, None
        if not conn.closed:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error as exc:
                _log.debug("%s: rollback failed (%s)", self.where, _primary(exc))
        if conn.broken:
            self._put(conn)
            self._pool.check()  # a lost connection: drop every idle one that broke with it
        else:
            self._put(conn)

    def _put(self, conn: psycopg.Connection[Any]) -> None:
        try:
            self._pool.putconn(conn)
        except Exception as exc:  # the pool is closing
            _log.debug("%s: could not return a connection (%s)", self.where, exc)

    def is_lock_wait(self, exc: Exception) -> bool:
        return isinstance(exc, errors.LockNotAvailable | psycopg_pool.PoolTimeout)

    def is_transient(self, exc: Exception) -> bool:
        return isinstance(exc, LockTimeout) or (isinstance(exc, psycopg.Error | psycopg_pool.PoolTimeout)
                                                and _retryable(exc))

    def unavailable(self, exc: Exception, name: str, *, read_only: bool) -> StoreUnavailable | None:
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if not isinstance(exc, psycopg.Error) or not sqlstate.startswith(_OPERATOR_FIXABLE_SQLSTATE_PREFIXES):
            return None
        if read_only and sqlstate == "25006":  # a write inside a READ ONLY transaction: a bug
            return None
        return StoreUnavailable(f"{self.where}: transaction {name} failed with {sqlstate}: {_primary(exc)}")

    def checkpoint(self) -> bool:
        """Nothing to do: PostgreSQL reclaims deleted rows by (auto)vacuum (see module doc)."""
        return True

    def close(self) -> None:
        self._pool.close()
