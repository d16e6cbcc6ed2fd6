"""ClockGuard (chorus.server.domain.closer): the time up to which windows may close follows the
wall clock only while monotonic time and recent clients agree with it; each disagreement is a
logged clock anomaly. The real-process test with libfaketime is tests/e2e/test_clock_jump.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chorus.server.domain.closer import CLIENT_WITNESS_SECONDS, TRUST_AFTER_SECONDS, ClockGuard
from chorus.server.model.clock import FakeClock

NOON = datetime(2026, 11, 25, 12, tzinfo=UTC)


def test_the_wall_clock_counts_while_it_agrees(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(NOON)
    guard = ClockGuard(clock)
    assert guard.close_time() == NOON
    clock.advance(timedelta(days=1))
    guard.saw(clock.now() - timedelta(seconds=30))
    assert guard.close_time() == NOON + timedelta(days=1)
    assert "clock anomaly" not in caplog.text


def test_a_jump_ahead_is_held_to_monotonic_time_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(NOON)
    guard = ClockGuard(clock)
    guard.close_time()
    clock.jump(timedelta(days=3))
    clock.advance(timedelta(seconds=10))
    assert guard.close_time() == NOON + timedelta(seconds=10)
    assert guard.close_time() == NOON + timedelta(seconds=10)
    assert caplog.text.count("clock anomaly: the wall clock is 259200 s ahead of monotonic time") == 1
    clock.jump(timedelta(days=-3))  # back: the wall clock counts again
    assert guard.close_time() == clock.now()


def test_a_clock_that_goes_back_becomes_the_anchor(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(NOON)
    guard = ClockGuard(clock)
    guard.close_time()
    clock.jump(timedelta(hours=-1))
    assert guard.close_time() == NOON - timedelta(hours=1)
    assert "went back 3600 s" in caplog.text
    clock.advance(timedelta(hours=2))
    assert guard.close_time() == NOON + timedelta(hours=1)


def test_recent_clients_behind_the_server_hold_the_close(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(NOON)
    guard = ClockGuard(clock)
    guard.saw(NOON - timedelta(days=2))  # the server booted two days ahead of its clients
    assert guard.close_time() == NOON - timedelta(days=2)
    assert "put their clients' clocks at" in caplog.text
    clock.advance(timedelta(seconds=CLIENT_WITNESS_SECONDS + 1))  # no recent contribution: the clock counts
    assert guard.close_time() == clock.now()


def test_a_forward_correction_is_trusted_once_clients_agree_for_long_enough() -> None:
    clock = FakeClock(NOON)
    guard = ClockGuard(clock)
    guard.close_time()
    clock.jump(timedelta(hours=5))  # a correction: the clock was 5 hours behind
    steps = int(TRUST_AFTER_SECONDS // 60) + 2
    for _ in range(steps):
        clock.advance(timedelta(seconds=60))
        guard.saw(clock.now())
        limit = guard.close_time()
    assert limit == clock.now()
