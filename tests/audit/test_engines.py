"""The audit SQL on both engines: SQLite and PostgreSQL (READ COMMITTED, several replicas)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from threading import Barrier, Thread

import pytest

from chorus.server.domain import audit
from chorus.server.model import config
from chorus.server.model.clock import FakeClock
from chorus.server.root import Chorus
from chorus.server.verifier import verify
from tests._ledger import ledger_entries
from tests._policy import SUITE_TOML, suite_config
from tests.store.postgres_schema import fresh_schema

from .conftest import NOON, WINDOW, open_and_close, release, roster_rows

CHANGED = config.parse(tomllib.loads(SUITE_TOML.replace('min_team_size = 5', 'min_team_size = 4')))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """"" for SQLite in the data directory, else the URL of a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield ""
        return
    with fresh_schema() as url:
        yield url


def test_replicas_starting_together_record_a_new_policy_once(database: str, tmp_path: Path) -> None:
    clock = FakeClock(NOON)
    with ExitStack() as stack:
        first = Chorus(suite_config(), tmp_path, clock=clock, database=database)
        stack.callback(first.close)
        gate = Barrier(3)
        started: list[Chorus] = []

        def start() -> None:
            gate.wait()
            started.append(Chorus(CHANGED, tmp_path, clock=clock, database=database))

        threads = [Thread(target=start) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for replica in started:
            stack.callback(replica.close)
        assert len(started) == 3
        recorded = [json.loads(e.payload)["policy"]["min_team_size"]
                    for e in ledger_entries(first.db) if e.kind == audit.CONFIG_KIND]
        assert recorded == [5, 4]


def test_audit_reads_match_the_verifier_on_each_engine(database: str, tmp_path: Path) -> None:
    chorus = Chorus(suite_config(), tmp_path, clock=FakeClock(NOON), database=database)
    try:
        chorus.import_roster(roster_rows(), actor="test-admin")
        open_and_close(chorus)
        release(chorus, "team-red", "ai.tokens", "sum", "adoption")
        policies = chorus.db.run(lambda tx: audit.list_policies(tx, WINDOW), name="t")
        assert [p.id for p in policies] == [WINDOW]
        budgets, _ = chorus.db.run(lambda tx: audit.budgets(tx, WINDOW), name="t")
        entries = list(ledger_entries(chorus.db, page=2))
        lines = [verify.export_line(e) for e in entries]
        report = verify.verify_lines(lines, chorus.ledger.signer.public_key)
        assert report.ok, report.violations
        assert {(b.window, b.team): (b.cap, b.spent, b.releases) for b in budgets} == {
            k: (t.cap, t.spent, t.releases) for k, t in report.totals.items()}
        assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    finally:
        chorus.close()
