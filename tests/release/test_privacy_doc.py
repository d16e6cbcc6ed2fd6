"""docs/privacy.md's accounting, sentence by sentence against the code: the two mechanisms and
their units, the calibration's starting scale, the intervals, the budget keys, the ledger entry of
a Gaussian release, and what each level of the built-in plan costs a person."""

from __future__ import annotations

import math
import re
import tomllib
from datetime import timedelta
from pathlib import Path

import opendp.prelude as dp

from chorus.server.model import config
from chorus.server.model.calendar import WindowLength, max_windows_per_year
from chorus.server.model.clock import FakeClock
from chorus.server.model.policy import plan_parts
from chorus.server.privacy import mechanisms
from chorus.server.privacy.budget import worst_case
from chorus.server.privacy.epsilon import ZERO, Epsilon, Rho
from chorus.server.root import Chorus

from .conftest import NOON, TEAMS, contribute, roster_rows
from .test_plan import ledger

DOC = " ".join((Path(__file__).resolve().parents[2] / "docs/privacy.md").read_text().split())
POLICY = config.load(None).policy


def test_the_default_mechanism_is_the_discrete_gaussian_in_rho_and_the_laplace_charges_epsilon() -> None:
    assert "**`discrete_gaussian`, the default**: `dp.m.make_gaussian(atom_domain(i64), " \
           "absolute_distance(i64), scale)` for values and the vector form (`vector_domain`, `l2_distance`)" in DOC
    assert POLICY.mechanism == mechanisms.GAUSSIAN and POLICY.unit is Rho
    gaussian = mechanisms.calibrate(1, Rho.parse("0.01"), vector=True)
    assert gaussian.measurement.input_metric == dp.l2_distance(T="i64")
    assert gaussian.measurement.output_measure == dp.zero_concentrated_divergence()
    laplace = mechanisms.calibrate(1, Epsilon.parse("0.5"), vector=True)
    assert laplace.measurement.input_metric == dp.l1_distance(T="i64")
    assert laplace.measurement.output_measure == dp.max_divergence()
    assert "`discrete_laplace`: `dp.m.make_laplace` with `absolute_distance` and `l1_distance`, charged in pure " \
           "**epsilon**" in DOC


def test_the_scale_starts_at_the_documented_formula_and_the_charge_is_opendps_map_rounded_up() -> None:
    assert "**Scale** = sensitivity / sqrt(2 rho) (Gaussian) or sensitivity / epsilon (Laplace) as a starting " \
           "point" in DOC
    for charge, start in ((Rho.parse("0.04"), 500_000 / math.sqrt(0.08)), (Epsilon.parse("0.5"), 500_000 / 0.5)):
        mech = mechanisms.calibrate(500_000, charge)
        assert start <= mech.scale <= start * (1 + 1e-9)
        assert mech.epsilon == type(charge).ceil(mech.measurement.map(500_000)) <= charge


def test_intervals_are_opendps_accuracy_for_each_mechanism() -> None:
    assert "(`dp.discrete_gaussian_scale_to_accuracy` or `dp.discrete_laplacian_scale_to_accuracy`)" in DOC
    g = mechanisms.calibrate(1, Rho.parse("0.03"))
    assert g.ci95 == float(dp.discrete_gaussian_scale_to_accuracy(g.scale, alpha=0.05))
    laplace = mechanisms.calibrate(1, Epsilon.parse("0.5"))
    assert laplace.ci95 == float(dp.discrete_laplacian_scale_to_accuracy(laplace.scale, alpha=0.05))


def test_the_budget_keys_are_the_ones_the_config_reads() -> None:
    assert "Each team-window has a cap, `privacy.rho_per_window` (`privacy.epsilon_per_window` under the discrete " \
           "Laplace)" in DOC
    assert "`privacy.default_rho.<statistic>`" in DOC
    assert POLICY.budget_per_window == Rho.parse("0.138")
    assert set(POLICY.default_charge) == {"sum", "count", "histogram", "active"}
    paths = {setting.path for setting in config.SETTINGS}
    assert {"privacy.rho_per_window", "privacy.epsilon_per_window"} <= paths
    assert {f"privacy.default_rho.{s}" for s in POLICY.default_charge} <= paths


