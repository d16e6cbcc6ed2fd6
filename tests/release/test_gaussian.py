"""The discrete Gaussian under zCDP: charges from OpenDP's own map in exact rho, (epsilon, delta)
from OpenDP's conversion, intervals that cover, an empirical privacy audit, the default plan by
level released at close, and a Gaussian ledger the verifier recomputes with its yearly bound."""

from __future__ import annotations

import math
import tomllib
from datetime import timedelta

import numpy as np
import opendp.prelude as dp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from chorus.server.domain import audit
from chorus.server.domain.release import StatisticRequest
from chorus.server.front.report_records import records
from chorus.server.model import config
from chorus.server.model.calendar import WindowLength, max_windows_per_year
from chorus.server.model.clock import FakeClock
from chorus.server.privacy import mechanisms
from chorus.server.privacy.budget import worst_case
from chorus.server.privacy.epsilon import Epsilon, Rho
from chorus.server.root import Chorus
from chorus.server.transport.metrics import Metrics
from chorus.server.transport.ratelimit import RateLimiter
from chorus.v1 import common_pb2, release_pb2

from .conftest import TEAMS, WINDOW, contribute, roster_rows, serve
from .test_hierarchy import _verified
from .test_plan import ledger


@pytest.mark.parametrize(("sensitivity", "rho"), [(1, "0.006"), (1, "0.03"), (500_000, "0.04"), (7, "0.5")])
def test_the_charge_is_opendps_zcdp_map_in_exact_rho_never_above_the_request(sensitivity: int, rho: str) -> None:
    mech = mechanisms.calibrate(sensitivity, Rho.parse(rho))
    assert mech.mechanism == mechanisms.GAUSSIAN and isinstance(mech.epsilon, Rho)
    assert mech.epsilon <= Rho.parse(rho)
    assert mech.epsilon == Rho.ceil(mech.measurement.map(sensitivity))
    assert mech.measurement.output_measure == dp.zero_concentrated_divergence()
    assert mech.ci95 == float(dp.discrete_gaussian_scale_to_accuracy(mech.scale, alpha=0.05))


def test_epsilon_and_rho_never_mix_but_zero_is_zero_in_both() -> None:
    with pytest.raises(TypeError, match=r"cannot combine 0\.5 epsilon with 0\.1 rho"):
        _ = Epsilon.parse("0.5") + Rho.parse("0.1")
    with pytest.raises(TypeError):
        _ = Epsilon.parse("0.5") < Rho.parse("0.1")
    assert isinstance(sum([Rho.parse("0.1")] * 3, Epsilon(0)), Rho)
    assert Epsilon(0) == Rho(0)


