"""What leadership can read, at what privacy loss: the issue-20 table for the default policy and
for the policy before it (discrete Laplace, epsilon 3 a week, a team-only plan), side by side.

    python bench/bench_accuracy.py [--runs 200] [--orgs 10]

The synthetic company: `--orgs` orgs of 100 people, each with teams of 5, 10, 25 and 60;
adoption growing linearly from 30% to 65% over 8 weekly windows (each person active in a week
with that probability); an active person's weekly tokens lognormal with median 50,000 (sigma 1),
clamped to the bound of `ai.tokens`; their AI edits decided lognormal with median 60 (sigma 1),
each accepted with probability 0.7, each count clamped to the bound of its metric.

Means and ratios, where each policy shows them: the default plan releases edit acceptance
(`ratio` of accepted edits over accepted plus rejected) at the company and every org; its
company mean of tokens per person using them is the planned company sum over a company count
asked for once at the default rho, which is what the plan leaves. The old plan released a mean
of tokens for every team (its 60-person team is shown) and no ratio (the statistic did not
exist). A policy that cannot show a figure prints "-". Their intervals are the server's own
`mechanisms.mean_interval` and `mechanisms.ratio_interval` applied to each simulated release.

How the numbers are made, honestly: each policy's plan is calibrated with the server's own
`mechanisms.calibrate` (the scales and charges every release draws with), the consistent
estimates across company, orgs and teams use the server's own `consistency.plan` weights and
intervals (the same function a release answer calls), and the intervals of derived figures the
server's `mechanisms.combined_ci95`. The noise itself is simulated with numpy from those scales
for speed (discrete Laplace exactly, as a difference of two geometric draws; discrete Gaussian
as a rounded normal of the same scale, which for the scales here is within a fraction of a
percent of it); the 1,600 windows of 200 runs are not pushed through the gRPC server (the
slow smoke test, tests/release/test_bench_accuracy.py, runs this file at a small size).

Each figure prints its value, its target, and, for the intervals, the coverage over the runs
and the width against the exact simulated 95% quantile of the error.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np
from _bench import parse

from chorus.server.model import config
from chorus.server.model.calendar import WindowLength, max_windows_per_year
from chorus.server.model.policy import Policy
from chorus.server.privacy import consistency, mechanisms
from chorus.server.privacy.budget import worst_case
from chorus.server.privacy.epsilon import Loss

TEAM_SIZES = (5, 10, 25, 60)
WEEKS = 8
BOUND = 500_000
EDIT_BOUND = 500  # ai.suggestions_accepted and ai.suggestions_rejected
ACCEPTED, REJECTED = "ai.suggestions_accepted", "ai.suggestions_rejected"
OLD_POLICY_TOML = """
[privacy]
mechanism = "discrete_laplace"
"""


@dataclass
class Figure:
    name: str
    target: str
    value: float
    unit: str = ""
    coverage: float | None = None
    width_ratio: float | None = None

    def cells(self) -> list[str]:
        if math.isnan(self.value):
            return ["-", "", ""]  # the policy does not show this figure
        cov = "" if self.coverage is None else f"{self.coverage:.1%}"
        ratio = "" if self.width_ratio is None else f"{self.width_ratio:.2f}x"
        return [f"{self.value:,.2f}{self.unit}", cov, ratio]


def _policies() -> dict[str, Policy]:
    import tomllib
    new = config.load(None).policy
    old_raw = tomllib.loads(config.DEFAULT_TOML)
    old_raw["privacy"] = {"mechanism": "discrete_laplace"}  # the pre-issue-20 built-ins, team-only plan
    old_raw["privacy"]["release_plan"] = [{"statistic": "adoption"}, {"statistic": "sum", "metric": "ai.tokens"},
                                          {"statistic": "mean", "metric": "ai.tokens"},
                                          {"statistic": "sum", "metric": "ai.requests"},
                                          {"statistic": "mean", "metric": "ai.requests"}]
    return {"new (discrete Gaussian, company/org/team plan)": new,
            "old (discrete Laplace 3/week, team plan)": config.parse(old_raw).policy}


def _noise(rng: np.random.Generator, mechanism: str, scale: float, size: tuple[int, ...]) -> np.ndarray:
    if mechanism == mechanisms.GAUSSIAN:
        return np.rint(rng.normal(0.0, scale, size))
    p = 1 - math.exp(-1 / scale)  # discrete Laplace as the difference of two geometric draws
    return (rng.geometric(p, size) - rng.geometric(p, size)).astype(float)


def _scale(policy: Policy, level: str, statistic: str, metric: str = "") -> float | None:
    for entry in policy.release_plan:
        if entry.level == level and any(part == (metric, statistic) for part in entry.noisy_parts()):
            return _calibrated(policy, statistic, metric, entry.charge)
    return None


def _calibrated(policy: Policy, statistic: str, metric: str, charge: Loss) -> float:
    bound = policy.metric(metric).max_per_user if metric else 1  # type: ignore[union-attr]
    return mechanisms.calibrate(bound if statistic == "sum" else 1, charge).scale


def simulate(policy: Policy, runs: int, orgs: int, seed: int) -> list[Figure]:
    rng = np.random.default_rng(seed)
    mech = policy.mechanism
    teams = [(f"org{o}", f"org{o}/t{n}", n) for o in range(orgs) for n in TEAM_SIZES]
    sizes = np.array([n for _, _, n in teams], dtype=float)
    people = int(sizes.sum())
    adoption = np.linspace(0.30, 0.65, WEEKS)
    # Truth per run, week and team: active people and their tokens.
    active = rng.binomial(np.broadcast_to(sizes.astype(int), (runs, WEEKS, len(teams))),
                          adoption[None, :, None])
    tokens = np.zeros(active.shape)
    accepted = np.zeros(active.shape)
    rejected = np.zeros(active.shape)
    for idx in np.ndindex(active.shape):
        n = active[idx]
        if n:
            tokens[idx] = np.minimum(rng.lognormal(math.log(50_000), 1.0, n), BOUND).sum()
            decided = np.rint(rng.lognormal(math.log(60), 1.0, n)).astype(int)
            yes = rng.binomial(decided, 0.7)
            accepted[idx] = np.minimum(yes, EDIT_BOUND).sum()
            rejected[idx] = np.minimum(decided - yes, EDIT_BOUND).sum()

    def released(statistic: str, metric: str, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(company, org, team) estimates and their ci95 for each run and week: the consistent ones
        when several levels are released, else the raw team releases summed (as the dashboard did)."""
        scales = {level: _scale(policy, level, statistic, metric) for level in ("company", "org", "team")}
        nodes = [consistency.Node("/", None, scales["company"])]
        nodes += [consistency.Node(f"org{o}", "/", scales["org"]) for o in range(orgs)]
        nodes += [consistency.Node(name, org, scales["team"]) for org, name, _ in teams]
        org_truth = truth.reshape(runs, WEEKS, orgs, len(TEAM_SIZES)).sum(axis=3)
        values = {"/": truth.sum(axis=2)} | {f"org{o}": org_truth[:, :, o] for o in range(orgs)} \
            | {name: truth[:, :, i] for i, (_, name, _) in enumerate(teams)}
        levels = [n for n in nodes if n.scale is not None]
        if not levels:
            raise ValueError(f"{statistic} is not planned")
        noisy = {n.name: values[n.name] + _noise(rng, mech, n.scale, values[n.name].shape)  # type: ignore[arg-type]
                 for n in levels}
        if scales["company"] is not None or scales["org"] is not None:
            plan = consistency.plan(nodes, mechanism=mech)
            order = plan.released

            intervals = plan.estimate(dict.fromkeys(order, 0)).estimates

            def est(name: str) -> tuple[np.ndarray, float]:
                w = plan.weights(name)
                return sum(w[i] * noisy[r] for i, r in enumerate(order)), intervals[name].ci95
            company, company_ci = est("/")
            org0, org_ci = est("org0")
            team_est = [est(name) for _, name, _ in teams] if scales["team"] is not None else []
        else:  # teams only: the company and an org are sums of noisy teams
            team_scale = scales["team"]
            assert team_scale is not None
            company = sum(noisy[name] for _, name, _ in teams)
            company_ci = mechanisms.combined_ci95([(team_scale, 1.0)] * len(teams), mechanism=mech)
            org0 = sum(noisy[name] for org, name, _ in teams if org == "org0")
            org_ci = mechanisms.combined_ci95([(team_scale, 1.0)] * len(TEAM_SIZES), mechanism=mech)
            team_est = [(noisy[name], mechanisms.accuracy(team_scale, mechanisms.ALPHA, mech)) for _, name, _ in teams]
        return (np.stack([company, org0]), np.array([company_ci, org_ci]),
                np.array([e for e, _ in team_est]), np.array([ci for _, ci in team_est]))  # type: ignore[return-value]

    figures = [Figure("yearly bound per person (delta 1e-8)", "<= 30",
                      worst_case(policy.budget_per_window, max_windows_per_year(WindowLength.WEEK)).epsilon)]
    # Adoption.
    (company_org, cis, team_noisy, team_cis) = released("active", "", active.astype(float))
    company, org0 = company_org
    truth_company = active.sum(axis=2)
    truth_org0 = active[:, :, :len(TEAM_SIZES)].sum(axis=2)
    err = np.abs(company - truth_company) / people
    figures.append(_interval("company adoption, one week, 95% half-width", "<= 2 points",
                             cis[0] / people * 100, err * 100, " points"))
    err = np.abs(org0 - truth_org0) / (people / orgs)
    figures.append(_interval("org adoption (100 people), one week", "<= 10 points",
                             cis[1] / (people / orgs) * 100, err * 100, " points"))
    for i, n in ((2, 25), (3, 60)):  # org0's teams of 25 and 60
        mean = team_noisy[i].mean(axis=1)
        truth = active[:, :, i].mean(axis=1)
        # The 8 weeks are independent: the average's half-width is one week's over sqrt(8) (the
        # week's interval is the consistent estimate's when the org and company are released too).
        half = team_cis[i] / math.sqrt(WEEKS) / n * 100
        figures.append(_interval(f"team adoption over 8 weeks, {n}-person team", "<= 12" if n == 25 else "<= 6",
                                 half, np.abs(mean - truth) / n * 100, " points"))
    # Slope of company adoption over the 8 weeks (least squares; points a week).
    t = np.arange(WEEKS) - (WEEKS - 1) / 2
    w = t / (t * t).sum()
    slope = (company / people * 100) @ w
    true_slope = (truth_company / people * 100) @ w
    sd_week = cis[0] / people * 100 / 1.96
    half = 1.96 * sd_week * math.sqrt(float((w * w).sum()))
    fig = _interval("company adoption slope over 8 weeks", "<= 0.5 points a week", half,
                    np.abs(slope - true_slope), " points/week")
    figures.append(fig)
    growing = float(np.mean(slope - half > 0))
    figures.append(Figure('"growing" detected (slope interval above 0)', ">= 95% of runs", growing * 100, "%"))
    # Company token total, one week (the first, the smallest).
    (company_org, cis, _, _) = released("sum", "ai.tokens", tokens)
    truth = tokens.sum(axis=2)
    rel = np.abs(company_org[0][:, 0] - truth[:, 0]) / truth[:, 0]
    figures.append(_interval("company token total, one week", "<= 15%", float(np.mean(cis[0] / truth[:, 0])) * 100,
                             rel * 100, "%"))
    figures += _means(policy, rng, tokens, active, orgs)
    figures += _ratios(policy, rng, accepted, rejected, orgs)
    return figures


