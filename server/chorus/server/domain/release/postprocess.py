"""Stored releases read back, and what is computed from them at no privacy cost: the answer
of a noisy release, the mean (sum over count), adoption (active over the public roster) and
the consistent estimates across the tree's levels (`privacy.consistency`)."""

from __future__ import annotations

import functools
import json
import math
from typing import NamedTuple

from chorus.server import store
from chorus.server.domain.release.answers import Estimate
from chorus.server.domain.release.request import TEAM_LEVEL
from chorus.server.model.policy import MetricPolicy, Policy
from chorus.server.model.statistics import ACTIVE, NOISY_PARTS
from chorus.server.privacy import consistency, mechanisms
from chorus.server.privacy.epsilon import ZERO, Loss

#: A stored release's result (value, ci95, scale, sensitivity), as parsed from its JSON.
Result = tuple[int | list[int], float, float, int]
#: Results parsed before, by their JSON text: a stored release never changes, and every replay
#: of a report reads thousands of them again. Bounded (cleared when full); nothing here is
#: secret (every stored result is a published release). Never mutated once parsed.
_PARSED: dict[str, Result] = {}
_PARSED_MAX = 500_000


class Stored(NamedTuple):
    """A noisy release as stored (and as first answered)."""

    release_id: str
    value: int | list[int]
    ci95: float
    scale: float
    sensitivity: int
    epsilon: Loss
    #: What this request charged for it: ZERO when it was released before.
    charged: Loss
    #: The window's mechanism (privacy.mechanisms.LAPLACE or GAUSSIAN).
    mechanism: str


def result_json(item: Stored) -> str:
    return json.dumps({"value": item.value, "ci95": item.ci95, "scale": item.scale,
                       "sensitivity": item.sensitivity}, separators=(",", ":"))


@functools.cache
def parts(metric: str, stat: str, denominator: tuple[str, ...] = ()) -> tuple[tuple[str, str], ...]:
    """The (metric, noisy statistic) releases a statistic of `metric` is made of (a ratio's: the
    sums of `metric` and of each metric of its `denominator`)."""
    names = dict.fromkeys((metric, *denominator)) if stat == "ratio" else (metric,)
    return tuple((TEAM_LEVEL if need == ACTIVE else name, need) for need in NOISY_PARTS[stat] for name in names)


def noisy_estimate(metric: str, histogram_edges: tuple[int, ...], stat: str, item: Stored,
           consistent: tuple[float, float] | None) -> Estimate:
    """A sum, count, histogram or active; negative noisy values are shown as 0 and the answer
    says so."""
    if isinstance(item.value, list):
        buckets = tuple(max(0, v) for v in item.value)
        negative = [i for i, v in enumerate(item.value) if v < 0]
        note = (f"negative noisy counts in bucket(s) {', '.join(map(str, negative))} shown as 0 "
                f"(noisy values {item.value})" if negative else "")
        value = 0.0
        edges = histogram_edges
    else:
        buckets, edges = (), ()
        value = float(max(0, item.value))
        note = f"noisy {stat} {item.value} was negative; shown as 0" if item.value < 0 else ""
    return Estimate(metric, stat, value, item.ci95, buckets, edges, item.charged, item.epsilon,
                    item.mechanism, item.sensitivity, item.scale, not item.charged.micros,
                    item.release_id, note, (), consistent,
                    noisy_value=None if isinstance(item.value, list) else float(item.value))


def mean_estimate(metric: MetricPolicy, total: Stored, count: Stored) -> Estimate:
    assert isinstance(total.value, int) and isinstance(count.value, int)
    value, ci95 = mechanisms.mean_interval(total.value, total.scale, count.value, count.scale,
                                           metric.max_per_user, total.mechanism)
    raw = total.value / max(count.value, 1)
    note = ""
    if count.value < 1 or not 0 <= raw <= metric.max_per_user:
        note = (f"noisy sum {total.value} over noisy count {count.value} (at least 1) is clamped to "
                f"[0, {metric.max_per_user}]")
    return _post_processed(metric.name, "mean", value, ci95, (total, count), note)


