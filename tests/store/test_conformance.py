"""Store conformance: the same domain code gives the same answers on SQLite and PostgreSQL,
including when several replicas (separate `Chorus` instances on one database) race."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from threading import Event

import pytest

from chorus.server import config, lifecycle
from chorus.server.app_context import Chorus
from chorus.server.auth import Role, TokenError
from chorus.server.ingest import Reason
from chorus.server.ledger import entry_hash, read_entries
from chorus.server.privacy.epsilon import Epsilon
from chorus.server.release import BudgetExceeded, Releases, StatisticRequest
from chorus.server.store import migrate, probe_write
from chorus.server.store._schema import MIGRATIONS
from tests._policy import suite_config

from .conftest import WINDOW, Store, batch, race, roster_rows

RED0, RED1, BLUE0 = "user-team-red-0", "user-team-red-1", "user-team-blue-0"


def team_metrics(store: Store, window: str = WINDOW) -> dict[tuple[str, str], tuple[int, int, list[int]]]:
    rows = store.query("SELECT team, metric, total, people, histogram FROM team_metrics WHERE window_id = ?",
                       (window,))
    return {(t, m): (total, people, json.loads(hist)) for t, m, total, people, hist in rows}


def per_person_rows(store: Store, window: str = WINDOW) -> int:
    return sum(store.query(f"SELECT COUNT(*) FROM {table} WHERE window_id = ?", (window,))[0][0]
               for table in ("usage", "window_keys"))


def totals_of(store: Store, metric: str) -> list[tuple[int]]:
    """Every person's running total of `metric` (their usage row's slot for it)."""
    return store.query(f"SELECT t{suite_config().policy.slot(metric)} FROM usage ORDER BY pseudonym")


# --- migrations -------------------------------------------------------------------------

def test_migrations_applied_concurrently_run_once(store: Store) -> None:
    # Engines opened one after the other (SQLite cannot switch a new file to WAL from two
    # connections at once), then migrated at the same moment, as replicas starting together.
    databases = [store.unmigrated_database() for _ in range(4)]
    try:
        versions = race([lambda db=db: migrate(db) for db in databases])
        applied = databases[0].run(lambda tx: tx.query("SELECT version FROM schema_migrations"), name="t")
        ledger_heads = databases[0].run(lambda tx: tx.query("SELECT COUNT(*) FROM ledger_head"), name="t")
    finally:
        for db in databases:
            db.close()
    assert versions == [MIGRATIONS[-1][0]] * 4
    assert sorted(v for v, in applied) == [number for number, _, _ in MIGRATIONS]
    assert ledger_heads == [(1,)]  # the seed rows were inserted once, not once per replica


# --- ingest -----------------------------------------------------------------------------

def test_batch_id_counts_exactly_once(store: Store, chorus: Chorus) -> None:
    first = chorus.ingestor.report(batch((RED0, "ai.tokens", 100), batch_id="b-1"))
    again = store.chorus().ingestor.report(batch((RED0, "ai.tokens", 100), batch_id="b-1"))
    assert (first.accepted, first.duplicate) == (1, False)
    assert (again.accepted, again.duplicate) == (0, True)
    assert totals_of(store, "ai.tokens") == [(100,)]


def test_replicas_racing_one_batch_id_count_it_once(store: Store, chorus: Chorus) -> None:
    replicas = [chorus, store.chorus(), store.chorus()]
    for round_ in range(10):
        outcomes = race([lambda r=r, i=round_: r.ingestor.report(batch((RED0, "ai.requests", 1),
                                                                      batch_id=f"race-{i}"))
                         for r in replicas for _ in range(2)])
        assert sorted(o.duplicate for o in outcomes) == [False] + [True] * 5, f"round {round_}"
    assert totals_of(store, "ai.requests") == [(10,)]


def test_concurrent_batches_add_up_then_clamp_at_the_bound(store: Store, chorus: Chorus) -> None:
    replicas = [chorus, store.chorus()]

    def feed(replica: Chorus, value: int) -> None:
        for _ in range(20):
            replica.ingestor.report(batch((RED0, "ai.requests", value), (RED1, "ai.requests", value)))

    race([lambda r=r: feed(r, 7) for r in replicas for _ in range(3)])
    assert totals_of(store, "ai.requests") == [(840,), (840,)]
    race([lambda r=r: feed(r, 30) for r in replicas for _ in range(2)])  # 840 + 2400 > bound 2000
    assert totals_of(store, "ai.requests") == [(2000,), (2000,)]


def test_large_batches_add_up_and_clamp_like_small_ones(store: Store, chorus: Chorus) -> None:
    # Big enough for PostgreSQL's COPY bulk path (store/postgres.py) in the roster import and
    # the usage upsert; twice, then over the bound.
    people = [(f"user-bulk-{i:03d}", f"team-{i % 3}") for i in range(150)]
    chorus.import_roster(people, actor="test")
    for value in (700, 700, 700):
        out = store.chorus().ingestor.report(batch(*((u, m, value) for u, _ in people
                                                     for m in ("ai.requests", "ai.tasks_completed"))))
        assert out.accepted == 300
    totals = Counter(t for row in (totals_of(store, "ai.requests"), totals_of(store, "ai.tasks_completed"))
                     for t, in row)
    assert totals == {2000: 150, 100: 150}  # 2100 clamped to 2000; tasks bound 100 on every write
    chorus.close_window(WINDOW, actor="test")
    assert team_metrics(store)[("team-0", "ai.requests")][:2] == (50 * 2000, 50)
    assert store.query("SELECT COUNT(*) FROM roster") == [(150,)]


def test_a_person_counts_for_the_team_of_their_first_contribution(store: Store, chorus: Chorus) -> None:
    chorus.ingestor.report(batch((RED0, "ai.tasks_completed", 4)))
    moved = [(user, "team-blue" if user == RED0 else team) for user, team in roster_rows()]
    store.chorus().import_roster(moved, actor="test")
    out = store.chorus().ingestor.report(batch((RED0, "ai.tasks_completed", 5)))
    assert out.accepted == 1
    chorus.close_window(WINDOW, actor="test")
    stats = team_metrics(store)
    assert stats[("team-red", "ai.tasks_completed")][:2] == (9, 1)
    assert stats[("team-blue", "ai.tasks_completed")][:2] == (0, 0)


def test_window_policy_is_frozen_by_the_replica_that_opens_it(store: Store, chorus: Chorus) -> None:
    chorus.ingestor.report(batch((RED0, "ai.requests", 1500)))
    base = suite_config()
    tighter = replace(base, policy=replace(base.policy, metrics=tuple(
        replace(m, max_per_user=10) for m in base.policy.metrics)))
    out = store.chorus(tighter).ingestor.report(batch((RED0, "ai.requests", 400)))
    assert out.clamped == 0  # the window's frozen bound (2000) applies, not the new config's 10
    assert totals_of(store, "ai.requests") == [(1900,)]
    (policy_json,), = store.query("SELECT policy FROM windows WHERE id = ?", (WINDOW,))[0:1]
    assert config.Policy.from_json(json.loads(policy_json)) == base.policy


def test_unknown_user_changes_no_usage(store: Store, chorus: Chorus) -> None:
    out = chorus.ingestor.report(batch(("nobody", "ai.tokens", 5)))
    assert [r.reason for r in out.rejections] == [Reason.UNKNOWN_USER]
    assert store.query("SELECT COUNT(*) FROM usage") == [(0,)]


# --- close ------------------------------------------------------------------------------

def test_close_folds_into_team_statistics_and_shreds(store: Store, chorus: Chorus) -> None:
    chorus.ingestor.report(batch((RED0, "ai.tokens", 5_000), (RED1, "ai.tokens", 60_000),
                                 (RED1, "ai.requests", 10**9), (BLUE0, "ai.tokens", 200_000)))
    assert per_person_rows(store) == 3 + 1  # one usage row per person + the key
    result = store.chorus().close_window(WINDOW, actor="test")
    assert (result.closed_now, result.rows_folded, result.window.state) == (True, 3, lifecycle.CLOSED)
    stats = team_metrics(store)
    assert stats[("team-red", "ai.tokens")] == (65_000, 2, [1, 0, 1, 0, 0])
    assert stats[("team-red", "ai.requests")] == (2_000, 1, [0, 0, 0, 0, 1])
    assert stats[("team-blue", "ai.tokens")] == (200_000, 1, [0, 0, 0, 0, 1])
    assert stats[("team-blue", "ai.requests")] == (0, 0, [0, 0, 0, 0, 0])
    assert sorted(store.query("SELECT team, roster_size, active FROM team_windows")) == [
        ("team-blue", 5, 1), ("team-red", 6, 2)]
    assert store.query("SELECT DISTINCT cap_micros, spent_micros FROM budgets") == [(1_000_000, 0)]
    assert per_person_rows(store) == 0
    late = chorus.ingestor.report(batch((RED0, "ai.tokens", 1)))
    assert [r.reason for r in late.rejections] == [Reason.LATE]
    assert per_person_rows(store) == 0


def test_concurrent_closers_fold_once(store: Store, chorus: Chorus) -> None:
    chorus.ingestor.report(batch((RED0, "ai.tokens", 10), (BLUE0, "ai.tokens", 20)))
    replicas = [chorus, store.chorus(), store.chorus(), store.chorus()]
    store.clock.advance(timedelta(days=1, hours=3))  # past end plus the 2 h grace
    results = race([r.closer.tick for r in replicas[:2]] +
                   [lambda r=r: [r.close_window(WINDOW, actor="admin")] for r in replicas[2:]])
    closed_now = [c for closes in results for c in closes if c.closed_now and c.window.id == WINDOW]
    assert len(closed_now) == 1
    assert store.query("SELECT COUNT(*) FROM ledger WHERE kind = 'window_close'") == [(1,)]
    assert team_metrics(store)[("team-red", "ai.tokens")][:2] == (10, 1)
    assert store.query("SELECT COUNT(*) FROM team_metrics WHERE window_id = ?", (WINDOW,)) == [(8,)]
    assert per_person_rows(store) == 0


def test_contributions_racing_a_close_are_folded_or_rejected_never_lost(store: Store, chorus: Chorus) -> None:
    users = [u for u, _ in roster_rows()]
    replicas = [chorus, store.chorus(), store.chorus()]
    accepted: list[int] = []
    midway = Event()

    def feed(replica: Chorus, offset: int) -> int:
        """Report until the close has rejected a few batches; return how many were rejected."""
        late = 0
        for i in range(1000):
            out = replica.ingestor.report(batch((users[(offset + i) % len(users)], "ai.tasks_completed", 1)))
            accepted.append(out.accepted)
            late += len(out.rejections)
            if len(accepted) >= 30:
                midway.set()
            if late >= 5:
                break
            time.sleep(0.002)  # room for the closer: SQLite's busy wait would starve it otherwise
        return late

    def close_midway() -> int:
        midway.wait()
        replicas[2].close_window(WINDOW, actor="test")
        return 0

    late = race([lambda: feed(replicas[0], 0), lambda: feed(replicas[1], 5), close_midway])
    folded = sum(total for (_, metric), (total, _, _) in team_metrics(store).items()
                 if metric == "ai.tasks_completed")
    assert late[:2] == [5, 5]  # both feeders ran into the close
    assert folded == sum(accepted) >= 30
    assert per_person_rows(store) == 0


# --- ledger, tokens, roster, budget -----------------------------------------------------

def test_ledger_stays_one_valid_chain_under_concurrent_appends(store: Store, chorus: Chorus) -> None:
    replicas = [chorus, store.chorus(), store.chorus()]

    def append(replica: Chorus, worker: int) -> None:
        for i in range(15):
            replica.db.run(lambda tx, i=i: replica.ledger.append(tx, "test", {"worker": worker, "i": i},
                                                                store.clock.now()), name="test_append")

    race([lambda r=r, w=w: append(r, w) for w, r in enumerate(replicas * 2)])
    entries = chorus.db.run(lambda tx: read_entries(tx, 1, 10_000), name="test_read")
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert sum(e.kind == "test" for e in entries) == 6 * 15
    prev = "0" * 64
    for e in entries:
        assert e.prev_hash == prev
        assert e.hash == entry_hash(e.prev_hash, e.seq, e.at, e.kind, e.payload)
        chorus.ledger.signer.public_key.verify(bytes.fromhex(e.signature), bytes.fromhex(e.hash))
        prev = e.hash
    assert store.query("SELECT seq, hash FROM ledger_head") == [(entries[-1].seq, entries[-1].hash)]


def test_tokens_create_authenticate_revoke(store: Store, chorus: Chorus) -> None:
    secret, _ = chorus.tokens.create(Role.INGEST, "cursor-prod", store.clock.now(), actor="test")
    other = store.chorus()
    who = other.tokens.authenticate(secret)
    assert who is not None and (who.name, who.role) == ("cursor-prod", Role.INGEST)
    assert other.tokens.authenticate(secret + "x") is None
    with pytest.raises(TokenError, match="already exists"):
        other.tokens.create(Role.ADMIN, "cursor-prod", store.clock.now(), actor="test")
    revoked = other.tokens.revoke("cursor-prod", store.clock.now(), actor="test")
    assert revoked.revoked is not None
    assert chorus.tokens.authenticate(secret) is None
    assert [t.name for t in chorus.tokens.list()] == ["cursor-prod"]
    kinds = [k for k, in store.query("SELECT kind FROM ledger WHERE kind LIKE 'token_%' ORDER BY seq")]
    assert kinds == ["token_create", "token_revoke"]
    assert not store.query("SELECT 1 FROM ledger WHERE payload LIKE ?", (f"%{secret}%",))


def test_roster_import_replaces_the_roster(store: Store, chorus: Chorus) -> None:
    smaller = roster_rows({"team-red": 3, "team-green": 7})
    result = store.chorus().import_roster(smaller, actor="test")
    assert result.team_sizes == {"team-green": 7, "team-red": 3}
    assert sorted(store.query("SELECT team, COUNT(*) FROM roster GROUP BY team")) == [
        ("team-green", 7), ("team-red", 3)]
    # The first replica's cached roster notices the new version.
    out = chorus.ingestor.report(batch((BLUE0, "ai.tokens", 1), ("user-team-green-6", "ai.tokens", 1)))
    assert [r.reason for r in out.rejections] == [Reason.UNKNOWN_USER]
    (payload,), = store.query("SELECT payload FROM ledger WHERE kind = 'roster_import' ORDER BY seq DESC")[:1]
    assert json.loads(payload)["roster_sha256"] == result.roster_hash


def test_concurrent_roster_imports_each_apply_whole(store: Store, chorus: Chorus) -> None:
    rosters = [roster_rows({"team-red": 4 + i, "team-blue": 3}) for i in range(4)]
    replicas = [store.chorus() for _ in rosters]
    results = race([lambda r=r, rows=rows: r.import_roster(rows, actor="test")
                    for r, rows in zip(replicas, rosters, strict=True)])
    final = sorted(store.query("SELECT user_id, team FROM roster"))
    assert final in [sorted(rows) for rows in rosters]
    assert {r.people for r in results} == {len(rows) for rows in rosters}


def test_concurrent_releases_never_exceed_the_budget_and_charge_each_statistic_once(
        store: Store, chorus: Chorus) -> None:
    chorus.ingestor.report(batch(*((f"user-team-red-{i}", m.name, 10 + i)
                                   for i in range(6) for m in chorus.config.policy.metrics)))
    chorus.close_window(WINDOW, actor="test")
    replicas = [chorus, store.chorus(), store.chorus()]
    # 4 metrics x 3 statistics = 12 distinct releases at 0.1 each, each asked for twice;
    # the cap of 1 pays for exactly 10 of them.
    stats = ("sum", "count", "histogram")
    asks = [(m.name, stat) for m in chorus.config.policy.metrics for stat in stats] * 2

    def ask(replica: Chorus, metric: str, stat: str) -> dict[tuple[str, str], str] | None:
        releases = Releases(replica.db, replica.ledger, replica.clock, replica.config.policy)
        try:
            result = releases.release(WINDOW, ["team-red"], [metric],
                                      [StatisticRequest(stat, Epsilon.parse("0.1"))], requester="test")
        except BudgetExceeded:
            return None
        return {(e.metric, e.statistic): e.release_id for e in result.teams[0].estimates}

    answers = race([lambda i=i, a=a: ask(replicas[i % 3], *a) for i, a in enumerate(asks)])
    stored = {(m, s): rid for rid, m, s in store.query(
        "SELECT release_id, metric, statistic FROM releases WHERE team = 'team-red'")}
    assert len(stored) == 10
    for answer in answers:  # every answer is the one stored release of its statistic
        assert answer is None or all(stored[key] == rid for key, rid in answer.items())
    assert store.query("SELECT spent_micros, cap_micros, releases FROM budgets WHERE team = 'team-red'") == [
        (1_000_000, 1_000_000, 10)]
    assert store.query("SELECT COUNT(*) FROM ledger WHERE kind = 'release'") == [(10,)]


# --- shreds and the health probe ---------------------------------------------------------

def test_a_close_without_readers_leaves_no_pending_shred(store: Store, chorus: Chorus) -> None:
    """SQLite: the checkpoint succeeds at once. PostgreSQL: nothing Chorus could do would
    complete it (docs/privacy.md), so it is never reported pending."""
    chorus.ingestor.report(batch((RED0, "ai.tokens", 10)))
    chorus.close_window(WINDOW, actor="test")
    assert chorus.shredder.pending() == []
    assert store.query("SELECT COUNT(*) FROM pending_shreds") == [(0,)]


def test_the_health_probe_writes_and_leaves_no_state(store: Store, chorus: Chorus) -> None:
    probe_write(chorus.db)
    probe_write(store.chorus().db)  # replicas probing the same row
    assert store.query("SELECT COUNT(*) FROM store_probe") == [(0,)]
