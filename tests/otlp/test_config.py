"""The `[otlp]` table is validated at start, with errors naming the key, the value and the rule."""

from __future__ import annotations

import logging
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from chorus.server.model import config
from chorus.server.model.otlp_mapping import KNOWN_KEYS, KNOWN_MAPPING_KEYS
from chorus.server.root import Chorus
from tests._policy import OTLP_TOML, SUITE_TOML


def parse(otlp: str) -> config.Config:
    return config.parse(tomllib.loads(SUITE_TOML + "\n" + otlp))


@pytest.mark.parametrize(("otlp", "words"), [
    ('[otlp]\nidentity_attributes = []', "otlp.identity_attributes = []: must be a list of 1 to 16"),
    ('[otlp]\nidentity_attributes = "user.email"', "otlp.identity_attributes = 'user.email'"),
    ('[otlp]\nidentity_attributes = ["a"]\nidentity = 1',
     "unknown key otlp.identity: [otlp] takes identity_attributes, metrics"),
    ('[otlp]\nidentity_attributes = ["a"]\n[[otlp.metrics]]\nname = "x"\nmetric = "ai.nope"',
     "otlp.metrics[0].metric = 'ai.nope' (x): must be one of the [[metrics]] names"),
    ('[otlp]\nidentity_attributes = ["a"]\n[[otlp.metrics]]\nname = ""\nmetric = "ai.tokens"',
     "otlp.metrics[0].name = ''"),
    ('[otlp]\nidentity_attributes = ["a"]\n[[otlp.metrics]]\nname = "x"\nmetric = "ai.tokens"\nscale = 0.5',
     "otlp.metrics[0].scale = 0.5 (x): must be an integer in [1, 1000000000000]"),
    ('[otlp]\nidentity_attributes = ["a"]\n[[otlp.metrics]]\nname = "x"\nmetric = "ai.tokens"\n'
     'attributes = { type = 3 }', "otlp.metrics[0].attributes.type = 3 (x): must be a string or a list"),
    ('[otlp]\nidentity_attributes = ["a"]\n[[otlp.metrics]]\nname = "x"\nmetric = "ai.tokens"\nunit = "s"',
     "unknown key otlp.metrics[0].unit: [otlp.metrics[0]] takes attributes, metric, name, resource, scale, subtract"),
    ('[otlp]\nidentity_attributes = ["a"]\n[[otlp.metrics]]\nname = "x"\nmetric = "ai.tokens"\nsubtract = 1',
     "otlp.metrics[0].subtract = 1 (x): must be true or false"),
    ('[otlp]\nidentity_attributes = ["a"]\n[[otlp.metrics]]\nname = "x"\nmetric = "ai.tokens"\n'
     'resource = { "service.name" = [1] }', "otlp.metrics[0].resource.service.name = [1] (x): must be a string"),
])
def test_invalid_otlp_tables_are_refused_at_start(otlp: str, words: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        parse(otlp)
    assert words in str(err.value)


def test_a_valid_mapping_round_trips_through_the_frozen_policy_json() -> None:
    cfg = parse('[otlp]\nidentity_attributes = ["user.email"]\n[[otlp.metrics]]\nname = "x"\nmetric = "ai.tokens"\n'
                'attributes = { type = ["output", "input"], kind = "a" }\nscale = 1000\n'
                '[[otlp.metrics]]\nname = "y"\nmetric = "ai.tokens"\nresource = { "service.name" = "t" }\n'
                'subtract = true')
    policy = cfg.policy
    assert config.Policy.from_json(policy.to_json()) == policy
    first, second = policy.to_json()["otlp"]["metrics"]
    assert first["attributes"] == {"kind": ["a"], "type": ["input", "output"]}
    assert "resource" not in first and "subtract" not in first  # earlier windows' frozen policies read the same
    assert second["resource"] == {"service.name": ["t"]} and second["subtract"] is True


def test_no_otlp_table_leaves_the_policy_json_as_before() -> None:
    assert "otlp" not in config.parse(tomllib.loads(SUITE_TOML)).policy.to_json()


def test_known_keys_are_listed_for_the_config_registry() -> None:
    assert {"identity_attributes", "metrics"} == KNOWN_KEYS
    assert {"name", "metric", "attributes", "resource", "scale", "subtract"} == KNOWN_MAPPING_KEYS


@pytest.mark.slow
def test_default_config_ships_commented_mappings_that_parse_when_enabled() -> None:
    plain = subprocess.run([sys.executable, "-m", "chorus.server.cli", "default-config"],
                           capture_output=True, text=True, check=True).stdout
    assert config.parse(tomllib.loads(plain)).policy.otlp is None  # commented out by default
    for name in ("claude_code.token.usage", "gemini_cli.token.usage", "codex.turn.token_usage"):
        assert f'# name = "{name}"' in plain
    enabled = subprocess.run([sys.executable, "-m", "chorus.server.cli", "default-config", "--otlp"],
                             capture_output=True, text=True, check=True).stdout
    otlp = config.parse(tomllib.loads(enabled)).policy.otlp
    assert otlp is not None
    # One preset per tool, through its own instruments: the GenAI convention's token histogram,
    # which Gemini CLI also exports, stays a commented template scoped by service name.
    assert "gen_ai.client.token.usage" not in {m.name for m in otlp.metrics}
    assert '# name = "gen_ai.client.token.usage"' in enabled
    assert {m.name.split(".")[0] for m in otlp.metrics} == {"claude_code", "gemini_cli", "codex"}
    assert enabled == config.with_otlp_enabled(plain)


@pytest.mark.slow
def test_a_mapping_switched_on_while_a_window_is_open_is_logged_with_when_it_applies(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = Chorus(config.parse(tomllib.loads(SUITE_TOML)), tmp_path / "data")
    try:
        first.closer.tick()
    finally:
        first.close()
    caplog.set_level(logging.WARNING, logger="chorus.server.domain.closer")
    second = Chorus(config.parse(tomllib.loads(OTLP_TOML)), tmp_path / "data")
    try:
        second.closer.tick()
        second.closer.tick()  # once per window, not per tick
    finally:
        second.close()
    lines = [r.getMessage() for r in caplog.records if "frozen when it opened" in r.getMessage()]
    assert len(lines) == 1
    assert "differs in otlp, which apply from the next window (from " in lines[0]
