"""The mechanisms: charge = OpenDP's privacy map, scale from the sensitivity, honest intervals."""

from __future__ import annotations

import random

import opendp.prelude as dp
import pytest

from chorus.server.privacy import mechanisms
from chorus.server.privacy.epsilon import Epsilon

EPSILONS = ["0.05", "0.1", "0.3", "0.7", "0.123457", "1"]
SENSITIVITIES = [1, 3, 7, 2000, 200_000]
DRAWS = 4000


def _space(vector: bool) -> tuple[dp.Domain, dp.Metric]:
    if vector:
        return dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")
    return dp.atom_domain(T="i64"), dp.absolute_distance(T="i64")


@pytest.mark.parametrize("vector", [False, True])
@pytest.mark.parametrize("eps_text", EPSILONS)
@pytest.mark.parametrize("sensitivity", SENSITIVITIES)
def test_charge_is_opendps_privacy_map_and_never_more_than_requested(
        sensitivity: int, eps_text: str, vector: bool) -> None:
    requested = Epsilon.parse(eps_text)
    mech = mechanisms.calibrate(sensitivity, requested, vector)
    # An independent measurement at the stated scale: the map is what the charge says.
    independent = dp.m.make_laplace(*_space(vector), mech.scale)
    assert mech.epsilon == Epsilon.ceil(independent.map(sensitivity))
    assert mech.epsilon == Epsilon.ceil(mech.measurement.map(sensitivity))
    # Noise is drawn by the batch measurement (vector, L1, same scale): its map is the charge too.
    assert mech.epsilon == Epsilon.ceil(mech.batch.map(sensitivity))
    assert mech.batch.input_space == _space(True)
    assert mech.epsilon <= requested
    # Nudging costs at most a micro-epsilon of utility, never privacy.
    assert requested.micros - mech.epsilon.micros <= 1
    # The scale is the textbook sensitivity / epsilon, nudged up by float steps only.
    assert mech.scale >= sensitivity / requested.as_float
    assert mech.scale == pytest.approx(sensitivity / requested.as_float, rel=1e-12)


def test_float_rounding_of_the_request_is_nudged_away() -> None:
    """float(0.1) is slightly above 1/10: at scale 10 the map would round up to 0.100001."""
    naive = dp.m.make_laplace(*_space(False), 1 / 0.1)
    assert Epsilon.ceil(naive.map(1)) == Epsilon.parse("0.100001")
    mech = mechanisms.calibrate(1, Epsilon.parse("0.1"))
    assert mech.epsilon == Epsilon.parse("0.1") and mech.scale > 10.0


def test_interval_is_opendps_accuracy_at_alpha_005() -> None:
    mech = mechanisms.calibrate(1, Epsilon.parse("0.05"))
    assert mech.ci95 == dp.discrete_laplacian_scale_to_accuracy(mech.scale, alpha=0.05)
    assert mech.ci95 == pytest.approx(60.408, abs=0.01)


@pytest.mark.parametrize(("sensitivity", "eps_text", "true_value"), [
    (1, "0.05", 17),             # a count at the default epsilon (scale 20)
    (200_000, "0.05", 777_777),  # a token sum at the default epsilon (scale 4e6)
    (2000, "0.3", 12_345),
])
def test_95_percent_interval_covers_95_percent_of_draws(sensitivity: int, eps_text: str,
                                                        true_value: int) -> None:
    mech = mechanisms.calibrate(sensitivity, Epsilon.parse(eps_text))
    hits = sum(abs(noisy - true_value) <= mech.ci95 for noisy in mech.release([true_value] * DRAWS))
    assert 0.935 <= hits / DRAWS <= 0.965


