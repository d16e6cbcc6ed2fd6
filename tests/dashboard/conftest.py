"""Dashboard fixtures: a real Chorus with three closed windows behind a real gRPC server, and the
dashboard talking to it through the gateway exactly as in production."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from flask import Flask
from flask.testing import FlaskClient

from chorus.server.dashboard import Gateway, create_app
from chorus.server.dashboard.sessions import SessionStore
from chorus.server.domain import ingest
from chorus.server.model import config
from chorus.server.model.clock import FakeClock
from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server
from chorus.v1 import audit_pb2, audit_pb2_grpc, common_pb2, release_pb2, release_pb2_grpc
from tests._dashboard import csrf_of, login  # noqa: F401 (this folder's tests use them from here)
from tests._policy import SUITE_TOML

DAYS = ("2026-11-23", "2026-11-24", "2026-11-25")
LATEST = DAYS[-1]
#: k is 5 by default, so team-tiny is always suppressed.
TEAMS = {"team-red": 6, "team-blue": 5, "team-tiny": 3}
#: Who is active, per team: index -> multiplier of the base usage.
ACTIVE = {"team-red": 5, "team-blue": 3, "team-tiny": 3}
METRICS = ("ai.tokens", "ai.requests", "ai.suggestions_accepted", "ai.tasks_completed")
#: The suite policy with a leadership plan, released as each window closes: adoption, every
#: metric's sum and the mean of ai.tokens, each part at the suite's 0.05 (0.3 of each team's 1).
PLAN = (("adoption", ""), *(("sum", m) for m in METRICS), ("mean", "ai.tokens"))
PLAN_COST = "0.3"
DASHBOARD_TOML = SUITE_TOML.replace("release_plan = []", "") + "".join(
    f'\n[[privacy.release_plan]]\nstatistic = "{stat}"\n' + (f'metric = "{metric}"\n' if metric else "")
    for stat, metric in PLAN)


def noon(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(hour=12, tzinfo=UTC)


def roster_rows() -> list[tuple[str, str]]:
    return [(f"user-{team}-{i}", team) for team, size in TEAMS.items() for i in range(size)]


def usage(day_index: int) -> list[ingest.Contribution]:
    """A deterministic day of usage: the first ACTIVE[team] people of each team use every metric."""
    at = noon(DAYS[day_index])
    rows = []
    for team, active in ACTIVE.items():
        for i in range(active):
            scale = (i + 1) * (day_index + 1)
            rows += [ingest.Contribution(f"user-{team}-{i}", "ai.tokens", 9_000 * scale, at),
                     ingest.Contribution(f"user-{team}-{i}", "ai.requests", 40 * scale, at),
                     ingest.Contribution(f"user-{team}-{i}", "ai.suggestions_accepted", 12 * scale, at),
                     ingest.Contribution(f"user-{team}-{i}", "ai.tasks_completed", 2 * scale, at)]
    return rows


@dataclass
class Stack:
    """A running Chorus gRPC server with data in three closed windows, and one token per role."""

    chorus: Chorus
    server: Server
    clock: FakeClock
    tokens: dict[Role, str]
    channel: grpc.Channel
    gateways: list[Gateway] = field(default_factory=list)

    def gateway(self) -> Gateway:
        gw = Gateway(self.server.address)
        self.gateways.append(gw)
        return gw

    def metadata(self, role: Role) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.tokens[role]}"),)

    def release(self, window: str, statistics: list[int], teams: tuple[str, ...] = (),
                metrics: tuple[str, ...] = (), nodes: tuple[str, ...] = ()) -> release_pb2.ReleaseResponse:
        """What the gRPC API answers an analyst directly (cached once the dashboard released it)."""
        request = release_pb2.ReleaseRequest(
            window=window, teams=teams, metrics=metrics, nodes=nodes,
            statistics=[release_pb2.StatisticRequest(statistic=s) for s in statistics])  # type: ignore[arg-type]
        return release_pb2_grpc.ReleaseServiceStub(self.channel).Release(
            request, metadata=self.metadata(Role.ANALYST), timeout=30)

    def budgets(self, window: str = "") -> list[audit_pb2.TeamWindowBudget]:
        request = audit_pb2.GetBudgetRequest(window=window, page_size=1000)
        return list(audit_pb2_grpc.AuditServiceStub(self.channel).GetBudget(
            request, metadata=self.metadata(Role.AUDITOR), timeout=30).budgets)

    def ledger_size(self) -> int:
        stream = audit_pb2_grpc.AuditServiceStub(self.channel).StreamLedger(
            audit_pb2.StreamLedgerRequest(), metadata=self.metadata(Role.AUDITOR), timeout=30)
        return sum(len(page.entries) for page in stream)

    def close(self) -> None:
        for gw in self.gateways:
            gw.close()
        self.channel.close()
        self.server.stop(grace=0)


def build_stack(data_dir: Path, toml: str | None = None, orgs: dict[str, str] | None = None) -> Stack:
    """Three closed windows, each with its release plan released (by DASHBOARD_TOML by default)."""
    clock = FakeClock(noon(DAYS[0]))
    path = data_dir.parent / f"{data_dir.name}.toml"
    path.write_text(DASHBOARD_TOML if toml is None else toml)
    chorus = Chorus(config.load(path), data_dir, clock=clock)
    chorus.import_roster(roster_rows(), actor="test", orgs=orgs)
    for index, day in enumerate(DAYS):
        clock.set(noon(day))
        outcome = chorus.ingestor.report(ingest.Batch(uuid.uuid4().hex, "test-tool", "1.0", 0, usage(index)))
        assert not outcome.rejections
        chorus.close_window(day, actor="test")
    clock.set(noon(DAYS[-1]) + timedelta(days=1))
    tokens = {role: chorus.tokens.create(role, f"{role.value}-dashboard-test", clock.now(), actor="test")[0]
              for role in Role}
    server = Server(chorus, "127.0.0.1:0")
    server.start()
    return Stack(chorus, server, clock, tokens, grpc.insecure_channel(server.address))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    built = build_stack(tmp_path / "data")
    yield built
    built.close()


@pytest.fixture
def sessions(stack: Stack) -> SessionStore:
    return SessionStore(stack.clock)


@pytest.fixture
def app(stack: Stack, sessions: SessionStore) -> Flask:
    application = create_app(stack.gateway(), sessions=sessions)
    application.testing = True
    return application


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


ANALYST_PAGES = ("/overview", "/orgs", "/trends", "/histogram", "/spend")
AUDITOR_PAGES = ("/budget", "/ledger", "/policies", "/statement")
CLOSED = common_pb2.WINDOW_STATE_CLOSED
