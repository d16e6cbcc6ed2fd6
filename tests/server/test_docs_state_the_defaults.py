"""The docs' examples and figures are those of the built-in policy (issue 10 items 3 and 7).

Weekly windows with a 6 h grace and epsilon 3 per team-window: every example closing time,
refusal message and yearly bound in README and docs/ is computed here from `config.load(None)`
and looked up verbatim, so changing a default without the docs (or the reverse) fails.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chorus.server.domain.release import Refused, Releases
from chorus.server.model import config
from chorus.server.model.calendar import WindowLength, max_windows_per_year, parse_window_id
from chorus.server.model.clock import FakeClock
from chorus.server.privacy.budget import worst_case
from chorus.server.privacy.epsilon import Rho
from chorus.server.root import Chorus

ROOT = Path(__file__).resolve().parents[2]
POLICY = config.load(None).policy


def doc(name: str) -> str:
    """The document with its line breaks undone, so sentences match across wrapping."""
    return " ".join((ROOT / name).read_text().split())


def test_the_defaults_are_weekly_windows_with_6_hours_of_grace_and_a_gaussian_budget_of_rho_0_138() -> None:
    assert (POLICY.window_length, POLICY.grace_seconds, POLICY.mechanism, POLICY.budget_per_window) == (
        WindowLength.WEEK, 6 * 3600, "discrete_gaussian", Rho.parse("0.138"))


def test_the_refusal_quoted_for_an_open_window_is_the_servers(tmp_path: Path) -> None:
    chorus = Chorus(config.load(None), tmp_path / "data", clock=FakeClock(datetime(2026, 11, 25, 12, tzinfo=UTC)))
    try:
        chorus.closer.tick()  # opens the current window, 2026-W48
        with pytest.raises(Refused) as refused:
            Releases(chorus.db, chorus.ledger, chorus.clock, POLICY).release("2026-W48", [], [], [], "test")
    finally:
        chorus.close()
    first_sentence = str(refused.value).split(". ")[0]
    assert first_sentence == "window 2026-W48 is still open; it closes at 2026-11-30 06:00 UTC"
    assert f'("{first_sentence}")' in doc("docs/privacy.md")


def test_the_closing_time_in_the_deployment_guide_is_the_defaults() -> None:
    closes = parse_window_id("2026-W48").end + timedelta(seconds=POLICY.grace_seconds)
    assert f"they close on {closes:%A}s at {closes:%H:%M} UTC" in doc("docs/deployment.md")
    assert "a week plus 6 h by default" in doc("README.md")


def test_every_stated_yearly_bound_is_the_computed_one() -> None:
    weeks, days = max_windows_per_year(WindowLength.WEEK), max_windows_per_year(WindowLength.DAY)
    rho = POLICY.budget_per_window
    privacy = doc("docs/privacy.md")
    year, daily = worst_case(rho, weeks), worst_case(rho, days)
    assert f"any twelve months touch at most {weeks} ISO weeks or {days} UTC days" in privacy
    assert f"**rho {year.total} over any twelve months** ({weeks} x {rho}), which OpenDP's " \
           f"`make_zCDP_to_approxDP` states as **(epsilon {year.epsilon:.1f}, delta 1e-08)**" in privacy
    assert f"would be rho {daily.total}, epsilon {daily.epsilon:.0f})" in privacy
    assert year.epsilon <= 30
    assert f"bounded by {weeks} x the per-window budget rather than {days} x" in doc("docs/architecture.md")
    assert f"at most {days} windows for days, {weeks} for weeks" in doc("docs/audit.md")
    assert f"54 weeks x {rho} = rho {year.total} a year per person, (epsilon {year.epsilon:.1f}, delta 1e-8)" \
        in " ".join(config.DEFAULT_TOML.split())


def test_the_readme_states_the_default_mechanism_budget_and_yearly_bound() -> None:
    from chorus.server.privacy.budget import DELTA, worst_case

    year = worst_case(POLICY.budget_per_window, max_windows_per_year(WindowLength.WEEK), DELTA)
    readme = doc("README.md")
    assert POLICY.mechanism == "discrete_gaussian" and DELTA == 1e-8
    assert (f"discrete Gaussian noise with a privacy budget of rho {POLICY.budget_per_window} per team and week "
            f"(zCDP: at most (epsilon {year.epsilon:.1f}, delta 1e-8) for a person over any twelve months)"
            ) in readme
    assert f"rho {POLICY.plan_cost()} of each team-week's {POLICY.budget_per_window}" in readme
    assert f"per-person weekly bounds for {len(POLICY.metrics)} metrics" in readme.replace("eleven", "11")
