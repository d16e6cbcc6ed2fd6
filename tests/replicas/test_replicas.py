"""Real replica processes on one PostgreSQL: concurrent starts, SDK traffic through SIGKILLs."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import grpc
import pytest

from chorus.client import Client
from chorus.server.domain.ingest import Batch, Contribution
from chorus.server.domain.ledger import Signer
from chorus.server.model.calendar import window_of
from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.server.store._schema import MIGRATIONS
from chorus.v1 import admin_pb2, admin_pb2_grpc, common_pb2, release_pb2, release_pb2_grpc
from tests._policy import suite_config
from tests._race import run_together
from tests._traffic import FixedClock, Traffic

from .conftest import Cluster, roster_rows

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_replicas_starting_together_migrate_and_bootstrap_once(cluster: Cluster) -> None:
    # The documented procedure: the signing key exists before replicas start (shared or copied).
    cluster.data_dir.mkdir(mode=0o700)
    Signer.load_or_create(cluster.data_dir)
    replicas = cluster.start(3)

    assert cluster.sql("SELECT version FROM schema_migrations ORDER BY version") == [
        (number,) for number, _, _ in MIGRATIONS]
    assert cluster.sql("SELECT COUNT(*) FROM ledger_head") == [(1,)]
    assert cluster.sql("SELECT name, role FROM tokens") == [("admin", "admin")]
    assert cluster.sql("SELECT kind FROM ledger WHERE kind = 'token_create'") == [("token_create",)]
    cluster.tokens["admin"] = (cluster.data_dir / "admin.token").read_text().strip()
    for replica in replicas:  # every replica answers an authenticated call against the shared store
        with cluster.channel(replica) as channel:
            reply = admin_pb2_grpc.AdminServiceStub(channel).ListTokens(
                admin_pb2.ListTokensRequest(), metadata=cluster.metadata(Role.ADMIN), timeout=10)
        assert [t.name for t in reply.tokens] == ["admin"]


BOUNDS = {m.name: m.max_per_user for m in suite_config().policy.metrics}
CLIENTS = 4
MIN_ROUNDS, MAX_ROUNDS = 100, 400


def test_sdk_traffic_through_replica_kills_is_counted_exactly_once(cluster: Cluster) -> None:
    cluster.provision()
    replicas = cluster.start(3)
    ports = [r.address.rpartition(":")[2] for r in replicas]
    clock = FixedClock()
    clients = []
    for i in range(CLIENTS):
        # Each client lists every replica, its "own" first: gRPC's pick_first fails over in order.
        order = [ports[(i + j) % len(ports)] for j in range(len(ports))]
        clients.append(Client(f"ipv4:{','.join(f'127.0.0.1:{p}' for p in order)}", cluster.tokens["ingest"],
                              source="replica-test", flush_interval=0.05, timeout=5.0, clock=clock))
    # Even-numbered people stay under the ai.requests bound (at most 1600 < 2000);
    # odd-numbered ones pass it after MIN_ROUNDS (at least 4 * 100 * 5 = 2000).
    traffic = Traffic(clients, heavy=5, max_rounds=MAX_ROUNDS)
    with traffic.running():
        traffic.after_rounds(15)
        caught = [replicas[0].kill_mid_transaction()]
        traffic.after_rounds(15)
        replicas[0].start()  # same port: the clients' address lists still name it
        traffic.after_rounds(10)
        caught.append(replicas[1].kill_mid_transaction())
        traffic.after_rounds(15)
        replicas[1].start()
        traffic.after_rounds(max(0, MIN_ROUNDS - min(traffic.rounds)))
    assert caught == [True, True], "a replica was killed outside a transaction"
    assert traffic.delivered() >= 1  # the kills interrupted batches in flight, which the SDK sent again

    window = time.strftime("%Y-%m-%d", time.gmtime(clock.time()))
    with cluster.channel(replicas[2]) as channel:
        closed = admin_pb2_grpc.AdminServiceStub(channel).CloseWindow(
            admin_pb2.CloseWindowRequest(window=window), metadata=cluster.metadata(Role.ADMIN), timeout=30)
    assert not closed.already_closed

    folded = {(team, metric): [int(total), int(people)] for team, metric, total, people in cluster.sql(
        "SELECT team, metric, total, people FROM team_metrics WHERE window_id = %s AND metric IN "
        "('ai.requests', 'ai.tokens')", (window,))}
    assert folded == traffic.expected(BOUNDS)
    assert cluster.sql("SELECT (SELECT COUNT(*) FROM usage) + "
                       "(SELECT COUNT(*) FROM window_keys)") == [(0,)]
    assert replicas[0].starts == replicas[1].starts == 2


def test_concurrent_releases_on_different_replicas_charge_each_statistic_once(cluster: Cluster) -> None:
    cluster.provision()
    chorus = Chorus(suite_config(), cluster.data_dir, database=cluster.database)
    try:
        now = chorus.clock.now()
        chorus.ingestor.report(Batch("setup", "test", "1", 0, [
            Contribution(user, metric, 10 + i, now) for i, (user, team) in enumerate(roster_rows())
            if team == "team-red" for metric in BOUNDS]))
        span = window_of(now, chorus.config.policy.window_length)
        window = chorus.close_window(span.id, "operator").window.id
    finally:
        chorus.close()
    replicas = cluster.start(3)
    # 4 metrics x 3 statistics = 12 distinct releases at 0.1, each asked for on two replicas;
    # the team-window's cap of 1 pays for exactly 10 of them.
    statistics = (common_pb2.STATISTIC_SUM, common_pb2.STATISTIC_COUNT, common_pb2.STATISTIC_HISTOGRAM)
    asks = [(metric, stat) for metric in BOUNDS for stat in statistics] * 2
    channels = [cluster.channel(r) for r in replicas]

    def ask(i: int) -> Callable[[], release_pb2.ReleaseResponse]:
        metric, stat = asks[i]
        request = release_pb2.ReleaseRequest(
            window=window, teams=["team-red"], metrics=[metric],
            statistics=[release_pb2.StatisticRequest(statistic=stat, epsilon="0.1")])
        stub = release_pb2_grpc.ReleaseServiceStub(channels[i % len(channels)])
        return partial(stub.Release, request, metadata=cluster.metadata(Role.ANALYST), timeout=60)

    answers = run_together([ask(i) for i in range(len(asks))])  # built first, sent together
    for channel in channels:
        channel.close()

    stored = {(m, s): rid for rid, m, s in cluster.sql(
        "SELECT release_id, metric, statistic FROM releases WHERE window_id = %s AND team = 'team-red'",
        (window,))}
    assert len(stored) == 10
    assert cluster.sql("SELECT spent_micros, cap_micros, releases FROM budgets WHERE window_id = %s "
                       "AND team = 'team-red'", (window,)) == [(1_000_000, 1_000_000, 10)]
    assert cluster.sql("SELECT COUNT(*) FROM ledger WHERE kind = 'release'") == [(10,)]
    refused = [a for a in answers if isinstance(a, grpc.RpcError)]
    assert {a.code() for a in refused} <= {grpc.StatusCode.RESOURCE_EXHAUSTED}
    for answer in answers:
        if isinstance(answer, release_pb2.ReleaseResponse):
            (estimate,) = answer.teams[0].estimates
            name = common_pb2.Statistic.Name(estimate.statistic).removeprefix("STATISTIC_").lower()
            assert stored[(estimate.metric, name)] == estimate.release_id  # the one stored release
