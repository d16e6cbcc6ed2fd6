"""Config validation, window arithmetic and exact epsilon."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chorus.server.cli import app
from chorus.server.model import config
from chorus.server.model.calendar import WindowLength, parse_window_id, window_of
from chorus.server.privacy.epsilon import Epsilon
from tests._policy import SUITE_TOML

#: The outcome metrics the OTLP presets feed (docs/otlp.md).
OUTCOMES = ["ai.suggestions_rejected", "ai.lines_added", "ai.lines_removed", "ai.commits", "ai.pull_requests",
            "ai.active_seconds", "ai.sessions"]


def test_default_config_is_valid_and_fits_a_leadership_report() -> None:
    policy = config.load(None).policy
    assert [m.name for m in policy.metrics] == ["ai.tokens", "ai.requests", "ai.suggestions_accepted",
                                                "ai.tasks_completed", *OUTCOMES]
    assert policy.window_length is WindowLength.WEEK
    # after the plan, one unplanned question (a sum at the default) still fits a team-week's budget
    assert policy.plan_cost() + policy.default_charge["sum"] <= policy.budget_per_window


def test_keys_left_out_take_the_built_in_values() -> None:
    partial = config.parse(tomllib.loads('[[metrics]]\nname = "ai.x"\nmax_per_user = 10\n'))
    assert partial.policy.window_length == config.load(None).policy.window_length
    assert partial.policy.default_charge == config.load(None).policy.default_charge
    assert partial.policy.mechanism == "discrete_gaussian"


def test_a_laplace_config_without_amounts_takes_the_laplace_built_ins_and_refuses_rho() -> None:
    laplace = config.parse(tomllib.loads('[privacy]\nmechanism = "discrete_laplace"\n'
                                         '[[metrics]]\nname = "ai.x"\nmax_per_user = 10\n'))
    assert (str(laplace.policy.budget_per_window), laplace.policy.unit.UNIT) == ("3", "epsilon")
    with pytest.raises(config.ConfigError, match=r"privacy.rho_per_window is an amount of discrete_gaussian, "
                                                 r"but privacy.mechanism = 'discrete_laplace' charges in epsilon"):
        config.parse(tomllib.loads('[privacy]\nmechanism = "discrete_laplace"\nrho_per_window = "0.1"\n'
                                   '[[metrics]]\nname = "ai.x"\nmax_per_user = 10\n'))
    with pytest.raises(config.ConfigError, match=r"privacy\.mechanism = 'gauss': must be"):
        config.parse(tomllib.loads('[privacy]\nmechanism = "gauss"\n[[metrics]]\nname = "ai.x"\nmax_per_user = 10\n'))


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


@pytest.mark.parametrize(("old", "new", "message"), [
    ("min_team_size = 5", "min_team_sise = 10",
     "unknown key privacy.min_team_sise: did you mean privacy.min_team_size?"),
    ("[windows]", "[window]", "unknown section [window]: did you mean [windows]?"),
    ("[privacy.default_epsilon]", "[privacy.default_epsilons]",
     "unknown section [privacy.default_epsilons]: did you mean [privacy.default_epsilon]?"),
    ('sum = "0.05"', 'summ = "0.05"', "unknown key privacy.default_epsilon.summ: did you mean "
     "privacy.default_epsilon.sum?"),
    ("max_per_user = 2000\n", "max_per_usr = 2000\n",
     "unknown key metrics[1].max_per_usr: did you mean metrics[1].max_per_user?"),
    ('grace = "2h"', 'grace = "2h"\nmin_team_size = 3',
     "unknown key windows.min_team_size: did you mean privacy.min_team_size? It belongs in [privacy]"),
    ('grace = "2h"', 'grace = "2h"\nfoo = 3', "unknown key windows.foo: [windows] takes grace, length"),
    ("[server]", 'tls = true\n[server]', "unknown key tls: the top level takes limits, metrics, oidc, otlp, privacy, "
     "server, store, windows"),
])
def test_an_unknown_key_or_section_is_refused_naming_the_nearest_valid_one(old: str, new: str,
                                                                           message: str) -> None:
    """A misspelt privacy setting would otherwise be ignored and its built-in value used."""
    assert old in SUITE_TOML
    with pytest.raises(config.ConfigError) as caught:
        config.parse(tomllib.loads(SUITE_TOML.replace(old, new, 1)))
    assert str(caught.value) == message


def test_every_key_of_the_built_in_config_is_known() -> None:
    config.check_keys(tomllib.loads(config.DEFAULT_TOML))
    config.check_keys(tomllib.loads(SUITE_TOML))


def test_config_check_and_serve_refuse_the_same_file_the_same_way(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(config.DEFAULT_TOML)
    bad.write_text(config.DEFAULT_TOML.replace("min_team_size = 5", "min_team_sise = 10"))
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "check", str(good)])
    assert ok.exit_code == 0 and "valid (weekly windows, 6 h grace" in ok.output
    expected = f"{bad}: unknown key privacy.min_team_sise: did you mean privacy.min_team_size?"
    checked = runner.invoke(app, ["config", "check", str(bad)])
    served = runner.invoke(app, ["serve", "--config", str(bad), "--data-dir", str(tmp_path / "data")])
    for result in (checked, served):
        assert result.exit_code == 2
        assert expected in " ".join(result.output.split())
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_every_setting_is_known_parsed_and_printed_with_its_default() -> None:
    """SETTINGS is the one table: each key is known, `load(None)` takes its default, and the
    key line `chorus default-config` prints (where it prints one) is rendered from it."""
    built_in = tomllib.loads(config.DEFAULT_TOML)
    for setting in config.SETTINGS:
        assert setting.key in config.KNOWN_KEYS[setting.table], setting.path
        table = built_in
        for part in setting.table.split("."):
            table = table.get(part, {})
        if setting.key in table:
            assert table[setting.key] == setting.default, setting.path
    policy, limits = config.load(None).policy, config.Limits()
    assert policy.min_team_size == config.default("privacy.min_team_size")
    assert policy.grace_seconds == config.default("windows.grace") == 6 * 3600
    assert limits.rpc_deadline_seconds == config.default("limits.rpc_deadline_seconds")


def test_a_new_setting_is_one_line_of_the_table() -> None:
    """Known keys and parsing come from SETTINGS: a value outside a setting's rule is refused
    with the rule's message, whatever section it is in."""
    with pytest.raises(config.ConfigError, match=r"limits.ingest_burst_per_token = 0: must be an integer in \[1, "):
        config.parse(tomllib.loads(SUITE_TOML + "\n[limits]\ningest_burst_per_token = 0\n"))
    with pytest.raises(config.ConfigError, match=r"store.sqlite_synchronous = 'off': must be 'FULL' or 'NORMAL' or"):
        config.parse(tomllib.loads(SUITE_TOML + '\n[store]\nsqlite_synchronous = "off"\n'))


def test_environment_variables_fill_string_values_and_never_show_in_errors() -> None:
    text = SUITE_TOML.replace('listen = "127.0.0.1:7355"',
                              'listen = "127.0.0.1:7355"\ndatabase = "postgresql://chorus:${env:PGPASS}@db/ch$$x"')
    parsed = config.parse(tomllib.loads(text), environ={"PGPASS": "s3cret"})
    assert parsed.database == "postgresql://chorus:s3cret@db/ch$x"
    with pytest.raises(config.ConfigError) as unset:
        config.parse(tomllib.loads(text), environ={"OTHER": "s3cret"})
    assert str(unset.value) == "server.database names the environment variable PGPASS (${env:PGPASS}), which is not set"