MEAN_TARGET = "coverage >= 95%, width <= 1.5x"


def _means(policy: Policy, rng: np.random.Generator, tokens: np.ndarray, active: np.ndarray,
           orgs: int) -> list[Figure]:
    """Tokens per person using them, one week (every week of every run), where the policy shows it."""
    mech = policy.mechanism
    out = []
    for name, level, truth_sum, truth_count in (
            ("company mean of ai.tokens per person using them, one week", "company", tokens.sum(axis=2),
             active.sum(axis=2)),
            ("team mean of ai.tokens, 60-person team, one week", "team", tokens[:, :, 3], active[:, :, 3])):
        sum_scale = _scale(policy, level, "sum", "ai.tokens")
        count_scale = _scale(policy, level, "count", "ai.tokens")
        if count_scale is None and level == "company" and sum_scale is not None:  # asked for once, at the default
            count_scale = _calibrated(policy, "count", "ai.tokens", policy.default_charge["count"])
        if sum_scale is None or count_scale is None:
            out.append(Figure(name, MEAN_TARGET, math.nan))
            continue
        noisy_sum = truth_sum + _noise(rng, mech, sum_scale, truth_sum.shape)
        noisy_count = truth_count + _noise(rng, mech, count_scale, truth_count.shape)
        answers = [mechanisms.mean_interval(int(s), sum_scale, int(c), count_scale, BOUND, mech)
                   for s, c in zip(noisy_sum.ravel(), noisy_count.ravel(), strict=True)]
        value, half = (np.array(x) for x in zip(*answers, strict=True))
        truth = (truth_sum / np.maximum(truth_count, 1)).ravel()
        out.append(_interval(name, MEAN_TARGET, half, np.abs(value - truth), " tokens"))
    return out


