"""A release request as validated values (`Request`): what is asked of which window, by whom,
and what each statistic charges. Validated here against the grammar; against the window (its
metrics, teams, tree and cap) by `steps.select`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from chorus.server.domain.release.errors import InvalidRequest
from chorus.server.model.statistics import EVERY
from chorus.server.model.statistics import REQUESTABLE as STATISTICS
from chorus.server.privacy.epsilon import Loss

#: The `metric` of team-level statistics (active, adoption).
TEAM_LEVEL = ""


@dataclass(frozen=True, slots=True)
class StatisticRequest:
    statistic: str
    #: None: the window's default epsilon for each noisy statistic it needs.
    epsilon: Loss | None = None
    #: For a ratio: the metrics whose sums add up to its denominator (each requested metric is a
    #: numerator); () for any other statistic.
    denominator: tuple[str, ...] = ()


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
    #: For a ratio: the metrics whose sums add up to its denominator (`denominator_of`); ().
    denominator: tuple[str, ...] = ()


def validated_statistics(requests: Sequence[StatisticRequest]) -> dict[str, Loss | None]:
    """Requested statistics in order, validated; empty means all (but the ratio) at their defaults."""
    if not requests:
        return dict.fromkeys(EVERY)
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
        field = f"statistics[{i}].denominator"
        if r.denominator and r.statistic != "ratio":
            raise InvalidRequest(f"{field} is for a ratio; {r.statistic} takes none", field)
        if r.statistic == "ratio" and not r.denominator:
            raise InvalidRequest(f"{field} is empty: a ratio names the metrics whose sums divide each requested "
                                 "metric's sum, e.g. ai.suggestions_accepted and ai.suggestions_rejected", field)
        out[r.statistic] = r.epsilon
    return out


def denominator_of(requests: Sequence[StatisticRequest]) -> tuple[str, ...]:
    """The denominator of the request's ratio, () when it asks for none (validated_statistics first)."""
    return next((tuple(dict.fromkeys(r.denominator)) for r in requests if r.statistic == "ratio"), ())


