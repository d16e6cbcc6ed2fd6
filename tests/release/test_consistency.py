"""Consistent estimates over an org tree: exact sums, the least-squares solution, honest intervals.

Noise is simulated with numpy (seeded): discrete Laplace(scale) is the difference of two
independent geometric variables with success probability 1 - exp(-1 / scale).
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest

from chorus.server.privacy import consistency, mechanisms
from chorus.server.privacy.consistency import Node
from chorus.server.privacy.epsilon import Epsilon

#: A count's scale at the default epsilon 0.5 (sensitivity 1).
COUNT = mechanisms.calibrate(1, Epsilon.parse("0.5")).scale
DRAWS = 3000


def company(orgs: int, teams: int, scale: float = COUNT) -> list[Node]:
    """One root, `orgs` orgs, `teams` teams dealt round-robin to the orgs; every node released."""
    return ([Node("company", None, scale)] + [Node(f"org{i}", "company", scale) for i in range(orgs)]
            + [Node(f"team{j}", f"org{j % orgs}", scale) for j in range(teams)])


def random_tree(rng: random.Random, released: float = 0.7) -> list[Node]:
    """Depth up to 4, 1-4 children per node, releases at random scales; some nodes unreleased."""
    nodes = [Node("n0", None, rng.uniform(0.5, 50) if rng.random() < released else None)]
    frontier = [("n0", 0)]
    while frontier:
        parent, depth = frontier.pop()
        if depth == 3 or (depth > 0 and rng.random() < 0.3):
            continue
        for _ in range(rng.randint(1, 4)):
            name = f"n{len(nodes)}"
            nodes.append(Node(name, parent, rng.uniform(0.5, 50) if rng.random() < released else None))
            frontier.append((name, depth + 1))
    return nodes


def draw(rng: np.random.Generator, scales: np.ndarray, size: int) -> np.ndarray:
    """`size` rows of independent discrete-Laplace noise, one column per scale."""
    p = -np.expm1(-1 / scales)
    return rng.geometric(p, (size, scales.size)) - rng.geometric(p, (size, scales.size))


def leaves_under(nodes: list[Node]) -> dict[str, set[str]]:
    children: dict[str, list[str]] = {n.name: [] for n in nodes}
    for n in nodes:
        if n.parent is not None:
            children[n.parent].append(n.name)

    def under(name: str) -> set[str]:
        return {name} if not children[name] else set().union(*(under(c) for c in children[name]))
    return {n.name: under(n.name) for n in nodes}


def truth_and_releases(nodes: list[Node], rng: random.Random) -> tuple[dict[str, int], dict[str, int]]:
    under = leaves_under(nodes)
    leaf_values = {leaf: rng.randint(0, 60) for leaves in under.values() for leaf in leaves}
    truth = {name: sum(leaf_values[x] for x in leaves) for name, leaves in under.items()}
    values = {n.name: truth[n.name] + rng.randint(-9, 9) for n in nodes if n.scale is not None}
    return truth, values


def assert_consistent(nodes: list[Node], result: consistency.Consistent) -> None:
    """Every estimated parent is exactly the sum of its estimated children plus its remainder."""
    children: dict[str, list[str]] = {n.name: [] for n in nodes}
    for n in nodes:
        if n.parent is not None:
            children[n.parent].append(n.name)
    known = {name: e.value for name, e in result.estimates.items()}
    # A remainder's sole member is known too, though not under its name.
    known |= {r.members[0]: r.estimate.value for r in result.remainders.values() if len(r.members) == 1}
    for name, value in known.items():
        if not children[name]:
            continue
        remainder = result.remainders.get(name)
        named = [c for c in children[name] if remainder is None or c not in remainder.members]
        assert all(c in result.estimates for c in named), (name, named)
        total = sum((result.estimates[c].value for c in named), Fraction(0))
        if remainder is not None:
            total += remainder.estimate.value
            assert remainder.members and set(remainder.members).isdisjoint(result.estimates)
        assert total == value  # exact, Fractions
    for parent in result.remainders:
        assert parent in known


@pytest.mark.parametrize("seed", range(40))
def test_children_sum_to_parents_exactly(seed: int) -> None:
    rng = random.Random(seed)
    nodes = random_tree(rng)
    _, values = truth_and_releases(nodes, rng)
    result = consistency.plan(nodes).estimate(values)
    assert_consistent(nodes, result)
    assert all(isinstance(e.value, Fraction) for e in result.estimates.values())


def test_company_of_five_hundred_teams_sums_exactly() -> None:
    nodes = company(20, 500)
    rng = random.Random(7)
    result = consistency.plan(nodes).estimate({n.name: rng.randint(-20, 400) for n in nodes})
    assert_consistent(nodes, result)
    assert len(result.estimates) == 521 and not result.remainders


@pytest.mark.parametrize("seed", range(30))
def test_is_the_weighted_least_squares_solution(seed: int) -> None:
    """Against a direct generalised least-squares solve over the leaves (numpy pinv).

    A node is estimated (under its name, or as the sole member of a remainder) exactly when
    its value is estimable from the releases, and then its estimate is the GLS one.
    """
    rng = random.Random(1000 + seed)
    nodes = random_tree(rng, released=0.6)
    _, values = truth_and_releases(nodes, rng)
    plan = consistency.plan(nodes)
    result = plan.estimate(values)
    under = leaves_under(nodes)
    leaves = sorted(set().union(*under.values()))
    design = {name: np.array([1.0 if leaf in under[name] else 0.0 for leaf in leaves]) for name in under}
    if not plan.released:
        assert not result.estimates
        return
    x = np.array([design[name] for name in plan.released])
    precision = np.diag([1 / consistency.variance(s) for s in plan.scales])
    y = np.array([values[name] for name in plan.released], dtype=float)
    beta = np.linalg.pinv(x.T @ precision @ x) @ x.T @ precision @ y
    rank = np.linalg.matrix_rank(x)
    single = {r.members[0]: r for r in result.remainders.values() if len(r.members) == 1}
    for name, row in design.items():
        estimable = np.linalg.matrix_rank(np.vstack([x, row])) == rank
        assert estimable == (name in result.estimates or name in single), name
        if name in result.estimates:
            assert float(result.estimates[name].value) == pytest.approx(row @ beta, abs=1e-6)
    for parent, remainder in result.remainders.items():
        row = np.sum([design[m] for m in remainder.members], axis=0)
        assert np.linalg.matrix_rank(np.vstack([x, row])) == rank
        assert float(remainder.estimate.value) == pytest.approx(row @ beta, abs=1e-6)
        assert float(remainder.estimate.value) == pytest.approx(
            plan.weights(parent, remainder=True) @ y, abs=1e-6)


@pytest.mark.parametrize("seed", range(20))
def test_estimates_are_the_published_linear_combination(seed: int) -> None:
    rng = random.Random(2000 + seed)
    nodes = random_tree(rng)
    _, values = truth_and_releases(nodes, rng)
    plan = consistency.plan(nodes)
    y = np.array([values[name] for name in plan.released], dtype=float)
    variances = np.array([consistency.variance(s) for s in plan.scales])
    before = dict(values)
    result = plan.estimate(values)
    assert values == before  # the raw releases are read, never changed
    for name, estimate in result.estimates.items():
        w = plan.weights(name)
        assert float(estimate.value) == pytest.approx(w @ y, abs=1e-7)
        assert estimate.variance == pytest.approx(float(w**2 @ variances), rel=1e-12)


@pytest.mark.parametrize("scale", [0.3, 1.0, COUNT, 20.0, 2000.0])
def test_variance_is_discrete_laplaces_exact_variance(scale: float) -> None:
    a = math.exp(-1 / scale)
    k = np.arange(1, int(60 * scale) + 2, dtype=float)
    direct = 2 * float(np.sum(k * k * (1 - a) / (1 + a) * a**k))
    assert consistency.variance(scale) == pytest.approx(direct, rel=1e-9)
    if scale >= 20:  # and close to the continuous Laplace's 2 scale^2 at large scales
        assert consistency.variance(scale) == pytest.approx(2 * scale**2, rel=0.01)


@pytest.mark.parametrize("seed", range(20))
def test_variance_never_exceeds_the_raw_release(seed: int) -> None:
    rng = random.Random(3000 + seed)
    nodes = random_tree(rng)
    result = consistency.plan(nodes).estimate(truth_and_releases(nodes, rng)[1])
    for node in nodes:
        if node.scale is not None:
            estimate = result.estimates.get(node.name)
            assert estimate is not None  # a released node always has an estimate
            assert estimate.variance <= consistency.variance(node.scale) * (1 + 1e-12)


def test_intervals_are_identical_on_every_call_and_in_any_input_order() -> None:
    nodes = random_tree(random.Random(5), released=0.8)
    values = truth_and_releases(nodes, random.Random(6))[1]
    first = consistency.plan(nodes).estimate(values)
    consistency._quantile.cache_clear()
    again = consistency.plan(nodes).estimate(values)
    shuffled = random.Random(8).sample(nodes, len(nodes))
    consistency._quantile.cache_clear()
    reordered = consistency.plan(shuffled).estimate(values)
    for other in (again, reordered):
        assert other == first  # values, variances and intervals, bit for bit
    assert {e.ci95 for e in first.estimates.values()} and all(
        e.ci95 > 0 for e in first.estimates.values())


def exact_quantile(weights: list[float], scales: list[float], level: float) -> tuple[float, np.ndarray, np.ndarray]:
    """The exact level-quantile of |sum w X| by enumeration (tails beyond 40 scales cut)."""
    values, probs = np.zeros(1), np.ones(1)
    for w, s in zip(weights, scales, strict=True):
        k = np.arange(-int(40 * s) - 1, int(40 * s) + 2)
        a = math.exp(-1 / s)
        p = (1 - a) / (1 + a) * a ** np.abs(k)
        values = (values[:, None] + w * k[None, :]).ravel()
        probs = (probs[:, None] * p[None, :]).ravel()
    order = np.argsort(np.abs(values), kind="stable")
    cumulative = np.cumsum(probs[order])
    return float(np.abs(values)[order][np.searchsorted(cumulative, level)]), values, probs


@pytest.mark.parametrize("seed", range(12))
def test_half_width_is_conservative_and_tight_against_exact_enumeration(seed: int) -> None:
    rng = np.random.default_rng(seed)
    terms = int(rng.integers(1, 4))
    weights = [float(x) for x in rng.uniform(-1, 1, terms)]
    scales = [float(x) for x in rng.uniform(0.4, 4 if terms < 3 else 1.2, terms)]
    q = consistency.half_width(weights, scales)
    exact, values, probs = exact_quantile(weights, scales, 0.95)
    sd = math.sqrt(sum(w * w * consistency.variance(s) for w, s in zip(weights, scales, strict=True)))
    assert probs[np.abs(values) <= q].sum() >= 0.95
    assert exact <= q <= exact + 0.03 * sd


@pytest.mark.parametrize("scale", [0.3, 1.0, COUNT, 20.0, 1234.5])
def test_one_release_covers_about_the_fewest_integers_holding_95_percent(scale: float) -> None:
    q = consistency.half_width([1.0], [scale])
    a = math.exp(-1 / scale)

    def inside(n: int) -> float:  # P(|X| <= n)
        return (1 - a) / (1 + a) * (1 + 2 * a * (1 - a**n) / (1 - a))
    fewest = next(n for n in range(10**6) if inside(n) >= 0.95)
    assert inside(math.floor(q)) >= 0.95
    assert q - fewest <= 0.03 * math.sqrt(consistency.variance(scale))
    if scale <= 20:  # the grid is finer than the integers: exactly the fewest integers
        assert math.floor(q) == fewest


def test_many_small_weights_and_large_scales() -> None:
    """A sum statistic (scale 4e6) with 475 near-equal tiny weights and a dominant term."""
    weights = [0.9] + [0.002 * (1 + i * 1e-6) for i in range(475)] + [-0.04] * 24
    scales = [4e6] * 500
    q = consistency.half_width(weights, scales)
    sd = math.sqrt(sum(w * w * consistency.variance(s) for w, s in zip(weights, scales, strict=True)))
    assert 1.9 * sd < q < 2.4 * sd  # a Laplace-like sum: between the normal's 1.96 sd and Laplace's 2.1
    assert consistency.half_width([], []) == 0.0


def coverage(nodes: list[Node], draws: int, seed: int) -> tuple[dict[str, float], dict[str, float]]:
    """Per estimate (node, or "remainder:parent"): empirical coverage over `draws` simulated releases."""
    plan = consistency.plan(nodes)
    rng = random.Random(seed)
    truth, _ = truth_and_releases(nodes, rng)
    under = leaves_under(nodes)
    noise = draw(np.random.default_rng(seed), np.array(plan.scales), draws)
    hits: dict[str, int] = {}
    widths: dict[str, float] = {}
    for row in noise:
        values = {name: truth[name] + int(e) for name, e in zip(plan.released, row, strict=True)}
        result = plan.estimate(values)
        for name, estimate in result.estimates.items():
            hits[name] = hits.get(name, 0) + (abs(estimate.value - truth[name]) <= estimate.ci95)
            widths[name] = estimate.ci95
        for parent, remainder in result.remainders.items():
            true = truth[parent] - sum(truth[c] for c in {n.name for n in nodes if n.parent == parent}
                                       - set(remainder.members))
            assert true == sum(truth[m] for m in remainder.members) and under[parent]
            key = f"remainder:{parent}"
            hits[key] = hits.get(key, 0) + (abs(remainder.estimate.value - true) <= remainder.estimate.ci95)
            widths[key] = remainder.estimate.ci95
    return {name: h / draws for name, h in hits.items()}, widths


@pytest.mark.slow  # many simulated draws
def test_empirical_coverage_is_95_percent_on_a_company() -> None:
    rates, _ = coverage(company(5, 40), DRAWS, seed=11)
    for level in ("company", "org", "team"):
        pooled = [r for name, r in rates.items() if name.startswith(level)]
        assert 0.935 <= sum(pooled) / len(pooled) <= 0.965, (level, pooled)
    assert all(0.935 <= r <= 0.965 for r in rates.values()), rates


@pytest.mark.slow  # many simulated draws
def test_empirical_coverage_with_missing_releases_and_mixed_scales() -> None:
    """Scales of 15 and more, so the integer lattice does not hold a whole percent at the edge."""
    nodes = [Node("company", None, 30.0), Node("eng", "company", None), Node("sales", "company", 20.0),
             Node("ops", "company", None), Node("platform", "company", 25.0)]
    nodes += [Node(f"eng-{i}", "eng", 15.0 + 10 * i) for i in range(4)]
    nodes += [Node(f"sales-{i}", "sales", 20.0) for i in range(3)] + [Node("sales-small", "sales", None)]
    nodes += [Node("ops-a", "ops", 40.0), Node("ops-small-1", "ops", None), Node("ops-small-2", "ops", None)]
    nodes += [Node(f"platform-{i}", "platform", 20.0 + 10 * i) for i in range(3)]
    rates, _ = coverage(nodes, DRAWS, seed=12)
    assert {"remainder:sales", "remainder:company", "remainder:ops"} <= set(rates)
    assert "ops" not in rates and "ops-a" in rates and "eng" in rates
    pooled = sum(rates.values()) / len(rates)
    assert 0.935 <= pooled <= 0.965
    assert all(0.935 <= r <= 0.965 for r in rates.values()), rates


@pytest.mark.slow  # many simulated draws
def test_mean_squared_error_is_lower_than_the_raw_releases_at_every_level() -> None:
    """1 company, 5 orgs, 40 teams, each level released at the same epsilon (counts at 0.5)."""
    nodes = company(5, 40)
    plan = consistency.plan(nodes)
    rng = random.Random(13)
    truth, _ = truth_and_releases(nodes, rng)
    noise = draw(np.random.default_rng(13), np.array(plan.scales), DRAWS)
    raw = {"company": 0.0, "org": 0.0, "team": 0.0}
    fitted = dict(raw)
    for row in noise:
        values = {name: truth[name] + int(e) for name, e in zip(plan.released, row, strict=True)}
        result = plan.estimate(values)
        for name, value in values.items():
            level = name.rstrip("0123456789")
            raw[level] += (value - truth[name]) ** 2
            fitted[level] += float(result.estimates[name].value - truth[name]) ** 2
    ratios = {level: fitted[level] / raw[level] for level in raw}
    print("\nMSE consistent / raw, 1 company, 5 orgs, 40 teams, equal epsilon per level:",
          ", ".join(f"{level} {ratio:.3f}" for level, ratio in ratios.items()))
    assert all(ratio < 1 for ratio in ratios.values()), ratios
    # The theory: each ratio is the estimate's variance over the raw release's.
    for level, name in (("company", "company"), ("org", "org0"), ("team", "team0")):
        expected = result.estimates[name].variance / consistency.variance(COUNT)
        assert ratios[level] == pytest.approx(expected, abs=0.05)


def test_consistent_intervals_are_narrower_than_the_raw_ones_on_the_company() -> None:
    result = consistency.plan(company(5, 40)).estimate({n.name: 10 for n in company(5, 40)})
    raw = consistency.half_width([1.0], [COUNT])
    assert all(e.ci95 < raw for e in result.estimates.values())


def test_single_child_equals_its_parent() -> None:
    nodes = [Node("company", None, 2.0), Node("org", "company", 3.0), Node("team", "org", 4.0)]
    result = consistency.plan(nodes).estimate({"company": 10, "org": 13, "team": 7})
    values = {name: e.value for name, e in result.estimates.items()}
    assert values["company"] == values["org"] == values["team"]
    variances = {name: e.variance for name, e in result.estimates.items()}
    assert len(set(result.estimates.values())) == 1 or variances["company"] == pytest.approx(variances["team"])
    # Three independent looks at one number: inverse-variance weighting of all three.
    v = [consistency.variance(s) for s in (2.0, 3.0, 4.0)]
    assert variances["team"] == pytest.approx(1 / sum(1 / x for x in v))


def test_unreleased_leaves_are_one_remainder_of_their_parent() -> None:
    nodes = [Node("org", None, 2.0), Node("a", "org", 2.0), Node("b", "org", 2.0),
             Node("small-1", "org", None), Node("small-2", "org", None)]
    result = consistency.plan(nodes).estimate({"org": 50, "a": 10, "b": 20})
    assert set(result.estimates) == {"org", "a", "b"}
    remainder = result.remainders["org"]
    assert remainder.members == ("small-1", "small-2")
    # No information links the children to the parent: each keeps its own release.
    assert (result.estimates["a"].value, result.estimates["b"].value) == (10, 20)
    assert remainder.estimate.value == 20
    assert remainder.estimate.variance == pytest.approx(3 * consistency.variance(2.0))


def test_one_unreleased_leaf_is_still_a_remainder_not_a_named_estimate() -> None:
    nodes = [Node("org", None, 2.0), Node("a", "org", 2.0), Node("small", "org", None)]
    result = consistency.plan(nodes).estimate({"org": 30, "a": 10})
    assert "small" not in result.estimates
    assert result.remainders["org"].members == ("small",) and result.remainders["org"].estimate.value == 20


def test_unreleased_parent_is_the_sum_of_its_children() -> None:
    nodes = [Node("org", None, None), Node("a", "org", 2.0), Node("b", "org", 5.0)]
    result = consistency.plan(nodes).estimate({"a": 10, "b": 20})
    assert result.estimates["org"].value == 30
    assert result.estimates["org"].variance == pytest.approx(consistency.variance(2.0) + consistency.variance(5.0))
    assert (result.estimates["a"].value, result.estimates["b"].value) == (10, 20)


def test_a_tree_without_releases_has_no_estimates() -> None:
    nodes = [Node("company", None), Node("team", "company")]
    plan = consistency.plan(nodes)
    assert plan.released == ()
    assert plan.estimate({}) == consistency.Consistent({}, {})


def test_org_without_estimate_from_below_joins_its_parents_remainder() -> None:
    nodes = [Node("company", None, 2.0), Node("eng", "company", 2.0), Node("ops", "company", None),
             Node("ops-a", "ops", 2.0), Node("ops-small", "ops", None)]
    result = consistency.plan(nodes).estimate({"company": 40, "eng": 25, "ops-a": 9})
    assert result.remainders["company"].members == ("ops",)
    assert result.remainders["company"].estimate.value == 15
    assert result.estimates["ops-a"].value == 9  # estimated from below only
    # ops is known (company minus eng) though not by name, so its small team is its remainder.
    assert result.remainders["ops"].members == ("ops-small",)
    assert result.remainders["ops"].estimate.value == 6


def test_remainder_needs_a_known_parent() -> None:
    nodes = [Node("company", None, 2.0), Node("eng", "company", None), Node("ops", "company", None),
             Node("eng-a", "eng", 2.0), Node("eng-small", "eng", None), Node("ops-a", "ops", 2.0),
             Node("ops-small", "ops", None)]
    result = consistency.plan(nodes).estimate({"company": 40, "eng-a": 25, "ops-a": 9})
    assert result.remainders["company"].members == ("eng", "ops")
    assert set(result.remainders) == {"company"}  # eng and ops are not known one by one
    assert set(result.estimates) == {"company", "eng-a", "ops-a"}


@pytest.mark.parametrize("scale", [0, -1.0, math.nan, math.inf, 0.001, True, "2"])
def test_scale_must_be_positive_finite_with_positive_variance(scale: object) -> None:
    with pytest.raises(ValueError, match="scale of 'team'"):
        consistency.plan([Node("team", None, scale)])  # type: ignore[arg-type]


@pytest.mark.parametrize(("nodes", "message"), [
    ([Node("a", None), Node("a", "a")], "appears twice"),
    ([Node("a", None), Node("b", None)], "exactly one root"),
    ([Node("a", "b"), Node("b", "a")], "exactly one root"),
    ([Node("r", None), Node("a", "b"), Node("b", "a")], "do not descend from the root"),
    ([Node("r", None), Node("a", "x")], "parent 'x' of 'a' is not a node"),
    ([Node("", None)], "must not be empty"),
])
def test_malformed_trees_are_refused_with_the_node_named(nodes: list[Node], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        consistency.plan(nodes)


def test_values_must_match_the_released_nodes() -> None:
    plan = consistency.plan([Node("org", None, 2.0), Node("a", "org", 2.0), Node("b", "org")])
    with pytest.raises(ValueError, match=r"missing \['a'\], not released \['b'\]"):
        plan.estimate({"org": 3, "b": 1})
    with pytest.raises(ValueError, match="release of 'a' must be an integer"):
        plan.estimate({"org": 3, "a": 1.5})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="two vectors of one length"):
        consistency.half_width([1.0, 2.0], [1.0])
