"""Release fixtures: a real Chorus on SQLite with a FakeClock, a real gRPC server, an analyst stub."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from chorus.server.domain import ingest
from chorus.server.model import config
from chorus.server.model.clock import FakeClock
from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server
from chorus.v1 import release_pb2, release_pb2_grpc
from tests._policy import SUITE_TOML

NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
WINDOW = "2026-11-25"
#: Team sizes on the roster; k is 5 by default, so team-tiny is suppressed.
TEAMS = {"team-red": 6, "team-blue": 5, "team-tiny": 3}


def roster_rows(teams: dict[str, int] = TEAMS) -> list[tuple[str, str]]:
    return [(f"user-{team}-{i}", team) for team, size in teams.items() for i in range(size)]


def toml_with(metrics: int | None = None, **privacy: Any) -> str:
    """The default config with [privacy] overrides and optionally `metrics` generated metrics."""
    text = SUITE_TOML
    for key, value in privacy.items():
        line = next(x for x in text.splitlines() if x.startswith(f"{key} ="))
        text = text.replace(line, f"{key} = {value!r}".replace("'", '"'))
    if metrics is not None:
        text = text[:text.index("[[metrics]]")] + "".join(
            f'[[metrics]]\nname = "ai.m{i}"\nmax_per_user = {100 * (i + 1)}\n'
            f"histogram_edges = [{10 * (i + 1)}, {50 * (i + 1)}]\n\n" for i in range(metrics))
    return text


def contribute(chorus: Chorus, *rows: tuple[str, str, int]) -> ingest.Outcome:
    """Ingest (user, metric, value) at the clock's now through the real ingest rules."""
    now = chorus.clock.now()
    return chorus.ingestor.report(ingest.Batch(uuid.uuid4().hex, "test-tool", "1.0", 0,
                                               [ingest.Contribution(u, m, v, now) for u, m, v in rows]))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOON)


@pytest.fixture
def make_chorus(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., Chorus]]:
    """Build a Chorus from TOML text (the suite policy when None) with the standard roster."""
    made: list[Chorus] = []

    def make(toml: str | None = None, teams: dict[str, int] = TEAMS) -> Chorus:
        path = tmp_path / f"chorus-{len(made)}.toml"
        path.write_text(SUITE_TOML if toml is None else toml)
        instance = Chorus(config.load(path), tmp_path / f"data-{len(made)}", clock=clock)
        instance.import_roster(roster_rows(teams), actor="test")
        made.append(instance)
        return instance

    yield make
    for instance in made:
        instance.close()


@pytest.fixture
def chorus(make_chorus: Callable[..., Chorus]) -> Chorus:
    return make_chorus()


@dataclass
class Api:
    """An analyst's view of a running server: the stub, call metadata, and the Chorus behind it."""

    chorus: Chorus
    server: Server
    stub: release_pb2_grpc.ReleaseServiceStub
    metadata: tuple[tuple[str, str], ...]
    channel: grpc.Channel

    def release(self, window: str = WINDOW, teams: tuple[str, ...] = (), metrics: tuple[str, ...] = (),
                statistics: tuple[tuple[int, str], ...] = ()) -> release_pb2.ReleaseResponse:
        return self.stub.Release(release_pb2.ReleaseRequest(
            window=window, teams=teams, metrics=metrics,
            statistics=[release_pb2.StatisticRequest(statistic=s, epsilon=e) for s, e in statistics]),
            metadata=self.metadata, timeout=60)


def serve(chorus: Chorus, role: Role = Role.ANALYST) -> Api:
    server = Server(chorus, "127.0.0.1:0")
    server.start()
    secret, _ = chorus.tokens.create(role, f"{role.value}-1", chorus.clock.now(), actor="test")
    channel = grpc.insecure_channel(server.address)
    return Api(chorus, server, release_pb2_grpc.ReleaseServiceStub(channel),
               (("authorization", f"Bearer {secret}"),), channel)


@pytest.fixture
def make_api() -> Iterator[Callable[[Chorus], Api]]:
    """Start a real gRPC server on 127.0.0.1 port 0 for a Chorus; stopped at teardown."""
    started: list[Api] = []

    def make(chorus: Chorus) -> Api:
        api = serve(chorus)
        started.append(api)
        return api

    yield make
    for api in started:
        api.channel.close()
        api.server.stop(grace=0)  # also closes the Chorus; closing it again is harmless
