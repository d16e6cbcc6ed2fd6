"""End-to-end fixtures: real gRPC servers on 127.0.0.1:0, tokens, roster, the real SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server
from chorus.v1 import admin_pb2, admin_pb2_grpc
from tests._policy import suite_config
from tests._roster import ROSTER, TEAMS, import_roster, report_request  # noqa: F401 (this folder's tests use them from here)

from ._servers import ServerProcess


def create_token(address: str, admin_token: str, role: str, name: str) -> str:
    with grpc.insecure_channel(address) as channel:
        reply = admin_pb2_grpc.AdminServiceStub(channel).CreateToken(
            admin_pb2.CreateTokenRequest(role=getattr(admin_pb2, f"ROLE_{role.upper()}"), name=name),
            metadata=(("authorization", f"Bearer {admin_token}"),), timeout=30)
    return reply.token


class Running:
    """An in-process server with an ingest token and the roster imported."""

    def __init__(self, data_dir: Path) -> None:
        self.chorus = Chorus(suite_config(), data_dir)
        admin_secret, _ = self.chorus.tokens.create(Role.ADMIN, "test-admin", self.chorus.clock.now(), "test")
        self.ingest_token, _ = self.chorus.tokens.create(Role.INGEST, "test-ingest", self.chorus.clock.now(), "test")
        self.admin_token = admin_secret
        self.server = Server(self.chorus, "127.0.0.1:0")
        self.server.start()
        self.address = self.server.address
        import_roster(self.address, admin_secret)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    instance = Running(tmp_path / "data")
    yield instance
    instance.server.stop(grace=1)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data")
    proc.start()
    import_roster(proc.address, proc.admin_token)
    yield proc
    proc.kill()


