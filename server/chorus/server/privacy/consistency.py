"""Consistent estimates over an organisation tree: weighted least squares in two passes.

A window's releases of one statistic may sit at several levels of the hierarchy (company,
orgs at any depth, teams as leaves). Each node has at most one raw release: its true value
plus independent discrete-Laplace noise of a known scale (`mechanisms.Calibrated.scale`), and
a node's true value is the sum of its children's. This module post-processes the raw releases
into one consistent set, at no privacy cost (it reads only released values and public scales).

Method: Hay, Rastogi, Miklau, Suciu, "Boosting the accuracy of differentially private
histograms through consistency", VLDB 2010, generalised to unequal variances (the weighted
least-squares solution over the tree, which is the minimum-variance unbiased linear estimate):

* bottom-up, each node's estimate from below `z` combines its own release (variance `v`) and
  the sum of its children's `z` (variance `V`, the sum of theirs) by inverse-variance weights:
  `z = (y V + sum v) / (v + V)`, with variance `v V / (v + V)`;
* top-down, the root keeps its `z`; each parent's final value minus the sum of its children's
  `z` is shared among the children in proportion to their variances.

Invariants:

* **Exact sums.** Values are `Fraction`s computed from the integer releases and the exact
  rational value of each float variance, so every estimated parent equals the sum of its
  estimated children (plus its remainder, below) exactly, not to float precision.
* **Nodes without a release** are informed by their children's sum only. A node whose subtree
  holds no information from below (an unreleased leaf, e.g. a team under k, or an unreleased
  node with such a child) cannot be estimated on its own: all such children of a parent are
  reported together as that parent's *remainder* (parent minus its estimated children), never
  under a child's name, even when there is one; whether a remainder may be shown (k) is the
  caller's policy. Their estimable descendants keep their estimate from below. A remainder
  exists under every node whose value is estimated: by name, or as the sole member of its
  parent's remainder (an unreleased org whose small team has no release: the org is its
  parent's remainder, and its small team the org's).
* **Linear, public weights.** Every estimate is a fixed linear combination of the independent
  raw noises; the weights depend only on the tree and the scales (`Plan`), never on the values.
  Its variance (float) is at most the raw release's (weighted least squares is the best linear
  unbiased estimate, and the raw release is one such estimate).
* **Intervals** are deterministic functions of the weights and scales (identical on every call)
  and conservative: P(|estimate - truth| <= ci95) >= 1 - ALPHA, proved in `half_width`, and at
  most about 3% of a standard deviation wider than the exact quantile.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from chorus.server.privacy.mechanisms import ALPHA, GAUSSIAN, LAPLACE, combined_ci95

Floats = npt.NDArray[np.float64]

#: Weights within this relative distance of each other form one group of identically
#: distributed terms; the differences go to the residual.
_GROUP = 1e-4
#: Terms whose variances add up to at most (_DROP * sd)^2 go to the residual entirely.
_DROP = 5e-5
#: The residual is bounded by Chebyshev at this many standard deviations of the estimate.
_RESIDUAL = 0.01
#: All grid roundings together move the estimate by at most this many standard deviations.
_GRID = 0.01
#: Each distribution is cut where a tail holds at most exp(-_TAIL).
_TAIL = 25.0
#: Probability added to 1 - alpha for the cut tails, aliasing and float round-off in the
#: convolution: each is below 1e-9 with at most a few hundred groups.
_SLACK = 1e-6


@dataclass(frozen=True, slots=True)
class Node:
    """One node of the hierarchy: its parent (None for the company), and its release's scale."""

    name: str
    parent: str | None
    #: Scale of the node's raw discrete-Laplace release; None when the node has no release.
    scale: float | None = None


@dataclass(frozen=True, slots=True)
class Estimate:
    """A consistent estimate: exact value, its noise variance and 95% half-width."""

    value: Fraction
    variance: float
    ci95: float


