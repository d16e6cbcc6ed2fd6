"""The release plan in the configuration: the default plan, its validation, and how
`chorus default-config` explains it."""

from __future__ import annotations

import tomllib

import pytest
from typer.testing import CliRunner

from chorus.server.cli import app
from chorus.server.model import config
from chorus.server.model.plan_intervals import EXPLAINED_SIZES, planned_intervals
from chorus.server.privacy.epsilon import Epsilon


def test_the_default_plan_is_a_weekly_leadership_review_leaving_budget_unspent() -> None:
    policy = config.load(None).policy
    assert [(e.statistic, e.metric) for e in policy.release_plan] == [
        ("adoption", ""), ("sum", "ai.tokens"), ("mean", "ai.tokens"), ("sum", "ai.requests"),
        ("mean", "ai.requests")]
    assert policy.plan_cost() == Epsilon.parse("2.5")
    assert policy.plan_cost() < policy.epsilon_per_window


def test_default_config_explains_the_plan_with_intervals_for_10_30_and_100_people() -> None:
    result = CliRunner().invoke(app, ["default-config"])
    assert result.exit_code == 0, result.output
    assert config.parse(tomllib.loads(result.output)).policy == config.load(None).policy
    start = result.output.index("# Release plan:")
    comment = " ".join(result.output[start:result.output.index("\n\n", start)].split())
    assert start < result.output.index("[[metrics]]")  # next to the plan, before the metrics
    assert "2.5 of each team-window's 3 is spent when the window closes; 0.5 is left" in comment
    assert all(f"{n} people" in comment for n in EXPLAINED_SIZES)
    for name, cells in planned_intervals(config.load(None).policy):
        assert " ".join([name, *cells]) in comment


def test_a_file_without_a_plan_gets_the_default_for_its_own_metrics() -> None:
    raw = tomllib.loads(config.DEFAULT_TOML)
    del raw["privacy"]["release_plan"]
    raw["metrics"] = [m for m in raw["metrics"] if m["name"] != "ai.requests"]
    plan = config.parse(raw).policy.release_plan
    assert [(e.statistic, e.metric) for e in plan] == [("adoption", ""), ("sum", "ai.tokens"),
                                                       ("mean", "ai.tokens")]


@pytest.mark.parametrize(("entry", "message"), [
    ({"statistic": "median", "metric": "ai.tokens"}, "privacy.release_plan[0].statistic = 'median': must be one of"),
    ({"statistic": "sum", "metric": "ai.nope"}, "privacy.release_plan[0].metric = 'ai.nope': must be one of"),
    ({"statistic": "adoption", "metric": "ai.tokens"}, "adoption is team-level and takes no metric"),
    ({"statistic": "sum", "metric": "ai.tokens", "epsilon": "0"}, "privacy.release_plan[0].epsilon = '0'"),
    ({"statistic": "sum", "metric": "ai.tokens", "epsilonn": "1"}, "unknown key privacy.release_plan[0].epsilonn"),
])
def test_a_bad_plan_entry_is_named(entry: dict, message: str) -> None:
    raw = tomllib.loads(config.DEFAULT_TOML)
    raw["privacy"]["release_plan"] = [entry]
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config.parse(raw)


def test_the_intervals_privacy_md_quotes_are_the_default_plans() -> None:
    from pathlib import Path

    doc = " ".join((Path(__file__).resolve().parents[2] / "docs/privacy.md").read_text().split())
    rows = dict(planned_intervals(config.load(None).policy))
    adoption = [cell.split()[0].removeprefix("±").split(".")[0] for cell in rows["adoption"]]
    assert f"adoption is known to about ±{adoption[0]}, ±{adoption[1]} and ±{adoption[2]} percentage points" in doc
    tokens = float(rows["sum of ai.tokens"][0].removeprefix("±").replace(",", ""))
    assert f"a sum of tokens to ±{tokens / 1e6:.1f} million whatever the team's size" in doc
    assert rows["sum of ai.tokens"] == [rows["sum of ai.tokens"][0]] * 3
    assert f"everyone uses it at half the bound: {rows['mean of ai.tokens'][2].replace('±', '± ')} tokens for 100 " \
           "people" in doc
    assert rows["mean of ai.tokens"][0] == "250,000 ±250,000"  # the whole range [0, 500,000]
    assert "the built-in plan is a weekly leadership review: **adoption, and the sum and mean of " \
           "`ai.tokens` and `ai.requests`**" in doc.replace("The built-in", "the built-in")
