"""The `ratio` statistic: a noisy sum over noisy sums, charged exactly as its sums, with a 95%
interval (Fieller's) whose coverage is measured over many draws of OpenDP's own noise for both
mechanisms; in the plan, in answers, on the wire and in the verified ledger."""

from __future__ import annotations

import tomllib
from datetime import timedelta

import grpc
import numpy as np
import pytest

from chorus.server.domain.release import InvalidRequest, NotFound, StatisticRequest
from chorus.server.model import config
from chorus.server.model.clock import FakeClock
from chorus.server.privacy import mechanisms
from chorus.server.privacy.epsilon import Epsilon, Loss, Rho
from chorus.server.root import Chorus
from chorus.v1 import common_pb2, release_pb2

from .conftest import TEAMS, WINDOW, contribute, roster_rows, serve
from .test_hierarchy import _verified

ACCEPTED, REJECTED = "ai.suggestions_accepted", "ai.suggestions_rejected"
DECIDED = (ACCEPTED, REJECTED)
#: 20,000 draws estimate a coverage within about 0.0015 (one standard error): 0.947 is 2 of them.
DRAWS = 20_000


def _draws(charge: Loss, accepted: int, other: int, nested: bool) -> tuple[float, np.ndarray, np.ndarray]:
    """(true ratio, reported ratios, half-widths) over DRAWS releases of both sums at bound 500."""
    mech = mechanisms.calibrate(500, charge)
    truth = accepted / (accepted + other) if nested else accepted / other
    values, widths = [], []
    for x, y in zip(mech.release([accepted] * DRAWS), mech.release([other] * DRAWS), strict=True):
        value, ci95 = mechanisms.ratio_interval([(x, mech.scale)], [(y, mech.scale)], nested, mech.mechanism)
        values.append(value)
        widths.append(ci95)
    return truth, np.array(values), np.array(widths)


@pytest.mark.slow  # 16 x 40,000 exact OpenDP draws: about 15 s
@pytest.mark.parametrize("charge", [Rho.parse("0.004"), Rho.parse("0.05"), Epsilon.parse("0.5"), Epsilon.parse("3")])
@pytest.mark.parametrize(("accepted", "other", "nested"), [
    (45_000, 19_000, True),   # a company's edits: accepted over accepted + rejected
    (4_500, 1_900, True),     # an org's: often within the noise of nothing
    (30_000, 6_000, False),   # lines over sessions: no upper end
    (200, 50, True),          # a ratio with almost no signal: the interval says so
])
def test_the_ratio_interval_covers_the_true_ratio_in_95_percent_of_draws(
        charge: Loss, accepted: int, other: int, nested: bool) -> None:
    truth, values, widths = _draws(charge, accepted, other, nested)
    assert np.all((values >= 0) & (values <= (1 if nested else np.inf)))
    assert np.mean(np.abs(values - truth) <= widths) >= 0.947


@pytest.mark.slow  # 2 x 40,000 exact OpenDP draws
@pytest.mark.parametrize("charge", [Rho.parse("0.004"), Epsilon.parse("0.5")])
def test_a_share_is_at_most_1_5_times_the_exact_simulated_interval(charge: Loss) -> None:
    truth, values, widths = _draws(charge, 450_000, 190_000, True)
    assert np.median(widths) <= 1.5 * np.quantile(np.abs(values - truth), 0.95)


def test_a_denominator_within_its_noise_of_zero_claims_only_the_range() -> None:
    scale = mechanisms.calibrate(500, Rho.parse("0.004")).scale  # about 5,600
    assert mechanisms.ratio_interval([(300, scale)], [(100, scale)], True, mechanisms.GAUSSIAN) == (0.75, 0.75)
    value, ci95 = mechanisms.ratio_interval([(300, scale)], [(100, scale)], False, mechanisms.GAUSSIAN)
    assert value == 3.0 and ci95 == float("inf")
    # a negative noisy denominator: the ratio is shown as 0, still claiming the whole range
    assert mechanisms.ratio_interval([(-50, scale)], [(-900, scale)], True, mechanisms.GAUSSIAN) == (0.0, 1.0)