def _ratios(policy: Policy, rng: np.random.Generator, accepted: np.ndarray, rejected: np.ndarray,
            orgs: int) -> list[Figure]:
    """Edit acceptance (accepted over accepted plus rejected), one week, at the company and at an org."""
    mech = policy.mechanism
    org0 = slice(0, len(TEAM_SIZES))
    out = []
    for name, level, yes, no in (
            ("company edit acceptance (ratio), one week", "company", accepted.sum(axis=2), rejected.sum(axis=2)),
            ("org edit acceptance (ratio, 100 people), one week", "org", accepted[:, :, org0].sum(axis=2),
             rejected[:, :, org0].sum(axis=2))):
        scales = _scale(policy, level, "sum", ACCEPTED), _scale(policy, level, "sum", REJECTED)
        if scales[0] is None or scales[1] is None:
            out.append(Figure(name, MEAN_TARGET, math.nan))
            continue
        noisy_yes = yes + _noise(rng, mech, scales[0], yes.shape)
        noisy_no = no + _noise(rng, mech, scales[1], no.shape)
        answers = [mechanisms.ratio_interval([(int(y), scales[0])], [(int(n), scales[1])], True, mech)
                   for y, n in zip(noisy_yes.ravel(), noisy_no.ravel(), strict=True)]
        value, half = (np.array(x) * 100 for x in zip(*answers, strict=True))
        truth = (yes / np.maximum(yes + no, 1)).ravel() * 100
        out.append(_interval(name, MEAN_TARGET, half, np.abs(value - truth), " points"))
    return out