@dataclass(frozen=True, slots=True)
class Remainder:
    """A parent's children that cannot be estimated on their own, reported together."""

    parent: str
    members: tuple[str, ...]
    estimate: Estimate


@dataclass(frozen=True, slots=True)
class Consistent:
    """The consistent set: estimates by node name, remainders by parent name."""

    estimates: Mapping[str, Estimate]
    remainders: Mapping[str, Remainder]


def variance(scale: float) -> float:
    """Variance of discrete Laplace with P(k) proportional to exp(-|k| / scale): 2a / (1 - a)^2."""
    a = math.exp(-1 / scale)
    return 2 * a / math.expm1(-1 / scale) ** 2


@dataclass(frozen=True, slots=True)
class _Row:
    """One estimate's linear form: weights over the plan's releases, variance, half-width."""

    weights: Floats = field(repr=False)
    variance: float
    ci95: float


@dataclass(frozen=True, slots=True)
class Plan:
    """The estimator for one tree and one set of scales: weights and intervals, no values.

    Build it with `plan`; `estimate` applies it to released values. `weights(name)` gives the
    coefficients of a node's estimate (or of the remainder under `name` with `remainder=True`)
    over `released`, the released nodes in tree order (breadth first, siblings by name):
    estimate = sum(w * release).
    """

    released: tuple[str, ...]
    scales: tuple[float, ...]
    _order: tuple[str, ...] = field(repr=False)
    _children: Mapping[str, tuple[str, ...]] = field(repr=False)
    _own: Mapping[str, Fraction] = field(repr=False)  # weight of own release in z
    _finite: frozenset[str] = field(repr=False)  # nodes with an estimate from below
    _share: Mapping[str, Fraction] = field(repr=False)  # child's share of its parent's difference
    _rows: Mapping[str, _Row] = field(repr=False)
    _remainders: Mapping[str, tuple[tuple[str, ...], _Row]] = field(repr=False)

    def weights(self, name: str, remainder: bool = False) -> Floats:
        row = self._remainders[name][1] if remainder else self._rows[name]
        return row.weights.copy()

    def estimate(self, values: Mapping[str, int]) -> Consistent:
        """The consistent estimates for the released `values` (one integer per released node)."""
        if set(values) != set(self.released):
            missing = sorted(set(self.released) - set(values))
            extra = sorted(set(values) - set(self.released))
            raise ValueError(f"values must name exactly the released nodes; missing {missing}, "
                             f"not released {extra}")
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"release of {name!r} must be an integer, got {value!r}")
        z: dict[str, Fraction] = {}
        for name in reversed(self._order):
            if name not in self._finite:
                continue
            own = self._own[name]
            if own == 1:  # a leaf, or a child has no estimate from below: only its own release
                z[name] = Fraction(values[name])
                continue
            below = sum((z[c] for c in self._children[name]), Fraction(0))
            z[name] = own * values[name] + (1 - own) * below if own else below
        final: dict[str, Fraction] = {}
        estimates: dict[str, Estimate] = {}
        remainders: dict[str, Remainder] = {}
        for name in self._order:
            if name in self._rows:
                if name not in final:
                    final[name] = z[name]
                row = self._rows[name]
                estimates[name] = Estimate(final[name], row.variance, row.ci95)
            finite = [c for c in self._children[name] if c in self._finite]
            if name not in final:
                continue
            difference = final[name] - sum((z[c] for c in finite), Fraction(0))
            if name in self._remainders:
                members, row = self._remainders[name]
                remainders[name] = Remainder(name, members, Estimate(difference, row.variance, row.ci95))
                if len(members) == 1:
                    final[members[0]] = difference
                difference = Fraction(0)
            for child in finite:
                final[child] = z[child] + self._share[child] * difference
        return Consistent(estimates, remainders)