def test_a_gaussian_release_is_ledgered_with_the_documented_fields(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert "`statistic, mechanism` (`discrete_gaussian` or `discrete_laplace`), `sensitivity, scale, rho` or " \
           "`epsilon` (the charge, in the mechanism's unit), `value` (noisy, before post-processing), `ci95, " \
           "budget_cap, budget_spent_after, by` (the requester's token name), and for a plan release `plan`" in DOC
    raw = tomllib.loads(config.DEFAULT_TOML)
    raw["windows"] = {"length": "day", "grace": "2h"}
    clock = FakeClock(NOON)
    chorus = Chorus(config.parse(raw), tmp_path / "data", clock=clock)
    try:
        chorus.import_roster(roster_rows(TEAMS), actor="test")
        chorus.closer.tick()
        contribute(chorus, *[(f"user-team-red-{i}", "ai.tokens", 10) for i in range(6)])
        clock.advance(timedelta(days=1))
        chorus.closer.tick()
        entry = next(e["payload"] for e in ledger(chorus) if e["kind"] == "release" and "team" in e["payload"])
    finally:
        chorus.close()
    assert set(entry) == {"release_id", "window", "team", "metric", "statistic", "mechanism", "sensitivity", "scale",
                          "rho", "value", "ci95", "budget_cap", "budget_spent_after", "by", "plan"}
    assert entry["mechanism"] == "discrete_gaussian"


def test_what_each_level_costs_a_person_is_the_plans() -> None:
    weeks = max_windows_per_year(WindowLength.WEEK)
    by_level = {"company": ZERO, "org": ZERO, "team": ZERO}
    for (level, _, _), charge in plan_parts(POLICY.release_plan).items():
        by_level[level] += charge
    left = POLICY.budget_per_window - POLICY.plan_cost()
    rows = {"company": by_level["company"], "org (each org above the team)": by_level["org"],
            "team": by_level["team"], "left for questions nobody planned": left}
    for name, rho in rows.items():
        year = worst_case(rho, weeks)
        assert f"| {name} | {rho} | {year.total} | {year.epsilon:.1f} |" in DOC, name
    assert sum(rows.values(), ZERO) == POLICY.budget_per_window
    total = worst_case(POLICY.budget_per_window, weeks)
    assert f"The levels add up in rho ({POLICY.budget_per_window} a week, {total.total} a year), not in epsilon: " \
           f"together they are the yearly worst case of [Over time](#over-time), (epsilon {total.epsilon:.1f}, " \
           "delta 1e-08)" in DOC
    assert sum(worst_case(r, weeks).epsilon for r in rows.values()) > total.epsilon  # epsilons do not add up


def test_the_empirical_audit_the_doc_cites_covers_both_mechanisms() -> None:
    source = (Path(__file__).parent / "test_gaussian.py").read_text()
    assert "The tests audit both mechanisms empirically: at 200,000 draws of neighbouring inputs" in DOC
    assert re.search(r'parametrize\("charge", \[Rho\.parse\("0\.5"\), Epsilon\.parse\("1"\)\]', source)
    assert "def test_empirical_privacy_loss_of_each_mechanism_stays_below_the_claim_at_200k_draws" in source


def test_a_plan_too_deep_for_the_budget_is_refused_whole_and_marked_done(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from chorus.server import store

    assert "a window whose tree is too deep for the budget has its plan refused whole (nothing of it released or " \
           "charged) and marked done, the reason logged" in DOC
    raw = tomllib.loads(config.DEFAULT_TOML)
    raw["windows"] = {"length": "day", "grace": "2h"}
    raw["privacy"]["rho_per_window"] = "0.1"
    raw["privacy"]["release_plan"] = [{"statistic": "adoption", "level": "org", "rho": "0.06"}]  # one level fits
    clock = FakeClock(NOON)
    chorus = Chorus(config.parse(raw), tmp_path / "data", clock=clock)
    try:  # team-red sits under two orgs, eng and eng/web: 0.12 of its 0.1
        chorus.import_roster(roster_rows(TEAMS), actor="test", orgs={t: "eng/web" for t in TEAMS})
        chorus.closer.tick()
        contribute(chorus, *[(f"user-team-red-{i}", "ai.tokens", 10) for i in range(6)])
        clock.advance(timedelta(days=1))
        chorus.closer.tick()
        window = "2026-11-25"
        assert chorus.db.read(lambda tx: store.windows.plan_released(tx, window), name="t")
        assert not [e for e in ledger(chorus) if e["kind"] == "release"]
        spent = chorus.db.read(lambda tx: store.budgets.of_window(tx, window, Rho), name="t")
        assert {b.spent for b in spent.values()} == {Rho(0)}
    finally:
        chorus.close()
