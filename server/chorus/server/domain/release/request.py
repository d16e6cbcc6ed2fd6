"""A release request as validated values: the statistics asked for and what each part charges."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chorus.server.domain.release.errors import InvalidRequest
from chorus.server.model.statistics import REQUESTABLE as STATISTICS
from chorus.server.privacy.epsilon import Loss

#: The `metric` of team-level statistics (active, adoption).
TEAM_LEVEL = ""


@dataclass(frozen=True, slots=True)
class StatisticRequest:
    statistic: str
    #: None: the window's default epsilon for each noisy statistic it needs.
    epsilon: Loss | None = None


def validated_statistics(requests: Sequence[StatisticRequest]) -> dict[str, Loss | None]:
    """Requested statistics in order, validated; empty means all at their defaults."""
    if not requests:
        return dict.fromkeys(STATISTICS)
    out: dict[str, Loss | None] = {}
    for i, r in enumerate(requests):
        if r.statistic not in STATISTICS:
            raise InvalidRequest(f"statistic {r.statistic!r} is unknown; allowed: {', '.join(STATISTICS)}",
                                 f"statistics[{i}].statistic")
        if r.statistic in out:
            raise InvalidRequest(f"statistics[{i}].statistic: {r.statistic} is requested more than once",
                                 f"statistics[{i}].statistic")
        if r.epsilon is not None and r.epsilon.micros == 0:
            # "0" fits the grammar (answers use it: a derived estimate charges nothing), but a
            # release at epsilon 0 is infinite noise: no mechanism draws it.
            raise InvalidRequest(f"statistics[{i}].epsilon is 0 for {r.statistic}; a release needs an epsilon "
                                 f"greater than 0 (at least 0.000001; empty: the window's default)",
                                 f"statistics[{i}].epsilon")
        out[r.statistic] = r.epsilon
    return out