def plan(nodes: Sequence[Node], alpha: float = ALPHA, mechanism: str = LAPLACE) -> Plan:
    """The two-pass estimator for this tree and these scales, with every interval computed.

    For the discrete Gaussian (`mechanism`), each release's variance is taken as its scale
    squared (its upper bound: the estimate stays unbiased, the weights near-optimal) and the
    intervals are `mechanisms.combined_ci95`'s for the Gaussian.

    Raises ValueError naming the node for a duplicate name, a missing parent, no root or two,
    a cycle, or a scale that is not a finite number whose noise variance is positive.
    """
    order, children = _tree(nodes)
    by_name = {n.name: n for n in nodes}
    released = tuple(n for n in order if by_name[n].scale is not None)
    scales = tuple(float(by_name[n].scale) for n in released)  # type: ignore[arg-type]
    index = {name: i for i, name in enumerate(released)}
    var_of = _gaussian_variance if mechanism == GAUSSIAN else variance
    exact_var = {name: Fraction(var_of(s)) for name, s in zip(released, scales, strict=True)}
    # Bottom-up: z's variance (exact), weight of the own release, and z's weights (float).
    zvar: dict[str, Fraction] = {}
    own: dict[str, Fraction] = {}
    zw: dict[str, Floats] = {}
    for name in reversed(order):
        kids = children[name]
        below = sum((zvar[c] for c in kids), Fraction(0)) if kids and all(c in zvar for c in kids) else None
        mine = exact_var.get(name)
        if mine is None and below is None:
            continue
        vector = np.zeros(len(released))
        if below is not None:
            for c in kids:
                vector += zw[c]
        if mine is None:
            own[name], zvar[name] = Fraction(0), below  # type: ignore[assignment]
        elif below is None:
            own[name], zvar[name] = Fraction(1), mine
            vector[:] = 0.0
        else:
            own[name], zvar[name] = below / (mine + below), mine * below / (mine + below)
            vector *= float(1 - own[name])
        if mine is not None:
            vector[index[name]] += float(own[name])
        zw[name] = vector
    # Top-down: final weights, shares and remainders.
    variances = np.array([var_of(s) for s in scales])
    forms: dict[str, Floats] = {}
    share: dict[str, Fraction] = {}
    remainder_forms: dict[str, tuple[tuple[str, ...], Floats]] = {}
    hidden: dict[str, Floats] = {}
    for name in order:
        if name in zw and name not in forms:
            forms[name] = zw[name]  # the root, or below a node without an estimate
        finite = [c for c in children[name] if c in zvar]
        unknown = tuple(c for c in children[name] if c not in zvar)
        total = sum((zvar[c] for c in finite), Fraction(0))
        for c in finite:
            share[c] = Fraction(0) if unknown else zvar[c] / total
        form = forms[name] if name in forms else hidden.get(name)
        if form is None or not children[name]:
            continue
        difference = form - sum((zw[c] for c in finite), np.zeros(len(released)))
        if unknown:
            remainder_forms[name] = (unknown, difference)
            if len(unknown) == 1:  # that child's value is known, though not shown under its name
                hidden[unknown[0]] = difference
        for c in finite:
            forms[c] = zw[c] + float(share[c]) * difference if not unknown else zw[c]
    rows = {name: _row(w, variances, scales, alpha, mechanism) for name, w in forms.items()}
    remainders = {name: (members, _row(w, variances, scales, alpha, mechanism))
                  for name, (members, w) in remainder_forms.items()}
    return Plan(released, scales, tuple(order), {n: tuple(children[n]) for n in order}, own,
                frozenset(zvar), share, rows, remainders)


