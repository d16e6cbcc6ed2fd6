"""OTLP state on both engines: exactly-once under racing replicas, nothing carried over a close."""

from __future__ import annotations

from datetime import timedelta

from tests._policy import otlp_config
from tests.otlp._requests import CUMULATIVE, point, request, sum_metric

from .conftest import NOON, WINDOW, Store, race, roster_rows

RED0 = "user-team-red-0"
NS = 10**9


def _ns(seconds_after_noon: int) -> int:
    return (int(NOON.timestamp()) + seconds_after_noon) * NS


def _total(store: Store, window: str = WINDOW) -> list[tuple]:
    return store.query("SELECT t1 FROM usage WHERE window_id = ?", (window,))  # t1: ai.requests


def test_replicas_racing_one_export_count_each_point_once(store: Store) -> None:
    first, second = store.chorus(otlp_config()), store.chorus(otlp_config())
    first.import_roster(roster_rows(), actor="test")
    export = request([sum_metric("tool.requests", [point(3, _ns(-60), _ns(0), user__email=RED0, n=str(i))
                                                   for i in range(300)])])
    results = race([lambda: first.otlp.export(export), lambda: second.otlp.export(export)])
    assert sorted(r.counted for r in results) == [0, 300]
    assert _total(store) == [(900,)]
    assert store.query("SELECT COUNT(*) FROM otlp_points") == [(300,)]


def test_a_close_leaves_no_cumulative_state_and_the_next_window_counts_from_a_baseline(store: Store) -> None:
    """docs/otlp.md: nothing of a person's series survives its window's close on either engine;
    the series' first point in the next window only sets its baseline, later points count."""
    chorus = store.chorus(otlp_config())
    chorus.import_roster(roster_rows(), actor="test")

    def send(at: int, value: int) -> None:
        chorus.otlp.export(request([sum_metric("tool.requests", [point(value, _ns(-60), _ns(at), user__email=RED0)],
                                               CUMULATIVE)]))

    send(0, 10)
    store.clock.set(NOON + timedelta(days=1, hours=3))  # the next day, past this one's 2 h grace
    chorus.closer.tick()  # opens the next day, closes this one
    assert store.query("SELECT COUNT(*) FROM otlp_series") == [(0,)]
    send(86400 + 3 * 3600, 25)  # the series' first point in the new window: its baseline
    assert _total(store, "2026-11-26") == []
    send(86400 + 3 * 3600 + 60, 31)
    assert _total(store, "2026-11-26") == [(6,)]
    assert store.query("SELECT total FROM team_metrics WHERE window_id = ? AND team = 'team-red' "
                       "AND metric = 'ai.requests'", (WINDOW,)) == [(10,)]
