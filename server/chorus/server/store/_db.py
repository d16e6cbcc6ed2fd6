"""The seam between the store's operations and a SQL engine, and the one transaction loop.

Only modules of `chorus.server.store` write SQL, once, with `?` placeholders and portable
syntax (ON CONFLICT, RETURNING, CASE), against `Tx`; domain code receives a `Tx` from
`Database.run` (or `Database.read`) and passes it to the store's typed operations
(store/usage.py, store/budgets.py, ...), never calling `execute` or `query` itself. Where the
engines need different statements for one operation (the usage upsert's bulk path), the
engine's `Tx` implements that operation (`add_usage`, `insert_rows`).

One retry loop (`Database._transaction`), janus-style: each engine (store/sqlite.py,
store/postgres.py) supplies only `begin`, `commit`, `rollback`, `is_transient` and
`unavailable`; the loop runs the function, retries it with jittered exponential backoff on a
transient failure (a lock not granted in time, a serialization failure, a lost connection),
so every transaction function must be safe to run twice, and reports each transaction's name,
outcome, duration and attempts to the observers (transport/metrics.py turns them into
Prometheus metrics; the store imports no transport).

Time bound: a transaction ends by its deadline. `deadline(until)` sets it for the calls made
inside (the gRPC gate sets the RPC's, less a fifth of the time left, at most
`REPLY_MARGIN_SECONDS`, so that the refusal reaches the caller before its own deadline);
without one, the engine's `budget_s` from the start of the transaction. Every lock wait of
an attempt is bounded by what is left (and by the engine's patience, see `Database`), and
when no time is left the loop raises StoreUnavailable (UNAVAILABLE with RetryInfo at the
API) instead of waiting: a busy store never stalls a caller past its deadline.

Reads: `Database.read(fn)` runs fn in a read-only transaction that takes no writer lock
(SQLite: a WAL read transaction on a per-thread connection with `query_only`; PostgreSQL:
`READ ONLY`), so readers never wait for writers nor writers for readers. A write attempted
inside it fails as a bug (never StoreUnavailable): a call that should not write, cannot.
"""

from __future__ import annotations

import contextlib
import contextvars
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")
Row = tuple[Any, ...]

#: What the gate leaves of an RPC's deadline for the refusal to travel back: a fifth of the
#: time the call has left, at most this.
REPLY_MARGIN_SECONDS = 0.5

#: How long a new attempt waits for a lock while another transaction already waits for one.
BUSY_PATIENCE_SECONDS = 0.05

#: Outcomes a transaction is observed with.
COMMITTED, ROLLED_BACK, UNAVAILABLE, FAILED = "committed", "rolled_back", "unavailable", "failed"

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("chorus_store_deadline", default=None)