def _tree(nodes: Sequence[Node]) -> tuple[list[str], dict[str, list[str]]]:
    """Breadth-first order from the root and each node's children, sorted by name; validated."""
    children: dict[str, list[str]] = {}
    for node in nodes:
        if not node.name:
            raise ValueError("a node name must not be empty")
        if node.name in children:
            raise ValueError(f"node {node.name!r} appears twice")
        children[node.name] = []
        scale = node.scale
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int | float)
                                  or not math.isfinite(scale) or scale <= 0 or variance(scale) == 0):
            raise ValueError(f"scale of {node.name!r} must be a finite number whose noise variance is "
                             f"positive (at least about 0.0014), got {node.scale!r}")
    roots = [n.name for n in nodes if n.parent is None]
    if len(roots) != 1:
        raise ValueError(f"the tree needs exactly one root (parent None), got {roots}")
    for node in nodes:
        if node.parent is not None:
            if node.parent not in children:
                raise ValueError(f"parent {node.parent!r} of {node.name!r} is not a node")
            children[node.parent].append(node.name)
    order = [roots[0]]
    for name in order:
        children[name].sort()  # by name: the plan, to the last float bit, ignores input order
        order.extend(children[name])
    if len(order) != len(nodes):
        stuck = sorted(set(children) - set(order))
        raise ValueError(f"nodes {stuck} do not descend from the root {roots[0]!r} (a cycle)")
    return order, children


def _row(weights: Floats, variances: Floats, scales: tuple[float, ...], alpha: float, mechanism: str) -> _Row:
    used = weights != 0
    w = weights[used]
    used_scales = np.array(scales)[used]
    ci = (combined_ci95(list(zip(used_scales.tolist(), w.tolist(), strict=True)), alpha, GAUSSIAN)
          if mechanism == GAUSSIAN else half_width(w, used_scales, alpha))
    return _Row(weights, float(np.sum(w * w * variances[used])), ci)


def _gaussian_variance(scale: float) -> float:
    """The discrete Gaussian's variance bound: its scale squared."""
    return scale * scale


def half_width(weights: Sequence[float] | Floats, scales: Sequence[float] | Floats, alpha: float = ALPHA) -> float:
    """q with P(|S| <= q) >= 1 - alpha for S = sum_i w_i X_i, X_i independent discrete Laplace(scale_i).

    Method (each approximation's error is bounded and paid for, so the result is conservative):

    1. Terms are put in a canonical order (so the result depends only on the multiset of
       (weight, scale) pairs) and grouped by scale and by weight equal to a relative 1e-4;
       a group becomes its mean weight times the sum of its m terms, an integer variable.
       Terms of negligible variance (together below (5e-5 sd)^2) leave entirely. What was
       changed is the residual R, with Var(R) known exactly: P(|R| > 0.01 sd) <= Var(R) /
       (0.01 sd)^2 (Chebyshev), at most 5e-5.
    2. Each group's sum is computed on the integers, or, when its scale is large against the
       grid, on odd-width cells of b integers (moving each term by at most (b - 1) / 2, with b
       chosen so the group moves by at most h / 2): one term's cell masses in closed form,
       their m-fold convolution by FFT. Each value is then rounded to a grid (at most h / 2
       more), with h set so that all these roundings together move S by at most 0.01 sd
       (`_quantile`). So |S - T| <= 0.01 sd + |R| for the grid variable T.
    3. The groups are convolved on a circular grid by FFT, long enough that the mass wrapping
       around (bounded by Chernoff with the exact moment generating functions) is below e^-25.
       q is the smallest grid point t with P(|T| <= t) >= 1 - alpha + Var(R) / (0.01 sd)^2 +
       1e-6, plus the two bounds of steps 1 and 2. Then P(|S| <= q) >= P(|T| <= t) -
       P(|R| > 0.01 sd) >= 1 - alpha. The 1e-6 covers the cut tails (each below e^-25) and
       float round-off in the FFTs.

    So q exceeds the exact quantile at 1 - alpha + 5e-5 + 1e-6 by at most 0.01 sd (residual)
    + 2 x 0.01 sd (roundings: once inside T, once added) + one grid step: about 0.03 sd
    (tests/release/test_consistency.py checks this against exact enumeration).
    Results are cached: a tree's teams often share their multiset of weights.
    """
    w = np.asarray(weights, dtype=np.float64)
    s = np.asarray(scales, dtype=np.float64)
    if w.shape != s.shape or w.ndim != 1:
        raise ValueError(f"weights and scales must be two vectors of one length, got {w.shape} and {s.shape}")
    keep = w != 0
    w, s = w[keep], s[keep]
    if w.size == 0:
        return 0.0
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(s)) and np.all(s > 0)):
        raise ValueError("weights must be finite and scales finite and > 0")
    canonical = np.lexsort((w, s))
    w, s = w[canonical], s[canonical]
    var = 2 * np.exp(-1 / s) / np.expm1(-1 / s) ** 2
    contrib = w * w * var
    total = float(np.sum(np.sort(contrib)))
    sd = math.sqrt(total)
    by_size = np.argsort(contrib, kind="stable")
    dropped = by_size[np.cumsum(contrib[by_size]) <= (_DROP * sd) ** 2]
    residual = float(np.sum(np.sort(contrib[dropped])))
    main = np.ones(w.size, dtype=bool)
    main[dropped] = False
    w, s, var = w[main], s[main], var[main]
    keys = np.stack([s, np.sign(w), np.rint(np.log(np.abs(w)) / _GROUP)], axis=1)
    _, first, group_of = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    group_of = group_of.ravel()
    groups = []
    for g in range(first.size):
        members = w[group_of == g]
        mean = float(np.mean(members))
        residual += float(np.sum(np.sort((members - mean) ** 2 * var[group_of == g])))
        groups.append((mean, int(members.size), float(s[first[g]])))
    return _quantile(tuple(groups), residual, sd, alpha)


