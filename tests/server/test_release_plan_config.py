"""The release plan in the configuration: the default plan, its validation, and how
`chorus default-config` explains it."""

from __future__ import annotations

import tomllib

import pytest
from typer.testing import CliRunner

from chorus.server.cli import app
from chorus.server.model import config
from chorus.server.model.plan_intervals import EXPLAINED_SIZES, planned_intervals
from chorus.server.privacy.epsilon import Rho


def test_the_default_plan_releases_company_org_and_team_leaving_budget_unspent() -> None:
    policy = config.load(None).policy
    assert [(e.level, e.statistic, e.metric) for e in policy.release_plan] == [
        ("company", "adoption", ""), ("company", "sum", "ai.tokens"), ("company", "ratio", "ai.suggestions_accepted"),
        *(("company", "histogram", m) for m in ("ai.tokens", "ai.suggestions_accepted", "ai.suggestions_rejected")),
        ("org", "adoption", ""), ("org", "sum", "ai.tokens"), ("org", "ratio", "ai.suggestions_accepted"),
        ("team", "adoption", "")]
    decided = ("ai.suggestions_accepted", "ai.suggestions_rejected")  # edit acceptance: accepted / decided
    assert [e.denominator for e in policy.release_plan if e.statistic == "ratio"] == [decided, decided]
    assert policy.mechanism == "discrete_gaussian"
    assert policy.plan_cost() == Rho.parse("0.128")
    assert policy.plan_cost() < policy.budget_per_window == Rho.parse("0.138")


def test_default_config_explains_the_plan_with_intervals_for_10_30_and_100_people() -> None:
    result = CliRunner().invoke(app, ["default-config"])
    assert result.exit_code == 0, result.output
    assert config.parse(tomllib.loads(result.output)).policy == config.load(None).policy
    start = result.output.index("# Release plan:")
    comment = " ".join(result.output[start:result.output.index("\n\n", start)].split())
    assert start < result.output.index("[[metrics]]")  # next to the plan, before the metrics
    assert "rho 0.128 of each team-window's 0.138 is spent when the window closes (under one org level); " \
        "0.01 is left" in comment
    assert all(f"{n} people" in comment for n in EXPLAINED_SIZES)
    for name, cells in planned_intervals(config.load(None).policy):
        assert " ".join([name, *cells]) in comment


def test_a_file_without_a_plan_gets_the_default_for_its_own_metrics() -> None:
    raw = tomllib.loads(config.DEFAULT_TOML)
    del raw["privacy"]["release_plan"]
    raw["metrics"] = [m for m in raw["metrics"] if m["name"] != "ai.requests"]
    plan = config.parse(raw).policy.release_plan
    assert [(e.statistic, e.metric) for e in plan] == [("adoption", ""), ("sum", "ai.tokens"),
                                                       ("ratio", "ai.suggestions_accepted"),
                                                       ("histogram", "ai.tokens"),
                                                       ("histogram", "ai.suggestions_accepted"),
                                                       ("histogram", "ai.suggestions_rejected"), ("adoption", ""),
                                                       ("sum", "ai.tokens"), ("ratio", "ai.suggestions_accepted"),
                                                       ("adoption", "")]
    # without its denominator's metrics, the ratio is left out
    raw["metrics"] = [m for m in raw["metrics"] if m["name"] != "ai.suggestions_rejected"]
    assert "ratio" not in {e.statistic for e in config.parse(raw).policy.release_plan}


@pytest.mark.parametrize(("entry", "message"), [
    ({"statistic": "median", "metric": "ai.tokens"}, "privacy.release_plan[0].statistic = 'median': must be one of"),
    ({"statistic": "sum", "metric": "ai.nope"}, "privacy.release_plan[0].metric = 'ai.nope': must be one of"),
    ({"statistic": "adoption", "metric": "ai.tokens"}, "adoption is team-level and takes no metric"),
    ({"statistic": "sum", "metric": "ai.tokens", "rho": "0"}, "privacy.release_plan[0].rho = '0'"),
    ({"statistic": "sum", "metric": "ai.tokens", "epsilon": "0.1"},
     "privacy.release_plan[0].epsilon: this policy charges in rho; write privacy.release_plan[0].rho"),
    ({"statistic": "sum", "metric": "ai.tokens", "level": "division"},
     "privacy.release_plan[0].level = 'division': must be one of team, org, company"),
    ({"statistic": "sum", "metric": "ai.tokens", "epsilonn": "1"}, "unknown key privacy.release_plan[0].epsilonn"),
    ({"statistic": "ratio", "metric": "ai.tokens"},
     "privacy.release_plan[0].denominator = None: a ratio needs the metric"),
    ({"statistic": "ratio", "metric": "ai.tokens", "denominator": ["ai.nope"]},
     "privacy.release_plan[0].denominator: 'ai.nope' must be one of the [[metrics]]"),
    ({"statistic": "ratio", "metric": "ai.tokens", "denominator": "ai.tokens"},
     "privacy.release_plan[0].denominator = ['ai.tokens']: a ratio of ai.tokens over itself is 1"),
    ({"statistic": "ratio", "metric": "ai.tokens", "denominator": ["ai.sessions", "ai.sessions"]},
     "privacy.release_plan[0].denominator = ['ai.sessions', 'ai.sessions']: names a metric twice"),
    ({"statistic": "sum", "metric": "ai.tokens", "denominator": ["ai.sessions"]},
     "privacy.release_plan[0].denominator: only a ratio has a denominator, not sum"),
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
    company = rows["adoption (company)"][3].split()[0]
    org = rows["adoption (org)"][2].split()[0]
    team = [cell.split()[0].removeprefix("±").split(".")[0] for cell in rows["adoption"]]
    assert f"company adoption is known to {company} points for 1,000 people, an org's to {org} for 100" in doc
    assert f"a team's single week to about ±{team[0]}, ±{team[1]} and ±{team[2]} points for 10, 30 and 100" in doc
    tokens = float(rows["sum of ai.tokens (company)"][0].removeprefix("±").replace(",", ""))
    assert f"the company's sum of tokens to ±{tokens / 1e6:.1f} million" in doc
