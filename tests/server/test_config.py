"""Config validation, window arithmetic and exact epsilon."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime

import pytest

from chorus.server import config
from chorus.server.privacy.epsilon import Epsilon
from chorus.server.windows import WindowLength, parse_window_id, window_of
from tests._policy import SUITE_TOML


def test_default_config_is_valid_and_fits_a_leadership_report() -> None:
    policy = config.load(None).policy
    assert [m.name for m in policy.metrics] == ["ai.tokens", "ai.requests", "ai.suggestions_accepted",
                                                "ai.tasks_completed"]
    assert policy.window_length is WindowLength.WEEK
    # adoption plus sum and mean (sum + count) of two metrics fits one team-week's budget
    report = policy.default_epsilon["active"] + policy.default_epsilon["sum"] + policy.default_epsilon["sum"] \
        + policy.default_epsilon["count"] + policy.default_epsilon["count"]
    assert report <= policy.epsilon_per_window


def test_keys_left_out_take_the_built_in_values() -> None:
    partial = config.parse(tomllib.loads('[[metrics]]\nname = "ai.x"\nmax_per_user = 10\n'))
    assert partial.policy.window_length == config.load(None).policy.window_length
    assert partial.policy.default_epsilon == config.load(None).policy.default_epsilon


@pytest.mark.parametrize(("old", "new", "message"), [
    ('length = "day"', 'length = "month"', "windows.length = 'month': must be 'day' or 'week'"),
    ("max_per_user = 2000\n", "max_per_user = 0\n", "metrics[1].max_per_user (ai.requests) = 0"),
    ("[50, 200, 500, 1000]", "[200, 50]", "must be strictly increasing"),
    ('epsilon_per_window = "1"', 'epsilon_per_window = "0.0000001"', "more than 6 decimal places"),
    ('sum = "0.05"', 'sum = "2"', "privacy.default_epsilon.sum = 2 exceeds privacy.epsilon_per_window = 1"),
    ('grace = "2h"', 'grace = "two hours"', "windows.grace = 'two hours'"),
    ("min_team_size = 5", "min_team_size = 0", "privacy.min_team_size = 0"),
])
def test_invalid_config_names_key_and_value(old: str, new: str, message: str) -> None:
    assert old in SUITE_TOML
    with pytest.raises(config.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        config.parse(tomllib.loads(SUITE_TOML.replace(old, new, 1)))


def test_policy_json_round_trips() -> None:
    policy = config.load(None).policy
    assert config.Policy.from_json(policy.to_json()) == policy


def test_windows_by_day_and_iso_week() -> None:
    when = datetime(2027, 1, 1, 23, 59, tzinfo=UTC)  # a Friday in ISO week 2026-W53
    day = window_of(when, WindowLength.DAY)
    week = window_of(when, WindowLength.WEEK)
    assert (day.id, day.start.day, day.end.day) == ("2027-01-01", 1, 2)
    assert (week.id, week.start.isoformat(), week.end.isoformat()) == (
        "2026-W53", "2026-12-28T00:00:00+00:00", "2027-01-04T00:00:00+00:00")
    assert parse_window_id("2026-W53") == week and parse_window_id("2027-01-01") == day
    with pytest.raises(ValueError, match="neither a day"):
        parse_window_id("yesterday")


def test_epsilon_is_exact() -> None:
    assert str(Epsilon.parse("0.1") + Epsilon.parse("0.2")) == "0.3"
    assert Epsilon.ceil(0.1).micros == 100_001 or Epsilon.ceil(0.1).micros == 100_000
    assert Epsilon.ceil(0.1000001).micros == 100_001
    assert Epsilon.ceil(1e-12).micros == 1
    with pytest.raises(ValueError, match="non-negative"):
        Epsilon.parse("0.1") - Epsilon.parse("0.2")