@functools.lru_cache(maxsize=4096)
def _quantile(groups: tuple[tuple[float, int, float], ...], residual: float, sd: float, alpha: float) -> float:
    """Steps 2 and 3 of `half_width` for groups of (mean weight, terms, scale).

    Most groups of a large tree are narrow (many tiny weights). Rounding each of G groups to
    the grid would force a grid of 0.01 sd / G; instead the narrow groups are convolved on a
    grid K times finer (K of them, each moving at most one fine step) and their sum is rounded
    once, so the main grid only pays for the few wide groups: at most 0.01 sd in all.
    """
    reach = _RESIDUAL * sd if residual > 0 else 0.0
    missing = residual / reach**2 if residual > 0 else 0.0
    extents = [abs(mean) * _reach(m, scale) for mean, m, scale in groups]
    order = sorted(range(len(groups)), key=lambda g: (-extents[g], g))
    # The fewest wide groups that leave the narrow ones together narrow on their fine grid.
    wide = next(k for k in range(len(order) + 1)
                if (len(order) - k) * sum(extents[g] for g in order[k:]) <= sum(extents) / 8)
    narrow = order[wide:]
    h = _GRID * sd / (wide + (1.5 if narrow else 0))
    # The circle must hold |T| <= (Chernoff reach of sum mean * Y) + 0.01 sd on each side.
    largest = max(abs(mean) * scale for mean, _, scale in groups)
    tail = min((sum(m * _log_mgf(c * mean / largest, scale) for mean, m, scale in groups) + _TAIL + math.log(2))
               / (c / largest) for c in _THETAS)
    n = 1 << math.ceil(math.log2(2 * (tail + _GRID * sd) / h + 3))
    spectrum = np.ones(n // 2 + 1, dtype=np.complex128)
    moved = 0.0
    for g in order[:wide]:
        low, pmf, shift = _on_grid(*groups[g], h)
        moved += shift
        spectrum *= np.fft.rfft(np.bincount(np.arange(low, low + pmf.size) % n, weights=pmf, minlength=n))
    if narrow:
        fine = h / len(narrow)
        placed = [_on_grid(*groups[g], fine) for g in narrow]
        moved += sum(shift for _, _, shift in placed) + h / 2
        size = sum(pmf.size for _, pmf, _ in placed) - len(placed) + 1
        length = 1 << (size - 1).bit_length()
        together = np.ones(length // 2 + 1, dtype=np.complex128)
        for _, pmf, _ in placed:
            together *= np.fft.rfft(pmf, length)
        low = sum(low for low, _, _ in placed)
        position = np.rint(np.arange(low, low + size) / len(narrow)).astype(np.int64) % n
        spectrum *= np.fft.rfft(np.bincount(position, weights=np.fft.irfft(together, length)[:size], minlength=n))
    circle = np.fft.irfft(spectrum, n)
    # P(|T| <= k h) for k = 0 .. n/2 - 1: index 0 is T = 0, index n - k is T = -k h.
    inside = circle[0] + np.concatenate([[0.0], np.cumsum(circle[1:n // 2] + circle[n - 1:n // 2:-1])])
    target = 1 - alpha + missing + _SLACK
    enough = np.nonzero(inside >= target)[0]
    if enough.size == 0:
        raise ArithmeticError(f"no grid point holds probability {target}; the largest holds {float(inside[-1])}")
    return float(enough[0]) * h + moved + reach


def _on_grid(mean: float, m: int, scale: float, h: float) -> tuple[int, Floats, float]:
    """mean * (sum of m discrete Laplace(scale)) on the grid of spacing h.

    Returns the grid index of the first mass, the masses, and how far rounding moved any
    value at most (cells, then the grid): at most h.
    """
    cell = _cell(h, mean, m)
    pmf = _group_pmf(m, scale, cell)
    half = (pmf.size - 1) // 2
    position = np.rint(mean * cell * np.arange(-half, half + 1) / h).astype(np.int64)
    low = int(position.min())
    masses = np.asarray(np.bincount(position - low, weights=pmf), dtype=np.float64)
    return low, masses, abs(mean) * m * (cell - 1) / 2 + h / 2


def _reach(m: int, scale: float) -> float:
    """x with P(|sum of m discrete Laplace(scale)| > x) below e^-25 (Chernoff, exact mgf)."""
    if m == 1:
        return scale * _TAIL
    return min((m * _log_mgf(c / scale, scale) + _TAIL) / (c / scale) for c in _THETAS)


#: Chernoff parameters tried, as fractions of the largest usable theta.
_THETAS = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9)


def _log_mgf(theta: float, scale: float) -> float:
    """log E[exp(theta X)] for X discrete Laplace(scale), |theta| < 1 / scale."""
    t = abs(theta)
    return (2 * math.log(-math.expm1(-1 / scale)) - math.log(-math.expm1(t - 1 / scale))
            - math.log(-math.expm1(-t - 1 / scale)))


def _cell(h: float, mean: float, m: int) -> int:
    """Largest odd cell width b with |mean| * m * (b - 1) / 2 <= h / 2 (at least 1)."""
    b = max(1, int(h / (abs(mean) * m)))
    return b - 1 + b % 2


def _group_pmf(m: int, scale: float, cell: int) -> Floats:
    """Masses of the sum of m discrete Laplace(scale), each rounded to cells of `cell` integers.

    Centred: index i is the sum cell * (i - half). Tails beyond e^-25 are cut.
    """
    a = math.exp(-1 / scale)
    r = (cell - 1) // 2
    # One term: cell j >= 1 holds the integers jb - r .. jb + r, the centre -r .. r.
    one = math.ceil((scale * _TAIL - r) / cell) + 1
    j = np.arange(1, one + 1, dtype=np.float64)
    side = np.exp(-(j * cell - r) / scale) * -math.expm1(-cell / scale) / (1 + a)
    centre = (-math.expm1(-1 / scale) + 2 * a * -math.expm1(-r / scale)) / (1 + a)
    single = np.concatenate([side[::-1], [centre], side])
    if m == 1:
        return single
    half = max(math.ceil(_reach(m, scale) / cell) + 1, one)
    n = 1 << (2 * half).bit_length()
    full = np.fft.irfft(np.fft.rfft(single, n) ** m, n)
    # `single` starts at -one cells, so the sum starts at -m * one: value v is at (v + m * one) mod n.
    return np.clip(np.roll(full, half - m * one)[: 2 * half + 1], 0.0, None)
