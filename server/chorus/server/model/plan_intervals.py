"""What a release plan gives: the 95% interval of each planned statistic for nodes of given sizes.

Intervals of releases depend only on the mechanism, the charge and sensitivity, so they are known
before any data arrives; adoption's is divided by the (public) roster size. A mean's depends on
the released count: it is computed for a team where everyone is active at half the metric's
bound, the case a weekly review of an adopted tool looks at; a ratio's, likewise, on its sums:
computed with everyone at half of each metric's bound.
"""

from __future__ import annotations

from collections.abc import Sequence

from chorus.server.model.config import Policy
from chorus.server.model.hierarchy import TEAM
from chorus.server.model.policy import expected_ci95, sensitivity
from chorus.server.privacy import mechanisms
from chorus.server.privacy.epsilon import Loss

#: Team sizes `chorus default-config` explains the plan for.
EXPLAINED_SIZES = (10, 30, 100, 1000)


def planned_intervals(policy: Policy, sizes: Sequence[int] = EXPLAINED_SIZES) -> list[tuple[str, list[str]]]:
    """(statistic and level in words, the 95% interval per node size) for each entry of the plan."""
    rows = []
    for entry in policy.release_plan:
        where = "" if entry.level == TEAM else f" ({entry.level})"
        if entry.statistic == "adoption":
            rows.append((f"adoption{where}",
                         [f"±{expected_ci95('adoption', None, entry.charge, n) * 100:.1f} points" for n in sizes]))
            continue
        metric = policy.metric(entry.metric)
        assert metric is not None
        name = f"{entry.statistic} of {metric.name}{where}"
        if entry.statistic == "mean":
            total = mechanisms.calibrate(sensitivity("sum", metric), entry.charge)
            count = mechanisms.calibrate(sensitivity("count", metric), entry.charge)
            cells = []
            for n in sizes:
                value, ci = mechanisms.mean_interval(n * metric.max_per_user // 2, total.scale, n, count.scale,
                                                     metric.max_per_user, total.mechanism)
                cells.append(f"{value:,.0f} ±{ci:,.0f}")
            rows.append((name, cells))
        elif entry.statistic == "ratio":
            rows.append((f"ratio of {metric.name} over {' + '.join(entry.denominator)}{where}",
                         [_ratio_cell(policy, entry.metric, entry.denominator, entry.charge, n) for n in sizes]))
        else:
            ci = expected_ci95(entry.statistic, metric, entry.charge, 0)
            rows.append((name, [f"±{ci:,.0f}"] * len(sizes)))
    return rows


def _ratio_cell(policy: Policy, numerator: str, denominator: tuple[str, ...], charge: Loss, size: int) -> str:
    """A ratio's interval when everyone has half of each metric's bound (a share: in points)."""
    def release(name: str) -> tuple[int, float]:
        metric = policy.metric(name)
        assert metric is not None
        return size * metric.max_per_user // 2, mechanisms.calibrate(sensitivity("sum", metric), charge).scale

    nested = numerator in denominator
    value, ci = mechanisms.ratio_interval([release(numerator)], [release(d) for d in denominator if d != numerator],
                                          nested, policy.mechanism)
    return f"{value:.0%} ±{ci * 100:.1f} points" if nested else f"{value:,.2f} ±{ci:,.2f}"


def explain(policy: Policy, sizes: Sequence[int] = EXPLAINED_SIZES) -> str:
    """The plan, its cost and its intervals, as TOML comment lines."""
    width = max([len(name) for name, _ in planned_intervals(policy, sizes)] + [10])
    unit = policy.unit.UNIT
    lines = [f"Release plan: {unit} {policy.plan_cost()} of each team-window's {policy.budget_per_window} is "
             f"spent when the window closes (under one org level); {policy.budget_per_window - policy.plan_cost()} "
             "is left for questions nobody planned.",
             "95% intervals it gives for a team, org or company of each size (a mean or a ratio: everyone "
             "active at half of each bound):",
             f"{'':<{width}}" + "".join(f"{f'{n} people':>22}" for n in sizes)]
    lines += [f"{name:<{width}}" + "".join(f"{cell:>22}" for cell in cells)
              for name, cells in planned_intervals(policy, sizes)]
    return "".join(f"# {line}\n" for line in lines)