class Tx(Protocol):
    """One open transaction."""

    #: "sqlite" or "postgresql", for the few statements that cannot be portable.
    dialect: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; return the affected row count."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a statement that returns rows."""

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for many parameter rows (the engine's fastest bulk path)."""

    def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Plain INSERT of many rows into a table (no conflict clause): the engine's bulk path
        (COPY on PostgreSQL). `table` and `columns` are store constants, never input."""

    def add_usage(self, bounds: tuple[int, ...], rows: Sequence[Row]) -> None:
        """store.usage.add: upsert (window, pseudonym, team, totals...) rows, each total clamped
        to its bound; the engine's fastest way for the number of rows."""

    def lock_closer(self) -> bool:
        """Take the cluster-wide window-closer lock for this transaction; False if held elsewhere."""


class TxObserver(Protocol):
    def __call__(self, name: str, outcome: str, seconds: float, attempts: int) -> None:
        """One finished transaction: its name, outcome (COMMITTED, ROLLED_BACK: the function
        raised a domain error; UNAVAILABLE; FAILED: a store error that is a bug), wall time
        from the first attempt to the end, and attempts."""


class StoreUnavailable(RuntimeError):
    """The store cannot serve now for a reason that passes or that an operator can fix: a lock
    was not granted within the deadline, it stayed busy past the retry budget, is unreachable,
    or cannot write (disk full, I/O error, read-only, cannot open its file). Clients retry; no
    acknowledged data is lost."""


class LockTimeout(Exception):
    """An engine's lock was not granted by the attempt's deadline: transient, retried while
    time is left, else StoreUnavailable."""


@contextlib.contextmanager
def deadline(until: float | None) -> Iterator[None]:
    """Transactions started inside end by `until` (time.monotonic; None: the engine's budget).

    Nested deadlines keep the earlier one."""
    outer = _deadline.get()
    if until is None or (outer is not None and outer <= until):
        yield
        return
    token = _deadline.set(until)
    try:
        yield
    finally:
        _deadline.reset(token)


class Database(ABC):
    """A store engine and the one transaction loop around it (see the module docstring).

    `budget_s`: how long a transaction without a deadline may wait for locks and retry.
    `patience_s` (None: the engine bounds its waits itself): how long an attempt waits for a
    lock before the loop decides. The first transaction whose wait runs out becomes the one
    that waits on, for all that its deadline leaves; any other is refused (StoreUnavailable)
    at once, and meanwhile new attempts wait only BUSY_PATIENCE_SECONDS. So a lock held by a
    foreign session occupies one RPC thread, not all of them, and health checks, reads and
    writes that need other locks are still served. The rule is for RPCs (a `deadline` is set):
    a transaction without one (the closer, the plan, a script) holds no RPC thread and waits
    for locks for all of its budget.
    """

    dialect: str
    #: Where the store is, for messages (a path, host:port/db; never credentials).
    where: str
    #: The engine's own error class: an error of it that is neither transient nor
    #: operator-fixable is a FAILED transaction (a bug), any other exception a domain refusal.
    error: type[Exception]

    def __init__(self, *, budget_s: float, patience_s: float | None = None) -> None:
        self.budget_s = budget_s
        self.patience_s = patience_s
        # The name of the one transaction (of reads, of writes) that waits past the patience.
        self._waiting: dict[bool, str | None] = {False: None, True: None}
        self._waiting_lock = threading.Lock()
        #: How many transactions raised StoreUnavailable since the engine opened (health reads it).
        self.unavailable_count = 0
        self._observers: list[TxObserver] = []
        self._observers_lock = threading.Lock()

    def observe(self, observer: TxObserver) -> Callable[[], None]:
        """Report every finished transaction to `observer`; returns the function that stops it."""
        with self._observers_lock:
            self._observers = [*self._observers, observer]

        def stop() -> None:
            with self._observers_lock:
                self._observers = [o for o in self._observers if o is not observer]
        return stop

    def run(self, fn: Callable[[Tx], T], *, name: str) -> T:
        """Run fn in one write transaction, committing on return; retried on transient failures."""
        return self._transaction(fn, name, read_only=False)

    def read(self, fn: Callable[[Tx], T], *, name: str) -> T:
        """Run fn in one read-only transaction that takes no writer lock (fn must not write)."""
        return self._transaction(fn, name, read_only=True)

    def _transaction(self, fn: Callable[[Tx], T], name: str, *, read_only: bool) -> T:
        started = time.monotonic()
        limit = _deadline.get()
        until = started + self.budget_s if limit is None else min(limit, started + self.budget_s)
        attempt = 0
        outcome = FAILED
        patient = False  # this transaction is the one that waits for a lock past the patience
        # Without a caller's deadline (the closer, a plan release, a script) nothing is waiting on
        # an RPC thread: such a transaction waits for locks for all of its budget, like the patient one.
        unbounded = limit is None
        try:
            while True:
                attempt += 1
                failure = self._attempt(fn, name, read_only,
                                        self._lock_bound(until, read_only, patient or unbounded), limit)
                if not isinstance(failure, Exception):
                    outcome = COMMITTED
                    return failure.value
                if isinstance(failure, StoreUnavailable):
                    outcome = UNAVAILABLE
                    raise failure
                unavailable = self.unavailable(failure, name, read_only=read_only)
                if unavailable is not None:
                    outcome = UNAVAILABLE
                    raise unavailable from failure
                if not self.is_transient(failure):
                    outcome = FAILED if isinstance(failure, self.error) else ROLLED_BACK
                    raise failure
                if self.patience_s is not None and self.is_lock_wait(failure) and not patient and not unbounded:
                    with self._waiting_lock:
                        patient = self._waiting[read_only] is None
                        if patient:
                            self._waiting[read_only] = name
                    if not patient:
                        outcome = UNAVAILABLE
                        raise StoreUnavailable(f"{self.where}: transaction {name}: a lock was not granted "
                                               "while another transaction already waits for one") from failure
                    continue
                delay = random.uniform(0, min(0.5, 0.005 * 2 ** min(attempt, 7)))
                if time.monotonic() + delay >= until:
                    outcome = UNAVAILABLE
                    raise StoreUnavailable(
                        f"{self.where}: transaction {name} did not get through within "
                        f"{until - started:.1f} s ({attempt} attempt(s)); last: {_describe(failure)}") from failure
                time.sleep(delay)
        finally:
            if patient:
                with self._waiting_lock:
                    self._waiting[read_only] = None
            if outcome == UNAVAILABLE:
                self.unavailable_count += 1
            seconds = time.monotonic() - started
            for observer in self._observers:
                observer(name, outcome, seconds, attempt)

    def _lock_bound(self, until: float, read_only: bool, patient: bool) -> float:
        """How long this attempt may wait for locks: all that is left for the patient
        transaction (or where the engine has no patience), else `patience_s`, or only
        `BUSY_PATIENCE_SECONDS` while another transaction already waits."""
        if patient or self.patience_s is None:
            return until
        patience = self.patience_s if self._waiting[read_only] is None else BUSY_PATIENCE_SECONDS
        return min(until, time.monotonic() + patience)

    def _attempt(self, fn: Callable[[Tx], T], name: str, read_only: bool, until: float,
                 limit: float | None) -> _Done[T] | Exception:
        if time.monotonic() >= until:
            return StoreUnavailable(f"{self.where}: no time left for transaction {name} (deadline passed)")
        try:
            tx = self.begin(read_only=read_only, until=until, limit=limit)
        except Exception as exc:
            return exc
        try:
            result = fn(tx)
            self.commit(tx)
        except Exception as exc:
            self.rollback(tx)
            return exc
        except BaseException:
            self.rollback(tx)
            raise
        return _Done(result)

    # What each engine supplies.

    @abstractmethod
    def begin(self, *, read_only: bool, until: float, limit: float | None) -> Tx:
        """Open a transaction, waiting for locks until `until` at most (LockTimeout, or the
        engine's transient error, when not granted). `limit` is the caller's deadline (None
        for background work), which bounds statements too."""

    @abstractmethod
    def commit(self, tx: Tx) -> None:
        """Commit and release what `begin` took; on an exception `rollback` follows."""

    @abstractmethod
    def rollback(self, tx: Tx) -> None:
        """Roll back (if still open) and release what `begin` took; never raises."""

    @abstractmethod
    def is_transient(self, exc: Exception) -> bool:
        """True when the transaction certainly did not commit and may simply run again."""

    def is_lock_wait(self, exc: Exception) -> bool:
        """True when `exc` says a lock (or a connection) was not granted within the attempt's
        bound: the failures `patience_s` applies to."""
        return isinstance(exc, LockTimeout)

    @abstractmethod
    def unavailable(self, exc: Exception, name: str, *, read_only: bool) -> StoreUnavailable | None:
        """StoreUnavailable for a failure an operator must fix (disk full, read-only, ...)."""

    @abstractmethod
    def checkpoint(self) -> bool:
        """Make committed deletions final in the engine's files where it can (SQLite's WAL).

        True when no file the engine controls still holds the bytes of a row deleted before
        the call; False when something (another connection's read transaction) prevented it,
        so the caller tries again later. Raises StoreUnavailable when the store fails.
        """

    @abstractmethod
    def close(self) -> None: ...


class _Done(Generic[T]):
    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value


def _describe(exc: Exception) -> str:
    """The error's kind (SQLSTATE where there is one) and first line: PostgreSQL's DETAIL and
    CONTEXT lines, which may quote row values, stay out."""
    kind = getattr(exc, "sqlstate", None) or type(exc).__name__
    text = next(iter(str(exc).strip().splitlines()), "")
    return f"{kind}: {text}" if text else kind
