"""A release request as validated values (`Request`): what is asked of which window, by whom,
and what each statistic charges. Validated here against the grammar; against the window (its
metrics, teams, tree and cap) by `steps.select`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


@dataclass(frozen=True, slots=True)
class Request:
    """One release request. Empty `teams`, `metrics` mean all of them, except that with `nodes`
    and no teams only the nodes are answered."""

    window: str
    teams: tuple[str, ...]
    metrics: tuple[str, ...]
    #: statistic -> its epsilon (None: the window's default), validated, in request order
    #: (`validated_statistics`; never mutated).
    statistics: Mapping[str, Loss | None]
    #: Org paths, hierarchy.COMPANY or team names.
    nodes: tuple[str, ...]
    #: Who asks, as the ledger's `by` names them.
    requester: str
    #: Read only: answer with what is released and what the rest would charge.
    validate_only: bool = False
    #: An entry of the window's release plan (the only spending allowed before it is complete).
    plan: bool = False


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


