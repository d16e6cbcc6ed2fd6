"""Integer noise from OpenDP, calibrated so a charge never exceeds the request.

Everything released is an integer (a clamped sum, a count of people, people per bucket),
so the mechanisms are OpenDP's integer ones on i64: exact sampling, no floating-point side
channel. Only the "contrib" feature is enabled. Two mechanisms, chosen by the unit of the
charge (a window's policy freezes one):

- `discrete_laplace`, charged in pure epsilon (`Epsilon`), L1 sensitivity;
- `discrete_gaussian`, charged in zCDP rho (`Rho`), L2 sensitivity. Rho adds up over
  releases, and a total rho is turned into (epsilon, delta) by OpenDP (`approx_dp`).

Calibration: scale = sensitivity / epsilon (Laplace) or sensitivity / sqrt(2 rho)
(Gaussian) as a starting point only, nudged up one float step at a time until OpenDP's own
privacy map at the sensitivity, rounded up to whole micro-units, is within the request.
That rounded map value is what the budget is charged.

Mean, adoption and ratio are post-processing of released values; their intervals are derived
here from the released values' noise scales, deterministically.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from statistics import NormalDist

import opendp.prelude as dp

from chorus.server.privacy.epsilon import Epsilon, Loss, Rho
from chorus.server.privacy.sums import noise_std

dp.enable_features("contrib")

LAPLACE = "discrete_laplace"
GAUSSIAN = "discrete_gaussian"
#: Each mechanism's unit of charge.
UNITS: dict[str, type[Loss]] = {LAPLACE: Epsilon, GAUSSIAN: Rho}
POST_PROCESSING = "post_processing"
#: 1 - confidence of every reported interval.
ALPHA = 0.05
#: Inputs are clamped to [0, I64_SAFE] so that value plus noise stays far from the i64
#: limits, where OpenDP would saturate instead of adding the noise.
I64_SAFE = 2**62
# Each nudge moves the scale by one ulp; the map is monotone in the scale, so a handful of
# steps always suffices. The cap only turns a broken invariant into an error.
_MAX_NUDGES = 1000


def clamp(value: int, lower: int, upper: int) -> int:
    return lower if value < lower else upper if value > upper else value


def mechanism_of(charge: Loss) -> str:
    """The mechanism a charge's unit calls for: epsilon -> discrete Laplace, rho -> discrete Gaussian."""
    for name, unit in UNITS.items():
        if isinstance(charge, unit):
            return name
    raise TypeError(f"no mechanism charges in {charge.UNIT}")


@dataclass(frozen=True, slots=True)
class Calibrated:
    """Integer noise at one scale for releases of one sensitivity, with charge and interval.

    `measurement` releases one value (atom domain, absolute distance) or one histogram
    (vector domain, L1 distance for Laplace, L2 for Gaussian). `batch` is the vector measurement at the same scale: it
    draws the noise of many releases of this calibration in one OpenDP call, each coordinate
    with independent noise of exactly the same distribution. The charge is the larger of the
    two privacy maps at the sensitivity (they agree), so it covers the mechanism that ran.

    A batch holds one value (or one histogram) per team, and a person counts for exactly one
    team in a window, so one person moves a batch by at most `sensitivity` in L1: each team
    in it pays the charge, and no team pays for another (parallel composition).
    """

    sensitivity: int
    scale: float
    #: The charge: OpenDP's privacy map at `sensitivity`, rounded up to micro-units (epsilon or rho).
    epsilon: Loss
    #: Half-width of the 95% interval around a released value (each bucket of a histogram).
    ci95: float
    vector: bool
    #: LAPLACE or GAUSSIAN.
    mechanism: str
    measurement: dp.Measurement = field(repr=False, compare=False)
    batch: dp.Measurement = field(repr=False, compare=False)

    def release(self, values: Sequence[int]) -> list[int]:
        """One independent release per value, each input clamped to [0, I64_SAFE] first."""
        if self.vector:
            raise TypeError("this calibration is for histograms; use release_histograms")
        return self._draw(values)

    def release_histograms(self, histograms: Sequence[Sequence[int]]) -> list[list[int]]:
        """One independent release per histogram (noise on every bucket), inputs clamped."""
        if not self.vector:
            raise TypeError("this calibration is for single values; use release")
        noisy = iter(self._draw([count for h in histograms for count in h]))
        return [[next(noisy) for _ in h] for h in histograms]

    def _draw(self, values: Sequence[int]) -> list[int]:
        # OpenDP does not check the domain when invoked: clamp here, explicitly.
        if not values:
            return []
        return [int(v) for v in self.batch([clamp(v, 0, I64_SAFE) for v in values])]