def test_a_ratio_entry_is_frozen_with_its_denominator_and_read_back() -> None:
    policy = config.load(None).policy
    frozen = [e for e in policy.to_json()["release_plan"] if e["statistic"] == "ratio"]
    assert [e["denominator"] for e in frozen] == [list(DECIDED)] * 2
    assert "denominator" not in next(e for e in policy.to_json()["release_plan"] if e["statistic"] == "sum")
    assert type(policy).from_json(policy.to_json()) == policy
    ratio = next(e for e in policy.release_plan if e.statistic == "ratio")
    assert ratio.noisy_parts() == [(ACCEPTED, "sum"), (REJECTED, "sum")]  # what the verifier accepts as planned


def _chorus(tmp_path, clock: FakeClock) -> Chorus:  # type: ignore[no-untyped-def]
    raw = tomllib.loads(config.DEFAULT_TOML)
    raw["windows"] = {"length": "day", "grace": "2h"}
    chorus = Chorus(config.parse(raw), tmp_path / "data", clock=clock)
    chorus.import_roster(roster_rows(TEAMS), actor="test", orgs={"team-red": "eng", "team-blue": "eng",
                                                                  "team-tiny": "sales"})
    chorus.closer.tick()
    contribute(chorus, *[(f"user-{team}-{i}", metric, value) for team, size in TEAMS.items() for i in range(size)
                         for metric, value in ((ACCEPTED, 40), (REJECTED, 10), ("ai.lines_added", 900),
                                               ("ai.sessions", 12))])
    clock.advance(timedelta(days=1))
    chorus.closer.tick()  # closes the window and releases the default plan
    return chorus


