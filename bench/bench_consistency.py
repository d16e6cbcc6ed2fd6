"""Consistent estimates over a company of 1 root, 20 orgs and 500 teams, against the raw noise draws.

    python bench/bench_consistency.py [--orgs 20] [--teams 500] [--rounds 3]

Two trees, each for a count (sensitivity 1) and a sum (sensitivity 1000), every level released:

* regular: teams dealt round-robin to the orgs, one epsilon (0.5) everywhere;
* irregular: org sizes from 1 to 50 teams, every fiftieth team unreleased (below k), epsilon 0.5
  per team, 0.25 per org and 0.1 for the company, so weights rarely repeat.

Measured per statistic: `consistency.plan` with a cold interval cache (the weights and every
95% interval: the cost paid once per tree, scales and window), and `Plan.estimate` (the exact
two passes over the released values). The anchor, measured in the same run: drawing the raw
releases' noise from OpenDP for the same nodes, one prebuilt measurement call per release.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from _bench import parse

from chorus.server.privacy import consistency, mechanisms
from chorus.server.privacy.consistency import Node
from chorus.server.privacy.epsilon import Epsilon

STATISTICS = {"count": 1, "sum": 1000}


def regular(orgs: int, teams: int, sensitivity: int) -> list[Node]:
    scale = mechanisms.calibrate(sensitivity, Epsilon.parse("0.5")).scale
    return ([Node("company", None, scale)] + [Node(f"org{i}", "company", scale) for i in range(orgs)]
            + [Node(f"team{j}", f"org{j % orgs}", scale) for j in range(teams)])


def irregular(orgs: int, teams: int, sensitivity: int) -> list[Node]:
    def scale(eps: str) -> float:
        return mechanisms.calibrate(sensitivity, Epsilon.parse(eps)).scale
    rng = random.Random(1)
    sizes = [rng.randint(1, 50) for _ in range(orgs)]
    owner = [org for org, size in enumerate(sizes) for _ in range(size)]
    nodes = [Node("company", None, scale("0.1"))] + [Node(f"org{i}", "company", scale("0.25")) for i in range(orgs)]
    nodes += [Node(f"team{j}", f"org{owner[j % len(owner)]}", None if j % 50 == 49 else scale("0.5"))
              for j in range(teams)]
    return nodes


def anchor(nodes: list[Node], sensitivity: int) -> float:
    """Seconds to draw every release's noise: one OpenDP call per release, measurements prebuilt."""
    by_scale = {}
    for eps in ("0.1", "0.25", "0.5"):
        calibrated = mechanisms.calibrate(sensitivity, Epsilon.parse(eps))
        by_scale[calibrated.scale] = calibrated.measurement
    measurements = [by_scale[n.scale] for n in nodes if n.scale is not None]
    started = time.perf_counter()
    for measurement in measurements:
        measurement(1000)
    return time.perf_counter() - started


def timed(nodes: list[Node]) -> tuple[float, float, consistency.Plan]:
    consistency._quantile.cache_clear()
    started = time.perf_counter()
    plan = consistency.plan(nodes)
    planned = time.perf_counter() - started
    rng = random.Random(2)
    values = {name: rng.randint(0, 10_000) for name in plan.released}
    started = time.perf_counter()
    plan.estimate(values)
    return planned, time.perf_counter() - started, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orgs", type=int, default=20)
    parser.add_argument("--teams", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parse(parser, smoke={"orgs": 3, "teams": 20, "rounds": 1})
    print(f"company: 1 root, {args.orgs} orgs, {args.teams} teams (median of {args.rounds} rounds)")
    for shape, build in (("regular", regular), ("irregular", irregular)):
        for statistic, sensitivity in STATISTICS.items():
            nodes = build(args.orgs, args.teams, sensitivity)
            raws, plans, estimates = [], [], []
            for _ in range(args.rounds):
                raws.append(anchor(nodes, sensitivity))
                planned, estimated, plan = timed(nodes)
                plans.append(planned)
                estimates.append(estimated)
            raw, planned, estimated = (statistics.median(x) for x in (raws, plans, estimates))
            print(f"{shape:9} {statistic:5} {len(plan.released)} releases:"
                  f" anchor (raw OpenDP draws) {raw * 1000:7.1f} ms;"
                  f" plan {planned * 1000:7.1f} ms = {planned / raw:6.1f} x anchor;"
                  f" estimate {estimated * 1000:6.1f} ms = {estimated / raw:5.2f} x anchor")


if __name__ == "__main__":
    main()