@functools.lru_cache(maxsize=512)
def calibrate(sensitivity: int, epsilon: Loss, vector: bool = False) -> Calibrated:
    """Noise for `sensitivity` (L1 or L2 for a histogram) charging at most `epsilon`: the
    discrete Laplace for an `Epsilon`, the discrete Gaussian for a `Rho`.

    Cached: measurements are immutable, and a full report needs only a few distinct ones.
    """
    if sensitivity < 1:
        raise ValueError(f"sensitivity must be >= 1, got {sensitivity}")
    if epsilon.micros == 0:
        raise ValueError(f"{epsilon.UNIT} must be greater than 0")
    mechanism = mechanism_of(epsilon)
    gaussian = mechanism == GAUSSIAN
    vectors = (dp.vector_domain(dp.atom_domain(T="i64")),
               dp.l2_distance(T="i64") if gaussian else dp.l1_distance(T="i64"))
    single = vectors if vector else (dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"))
    make = dp.m.make_gaussian if gaussian else dp.m.make_laplace
    scale = sensitivity / math.sqrt(2 * epsilon.as_float) if gaussian else sensitivity / epsilon.as_float
    unit = type(epsilon)
    for _ in range(_MAX_NUDGES):
        measurement = make(single[0], single[1], scale)
        batch = measurement if vector else make(vectors[0], vectors[1], scale)
        charge = unit.ceil(max(measurement.map(sensitivity), batch.map(sensitivity)))
        if charge <= epsilon:
            return Calibrated(sensitivity, scale, charge, accuracy(scale, ALPHA, mechanism), vector, mechanism,
                              measurement, batch)
        scale = math.nextafter(scale, math.inf)
    raise RuntimeError(f"could not calibrate {mechanism} for sensitivity {sensitivity} "
                       f"within {epsilon.UNIT} {epsilon}")


def approx_dp(rho: Rho, delta: float) -> float:
    """The epsilon of (epsilon, delta)-DP that a total zCDP loss `rho` amounts to, per OpenDP's
    `make_zCDP_to_approxDP`: applied to a Gaussian measurement whose privacy map at the chosen
    input distance is at least `rho` (nudged up until it is), so the epsilon is never understated."""
    if rho.micros == 0:
        return 0.0
    unit = dp.m.make_gaussian(dp.atom_domain(T="f64", nan=False), dp.absolute_distance(T="f64"), 1.0)
    d_in = math.sqrt(2 * rho.as_float)
    for _ in range(_MAX_NUDGES):
        if Fraction(unit.map(d_in)) >= rho.exact:
            return float(dp.c.make_zCDP_to_approxDP(unit).map(d_in).epsilon(delta))
        d_in = math.nextafter(d_in, math.inf)
    raise RuntimeError(f"could not convert rho {rho} to (epsilon, delta)")


@functools.lru_cache(maxsize=4096)
def accuracy(scale: float, alpha: float, mechanism: str = LAPLACE) -> float:
    """Half-width a with P(|noise| >= a) = alpha for the mechanism's noise at `scale`, per OpenDP.

    At tiny scales (huge epsilons) OpenDP's formula degenerates to -inf; then the bound
    scale * ln(2 / alpha) (Laplace) or scale * sqrt(2 ln(2 / alpha)) (Gaussian, which is
    sub-Gaussian with parameter scale) is used, never smaller.
    """
    if mechanism == GAUSSIAN:
        value = float(dp.discrete_gaussian_scale_to_accuracy(scale, alpha=alpha))
        fallback = scale * math.sqrt(2 * math.log(2 / alpha))
    else:
        value = float(dp.discrete_laplacian_scale_to_accuracy(scale, alpha=alpha))
        fallback = scale * math.log(2 / alpha)
    return value if math.isfinite(value) and value >= 0 else fallback


def mean_interval(noisy_sum: int, sum_scale: float, noisy_count: int, count_scale: float,
                  upper: int, mechanism: str = LAPLACE) -> tuple[float, float]:
    """Mean = released sum / released count, clamped to [0, upper]; and its 95% half-width.

    The interval is a union bound, so its coverage is at least 95% whatever the true values:
    with probability >= 1 - 0.025 - 0.025 both noises lie within their 97.5% accuracies
    a and b, and then the true mean lies in [(S - a) / (C + b), (S + a) / (C - b)]
    intersected with [0, upper] (every person's total is within [0, upper]). The half-width
    returned is the larger distance from the reported mean to either end.

    The true sum is never negative, so the upper end uses max(S, 0) + a: a superset of the
    union-bound interval that stays wide when the noise pushed S far below zero (instead of
    collapsing to a confident-looking 0 ± 0 for an observation the bound cannot explain).
    """
    a = accuracy(sum_scale, ALPHA / 2, mechanism)
    b = accuracy(count_scale, ALPHA / 2, mechanism)
    value = min(float(upper), max(0.0, noisy_sum / max(noisy_count, 1)))
    # The true count is a whole number of people, at least 1 when a mean exists.
    high = min((max(noisy_sum, 0) + a) / max(1.0, noisy_count - b), float(upper))
    low = max(0.0, noisy_sum - a) / (noisy_count + b) if noisy_count + b > 0 else 0.0
    if low >= high:  # noise the bound cannot explain: claim nothing beyond [0, upper]
        low, high = 0.0, float(upper)
    return value, max(value - low, high - value)


def adoption_interval(noisy_active: int, active_scale: float, roster_size: int,
                      mechanism: str = LAPLACE) -> tuple[float, float]:
    """Adoption = released active people / public roster size, clamped to [0, 1]; 95% half-width.

    The roster size is public and exact, so the interval is the active count's, divided by it.
    Clamping towards [0, 1], which holds the true value, can only bring the value closer; and
    a half-width past the far end of [0, 1] is cut there, as it covers nothing more.
    """
    value = min(1.0, max(0.0, noisy_active / roster_size))
    return value, min(accuracy(active_scale, ALPHA, mechanism) / roster_size, max(value, 1.0 - value))


def ratio_interval(numerator: Sequence[tuple[int, float]], others: Sequence[tuple[int, float]], nested: bool,
                   mechanism: str = LAPLACE) -> tuple[float, float]:
    """Ratio = released sum N over released sum D, and its 95% half-width (Fieller's interval).

    `numerator` and `others` are (noisy value, scale) of independent releases: N is the sum of
    `numerator` (one release, or one per window when windows are added up), D the sum of
    `others` plus, when `nested`, N (edits accepted over edits accepted plus rejected), in
    which case the true ratio lies in [0, 1]; otherwise in [0, inf).

    For the true ratio r0 = N0 / D0, N - r0 D is a weighted sum of the releases' noises alone
    (N0 - r0 D0 = 0), with standard deviation sd(r0) known from the scales. So the set of r with
    |N - r D| <= z sd(r) holds r0 whenever that noise is within z of its standard deviations:
    a quadratic inequality in r, solved exactly. z is the larger of the normal 97.5% quantile
    and each release's own 95% accuracy over its standard deviation (2.12 for a Laplace,
    whose tails are heavier than a normal's); a weighted sum of such noises is closer to normal
    than its parts, so its 95% quantile is within z standard deviations. That last step is
    measured (tests/release/test_ratio.py, bench/bench_accuracy.py), not proved.

    The set is intersected with the ratio's range; when D is within its noise of 0 the set is
    unbounded and nothing beyond the range is claimed (an infinite half-width when the range
    has no upper end). The half-width returned is the larger distance from the reported ratio,
    N / D clamped to the range, to either end.
    """
    parts = [*numerator, *others] if nested else list(others)
    n = sum(value for value, _ in numerator)
    d = sum(value for value, _ in parts)
    sd = {scale: noise_std(scale, mechanism) for _, scale in (*numerator, *others)}
    z = max([NormalDist().inv_cdf(1 - ALPHA / 2), *(accuracy(s, ALPHA, mechanism) / sd[s] for s in sd)])
    v_nn = sum(sd[scale] ** 2 for _, scale in numerator)
    v_dd = sum(sd[scale] ** 2 for _, scale in parts)
    v_nd = v_nn if nested else 0.0
    upper = 1.0 if nested else math.inf
    value = min(upper, max(0.0, n / d)) if d > 0 else 0.0
    # (N - r D)^2 <= z^2 (v_nn - 2 r v_nd + r^2 v_dd)  <=>  a r^2 - 2 b r + c <= 0
    a = d * d - z * z * v_dd
    b = n * d - z * z * v_nd
    c = n * n - z * z * v_nn
    if a <= 0:  # D within its noise of 0: the set is unbounded, its hull the whole range
        low, high = 0.0, upper
    else:
        root = math.sqrt(max(b * b - a * c, 0.0))
        low, high = max(0.0, (b - root) / a), min(upper, (b + root) / a)
        if low > high:  # the set lies outside the range: claim nothing beyond the range
            low, high = 0.0, upper
    return value, max(value - low, high - value)


def combined_ci95(terms: Sequence[tuple[float, float]], alpha: float = ALPHA, mechanism: str = LAPLACE) -> float:
    """Half-width a with P(|sum of w * X| >= a) <= alpha for independent noises X of `mechanism`.

    `terms` are (scale, weight) pairs: a company total is the sum of its teams' releases (weight
    1), a change between windows subtracts the earlier ones (weight -1), adoption divides by the
    roster (weight 1 / roster size). Noise of independent releases adds, so the interval of a
    total or a change is wider than any one of its parts, and narrower than their sum.

    The bound is rigorous, from two: the union bound (each term within its own accuracy at
    alpha / n), and the Chernoff bound on the exact moment-generating function of discrete
    Laplace, M(t) = (1 - p)^2 / ((1 - p e^t)(1 - p e^-t)) with p = exp(-1 / scale), where
    P(|S| >= a) <= 2 exp(log M_S(t) - t a) for every t in (0, min 1 / (scale |w|)); the
    smaller half-width is returned.

    For the discrete Gaussian see `_gaussian_combined`.
    """
    terms = [(scale, abs(w)) for scale, w in terms if w != 0]
    if not terms:
        return 0.0
    if mechanism == GAUSSIAN:
        return _gaussian_combined(terms, alpha)
    union = sum(w * accuracy(scale, alpha / len(terms)) for scale, w in terms)
    t_max = min(1.0 / (scale * w) for scale, w in terms)
    log_bound = math.log(2 / alpha)

    def half_width(t: float) -> float:
        log_mgf = 0.0
        for scale, w in terms:
            u, inv = w * t, 1.0 / scale
            log_mgf += 2 * math.log(-math.expm1(-inv)) - math.log(-math.expm1(u - inv)) \
                - math.log(-math.expm1(-u - inv))
        return (log_mgf + log_bound) / t

    # Any t gives a valid bound; a log-spaced grid finds one close to the best.
    chernoff = min(half_width(t_max * f) for f in (1 - 0.98 ** k for k in range(1, 200)))
    return min(union, chernoff)


def _gaussian_combined(terms: Sequence[tuple[float, float]], alpha: float) -> float:
    """The discrete Gaussian's half-width for a weighted sum of independent releases.

    One term: OpenDP's exact accuracy. Several: the normal quantile on the sum's standard
    deviation, each discrete Gaussian's variance being at most its scale squared (Canonne,
    Kamath and Steinke 2020, "The Discrete Gaussian for Differential Privacy", Prop. 19). This
    is an approximation (a sum of discrete Gaussians is not exactly normal), never below the
    largest single term's own interval; its coverage is measured by tests/release/test_gaussian.py
    and bench/bench_accuracy.py rather than proved.
    """
    if len(terms) == 1:
        scale, w = terms[0]
        return w * accuracy(scale, alpha, GAUSSIAN)
    sd = math.sqrt(sum((w * scale) ** 2 for scale, w in terms))
    largest = max(w * accuracy(scale, alpha, GAUSSIAN) for scale, w in terms)
    # + one step of the grid the weighted sum of integers lives on (the largest weight), so the
    # discreteness never takes coverage below.
    step = max(w for _, w in terms)
    return max(NormalDist().inv_cdf(1 - alpha / 2) * sd + step, largest)
