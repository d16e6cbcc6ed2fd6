"""Bounds from the data: the plan's company histograms (edges halving down to the bound), the share
of people at the bound and a suggested bound read from them for free (`front.bounds`, with a
measured 95% coverage), and `chorus bounds` against a real server."""

from __future__ import annotations

import itertools
import json
import tomllib
from datetime import timedelta

import numpy as np
import pytest
from typer.testing import CliRunner

from chorus.server.cli import app
from chorus.server.front import bounds
from chorus.server.model import config
from chorus.server.model.clock import FakeClock
from chorus.server.model.roles import Role
from chorus.server.privacy import mechanisms
from chorus.server.privacy.epsilon import Rho
from chorus.server.root import Chorus

from .conftest import TEAMS, WINDOW, contribute, roster_rows, serve
from .test_hierarchy import _verified

TOKENS = config.load(None).policy.metric("ai.tokens")
SUMMED = ("ai.tokens", "ai.suggestions_accepted", "ai.suggestions_rejected")


def test_the_default_edges_of_every_summed_metric_halve_down_to_its_bound() -> None:
    policy = config.load(None).policy
    planned = {e.metric for e in policy.release_plan if e.statistic == "histogram" and e.level == "company"}
    assert planned == set(SUMMED)
    for name in SUMMED:
        metric = policy.metric(name)
        assert metric is not None
        edges = metric.histogram_edges
        assert edges[-1] == metric.max_per_user  # the last bucket holds exactly the people at the bound
        assert all(abs(b / a - 2) < 0.1 for a, b in itertools.pairwise(edges))


def _exact(totals: list[int], edges: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(n) for n in np.bincount(np.searchsorted(edges, totals, side="right"), minlength=len(edges) + 1))


def test_a_reading_without_noise_finds_the_share_at_the_bound_and_the_95_percent_edge() -> None:
    assert TOKENS is not None
    totals = [1_000] * 50 + [40_000] * 900 + [200_000] * 40 + [500_000] * 10  # 1% at the bound
    tiny = mechanisms.calibrate(1, Rho.parse("1000")).scale
    reading = bounds.read("ai.tokens", TOKENS.max_per_user, TOKENS.histogram_edges,
                          [bounds.Histogram(_exact(totals, TOKENS.histogram_edges), tiny)], mechanisms.GAUSSIAN)
    assert reading.last_edge_is_bound and reading.people == 1000
    assert reading.at_bound[0] == pytest.approx(0.01) and reading.at_bound[1] < 0.005
    # 5% are at or above 62,500 (the 200,000s and the 500,000s), 95% stay below it
    assert reading.suggested == 62_500 and reading.above_suggested[0] == pytest.approx(0.05)
    heavy = [500_000] * 100 + [1_000] * 900  # 10% clamped: the bound bites, no edge leaves 5% above it
    bites = bounds.read("ai.tokens", TOKENS.max_per_user, TOKENS.histogram_edges,
                        [bounds.Histogram(_exact(heavy, TOKENS.histogram_edges), tiny)], mechanisms.GAUSSIAN)
    assert bites.suggested is None and bites.at_bound[0] == pytest.approx(0.1)


def test_a_histogram_of_other_buckets_is_refused_naming_the_counts() -> None:
    with pytest.raises(ValueError, match=r"a histogram of ai\.tokens has 3 buckets; its 9 edges make 10"):
        bounds.read("ai.tokens", 500_000, TOKENS.histogram_edges,  # type: ignore[union-attr]
                    [bounds.Histogram((1, 2, 3), 1.0)], mechanisms.GAUSSIAN)


@pytest.mark.slow  # 8 windows x 4,000 draws of OpenDP's noise on 10 buckets
def test_the_share_at_the_bound_covers_the_truth_in_95_percent_of_readings_over_8_windows() -> None:
    assert TOKENS is not None
    rng = np.random.default_rng(7)
    mech = mechanisms.calibrate(1, Rho.parse("0.001"), vector=True)  # the plan's charge
    exact = [_exact(np.minimum(rng.lognormal(np.log(50_000), 1.5, 650), 500_000).astype(int).tolist(),
                    TOKENS.histogram_edges) for _ in range(8)]
    truth = sum(h[-1] for h in exact) / sum(sum(h) for h in exact)
    draws = 4_000
    noisy = [mech.release_histograms([list(h)] * draws) for h in exact]
    hits = 0
    for i in range(draws):
        reading = bounds.read("ai.tokens", 500_000, TOKENS.histogram_edges,
                              [bounds.Histogram(tuple(noisy[w][i]), mech.scale) for w in range(8)], mech.mechanism)
        hits += abs(reading.at_bound[0] - truth) <= reading.at_bound[1]
    assert 0.02 < truth < 0.1 and hits / draws >= 0.945