def ratio_estimate(metric: str, denominator: tuple[str, ...], numerator: Stored, others: list[Stored]) -> Estimate:
    """The sum of `metric` over the sums of `denominator` (which may include `metric`: then a
    share, within [0, 1]); `others` are the denominator's sums but the numerator's."""
    assert isinstance(numerator.value, int)
    sums: list[tuple[int, float]] = []
    for other in others:
        assert isinstance(other.value, int)
        sums.append((other.value, other.scale))
    nested = metric in denominator
    value, ci95 = mechanisms.ratio_interval((numerator.value, numerator.scale), sums, nested, numerator.mechanism)
    below = sum(v for v, _ in sums) + (numerator.value if nested else 0)
    upper = 1 if nested else math.inf
    notes = []
    if below < 1 or not 0 <= numerator.value / below <= upper:
        notes.append(f"noisy sum {numerator.value} over noisy sum {below} is clamped to [0, {upper}]")
    if math.isinf(ci95):
        notes.append("the denominator is within its noise of 0: no upper end can be claimed")
    estimate = _post_processed(metric, "ratio", value, ci95, (numerator, *others), "; ".join(notes))
    return estimate._replace(denominator=denominator)


def adoption_estimate(active: Stored, roster_size: int) -> Estimate:
    assert isinstance(active.value, int)
    value, ci95 = mechanisms.adoption_interval(active.value, active.scale, roster_size, active.mechanism)
    note = (f"noisy active people {active.value} over roster size {roster_size} is outside [0, 1]; "
            "clamped" if not 0 <= active.value <= roster_size else "")
    return _post_processed(TEAM_LEVEL, "adoption", value, ci95, (active,), note)


def _post_processed(metric: str, stat: str, value: float, ci95: float, parts: tuple[Stored, ...],
                    note: str) -> Estimate:
    """An answer computed from stored releases: it charges nothing itself (its parts carry the
    charges) and names them; cached when every part was."""
    return Estimate(metric, stat, value, ci95, (), (), ZERO, ZERO, mechanisms.POST_PROCESSING, 0, 0.0,
                    all(not p.charged.micros for p in parts), "", note, tuple(p.release_id for p in parts))



@functools.lru_cache(maxsize=64)
def consistency_plan(nodes: tuple[consistency.Node, ...], mechanism: str) -> consistency.Plan:
    """The consistency plan of one tree and set of scales (deterministic; cached: a 500-team
    company's intervals take a while to compute)."""
    return consistency.plan(nodes, mechanism=mechanism)


def stored_of(rows: list[store.releases.Release], policy: Policy) -> dict[tuple[str, str, str], Stored]:
    """The stored releases of `rows`, keyed (team or node, metric, statistic), amounts in the policy's unit."""
    known = [_PARSED.get(row.result) for row in rows]
    unparsed = [row.result for row, r in zip(rows, known, strict=True) if r is None]
    fresh: dict[str, Result] = {}
    if unparsed:  # one JSON document for all of them: a full report replays thousands
        if len(_PARSED) + len(unparsed) > _PARSED_MAX:
            _PARSED.clear()
        for text, r in zip(unparsed, json.loads(f"[{','.join(unparsed)}]"), strict=True):
            fresh[text] = _PARSED[text] = (r["value"], r["ci95"], r["scale"], r["sensitivity"])
    unit, mechanism = policy.unit, policy.mechanism  # the window's (epsilon or rho)
    epsilons = {micros: unit(micros) for micros in {row.epsilon_micros for row in rows}}  # a few values
    out: dict[tuple[str, str, str], Stored] = {}
    for row, r in zip(rows, known, strict=True):
        value, ci95, scale, sensitivity = fresh[row.result] if r is None else r
        out[(row.team, row.metric, row.statistic)] = Stored(row.release_id, value, ci95, scale, sensitivity,
                                                             epsilons[row.epsilon_micros], ZERO, mechanism)
    return out

