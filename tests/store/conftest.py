"""The conformance suite's one fixture: a store on SQLite or on PostgreSQL, same tests for both.

`store.chorus()` opens another `Chorus` on the same database and data directory, as a
second replica would: its own connection(s), its own in-memory caches, the shared ledger key.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from threading import Barrier, Thread
from typing import Any, TypeVar

import pytest

from chorus.server.domain import ingest
from chorus.server.model.clock import FakeClock
from chorus.server.model.config import Config
from chorus.server.root import Chorus
from chorus.server.store import SQLITE_FILE, Database
from chorus.server.store.postgres import PostgresDatabase
from chorus.server.store.sqlite import SqliteDatabase
from tests._policy import suite_config

from .postgres_schema import fresh_schema

T = TypeVar("T")
NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
WINDOW = "2026-11-25"
TEAMS = {"team-red": 6, "team-blue": 5}


def roster_rows(teams: dict[str, int] = TEAMS) -> list[tuple[str, str]]:
    return [(f"user-{team}-{i}", team) for team, size in teams.items() for i in range(size)]


def batch(*contributions: tuple[str, str, int], batch_id: str | None = None,
          at: datetime = NOON) -> ingest.Batch:
    """A batch of (user, metric, value) at `at`, with a fresh id unless given."""
    return ingest.Batch(batch_id=batch_id or uuid.uuid4().hex, source="conformance", source_version="1",
                        dropped=0,
                        contributions=[ingest.Contribution(u, m, v, at) for u, m, v in contributions])


@dataclass
class Store:
    """One database (SQLite file or PostgreSQL schema) and the replicas opened on it."""

    engine: str
    database: str  # "" for SQLite in data_dir, else a postgresql:// URL
    data_dir: Path
    clock: FakeClock
    opened: list[Chorus] = field(default_factory=list)

    def chorus(self, cfg: Config | None = None) -> Chorus:
        instance = Chorus(cfg or suite_config(), self.data_dir, clock=self.clock, database=self.database)
        self.opened.append(instance)
        return instance

    def unmigrated_database(self) -> Database:
        """The bare engine on this store, without running migrations."""
        if self.engine == "sqlite":
            self.data_dir.mkdir(parents=True, exist_ok=True)
            return SqliteDatabase(self.data_dir / SQLITE_FILE)
        return PostgresDatabase(self.database)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read through a replica's store (opening one if none is open)."""
        replica = self.opened[0] if self.opened else self.chorus()
        return replica.db.run(lambda tx: tx.query(sql, params), name="test_read")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty, not yet migrated database of each engine."""
    clock = FakeClock(NOON)
    if request.param == "sqlite":
        created = Store("sqlite", "", tmp_path / "data", clock)
        yield created
        _close(created)
        return
    with fresh_schema() as url:
        created = Store("postgresql", url, tmp_path / "data", clock)
        yield created
        _close(created)


def _close(store: Store) -> None:
    for instance in store.opened:
        instance.close()


@pytest.fixture
def chorus(store: Store) -> Chorus:
    """The first replica, with the roster imported."""
    instance = store.chorus()
    instance.import_roster(roster_rows(), actor="test")
    return instance


def race(workers: list[Callable[[], T]]) -> list[T]:
    """Run the callables on threads released together; their results in order (errors re-raised)."""
    gate = Barrier(len(workers))
    results: list[Any] = [None] * len(workers)
    failures: list[BaseException] = []

    def run(i: int) -> None:
        gate.wait()
        try:
            results[i] = workers[i]()
        except BaseException as exc:
            failures.append(exc)

    threads = [Thread(target=run, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return results