def _company(tmp_path, clock: FakeClock, windows: int) -> Chorus:  # type: ignore[no-untyped-def]
    raw = tomllib.loads(config.DEFAULT_TOML)
    raw["windows"] = {"length": "day", "grace": "2h"}
    chorus = Chorus(config.parse(raw), tmp_path / "data", clock=clock)
    chorus.import_roster(roster_rows(TEAMS), actor="test")
    for _ in range(windows):
        chorus.closer.tick()
        contribute(chorus, *[(f"user-{team}-{i}", "ai.tokens", 600_000 if i == 0 else 20_000)
                             for team, size in TEAMS.items() for i in range(size)])
        clock.advance(timedelta(days=1))
        chorus.closer.tick()
    return chorus


def test_the_plan_releases_the_company_histograms_at_close_and_the_ledger_verifies(
        tmp_path, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    chorus = _company(tmp_path, clock, 1)
    try:
        company, = chorus.releases.release(WINDOW, [], [], [], "analyst", ["/"], validate_only=True).teams
        histograms = {e.metric: e for e in company.estimates if e.statistic == "histogram"}
        assert set(histograms) == set(SUMMED)
        tokens = histograms["ai.tokens"]
        assert tokens.cached and tokens.epsilon == mechanisms.calibrate(1, Rho.parse("0.001"), True).epsilon
        assert len(tokens.noisy_buckets) == len(tokens.histogram_edges) + 1 == 10
        assert tokens.bucket_counts == tuple(max(0, v) for v in tokens.noisy_buckets)
        assert _verified(chorus).ok
    finally:
        chorus.close()


@pytest.mark.slow  # a real gRPC server
def test_chorus_bounds_reads_the_released_histograms_and_charges_nothing(
        tmp_path, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    chorus = _company(tmp_path, clock, 3)
    api = serve(chorus)
    try:
        secret, _ = chorus.tokens.create(Role.ANALYST, "operator", clock.now(), actor="test")
        spent = chorus.db.read(lambda tx: tx.query("SELECT SUM(spent_micros) FROM budgets"), name="t")
        args = ["bounds", "--server", api.server.address, "--token", secret]
        table = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
        assert table.exit_code == 0, table.output
        assert "from the company histograms of the last 3 closed window(s)" in table.output
        assert "Nothing was charged" in table.output
        records = json.loads(CliRunner().invoke(app, [*args, "--format", "json"]).output)
        assert chorus.db.read(lambda tx: tx.query("SELECT SUM(spent_micros) FROM budgets"), name="t") == spent
    finally:
        api.channel.close()
        api.server.stop(grace=0)
    assert [r["metric"] for r in records] == list(SUMMED)  # the plan's histograms, used or not
    tokens = records[0]
    assert (tokens["bound"], tokens["windows"], tokens["last_edge_is_bound"]) == (500_000, 3, True)
    assert 0 <= tokens["at_bound"] <= 1 and tokens["at_bound_ci95"] > 0


def test_privacy_md_states_the_plans_histogram_charge_and_its_bucket_interval() -> None:
    from pathlib import Path

    from chorus.server.cli.bounds import bounds as command
    from chorus.server.model.policy import expected_ci95

    doc = " ".join((Path(__file__).resolve().parents[2] / "docs/privacy.md").read_text().split())
    policy = config.load(None).policy
    charges = {str(e.charge) for e in policy.release_plan if e.statistic == "histogram"}
    half = expected_ci95("histogram", TOKENS, Rho.parse("0.001"), 0)
    assert charges == {"0.001"} and round(half) == 45
    assert f"At rho 0.001 a bucket is known to about ±{round(half)} people a week" in doc
    assert "the last closed windows (8 by default;" in doc and command.__defaults__[0] == 8  # type: ignore[index]
    assert "only those with the newest window's buckets and mechanism" in doc  # the test above


def test_windows_of_another_mechanism_or_other_buckets_are_not_added_up() -> None:
    """One interval is never computed over two kinds of noise (a policy switched mechanism within
    the windows read) nor over different buckets: only the newest window's kind is kept."""
    from chorus.server.cli.bounds import histograms
    from chorus.v1 import common_pb2, release_pb2

    def reply(mechanism: str, edges: list[int], counts: list[int]) -> release_pb2.ReleaseResponse:
        estimate = release_pb2.Estimate(metric="ai.tokens", statistic=common_pb2.STATISTIC_HISTOGRAM,
                                        histogram_edges=edges, noisy_bucket_counts=counts, scale=2.0,
                                        mechanism=mechanism)
        return release_pb2.ReleaseResponse(teams=[release_pb2.TeamRelease(team="/", estimates=[estimate])])

    metric = release_pb2.Metric(name="ai.tokens", max_per_user=100, histogram_edges=[50, 100])
    replies = [reply("discrete_gaussian", [50, 100], [5, 3, 1]), reply("discrete_laplace", [50, 100], [9, 9, 9]),
               reply("discrete_gaussian", [10, 100], [7, 7, 7]), reply("discrete_gaussian", [50, 100], [4, 2, 2])]
    kept, mechanism = histograms(replies, {"ai.tokens": metric})["ai.tokens"]
    assert mechanism == "discrete_gaussian"
    assert [h.buckets for h in kept] == [(5, 3, 1), (4, 2, 2)]
