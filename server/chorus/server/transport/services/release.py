"""ReleaseService: team-level noisy statistics for analysts, over `chorus.server.domain.release`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

import grpc

from chorus.server.domain import release
from chorus.server.domain import windows as window_store
from chorus.server.model import hierarchy
from chorus.server.model.statistics import REQUESTABLE, requestable_of, to_proto
from chorus.server.privacy.epsilon import Epsilon
from chorus.server.transport.gate import principal
from chorus.server.transport.rpc_errors import abort, budget_exceeded, invalid_argument, retry_later
from chorus.server.transport.services._convert import list_windows
from chorus.v1 import release_pb2, release_pb2_grpc

_LEVELS = {hierarchy.TEAM: release_pb2.NODE_LEVEL_TEAM, hierarchy.ORG: release_pb2.NODE_LEVEL_ORG,
           hierarchy.ROOT: release_pb2.NODE_LEVEL_COMPANY}


class ReleaseServicer(release_pb2_grpc.ReleaseServiceServicer):
    def __init__(self, releases: release.Releases,
                 windows: Callable[[datetime | None, datetime | None], list[window_store.WindowRecord]],
                 plan_retry_seconds: float = 30.0) -> None:
        """`plan_retry_seconds`: the RetryInfo of a release refused while a plan is pending (the
        closer's interval: its next pass completes the plan)."""
        self._releases = releases
        self._windows = windows
        self._plan_retry_seconds = plan_retry_seconds

    def ListWindows(self, request: release_pb2.ListWindowsRequest,
                    context: grpc.ServicerContext) -> release_pb2.ListWindowsResponse:
        windows, following = list_windows(request, context, self._windows)
        return release_pb2.ListWindowsResponse(windows=windows, next_page_token=following)

    def ListMetrics(self, request: release_pb2.ListMetricsRequest,
                    context: grpc.ServicerContext) -> release_pb2.ListMetricsResponse:
        with _domain_errors(context):
            metrics = self._releases.list_metrics(request.window)
        return release_pb2.ListMetricsResponse(metrics=[
            release_pb2.Metric(name=m.name, description=m.description, max_per_user=m.max_per_user,
                               histogram_edges=m.histogram_edges) for m in metrics])

    def ListTeams(self, request: release_pb2.ListTeamsRequest,
                  context: grpc.ServicerContext) -> release_pb2.ListTeamsResponse:
        with _domain_errors(context):
            teams = self._releases.list_teams(request.window)
        return release_pb2.ListTeamsResponse(
            min_team_size=teams.min_team_size,
            teams=[release_pb2.Team(name=t.name, roster_size=t.roster_size, eligible=t.eligible,
                                    reason=t.reason, org=t.org) for t in teams.teams])

    def Release(self, request: release_pb2.ReleaseRequest,
                context: grpc.ServicerContext) -> release_pb2.ReleaseResponse:
        statistics = [_statistic(i, s, context) for i, s in enumerate(request.statistics)]
        with _domain_errors(context, self._plan_retry_seconds):
            result = self._releases.release(request.window, list(request.teams), list(request.metrics),
                                             statistics, principal().name, list(request.nodes),
                                             validate_only=request.validate_only)
        return release_pb2.ReleaseResponse(window=result.window, teams=[_team(t) for t in result.teams],
                                           remainders=[_remainder(r) for r in result.remainders])


def _statistic(index: int, s: release_pb2.StatisticRequest,
               context: grpc.ServicerContext) -> release.StatisticRequest:
    name = requestable_of(s.statistic)
    if name is None:
        invalid_argument(context, f"statistics[{index}].statistic must be one of "
                                  f"{', '.join(REQUESTABLE)}", f"statistics[{index}].statistic")
    denominator = tuple(s.denominator)
    if not s.epsilon:
        return release.StatisticRequest(name, None, denominator)
    try:
        return release.StatisticRequest(name, Epsilon.parse(s.epsilon), denominator)
    except ValueError as exc:
        invalid_argument(context, f"statistics[{index}].epsilon: {exc}", f"statistics[{index}].epsilon")


def _team(t: release.TeamResult) -> release_pb2.TeamRelease:
    outcome = release_pb2.TEAM_OUTCOME_RELEASED if t.released else release_pb2.TEAM_OUTCOME_SUPPRESSED
    return release_pb2.TeamRelease(
        team=t.team, outcome=outcome, message=t.message, estimates=[_estimate(e) for e in t.estimates],
        budget_cap=str(t.budget_cap), budget_remaining=str(t.budget_remaining), roster_size=t.roster_size,
        epsilon_charged=str(t.epsilon_charged), epsilon_required=str(t.epsilon_required),
        unreleased=[release_pb2.UnreleasedStatistic(metric=u.metric, statistic=to_proto(u.statistic),
                                                    epsilon=str(u.epsilon), expected_ci95=u.expected_ci95)
                    for u in t.unreleased],
        level=_LEVELS[t.level], teams_charged=t.teams_charged, unit=t.budget_cap.UNIT, imprecise=t.imprecise,
        counted_in=t.counted_in)


def _remainder(r: release.RemainderResult) -> release_pb2.Remainder:
    return release_pb2.Remainder(
        parent=r.parent, children=r.members, roster_size=r.roster_size, metric=r.metric,
        statistic=to_proto(r.statistic), estimate=release_pb2.ConsistentEstimate(value=r.value, ci95=r.ci95))


def _estimate(e: release.Estimate) -> release_pb2.Estimate:
    return release_pb2.Estimate(
        metric=e.metric, statistic=to_proto(e.statistic), value=e.value, ci95=e.ci95,
        bucket_counts=e.bucket_counts, histogram_edges=e.histogram_edges,
        epsilon_charged=str(e.epsilon_charged), epsilon=str(e.epsilon), mechanism=e.mechanism,
        sensitivity=e.sensitivity, scale=e.scale, cached=e.cached, release_id=e.release_id, note=e.note,
        derived_from=e.derived_from, noisy_value=e.value if e.noisy_value is None else e.noisy_value,
        denominator=e.denominator, noisy_bucket_counts=e.noisy_buckets,
        consistent=None if e.consistent is None else release_pb2.ConsistentEstimate(
            value=e.consistent[0], ci95=e.consistent[1]))


@contextmanager
def _domain_errors(context: grpc.ServicerContext, plan_retry_seconds: float = 30.0) -> Iterator[None]:
    """Domain refusals -> status codes; the request changed nothing in each case."""
    try:
        yield
    except release.InvalidRequest as exc:
        invalid_argument(context, str(exc), exc.field)
    except release.NotFound as exc:
        abort(context, grpc.StatusCode.NOT_FOUND, str(exc), reason="NOT_FOUND")
    except release.PlanPending as exc:
        retry_later(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc), plan_retry_seconds,
                    reason="RELEASE_PLAN_PENDING")
    except release.Refused as exc:
        abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc), reason="WINDOW_NOT_RELEASABLE")
    except release.BudgetExceeded as exc:
        budget_exceeded(context, str(exc), [
            (o.window, o.team, str(o.requested), str(o.remaining), str(o.cap)) for o in exc.overspends])
