"""The statistic vocabulary, spelled once: the names, which are noisy releases of their own,
which an analyst may request, and each one's wire value (`chorus.v1.Statistic`).

Imported by the policy (default epsilons), releases, the ReleaseService, the offline verifier,
the CLI and the dashboard. Depends only on the generated `chorus.v1` messages.
"""

from __future__ import annotations

import enum

from chorus.v1 import common_pb2


class Statistic(enum.StrEnum):
    """A statistic an analyst may request (`chorus release --statistic`)."""

    SUM = "sum"
    COUNT = "count"
    MEAN = "mean"
    HISTOGRAM = "histogram"
    ADOPTION = "adoption"
    RATIO = "ratio"

    @property
    def proto(self) -> common_pb2.Statistic:
        """The wire value, e.g. STATISTIC_SUM."""
        return to_proto(self.value)

    @classmethod
    def of(cls, proto: int) -> Statistic:
        """The statistic of a wire value; KeyError for ACTIVE (answered, never requested) or unknown."""
        return cls[common_pb2.Statistic.Name(proto).removeprefix("STATISTIC_")]


#: The noisy count of people active in any metric: released (the basis of adoption), never requested.
ACTIVE = "active"
#: What an analyst may request.
REQUESTABLE: tuple[str, ...] = tuple(s.value for s in Statistic)
#: What a request naming no statistic means, in order: every requestable one but the ratio,
#: which needs its denominator named.
EVERY: tuple[str, ...] = tuple(s for s in REQUESTABLE if s != Statistic.RATIO)
#: Statistics that have their own noisy release (and default epsilon); mean, adoption and ratio
#: are post-processing of them.
NOISY: tuple[str, ...] = (Statistic.SUM.value, Statistic.COUNT.value, Statistic.HISTOGRAM.value, ACTIVE)
#: The noisy statistics each requestable statistic is computed from; "active" is team-level (metric "").
#: A ratio's are the sums of its numerator metric and of each metric of its denominator.
NOISY_PARTS: dict[str, tuple[str, ...]] = {"sum": ("sum",), "count": ("count",), "histogram": ("histogram",),
                                           "mean": ("sum", "count"), "adoption": (ACTIVE,), "ratio": ("sum",)}


def to_proto(name: str) -> common_pb2.Statistic:
    """The wire value of any statistic name (the requestable ones and `active`)."""
    return common_pb2.Statistic.Value(f"STATISTIC_{name.upper()}")


def requestable_of(proto: int) -> str | None:
    """The name of a requestable statistic's wire value; None for ACTIVE, UNSPECIFIED or unknown."""
    try:
        return Statistic.of(proto).value
    except (KeyError, ValueError):
        return None


def name_of(proto: int) -> str:
    """The name of any statistic's wire value, e.g. "sum" or "active"."""
    return common_pb2.Statistic.Name(proto).removeprefix("STATISTIC_").lower()