def test_rho_as_epsilon_delta_is_opendps_conversion() -> None:
    measurement = dp.m.make_gaussian(dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"), 10.0)
    rho = Rho.ceil(measurement.map(1))
    direct = dp.c.make_zCDP_to_approxDP(measurement).map(1).epsilon(1e-8)
    assert mechanisms.approx_dp(rho, 1e-8) == pytest.approx(direct, rel=1e-3)  # rho rounded up to micro-units
    assert mechanisms.approx_dp(rho, 1e-8) >= direct  # never understated


def test_the_default_yearly_bound_is_at_most_30_at_delta_1e_8() -> None:
    policy = config.load(None).policy
    year = worst_case(policy.budget_per_window, max_windows_per_year(WindowLength.WEEK))
    assert year.total == Rho.parse("7.452") and year.delta == 1e-8
    assert 29 < year.epsilon <= 30


@pytest.mark.slow  # 700,000 exact OpenDP draws: about half a minute
def test_95_percent_intervals_cover_single_and_summed_gaussian_releases() -> None:
    mech = mechanisms.calibrate(1, Rho.parse("0.03"))
    # 20,000 draws estimate a coverage within about 0.0015 (one standard error): 0.947 is 2 of them.
    draws = np.array(mech.release([0] * 20_000))
    assert np.mean(np.abs(draws) <= mech.ci95) >= 0.947
    # A sum of 34 independent releases: covered, and not much wider than the exact quantile.
    summed = np.array(mech.release([0] * (34 * 20_000))).reshape(20_000, 34).sum(axis=1)
    half = mechanisms.combined_ci95([(mech.scale, 1.0)] * 34, mechanism=mechanisms.GAUSSIAN)
    assert np.mean(np.abs(summed) <= half) >= 0.947
    assert half <= 1.1 * np.quantile(np.abs(summed), 0.95)


@pytest.mark.slow  # 400,000 exact OpenDP draws per mechanism: about half a minute each
@pytest.mark.parametrize("charge", [Rho.parse("0.5"), Epsilon.parse("1")], ids=["gaussian", "laplace"])
def test_empirical_privacy_loss_of_each_mechanism_stays_below_the_claim_at_200k_draws(charge: Rho | Epsilon) -> None:
    """An audit by sampling: neighbours 0 and 1 (sensitivity 1), every threshold set {x >= t}; the
    lower confidence bound of epsilon at delta (Clopper-Pearson style, 4 sigma) never exceeds
    what the charge claims: OpenDP's conversion of the rho at that delta for the discrete
    Gaussian, the pure epsilon (delta 0) for the discrete Laplace."""
    mech = mechanisms.calibrate(1, charge)
    n = 200_000
    if isinstance(mech.epsilon, Rho):
        delta = 1e-3
        claim = mechanisms.approx_dp(mech.epsilon, delta)
    else:
        delta, claim = 0.0, mech.epsilon.as_float
    a = np.array(mech.release([0] * n))
    b = np.array(mech.release([1] * n))
    worst = 0.0
    for t in range(-6, 8):
        for p_set, q_set in (((b >= t), (a >= t)), ((a < t), (b < t))):
            p, q = p_set.mean(), q_set.mean()
            p_low = p - 4 * math.sqrt(max(p * (1 - p), 1 / n) / n)
            q_high = q + 4 * math.sqrt(max(q * (1 - q), 1 / n) / n)
            if p_low - delta > 0 and q_high > 0:
                worst = max(worst, math.log((p_low - delta) / q_high))
    assert worst <= claim, (worst, claim)
    assert worst > 0.2  # the audit has power: it sees a real loss, just not more than claimed


ORGS = {"team-red": "engineering", "team-blue": "engineering", "team-tiny": "sales"}


def _default_chorus(tmp_path, clock: FakeClock) -> Chorus:  # type: ignore[no-untyped-def]
    raw = tomllib.loads(config.DEFAULT_TOML)
    raw["windows"] = {"length": "day", "grace": "2h"}
    chorus = Chorus(config.parse(raw), tmp_path / "data", clock=clock)
    chorus.import_roster(roster_rows(TEAMS), actor="test", orgs=ORGS)
    return chorus


def test_the_default_plan_releases_company_org_and_team_and_the_ledger_verifies(
        tmp_path, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    chorus = _default_chorus(tmp_path, clock)
    try:
        chorus.closer.tick()
        contribute(chorus, *[(f"user-{team}-{i}", "ai.tokens", 1000 * (i + 1))
                             for team, size in TEAMS.items() for i in range(size)])
        clock.advance(timedelta(days=1))
        assert [r.window.id for r in chorus.closer.tick()] == [WINDOW]
        plan = [e["payload"] for e in ledger(chorus) if e["kind"] == "release"]
        where = sorted({(p.get("level", "team"), p.get("node", p.get("team")), p["statistic"], p["metric"])
                        for p in plan})
        ratio = [("sum", "ai.suggestions_accepted"), ("sum", "ai.suggestions_rejected")]  # the edit acceptance ratio
        histograms = [("histogram", m) for m in ("ai.suggestions_accepted", "ai.suggestions_rejected", "ai.tokens")]
        assert where == [("company", "/", "active", ""), *(("company", "/", *h) for h in histograms),
                         *(("company", "/", *r) for r in ratio),
                         ("company", "/", "sum", "ai.tokens"), ("org", "engineering", "active", ""),
                         *(("org", "engineering", *r) for r in ratio), ("org", "engineering", "sum", "ai.tokens"),
                         ("team", "team-blue", "active", ""),
                         ("team", "team-red", "active", "")]  # sales (3 people) and team-tiny are below k
        assert {p["mechanism"] for p in plan} == {"discrete_gaussian"}
        assert all("rho" in p and "epsilon" not in p for p in plan)
        report = _verified(chorus)
        assert report.ok, report.violations
        spent = {t.team: t.spent for t in report.totals.values()}
        assert spent["team-red"] == Rho.parse("0.128")  # company + org + team entries
        assert report.yearly is not None and report.yearly.rho == Rho.parse("0.128")
        assert report.yearly.approx_epsilon == pytest.approx(mechanisms.approx_dp(Rho.parse("0.128"), 1e-8))
        red, = chorus.releases.release(WINDOW, ["team-red"], [], [StatisticRequest("adoption")], "analyst").teams
        assert (red.imprecise, red.counted_in, red.epsilon_charged) == (True, "engineering", Rho(0))
    finally:
        chorus.close()


def test_budgets_and_the_scrape_of_a_default_deployment_are_in_rho(tmp_path, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    """After the plan spends rho, GetBudget names it and the scrape reads the store: the latest
    window's budgets are judged in its own unit (an epsilon reading of a rho window failed the
    whole scrape, so chorus_store_up said 0)."""
    chorus = _default_chorus(tmp_path, clock)
    try:
        chorus.closer.tick()
        contribute(chorus, *[(f"user-team-red-{i}", "ai.tokens", 10) for i in range(6)])
        clock.advance(timedelta(days=1))
        chorus.closer.tick()
        chorus.releases.release(WINDOW, ["team-red"], ["ai.tokens"], [StatisticRequest("sum", Epsilon.parse("0.005"))],
                                "analyst")  # 0.005 left: less than the cheapest default statistic's 0.01
        budgets, _ = chorus.db.read(lambda tx: audit.budgets(tx, WINDOW), name="test_budgets")
        red = next(b for b in budgets if b.team == "team-red")
        assert (red.spent, red.remaining) == (Rho.parse("0.133"), Rho.parse("0.005"))
        text = generate_latest(Metrics(chorus, RateLimiter(1.0, 1, clock)).registry).decode()
    finally:
        chorus.close()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["chorus_store_up"] == 1
    assert samples["chorus_rho_spent"] == pytest.approx(sum(b.spent.micros for b in budgets) / 1e6)
    assert samples["chorus_epsilon_spent"] == 0  # the two units never add up
    cheapest = min(config.parse(tomllib.loads(config.DEFAULT_TOML)).policy.default_charge.values())
    assert samples["chorus_budgets_exhausted"] == sum(b.remaining < cheapest for b in budgets) == 1


@pytest.mark.slow  # a real gRPC server
def test_the_wire_names_the_unit_and_flags_a_team_too_small_for_a_weekly_number(
        tmp_path, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    chorus = _default_chorus(tmp_path, clock)
    chorus.closer.tick()
    contribute(chorus, *[(f"user-{team}-{i}", "ai.tokens", 10) for team, size in TEAMS.items() for i in range(size)])
    clock.advance(timedelta(days=1))
    chorus.closer.tick()
    api = serve(chorus)
    try:
        answer = api.release(teams=("team-red",), statistics=((common_pb2.STATISTIC_ADOPTION, ""),))
    finally:
        api.channel.close()
        api.server.stop(grace=0)  # also closes the Chorus
    red, = answer.teams
    assert (red.unit, red.imprecise, red.counted_in, red.epsilon_charged) == ("rho", True, "engineering", "0")
    assert red.budget_remaining == "0.01"
    assert {r["unit"] for r in records([answer])} == {"rho"}  # `chorus report --format json` and the JSON API


def test_a_record_of_a_server_that_names_no_unit_is_in_epsilon() -> None:
    """Servers before the discrete Gaussian sent no `unit`: their amounts are epsilon."""
    old = release_pb2.ReleaseResponse(window=WINDOW, teams=[release_pb2.TeamRelease(team="team-red", budget_cap="3")])
    record, = records([old])
    assert (record["unit"], record["budget_cap"]) == ("epsilon", "3")


def test_a_request_on_a_gaussian_window_is_charged_in_rho(
        tmp_path, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    chorus = _default_chorus(tmp_path, clock)
    try:
        chorus.closer.tick()
        contribute(chorus, *[(f"user-team-red-{i}", "ai.requests", 10) for i in range(6)])
        clock.advance(timedelta(days=1))
        chorus.closer.tick()
        result = chorus.releases.release(WINDOW, ["team-red"], ["ai.requests"],
                                         [StatisticRequest("sum", Epsilon.parse("0.004"))], "analyst")
        team, = result.teams
        estimate, = team.estimates
        assert (estimate.mechanism, estimate.epsilon_charged) == ("discrete_gaussian", Rho.parse("0.004"))
        assert team.budget_remaining == Rho.parse("0.006")  # 0.138 - the plan's 0.128 - 0.004
    finally:
        chorus.close()
