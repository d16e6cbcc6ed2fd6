"""Whether a metric's per-person bound bites, and a bound the data suggest, read from released
company histograms of per-person totals: free post-processing, nothing is charged here.

A sum's noise is set by its bound, not by the usage: too high a bound buys noise, too low one
clamps real usage (which is also what makes burning tokens pointless: nothing above the bound
counts). The built-in plan releases a company histogram of each metric it sums, with edges that
halve from the bound down and end at the bound itself, so its last bucket holds exactly the
people at the bound (a person's total is clamped there at ingest). From the histograms of one
or more windows, added up bucket by bucket (`noisy_bucket_counts`, negative ones included):

* the share of people at the bound, when the last edge is the bound (else: at or above the top
  edge), with its 95% interval: a ratio of noisy counts (`mechanisms.ratio_interval`);
* a suggested bound: the smallest edge at or above which at most `SHARE_ABOVE` of the people's
  totals lie (on the noisy counts), with that share's interval. It is a suggestion for the next
  window's policy, which an operator writes (`max_per_user`); nothing applies it, since a bound
  frozen in a window can only change with the next one and a person should see it in the config.

Imports: model/ and privacy/ only (a front end's shared part).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chorus.server.privacy import mechanisms

__all__ = ["SHARE_ABOVE", "Histogram", "Reading", "read"]

#: The suggested bound leaves at most this share of people's totals at or above it.
SHARE_ABOVE = 0.05


@dataclass(frozen=True, slots=True)
class Histogram:
    """One window's released company histogram: noisy people per bucket (negatives included)
    and the noise scale of every bucket."""

    buckets: tuple[int, ...]
    scale: float


@dataclass(frozen=True, slots=True)
class Reading:
    metric: str
    bound: int
    windows: int
    #: Noisy people with a non-zero total, per window on average.
    people: float
    #: Whether the last edge is the bound (else `at_bound` is the share at or above the top edge).
    last_edge_is_bound: bool
    #: Share of people at the bound (or at or above the top edge) and its 95% half-width.
    at_bound: tuple[float, float]
    #: The smallest edge at or above which at most SHARE_ABOVE of totals lie; None when even
    #: the top bucket holds more (the bound bites: raise it, by how much the histogram cannot tell).
    suggested: int | None
    #: The share at or above `suggested` and its 95% half-width; (0, 0) when there is none.
    above_suggested: tuple[float, float]


def read(metric: str, bound: int, edges: Sequence[int], histograms: Sequence[Histogram],
         mechanism: str) -> Reading:
    """The bound reading of `metric` from its company histograms (one per window, all with
    `len(edges) + 1` buckets: bucket i holds totals in [edges[i - 1], edges[i]))."""
    if not histograms:
        raise ValueError(f"no histogram of {metric} to read")
    width = len(edges) + 1
    for h in histograms:
        if len(h.buckets) != width:
            raise ValueError(f"a histogram of {metric} has {len(h.buckets)} buckets; its {len(edges)} edges make "
                             f"{width}")

    def share_from(first: int) -> tuple[float, float]:
        """Share (and half-width) of totals in buckets `first`.. (at or above edges[first - 1])."""
        top = [(h.buckets[i], h.scale) for h in histograms for i in range(first, width)]
        rest = [(h.buckets[i], h.scale) for h in histograms for i in range(first)]
        return mechanisms.ratio_interval(top, rest, True, mechanism)

    people = sum(sum(h.buckets) for h in histograms) / len(histograms)
    suggested, above = None, (0.0, 0.0)
    for k, edge in enumerate(edges):
        share = share_from(k + 1)
        if share[0] <= SHARE_ABOVE:
            suggested, above = edge, share
            break
    return Reading(metric, bound, len(histograms), people, bool(edges) and edges[-1] == bound,
                   share_from(width - 1), suggested, above)