def _interval(name: str, target: str, half: float | np.ndarray, errors: np.ndarray, unit: str) -> Figure:
    """A figure's interval against the errors: one half-width, or one per error (a mean's or a
    ratio's depends on the release; then its median is printed and compared)."""
    errors = np.asarray(errors).ravel()
    exact = float(np.quantile(errors, 0.95))
    typical = float(np.median(half))
    return Figure(name, target, typical, unit, float(np.mean(errors <= half)), typical / exact if exact else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--orgs", type=int, default=10)
    args = parse(parser, smoke={"runs": 5, "orgs": 2})
    results = {name: simulate(policy, args.runs, args.orgs, seed=20)
               for name, policy in _policies().items()}
    names = list(results)
    print(f"{args.runs} simulated runs of {WEEKS} weekly windows, {args.orgs * 100:,} people in {args.orgs} orgs; "
          "coverage = share of intervals holding the truth, width = half-width / exact simulated 95% quantile")
    header = ["figure", "target"] + [f"{n.split(' (')[0]}: {c}" for n in names for c in ("value", "coverage", "width")]
    rows = [[a.name, a.target, *a.cells(), *b.cells()] for a, b in zip(*results.values(), strict=True)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print("\n".join(f"{n.split(' (')[0]} = {n}" for n in names))


if __name__ == "__main__":
    main()
