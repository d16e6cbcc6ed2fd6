"""95% intervals of weighted sums of independent release noises, at their stated rate both ways.

A company total adds its teams' noisy releases (weight 1); company adoption divides that by the
people on the rosters (weight 1 / people); a change subtracts an earlier window's (negative
weights); a slope over N windows weighs each window by its distance from the middle. Every
release draws its own noise, so the noise of such a figure is the convolution of its terms'
noise distributions, and this module computes that distribution rather than bounding it: the
interval returned covers the figure's value before noise in 95% of draws, not 99.5% (a bound
says "within the noise" too often) and not less (a normal approximation of one or two
Laplace terms misses too often). tests/privacy/test_sums.py measures the coverage with the
project's own noise.

How: the terms' distributions are laid on one grid and multiplied in Fourier space (numpy's
FFT). When every term has the same |weight| (a total, adoption, a change over equal rosters),
the grid is that weight's lattice and each discrete Laplace (or discrete Gaussian) term is
exact there; otherwise (or when the lattice would need more than 2^18 points, e.g. sums of
tokens with scales of millions) the grid is fine against the smallest term's scale and each
term is its continuous counterpart of the same variance, integrated over each grid cell. The
result is symmetric (every term is), so the half-width is the smallest a with P(|S| <= a) >=
95% on the grid. Only post-processing of released values: it costs no privacy.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = ["DISCRETE_GAUSSIAN", "DISCRETE_LAPLACE", "Term", "ci95", "noise_std"]

DISCRETE_LAPLACE = "discrete_laplace"
DISCRETE_GAUSSIAN = "discrete_gaussian"
#: (noise scale, weight, mechanism) of one release inside a derived figure.
Term = tuple[float, float, str]

_MAX_POINTS = 1 << 18
_FINE_POINTS = 1 << 16
#: Tail extent, in scales, past which a term's probability is below 1e-15.
_TAIL = 36.0


def noise_std(scale: float, mechanism: str) -> float:
    """The noise's standard deviation: discrete Laplace with p = exp(-1/scale) has variance
    2p / (1 - p)^2; the discrete Gaussian's scale is its sigma (to within 1e-9 from sigma 1 up)."""
    if mechanism == DISCRETE_LAPLACE:
        p = math.exp(-1.0 / scale)
        return math.sqrt(2 * p) / (1 - p)
    if mechanism == DISCRETE_GAUSSIAN:
        return scale
    raise ValueError(f"mechanism {mechanism!r} is not one of: {DISCRETE_LAPLACE}, {DISCRETE_GAUSSIAN}")


def _lattice_pmf(scale: float, mechanism: str, k: np.ndarray) -> np.ndarray:
    if mechanism == DISCRETE_LAPLACE:
        p = math.exp(-1.0 / scale)
        return (1 - p) / (1 + p) * np.power(p, np.abs(k))
    dens = np.exp(-(k.astype(float) ** 2) / (2 * scale * scale))
    return dens / dens.sum()


def _cell_pmf(std: float, mechanism: str, k: np.ndarray, step: float) -> np.ndarray:
    """A continuous Laplace (or normal) of standard deviation `std`, integrated over cells of `step`."""
    edges = (np.append(k, k[-1] + 1) - 0.5) * step
    if mechanism == DISCRETE_LAPLACE:
        b = std / math.sqrt(2)
        cdf = np.where(edges < 0, 0.5 * np.exp(np.minimum(edges, 0) / b), 1 - 0.5 * np.exp(-np.maximum(edges, 0) / b))
    else:
        cdf = 0.5 * (1 + np.vectorize(math.erf)(edges / (std * math.sqrt(2))))
    return np.diff(cdf)


def ci95(terms: Sequence[Term], coverage: float = 0.95) -> float:
    """Half-width a with P(|sum of weight * noise| <= a) >= coverage, as tight as the grid allows."""
    live = Counter((float(s), abs(float(w)), m) for s, w, m in terms if w != 0 and s > 0)
    return _half_width(tuple(sorted(live.items())), coverage) if live else 0.0


@functools.lru_cache(maxsize=1024)
def _half_width(counted: tuple[tuple[tuple[float, float, str], int], ...], coverage: float) -> float:
    """ci95 of the terms, each with how many times it occurs (cached: a page asks for the same
    figures again, and every window of a stable roster has the same terms)."""
    live = [term for term, _ in counted]
    stds = [w * noise_std(s, m) for (s, w, m), n in counted for _ in range(n)]
    reach = _TAIL * max(stds) + 12 * math.sqrt(sum(x * x for x in stds))
    weights = {w for _, w, _ in live}
    lattice = len(weights) == 1 and 2 * reach / next(iter(weights)) <= _MAX_POINTS
    step = next(iter(weights)) if lattice else 2 * reach / _FINE_POINTS
    half = math.ceil(reach / step)
    size = 1 << math.ceil(math.log2(2 * half + 1))
    k = np.arange(-half, half + 1)
    spectrum = np.ones(size // 2 + 1, dtype=complex)
    for (scale, weight, mechanism), count in counted:
        pmf = (_lattice_pmf(scale, mechanism, k) if lattice
               else _cell_pmf(weight * noise_std(scale, mechanism), mechanism, k, step))
        placed = np.zeros(size)
        placed[k % size] = pmf  # centred at index 0, negative offsets wrapped to the end
        spectrum *= np.fft.rfft(placed) ** count
    total = np.fft.irfft(spectrum, size)
    # P(|S| <= j * step) for j = 0, 1, ...: the centre plus both sides (the sum is symmetric).
    inside = total[0] + np.cumsum(np.concatenate(([0.0], total[1:half + 1] + total[-1:-half - 1:-1])))
    j = int(np.searchsorted(inside, coverage - 1e-12))
    return min(j, half) * step
