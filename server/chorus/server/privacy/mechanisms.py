"""Discrete-Laplace noise from OpenDP, calibrated so a charge never exceeds the request.

Everything released is an integer (a clamped sum, a count of people, people per bucket),
so the mechanism is OpenDP's integer discrete Laplace on i64: exact sampling, no
floating-point side channel. Only the "contrib" feature is enabled.

Calibration: scale = sensitivity / epsilon, nudged up one float step at a time until
OpenDP's own privacy map at the sensitivity, rounded up to whole micro-epsilon, is within
the requested epsilon. That rounded map value is what the budget is charged.

Mean and adoption are post-processing of released values; their intervals are derived
here from the released values' noise scales, deterministically.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import opendp.prelude as dp

from chorus.server.privacy.epsilon import Epsilon

dp.enable_features("contrib")

MECHANISM = "discrete_laplace"
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


@dataclass(frozen=True, slots=True)
class Calibrated:
    """Discrete-Laplace noise at one scale for releases of one sensitivity, with charge and interval.

    `measurement` releases one value (atom domain, absolute distance) or one histogram
    (vector domain, L1 distance). `batch` is the vector measurement at the same scale: it
    draws the noise of many releases of this calibration in one OpenDP call, each coordinate
    with independent noise of exactly the same distribution. The charge is the larger of the
    two privacy maps at the sensitivity (they agree), so it covers the mechanism that ran.

    A batch holds one value (or one histogram) per team, and a person counts for exactly one
    team in a window, so one person moves a batch by at most `sensitivity` in L1: each team
    in it pays the charge, and no team pays for another (parallel composition).
    """

    sensitivity: int
    scale: float
    #: The charge: OpenDP's privacy map at `sensitivity`, rounded up to micro-epsilon.
    epsilon: Epsilon
    #: Half-width of the 95% interval around a released value (each bucket of a histogram).
    ci95: float
    vector: bool
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
def calibrate(sensitivity: int, epsilon: Epsilon, vector: bool = False) -> Calibrated:
    """Discrete Laplace for `sensitivity` (L1 for a histogram) charging at most `epsilon`.

    Cached: measurements are immutable, and a full report needs only a few distinct ones.
    """
    if sensitivity < 1:
        raise ValueError(f"sensitivity must be >= 1, got {sensitivity}")
    if epsilon.micros == 0:
        raise ValueError("epsilon must be greater than 0")
    vectors = dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")
    single = vectors if vector else (dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"))
    scale = sensitivity / epsilon.as_float
    for _ in range(_MAX_NUDGES):
        measurement = dp.m.make_laplace(single[0], single[1], scale)
        batch = measurement if vector else dp.m.make_laplace(vectors[0], vectors[1], scale)
        charge = Epsilon.ceil(max(measurement.map(sensitivity), batch.map(sensitivity)))
        if charge <= epsilon:
            return Calibrated(sensitivity, scale, charge, accuracy(scale, ALPHA), vector, measurement, batch)
        scale = math.nextafter(scale, math.inf)
    raise RuntimeError(f"could not calibrate discrete Laplace for sensitivity {sensitivity} "
                       f"within epsilon {epsilon}")


@functools.lru_cache(maxsize=4096)
def accuracy(scale: float, alpha: float) -> float:
    """Half-width a with P(|noise| >= a) = alpha for discrete Laplace(scale), per OpenDP.

    At tiny scales (huge epsilons) OpenDP's formula degenerates to -inf; then the bound
    scale * ln(2 / alpha) is used, which is never smaller: P(|noise| >= a) <= 2 exp(-a / scale)
    / (1 + exp(-1 / scale)) <= alpha.
    """
    value = float(dp.discrete_laplacian_scale_to_accuracy(scale, alpha=alpha))
    return value if math.isfinite(value) and value >= 0 else scale * math.log(2 / alpha)


def mean_interval(noisy_sum: int, sum_scale: float, noisy_count: int, count_scale: float,
                  upper: int) -> tuple[float, float]:
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
    a = accuracy(sum_scale, ALPHA / 2)
    b = accuracy(count_scale, ALPHA / 2)
    value = min(float(upper), max(0.0, noisy_sum / max(noisy_count, 1)))
    # The true count is a whole number of people, at least 1 when a mean exists.
    high = min((max(noisy_sum, 0) + a) / max(1.0, noisy_count - b), float(upper))
    low = max(0.0, noisy_sum - a) / (noisy_count + b) if noisy_count + b > 0 else 0.0
    if low >= high:  # noise the bound cannot explain: claim nothing beyond [0, upper]
        low, high = 0.0, float(upper)
    return value, max(value - low, high - value)


def adoption_interval(noisy_active: int, active_scale: float, roster_size: int) -> tuple[float, float]:
    """Adoption = released active people / public roster size, clamped to [0, 1]; 95% half-width.

    The roster size is public and exact, so the interval is the active count's, divided by it.
    Clamping towards [0, 1], which holds the true value, can only bring the value closer; and
    a half-width past the far end of [0, 1] is cut there, as it covers nothing more.
    """
    value = min(1.0, max(0.0, noisy_active / roster_size))
    return value, min(accuracy(active_scale, ALPHA) / roster_size, max(value, 1.0 - value))
