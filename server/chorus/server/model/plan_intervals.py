"""What a release plan gives: the 95% interval of each planned statistic for teams of given sizes.

Intervals of discrete-Laplace releases depend only on epsilon and sensitivity, so they are known
before any data arrives; adoption's is divided by the (public) roster size. A mean's depends on
the released count: it is computed for a team where everyone is active at half the metric's
bound, the case a weekly review of an adopted tool looks at.
"""

from __future__ import annotations

from collections.abc import Sequence

from chorus.server.model.config import Policy
from chorus.server.privacy import mechanisms

#: Team sizes `chorus default-config` explains the plan for.
EXPLAINED_SIZES = (10, 30, 100)


def planned_intervals(policy: Policy, sizes: Sequence[int] = EXPLAINED_SIZES) -> list[tuple[str, list[str]]]:
    """(statistic in words, the 95% interval per team size) for each entry of the plan."""
    rows = []
    for entry in policy.release_plan:
        if entry.statistic == "adoption":
            ci = mechanisms.calibrate(1, entry.epsilon).ci95
            rows.append(("adoption", [f"±{min(ci / n, 1.0) * 100:.1f} points" for n in sizes]))
            continue
        metric = policy.metric(entry.metric)
        assert metric is not None
        name = f"{entry.statistic} of {metric.name}"
        if entry.statistic == "mean":
            total = mechanisms.calibrate(metric.max_per_user, entry.epsilon)
            count = mechanisms.calibrate(1, entry.epsilon)
            cells = []
            for n in sizes:
                value, ci = mechanisms.mean_interval(n * metric.max_per_user // 2, total.scale, n, count.scale,
                                                     metric.max_per_user)
                cells.append(f"{value:,.0f} ±{ci:,.0f}")
            rows.append((name, cells))
        else:
            sensitivity = metric.max_per_user if entry.statistic == "sum" else 1
            ci = mechanisms.calibrate(sensitivity, entry.epsilon, entry.statistic == "histogram").ci95
            rows.append((name, [f"±{ci:,.0f}"] * len(sizes)))
    return rows


def explain(policy: Policy, sizes: Sequence[int] = EXPLAINED_SIZES) -> str:
    """The plan, its cost and its intervals, as TOML comment lines."""
    width = max([len(name) for name, _ in planned_intervals(policy, sizes)] + [10])
    lines = [f"Release plan: {policy.plan_cost()} of each team-window's {policy.epsilon_per_window} is spent "
             f"when the window closes; {policy.epsilon_per_window - policy.plan_cost()} is left for questions "
             "nobody planned.",
             "95% intervals it gives (a mean: everyone active at half the bound):",
             f"{'':<{width}}" + "".join(f"{f'{n} people':>22}" for n in sizes)]
    lines += [f"{name:<{width}}" + "".join(f"{cell:>22}" for cell in cells)
              for name, cells in planned_intervals(policy, sizes)]
    return "".join(f"# {line}\n" for line in lines)
