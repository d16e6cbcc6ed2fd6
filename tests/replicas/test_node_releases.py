"""Releases at an org on several replicas over one PostgreSQL: every team-window below the org
is charged atomically, and racing team and org releases never take a team-window past its cap."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import grpc
import pytest

from chorus.server.domain.ingest import Batch, Contribution
from chorus.server.model.calendar import window_of
from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.v1 import common_pb2, release_pb2, release_pb2_grpc
from tests._policy import suite_config
from tests._race import run_together

from .conftest import Cluster, roster_rows

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ORGS = {"team-red": "engineering", "team-blue": "engineering", "team-green": "sales"}
METRICS = ("ai.tokens", "ai.requests", "ai.suggestions_accepted", "ai.tasks_completed")


def test_racing_org_and_team_releases_on_replicas_charge_every_team_below_within_its_cap(cluster: Cluster) -> None:
    chorus = Chorus(suite_config(), cluster.data_dir, database=cluster.database)
    try:
        chorus.import_roster(roster_rows(), actor="operator", orgs=ORGS)
        cluster.tokens["analyst"], _ = chorus.tokens.create(Role.ANALYST, "test-analyst", chorus.clock.now(),
                                                            actor="operator")
        now = chorus.clock.now()
        chorus.ingestor.report(Batch("setup", "test", "1", 0, [
            Contribution(user, metric, 10 + i, now)
            for i, (user, _) in enumerate(roster_rows()) for metric in METRICS]))
        window = chorus.close_window(window_of(now, chorus.config.policy.window_length).id, "operator").window.id
    finally:
        chorus.close()
    replicas = cluster.start(2)
    channels = [cluster.channel(r) for r in replicas]
    statistics = (common_pb2.STATISTIC_SUM, common_pb2.STATISTIC_COUNT, common_pb2.STATISTIC_HISTOGRAM)
    # 12 releases of engineering and 12 of team-red at 0.1, each charging team-red: its cap of 1
    # pays for exactly 10 of the 24, whichever replica answers them.
    asks = [(nodes, teams, metric, stat) for metric in METRICS for stat in statistics
            for nodes, teams in ((["engineering"], []), ([], ["team-red"]))]

    def ask(i: int) -> Callable[[], release_pb2.ReleaseResponse]:
        nodes, teams, metric, stat = asks[i]
        request = release_pb2.ReleaseRequest(window=window, nodes=nodes, teams=teams, metrics=[metric],
                                             statistics=[release_pb2.StatisticRequest(statistic=stat, epsilon="0.1")])
        stub = release_pb2_grpc.ReleaseServiceStub(channels[i % len(channels)])
        return partial(stub.Release, request, metadata=cluster.metadata(Role.ANALYST), timeout=60)

    answers: list[release_pb2.ReleaseResponse | grpc.RpcError] = [grpc.RpcError()] * len(asks)
    waiting = list(range(len(asks)))
    for _ in range(20):  # a request refused UNAVAILABLE (the busy rule) changed nothing: sent again, as clients do
        for i, answer in zip(waiting, run_together([ask(i) for i in waiting]), strict=True):  # sent together
            answers[i] = answer
        waiting = [i for i in waiting if isinstance(answers[i], grpc.RpcError)
                   and answers[i].code() == grpc.StatusCode.UNAVAILABLE]
        if not waiting:
            break
    for channel in channels:
        channel.close()

    ok = [a for a in answers if isinstance(a, release_pb2.ReleaseResponse)]
    assert len(ok) == 10
    assert {a.code() for a in answers if isinstance(a, grpc.RpcError)} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    org_releases = sum(1 for a in ok if a.teams[0].team == "engineering")
    spent = dict(cluster.sql("SELECT team, spent_micros FROM budgets WHERE window_id = %s", (window,)))
    assert spent == {"team-red": 1_000_000, "team-blue": 100_000 * org_releases, "team-green": 0}
    assert cluster.sql("SELECT COUNT(*) FROM ledger WHERE kind = 'release'") == [(10,)]
