"""The flat records of a report: one owner for `chorus report --format json|csv` and the
dashboard's JSON API (`/api/v1/report`), so the two are identical by construction (and
tests/dashboard/test_api.py compares them).

One record per team (or node) and estimate, then one per remainder. JSON-friendly: a field
that does not apply is None (null), never "".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from chorus.server.model import hierarchy
from chorus.server.model.statistics import Statistic, name_of
from chorus.v1 import release_pb2

__all__ = ["FIELDS", "LEVEL_NAMES", "org_nodes", "records"]

LEVEL_NAMES = {release_pb2.NODE_LEVEL_TEAM: "team", release_pb2.NODE_LEVEL_ORG: "org",
               release_pb2.NODE_LEVEL_COMPANY: "company"}

#: The flat record, one per team (or node) and estimate, then one per remainder (outcome
#: "remainder", under `parent`); fields that do not apply (the estimate fields of a suppressed
#: team, the metric of adoption, consistent_* of a window released at one level) are null.
#: `noisy_value` is a sum's, count's or active's noisy value as released (negative ones
#: included): what a BI tool must add up, where `value` shows a negative one as 0. `unit` names
#: the unit of every privacy amount of the record (`epsilon`, `epsilon_charged`, `budget_cap`,
#: `budget_remaining`, `team_epsilon_charged`): "epsilon" for a discrete-Laplace window, "rho"
#: (zero-concentrated DP) for a discrete-Gaussian one, as `TeamRelease.unit` says. `denominator`
#: lists a ratio's denominator metrics (`metric` is its numerator); its `ci95` is null when the
#: interval has no upper end (a denominator within its noise of 0). `noisy_bucket_counts` are a
#: histogram's buckets as released (negative ones included, where `bucket_counts` shows 0).
FIELDS = ("window", "team", "roster_size", "outcome", "message", "metric", "statistic", "value", "ci95",
          "bucket_counts", "histogram_edges", "epsilon", "epsilon_charged", "cached", "mechanism", "note",
          "release_id", "derived_from", "budget_cap", "budget_remaining", "team_epsilon_charged", "level",
          "teams_charged", "consistent_value", "consistent_ci95", "parent", "children", "noisy_value", "unit",
          "denominator", "noisy_bucket_counts")


def _text(value: str) -> str | None:
    return value or None


def org_nodes(teams: Iterable[release_pb2.Team]) -> list[str]:
    """Every org of a window's frozen tree, parents first."""
    orgs = {org for t in teams for org in hierarchy.ancestors(t.org)}
    return sorted(orgs, key=lambda o: (o.count("/"), o))


def records(replies: Sequence[release_pb2.ReleaseResponse]) -> Iterator[dict[str, Any]]:
    for reply in replies:
        for t in reply.teams:
            base = {"window": reply.window, "team": t.team, "roster_size": t.roster_size,
                    "outcome": "released" if t.outcome == release_pb2.TEAM_OUTCOME_RELEASED else "suppressed",
                    "message": _text(t.message), "budget_cap": _text(t.budget_cap),
                    "budget_remaining": _text(t.budget_remaining),
                    "team_epsilon_charged": t.epsilon_charged, "level": LEVEL_NAMES.get(t.level),
                    "teams_charged": list(t.teams_charged), "unit": t.unit or "epsilon"}
            if not t.estimates and not t.unreleased:
                yield {f: base.get(f) for f in FIELDS}  # suppressed: no estimate, its fields null
            for u in t.unreleased:  # what it would cost: epsilon, and the interval it would have
                yield {**{f: base.get(f) for f in FIELDS}, "outcome": "not released",
                       "metric": _text(u.metric), "statistic": name_of(u.statistic),
                       "ci95": u.expected_ci95 or None, "epsilon": u.epsilon}
            for e in t.estimates:
                name = name_of(e.statistic)
                histogram = name == Statistic.HISTOGRAM.value
                noisy = e.release_id and not histogram
                yield {**base, "metric": _text(e.metric), "statistic": name, "value": e.value,
                       "ci95": e.ci95 if math.isfinite(e.ci95) else None,
                       "bucket_counts": list(e.bucket_counts) if histogram else None,
                       "histogram_edges": list(e.histogram_edges) if histogram else None,
                       "epsilon": e.epsilon, "epsilon_charged": e.epsilon_charged, "cached": e.cached,
                       "mechanism": e.mechanism, "note": _text(e.note),
                       "release_id": _text(e.release_id), "derived_from": list(e.derived_from),
                       "consistent_value": e.consistent.value if e.HasField("consistent") else None,
                       "consistent_ci95": e.consistent.ci95 if e.HasField("consistent") else None,
                       "parent": None, "children": None, "noisy_value": e.noisy_value if noisy else None,
                       "denominator": list(e.denominator) if name == Statistic.RATIO.value else None,
                       "noisy_bucket_counts": list(e.noisy_bucket_counts) if histogram else None}
        for r in reply.remainders:
            yield {f: None for f in FIELDS} | {
                "window": reply.window, "outcome": "remainder", "parent": r.parent,
                "children": list(r.children), "roster_size": r.roster_size, "metric": _text(r.metric),
                "statistic": name_of(r.statistic),
                "consistent_value": r.estimate.value, "consistent_ci95": r.estimate.ci95}
