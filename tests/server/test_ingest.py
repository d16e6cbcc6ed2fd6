"""Ingest rules against a real SQLite store: bounds, pseudonyms, exactly-once, rejections."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from datetime import timedelta

import pytest

from chorus.server.domain import ingest
from chorus.server.domain.ingest import Reason
from chorus.server.model import config
from chorus.server.model.clock import FakeClock
from chorus.server.root import Chorus
from tests._policy import SUITE_TOML, suite_config
from tests._usage import person_team, person_totals

from .conftest import NOON, batch

TOKENS_BOUND = 200_000


def stored_total(chorus: Chorus, window: str, user: str, metric: str) -> int | None:
    totals = chorus.db.run(lambda tx: person_totals(tx.query, window, [user]), name="test")
    return totals.get((user, metric))


def table_rows(chorus: Chorus, table: str) -> int:
    return chorus.db.run(lambda tx: tx.query(f"SELECT COUNT(*) FROM {table}")[0][0], name="test")


def test_accepted_contributions_add_up(chorus: Chorus) -> None:
    out = chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 100), ("user-team-red-0", "ai.tokens", 50),
                                       ("user-team-red-1", "ai.requests", 3)))
    assert (out.accepted, out.duplicate, out.rejections) == (3, False, [])
    chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 25)))
    assert stored_total(chorus, "2026-11-25", "user-team-red-0", "ai.tokens") == 175
    assert stored_total(chorus, "2026-11-25", "user-team-red-1", "ai.requests") == 3


def test_retried_batch_counts_exactly_once(chorus: Chorus) -> None:
    first = chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 100), batch_id="b-1"))
    again = chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 100), batch_id="b-1"))
    assert first.accepted == 1 and not first.duplicate
    assert again.accepted == 0 and again.duplicate
    assert stored_total(chorus, "2026-11-25", "user-team-red-0", "ai.tokens") == 100


def test_running_total_is_clamped_to_the_bound(chorus: Chorus) -> None:
    for _ in range(5):
        chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 90_000)))
    out = chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 10**15)))
    assert out.clamped == 1
    assert stored_total(chorus, "2026-11-25", "user-team-red-0", "ai.tokens") == TOKENS_BOUND


def test_bad_contributions_are_rejected_and_the_rest_applied(chorus: Chorus, clock: FakeClock) -> None:
    out = chorus.ingestor.report(batch(
        ("user-team-red-0", "ai.tokens", 10),
        ("user-nobody", "ai.tokens", 10),
        ("user-team-red-0", "ai.unknown", 10),
        ("user-team-red-0", "ai.tokens", -1),
        ("user-team-red-0", "ai.tokens", 10, NOON + timedelta(minutes=6)),
        ("user-team-red-0", "ai.tokens", 10, NOON - timedelta(days=2)),
        ("user-team-red-0", "ai.tokens", 5, NOON + timedelta(minutes=4)),
    ))
    assert out.accepted == 2
    assert [(r.index, r.reason) for r in out.rejections] == [
        (1, Reason.UNKNOWN_USER), (2, Reason.UNKNOWN_METRIC), (3, Reason.NEGATIVE_VALUE),
        (4, Reason.FUTURE), (5, Reason.LATE)]
    assert all("user-" not in r.message for r in out.rejections)
    assert stored_total(chorus, "2026-11-25", "user-team-red-0", "ai.tokens") == 15


def test_grace_period_admits_yesterday_until_it_passes(chorus: Chorus, clock: FakeClock) -> None:
    yesterday = NOON - timedelta(days=1)
    clock.set(NOON.replace(hour=1))  # 1h after midnight, inside the default 2h grace
    assert chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 7, yesterday))).accepted == 1
    clock.set(NOON.replace(hour=2))  # end + grace reached
    out = chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 7, yesterday)))
    assert [r.reason for r in out.rejections] == [Reason.LATE]


def test_no_usage_table_holds_a_raw_user_id(chorus: Chorus) -> None:
    chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 10), ("user-team-blue-1", "ai.requests", 2)))
    dump = chorus.db.run(lambda tx: repr(tx.query("SELECT * FROM usage")
                                         + tx.query("SELECT * FROM batches")), name="test")
    assert "user-team" not in dump
    assert table_rows(chorus, "usage") == 2


def test_team_is_fixed_at_first_contribution_in_the_window(chorus: Chorus) -> None:
    chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 10)))
    moved = [(u, "team-blue" if u == "user-team-red-0" else t) for u, t in
             chorus.db.run(lambda tx: tx.query("SELECT user_id, team FROM roster"), name="test")]
    chorus.import_roster(moved, actor="test")
    chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 10)))
    team = chorus.db.run(lambda tx: person_team(tx.query, "2026-11-25", "user-team-red-0"), name="test")
    assert team == "team-red"
    assert table_rows(chorus, "usage") == 1


def test_policy_is_frozen_when_the_window_opens(tmp_path, clock: FakeClock) -> None:
    data = tmp_path / "data"
    first = Chorus(suite_config(), data, clock=clock)
    first.import_roster([("user-a", "t")], actor="test")
    first.ingestor.report(batch(("user-a", "ai.requests", 1)))
    first.close()
    text = SUITE_TOML.replace(
        "max_per_user = 2000\nhistogram_edges = [50, 200, 500, 1000]", "max_per_user = 5\nhistogram_edges = [1, 2]")
    changed = config.parse(tomllib.loads(text))
    second = Chorus(changed, data, clock=clock)
    try:
        second.ingestor.report(batch(("user-a", "ai.requests", 100)))
        assert stored_total(second, "2026-11-25", "user-a", "ai.requests") == 101  # old bound 2000 applies
        clock.advance(timedelta(days=1))
        second.ingestor.report(batch(("user-a", "ai.requests", 100), at=clock.now()))
        assert stored_total(second, "2026-11-26", "user-a", "ai.requests") == 5  # new window, new bound
    finally:
        second.close()


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda b: replace(b, **{"batch_id": ""}), "batch_id is required"),
    (lambda b: replace(b, **{"batch_id": "x" * 300}), "batch_id is 300 characters; the limit is 256"),
    (lambda b: replace(b, **{"contributions": []}), "contributions is empty"),
    (lambda b: replace(b, **{"contributions": b.contributions * 10_001}),
     "batch has 10001 contributions; the limit is 10000"),
    (lambda b: replace(b, **{"contributions": [
        ingest.Contribution("", "ai.tokens", 1, NOON)]}), "contributions[0].user is empty"),
    (lambda b: replace(b, **{"contributions": [
        ingest.Contribution("u", "m" * 257, 1, NOON)]}), "contributions[0].metric is 257 characters"),
])
def test_malformed_batches_are_refused_whole(mutate, message) -> None:
    good = batch(("user-a", "ai.tokens", 1))
    with pytest.raises(ingest.InvalidBatch, match=message.replace("[", r"\[").replace("]", r"\]")):
        ingest.validate(mutate(good), config.Limits())



def test_a_roster_import_between_batches_applies_to_the_next_batch(chorus: Chorus) -> None:
    """Batches are planned from the roster last seen; a newer roster in the store wins."""
    assert chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 1))).accepted == 1
    rows = chorus.db.run(lambda tx: tx.query("SELECT user_id, team FROM roster"), name="test")
    chorus.import_roster([*rows, ("user-newcomer", "team-red")], actor="test")
    out = chorus.ingestor.report(batch(("user-newcomer", "ai.tokens", 5)))
    assert (out.accepted, out.rejections) == (1, [])


def test_a_window_closed_between_batches_rejects_the_next_one_as_late(chorus: Chorus) -> None:
    assert chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 1))).accepted == 1
    chorus.close_window("2026-11-25", actor="test")  # the ingestor still remembers it open
    out = chorus.ingestor.report(batch(("user-team-red-0", "ai.tokens", 1)))
    assert [r.reason for r in out.rejections] == [Reason.LATE]
    assert table_rows(chorus, "usage") == 0


def _restarted_with(tmp_path, clock: FakeClock, old: str, new: str) -> Chorus:
    """A server over the same data directory whose config changed `old` into `new`."""
    changed = config.parse(tomllib.loads(SUITE_TOML.replace(old, new)))
    assert changed != suite_config()
    return Chorus(changed, tmp_path / "data", clock=clock)


def test_an_open_window_keeps_its_frozen_grace_after_a_config_change(tmp_path, clock: FakeClock) -> None:
    first = _restarted_with(tmp_path, clock, 'grace = "2h"', 'grace = "24h"')
    first.import_roster([("user-a", "t")], actor="test")
    first.ingestor.report(batch(("user-a", "ai.requests", 1)))  # opens 2026-11-25 with 24 h grace
    first.close()
    second = Chorus(suite_config(), tmp_path / "data", clock=clock)  # 2 h grace
    try:
        clock.set(NOON.replace(hour=5) + timedelta(days=1))  # 5 h after the window's end
        out = second.ingestor.report(batch(("user-a", "ai.requests", 1, NOON), at=NOON))
        assert (out.accepted, out.rejections) == (1, [])
        assert stored_total(second, "2026-11-25", "user-a", "ai.requests") == 2
    finally:
        second.close()


def test_a_window_length_change_waits_for_a_boundary(tmp_path, clock: FakeClock) -> None:
    first = Chorus(suite_config(), tmp_path / "data", clock=clock)  # daily windows
    first.import_roster([("user-a", "t")], actor="test")
    first.ingestor.report(batch(("user-a", "ai.requests", 1)))  # Wednesday 2026-11-25
    first.close()
    weekly = _restarted_with(tmp_path, clock, 'length = "day"', 'length = "week"')
    try:
        thursday = NOON + timedelta(days=1)
        clock.set(thursday)
        assert weekly.ingestor.report(batch(("user-a", "ai.requests", 1, thursday), at=thursday)).accepted == 1
        monday = NOON + timedelta(days=5)
        clock.set(monday)
        assert weekly.ingestor.report(batch(("user-a", "ai.requests", 1, monday), at=monday)).accepted == 1
        ids = [w for (w,) in weekly.db.run(lambda tx: tx.query("SELECT id FROM windows ORDER BY start_at"),
                                           name="t")]
        assert ids == ["2026-11-25", "2026-11-26", "2026-W49"]  # days until the week boundary, then weeks
    finally:
        weekly.close()


def test_grouped_ingest_answers_contribution_by_contribution(chorus: Chorus) -> None:
    """Contributions are grouped by (event time, user) in one pass (ingest.Grouped), yet every
    answer is that of a pass in index order: rejections listed by index whatever their group,
    a person's contributions at several times of one window summed into one row, the running
    total clamped, and `clamped` counting each accepted value over its bound."""
    later = NOON + timedelta(minutes=1)
    out = chorus.ingestor.report(batch(
        ("user-team-red-1", "ai.requests", 1500),          # 0
        ("user-team-red-0", "ai.tokens", 10, later),       # 1
        ("user-team-red-1", "ai.unknown", 1),              # 2 rejected
        ("user-nobody", "ai.tokens", -5),                  # 3 rejected: negative before unknown user
        ("user-team-red-0", "ai.tokens", 20),              # 4
        ("user-team-red-1", "ai.requests", 2500, later),   # 5 clamped (over the bound of 2000)
        ("user-nobody", "ai.tokens", 5),                   # 6 rejected
        ("user-team-red-0", "ai.tokens", -1, later),       # 7 rejected
        ("user-team-red-1", "ai.requests", 1),             # 8 (the total stays at the bound)
    ))
    assert [(r.index, r.reason) for r in out.rejections] == [
        (2, Reason.UNKNOWN_METRIC), (3, Reason.NEGATIVE_VALUE), (6, Reason.UNKNOWN_USER),
        (7, Reason.NEGATIVE_VALUE)]
    assert (out.accepted, out.clamped) == (5, 1)
    assert stored_total(chorus, "2026-11-25", "user-team-red-0", "ai.tokens") == 30
    assert stored_total(chorus, "2026-11-25", "user-team-red-1", "ai.requests") == 2000
    assert table_rows(chorus, "usage") == 2