def test_a_ratio_charges_exactly_its_sums_and_names_them(tmp_path, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    chorus = _chorus(tmp_path, clock)
    try:
        rho = Rho.parse("0.004")
        ask = [StatisticRequest("ratio", rho, ("ai.sessions",))]
        preview, = chorus.releases.release(WINDOW, ["team-red"], ["ai.lines_added"], ask, "analyst",
                                           validate_only=True).teams
        assert [(u.metric, u.statistic, u.epsilon) for u in preview.unreleased] == [("ai.lines_added", "ratio",
                                                                                      rho + rho)]
        assert preview.epsilon_required == rho + rho  # two sums, nothing more
        team, = chorus.releases.release(WINDOW, ["team-red"], ["ai.lines_added"], ask, "analyst").teams
        lines, sessions, ratio = team.estimates
        assert [(e.metric, e.statistic) for e in (lines, sessions)] == [("ai.lines_added", "sum"),
                                                                        ("ai.sessions", "sum")]
        sums = mechanisms.calibrate(500, rho), mechanisms.calibrate(20_000, rho)
        assert (sessions.epsilon_charged, lines.epsilon_charged) == (sums[0].epsilon, sums[1].epsilon)
        assert team.epsilon_charged == sums[0].epsilon + sums[1].epsilon  # OpenDP's maps of the two sums
        assert (ratio.statistic, ratio.epsilon_charged, ratio.mechanism) == ("ratio", Rho(0), "post_processing")
        assert ratio.derived_from == (lines.release_id, sessions.release_id)
        assert ratio.denominator == ("ai.sessions",)
        assert (ratio.value, ratio.ci95) == mechanisms.ratio_interval(
            [(int(lines.noisy_value), lines.scale)], [(int(sessions.noisy_value), sessions.scale)], False,  # type: ignore[arg-type]
            mechanisms.GAUSSIAN)
        # asking again is free and identical; the sum it shares is already released
        again, = chorus.releases.release(WINDOW, ["team-red"], ["ai.lines_added"], ask, "analyst").teams
        assert again.estimates[2] == ratio._replace(cached=True) and again.epsilon_charged == Rho(0)
        total, = chorus.releases.release(WINDOW, ["team-red"], ["ai.sessions"], [StatisticRequest("sum")],
                                         "analyst").teams
        assert total.epsilon_charged == Rho(0) and total.estimates[0].release_id == sessions.release_id
        assert _verified(chorus).ok
    finally:
        chorus.close()


def test_the_default_plan_releases_edit_acceptance_at_the_company_and_every_org(
        tmp_path, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    chorus = _chorus(tmp_path, clock)
    try:
        result = chorus.releases.release(WINDOW, [], [ACCEPTED], [StatisticRequest("ratio", None, DECIDED)],
                                         "analyst", ["/", "eng"], validate_only=True)
        for node in result.teams:
            assert node.epsilon_required == Rho(0) and not node.unreleased  # released by the plan
            ratio = node.estimates[-1]
            assert (ratio.statistic, ratio.metric, ratio.denominator) == ("ratio", ACCEPTED, DECIDED)
            assert 0 <= ratio.value <= 1 and ratio.cached
            assert len(ratio.derived_from) == 2  # the sums of accepted and of rejected, each once
        report = _verified(chorus)
        assert report.ok, report.violations
    finally:
        chorus.close()


BAD_REQUESTS: list[tuple[list[str], list[StatisticRequest], type[Exception], str]] = [
    ([ACCEPTED], [StatisticRequest("ratio")], InvalidRequest,
     r"statistics\[0\]\.denominator is empty: a ratio names the metrics"),
    ([ACCEPTED], [StatisticRequest("sum", None, ("ai.sessions",))], InvalidRequest,
     r"statistics\[0\]\.denominator is for a ratio; sum takes none"),
    ([ACCEPTED], [StatisticRequest("ratio", None, ("ai.nope",))], NotFound,
     r"metric 'ai.nope' is not in the policy of window"),
    ([ACCEPTED], [StatisticRequest("ratio", None, (ACCEPTED,))], InvalidRequest,
     r"a ratio of ai.suggestions_accepted over itself is 1"),
    (list(DECIDED), [StatisticRequest("ratio", None, (ACCEPTED,))], InvalidRequest,  # one of several numerators
     r"a ratio of ai.suggestions_accepted over itself is 1"),
    ([], [StatisticRequest("ratio", None, DECIDED)], InvalidRequest,
     r"metrics is empty: a ratio divides the sum of each requested"),
]


def test_each_of_several_numerators_over_their_sum_is_a_share_charging_each_sum_once(
        tmp_path, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    """accepted and rejected, each over accepted + rejected: two shares, from two sums."""
    chorus = _chorus(tmp_path, clock)
    try:
        rho = Rho.parse("0.004")
        team, = chorus.releases.release(WINDOW, ["team-red"], list(DECIDED), [StatisticRequest("ratio", rho, DECIDED)],
                                        "analyst").teams
        sums = [e for e in team.estimates if e.statistic == "sum"]
        shares = [e for e in team.estimates if e.statistic == "ratio"]
        assert sorted(e.metric for e in sums) == sorted(DECIDED) and [e.metric for e in shares] == list(DECIDED)
        assert team.epsilon_charged == sum((e.epsilon_charged for e in sums), Rho(0))  # each sum once
        assert all(e.denominator == DECIDED and 0 <= e.value <= 1 for e in shares)
    finally:
        chorus.close()


def test_a_bad_ratio_request_is_refused_naming_the_field(tmp_path, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    chorus = _chorus(tmp_path, clock)
    try:
        for metrics, statistics, error, message in BAD_REQUESTS:
            with pytest.raises(error, match=message):
                chorus.releases.release(WINDOW, ["team-red"], metrics, statistics, "analyst")
    finally:
        chorus.close()


@pytest.mark.slow  # a real gRPC server
def test_the_wire_carries_the_denominator_both_ways(tmp_path, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    api = serve(_chorus(tmp_path, clock))
    try:
        answer = api.stub.Release(release_pb2.ReleaseRequest(
            window=WINDOW, nodes=["/"], metrics=[ACCEPTED], validate_only=True,
            statistics=[release_pb2.StatisticRequest(statistic=common_pb2.STATISTIC_RATIO, denominator=DECIDED)]),
            metadata=api.metadata, timeout=60)
        with pytest.raises(grpc.RpcError) as refused:
            api.stub.Release(release_pb2.ReleaseRequest(window=WINDOW, nodes=["/"], metrics=[ACCEPTED], statistics=[
                release_pb2.StatisticRequest(statistic=common_pb2.STATISTIC_RATIO)]), metadata=api.metadata, timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "statistics[0].denominator is empty" in (refused.value.details() or "")
    finally:
        api.channel.close()
        api.server.stop(grace=0)
    company, = answer.teams
    ratio = company.estimates[-1]
    assert (ratio.statistic, ratio.metric, tuple(ratio.denominator)) == (common_pb2.STATISTIC_RATIO, ACCEPTED, DECIDED)
    assert 0 < ratio.ci95 <= 1 and len(ratio.derived_from) == 2
