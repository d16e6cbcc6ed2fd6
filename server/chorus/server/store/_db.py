"""The seam between the store's operations and a SQL engine.

Only modules of `chorus.server.store` write SQL, once, with `?` placeholders and portable
syntax (ON CONFLICT, RETURNING, CASE), against `Tx`; domain code receives a `Tx` from
`Database.run` and passes it to the store's typed operations (store/usage.py,
store/budgets.py, ...), never calling `execute` or `query` itself. Each engine supplies a
`Database` that runs a function in one transaction and retries it on a transient conflict,
so every transaction function must be safe to run twice (janus-style). Where the engines
need different statements for one operation (the usage upsert's bulk path), the engine's
`Tx` implements that operation (`add_usage`, `insert_rows`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
Row = tuple[Any, ...]


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


class TxStats:
    """Retries and failures of transactions since start, by transaction name (for metrics).

    Only the rare paths count (a retry, a give-up), so committing costs nothing extra.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._retries: Counter[str] = Counter()
        self._failures: Counter[str] = Counter()

    def retried(self, name: str) -> None:
        with self._lock:
            self._retries[name] += 1

    def failed(self, name: str) -> None:
        with self._lock:
            self._failures[name] += 1

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        """(retries, failures) by transaction name."""
        with self._lock:
            return dict(self._retries), dict(self._failures)


class Database(Protocol):
    dialect: str
    stats: TxStats

    def run(self, fn: Callable[[Tx], T], *, name: str) -> T:
        """Run fn in one transaction, committing on return; retried on transient conflicts."""

    #: How many times `run` has raised StoreUnavailable since the engine opened (health reads it).
    unavailable_count: int

    def checkpoint(self) -> bool:
        """Make committed deletions final in the engine's files where it can (SQLite's WAL).

        True when no file the engine controls still holds the bytes of a row deleted before
        the call; False when something (another connection's read transaction) prevented it,
        so the caller tries again later. Raises StoreUnavailable when the store fails.
        """

    def close(self) -> None: ...


class StoreUnavailable(RuntimeError):
    """The store cannot serve now for a reason that passes or that an operator can fix: it
    stayed busy past the retry budget, is unreachable, or cannot write (disk full, I/O
    error, read-only, cannot open its file). Clients retry; no acknowledged data is lost."""