def test_histogram_interval_covers_each_bucket() -> None:
    mech = mechanisms.calibrate(1, Epsilon.parse("0.05"), vector=True)
    truth = [3, 0, 9, 1]
    hits = 0
    for noisy in mech.release_histograms([truth] * (DRAWS // len(truth))):
        hits += sum(abs(n - t) <= mech.ci95 for n, t in zip(noisy, truth, strict=True))
    assert 0.935 <= hits / DRAWS <= 0.965


def test_batched_draws_are_independent_per_release() -> None:
    """One OpenDP call for many teams: each coordinate gets its own noise."""
    mech = mechanisms.calibrate(1, Epsilon.parse("0.05"))
    noisy = mech.release([100] * 200)
    assert len(set(noisy)) > 50
    assert sum(noisy) / len(noisy) == pytest.approx(100, abs=10)  # mean noise 0, sd 28 / sqrt(200)
    hists = mechanisms.calibrate(1, Epsilon.parse("0.05"), vector=True).release_histograms(
        [[1, 2], [3], [], [4, 5, 6]])
    assert [len(h) for h in hists] == [2, 1, 0, 3]


def test_interval_stays_finite_and_honest_at_tiny_scales() -> None:
    # OpenDP's accuracy formula returns -inf at scale 0.001; the fallback bound is used.
    assert dp.discrete_laplacian_scale_to_accuracy(0.001, alpha=0.05) == float("-inf")
    half_width = mechanisms.accuracy(0.001, 0.05)
    assert 0 < half_width < 1  # the noise is 0 except with probability ~1e-434


def test_inputs_are_clamped_before_opendp() -> None:
    # Epsilon 1000 at sensitivity 1: scale 0.001, so the noise is 0 with overwhelming probability.
    mech = mechanisms.calibrate(1, Epsilon.parse("1000"))
    assert mech.release([-5, 2**63 - 1, 7]) == [0, mechanisms.I64_SAFE, 7]
    vec = mechanisms.calibrate(1, Epsilon.parse("1000"), vector=True)
    assert vec.release_histograms([[-3, 4], [2**63 - 1]]) == [[0, 4], [mechanisms.I64_SAFE]]


def test_scalar_and_vector_mechanisms_are_not_interchangeable() -> None:
    with pytest.raises(TypeError):
        mechanisms.calibrate(1, Epsilon.parse("0.1")).release_histograms([[1]])
    with pytest.raises(TypeError):
        mechanisms.calibrate(1, Epsilon.parse("0.1"), vector=True).release([1])


@pytest.mark.parametrize(("total", "people"), [(4_000, 40), (150, 3), (0, 0), (20_000, 200)])
def test_mean_interval_is_honest(total: int, people: int) -> None:
    """Union-bound interval: covers the true mean in at least 95% of draws."""
    bound = 100
    s = mechanisms.calibrate(bound, Epsilon.parse("0.5"))
    c = mechanisms.calibrate(1, Epsilon.parse("0.5"))
    truth = total / max(people, 1)
    hits = 0
    for noisy_sum, noisy_count in zip(s.release([total] * DRAWS), c.release([people] * DRAWS), strict=True):
        value, ci95 = mechanisms.mean_interval(noisy_sum, s.scale, noisy_count, c.scale, bound)
        assert 0 <= value <= bound
        hits += abs(value - truth) <= ci95
    assert hits / DRAWS >= 0.95


def test_mean_interval_stays_wide_when_the_noisy_sum_is_far_below_zero() -> None:
    s = mechanisms.calibrate(200_000, Epsilon.parse("0.05"))  # scale 4e6: a is about 14.8 million
    c = mechanisms.calibrate(1, Epsilon.parse("0.05"))
    # The count could be as low as 1 (46 - 74), so the mean could be anything in [0, U].
    assert mechanisms.mean_interval(-16_863_823, s.scale, 46, c.scale, 200_000) == (0.0, 200_000.0)
    # With a precise count the upper end is a / count: still honest, no longer the whole range.
    precise = mechanisms.calibrate(1, Epsilon.parse("1000"))
    value, ci95 = mechanisms.mean_interval(-16_863_823, s.scale, 460, precise.scale, 200_000)
    a, b = mechanisms.accuracy(s.scale, 0.025), mechanisms.accuracy(precise.scale, 0.025)
    assert value == 0.0 and ci95 == pytest.approx(a / (460 - b))


def test_mean_interval_never_collapses_when_the_noisy_sum_is_far_above_the_bound() -> None:
    s = mechanisms.calibrate(200_000, Epsilon.parse("0.05"))
    c = mechanisms.calibrate(1, Epsilon.parse("0.05"))
    # 40 million over a count of 1: the mean is clamped to U, and the interval is all of [0, U].
    assert mechanisms.mean_interval(40_000_000, s.scale, 1, c.scale, 200_000) == (200_000.0, 200_000.0)


def test_adoption_interval_is_the_active_interval_over_the_roster() -> None:
    mech = mechanisms.calibrate(1, Epsilon.parse("0.5"))
    roster, active = 40, 25
    hits = 0
    for noisy in mech.release([active] * DRAWS):
        value, ci95 = mechanisms.adoption_interval(noisy, mech.scale, roster)
        assert ci95 == pytest.approx(min(mech.ci95 / roster, max(value, 1 - value)))
        assert 0.0 <= value <= 1.0
        hits += abs(value - active / roster) <= ci95
    # Discrete noise at scale 2 and clamping into [0, 1] make it a little conservative.
    assert 0.935 <= hits / DRAWS <= 0.99


def test_adoption_half_width_stops_at_the_far_end_of_0_to_1() -> None:
    wide = mechanisms.calibrate(1, Epsilon.parse("0.05"))  # +-60 people
    assert mechanisms.adoption_interval(4, wide.scale, 10) == (0.4, 0.6)
    assert mechanisms.adoption_interval(-3, wide.scale, 10) == (0.0, 1.0)


def test_calibration_rejects_zero_epsilon_and_sensitivity() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        mechanisms.calibrate(1, Epsilon(0))
    with pytest.raises(ValueError, match="sensitivity"):
        mechanisms.calibrate(0, Epsilon.parse("0.1"))


def test_release_draws_fresh_noise_each_time() -> None:
    mech = mechanisms.calibrate(1, Epsilon.parse("0.05"))
    random.seed(0)  # Python's RNG is not the noise source: reseeding changes nothing
    first = mech.release([100] * 20)
    random.seed(0)
    assert first != mech.release([100] * 20)
