"""Window lifecycle: frozen policy, fold at close, crypto-shredding, the closer, batch pruning."""

from __future__ import annotations

import json
from datetime import timedelta

from chorus.server.domain import windows as window_store
from chorus.server.domain.ingest import Reason
from chorus.server.model.clock import FakeClock
from chorus.server.root import Chorus

from .conftest import NOON, batch


def q(chorus: Chorus, sql: str, params=()):
    return chorus.db.run(lambda tx: tx.query(sql, params), name="test")


def test_close_folds_team_statistics_and_shreds_per_person_rows(chorus: Chorus) -> None:
    chorus.ingestor.report(batch(
        ("user-team-red-0", "ai.tokens", 5_000), ("user-team-red-1", "ai.tokens", 60_000),
        ("user-team-red-2", "ai.tokens", 10**9),  # clamped to 200000
        ("user-team-red-2", "ai.requests", 0),
        ("user-team-blue-0", "ai.requests", 700)))
    result = chorus.close_window("2026-11-25", actor="test")
    assert result.closed_now

    metrics = {(t, m): (total, people, json.loads(h)) for t, m, total, people, h in
               q(chorus, "SELECT team, metric, total, people, histogram FROM team_metrics")}
    # edges for ai.tokens: [10000, 50000, 100000, 150000] -> 5 buckets
    assert metrics[("team-red", "ai.tokens")] == (265_000, 3, [1, 0, 1, 0, 1])
    assert metrics[("team-red", "ai.requests")] == (0, 0, [0, 0, 0, 0, 0])  # a zero total is not activity
    assert metrics[("team-blue", "ai.requests")] == (700, 1, [0, 0, 0, 1, 0])
    assert metrics[("team-tiny", "ai.tokens")] == (0, 0, [0, 0, 0, 0, 0])
    teams = dict((t, (size, active)) for t, size, active in
                 q(chorus, "SELECT team, roster_size, active FROM team_windows"))
    assert teams == {"team-red": (6, 3), "team-blue": (5, 1), "team-tiny": (2, 0)}
    assert q(chorus, "SELECT COUNT(*) FROM usage") == [(0,)]
    assert q(chorus, "SELECT COUNT(*) FROM window_keys") == [(0,)]
    caps = q(chorus, "SELECT team, cap_micros, spent_micros FROM budgets ORDER BY team")
    assert caps == [("team-blue", 1_000_000, 0), ("team-red", 1_000_000, 0), ("team-tiny", 1_000_000, 0)]
    kinds = [k for (k,) in q(chorus, "SELECT kind FROM ledger ORDER BY seq")]
    assert kinds == ["config", "roster_import", "window_open", "window_close"]


def test_closing_twice_folds_once(chorus: Chorus) -> None:
    chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 10)))
    first = chorus.close_window("2026-11-25", actor="test")
    second = chorus.close_window("2026-11-25", actor="test")
    assert first.closed_now and not second.closed_now
    assert q(chorus, "SELECT COUNT(*) FROM team_windows") == [(3,)]


def test_contributions_for_a_closed_window_are_late(chorus: Chorus) -> None:
    chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 10), batch_id="early"))
    chorus.close_window("2026-11-25", actor="test")
    out = chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 10)))
    assert [r.reason for r in out.rejections] == [Reason.LATE]
    assert "2026-11-25" in out.rejections[0].message


def test_closer_opens_current_window_and_closes_after_grace(chorus: Chorus, clock: FakeClock) -> None:
    assert chorus.closer.tick() == []
    assert [w.id for w in chorus.db.run(lambda tx: window_store.list_windows(tx), name="t")] == ["2026-11-25"]
    chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 10)))
    clock.set(NOON.replace(hour=0) + timedelta(days=1, hours=1, minutes=59))
    assert chorus.closer.tick() == []  # inside grace
    clock.advance(timedelta(minutes=1))
    closed = chorus.closer.tick()
    assert [c.window.id for c in closed] == ["2026-11-25"]
    states = {w.id: w.state for w in chorus.db.run(lambda tx: window_store.list_windows(tx), name="t")}
    assert states == {"2026-11-25": "closed", "2026-11-26": "open"}


def test_pruned_batch_id_cannot_count_twice(chorus: Chorus, clock: FakeClock) -> None:
    """A batch retried after its window closed (and its id was pruned) is rejected as late."""
    chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 10), batch_id="retry-me"))
    clock.advance(timedelta(days=1))
    chorus.closer.tick()
    clock.advance(timedelta(days=1))
    chorus.closer.tick()
    assert q(chorus, "SELECT COUNT(*) FROM batches WHERE batch_id = 'retry-me'") == [(0,)]
    out = chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 10, NOON), batch_id="retry-me"))
    assert out.accepted == 0 and [r.reason for r in out.rejections] == [Reason.LATE]
    (total,), = q(chorus, "SELECT total FROM team_metrics WHERE team = 'team-red' AND metric = 'ai.tokens' "
                          "AND window_id = '2026-11-25'")
    assert total == 10


def test_window_records_frozen_policy_in_ledger(chorus: Chorus) -> None:
    chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 10)))
    (payload,), = q(chorus, "SELECT payload FROM ledger WHERE kind = 'window_open'")
    (policy,), = q(chorus, "SELECT policy FROM windows")
    assert json.loads(payload)["policy"] == json.loads(policy)


def test_exact_team_statistics_are_purged_after_retention(chorus: Chorus, clock: FakeClock) -> None:
    chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 10)))
    chorus.close_window("2026-11-25", actor="test")
    retention = chorus.config.policy.retention_windows  # days, under the suite's daily windows
    clock.set(NOON.replace(hour=0) + timedelta(days=1 + retention) - timedelta(seconds=1))
    chorus.closer.tick()
    assert q(chorus, "SELECT COUNT(*) FROM team_metrics WHERE window_id = '2026-11-25'") != [(0,)]
    clock.advance(timedelta(seconds=1))
    chorus.closer.tick()
    chorus.closer.tick()  # a second pass purges nothing more
    assert q(chorus, "SELECT COUNT(*) FROM team_metrics WHERE window_id = '2026-11-25'") == [(0,)]
    assert q(chorus, "SELECT COUNT(*) FROM team_windows WHERE window_id = '2026-11-25'") == [(0,)]
    assert q(chorus, "SELECT COUNT(*) FROM budgets WHERE window_id = '2026-11-25'") == [(3,)]  # kept for audit
    purges = [json.loads(p) for (p,) in q(chorus, "SELECT payload FROM ledger WHERE kind = 'window_purge'")]
    assert [p["window"] for p in purges] == ["2026-11-25"]
