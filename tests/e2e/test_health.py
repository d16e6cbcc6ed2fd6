"""The health service follows the store: NOT_SERVING while the database does not answer."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chorus.server.root import Chorus
from chorus.server.store import StoreUnavailable
from chorus.server.transport import grpc_server as app_module
from chorus.server.transport.grpc_server import Server
from tests._policy import suite_config

from .conftest import Running

#: Every test here starts a server, a process or a browser (tests/conftest.py, the fast lane).
pytestmark = pytest.mark.slow


def _status(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="chorus.v1.IngestService"), timeout=5).status


def _wait_for(address: str, status: int, seconds: float = 10.0) -> int:
    deadline = time.monotonic() + seconds
    seen = _status(address)
    while seen != status and time.monotonic() < deadline:
        time.sleep(0.05)
        seen = _status(address)
    return seen


@pytest.fixture
def fast_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "HEALTH_PROBE_SECONDS", 0.05)


def test_health_follows_the_store(fast_probe: None, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    running = Running(tmp_path / "data")
    try:
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        assert _status(running.address) == serving
        real_run = running.chorus.db.run

        def down(fn, *, name):  # type: ignore[no-untyped-def]
            raise StoreUnavailable("database does not answer")

        monkeypatch.setattr(running.chorus.db, "run", down)
        assert _wait_for(running.address, not_serving) == not_serving
        monkeypatch.setattr(running.chorus.db, "run", real_run)
        assert _wait_for(running.address, serving) == serving
    finally:
        running.server.stop(grace=1)



def test_a_second_server_on_a_busy_address_fails_instead_of_sharing_it(tmp_path) -> None:
    first = Running(tmp_path / "first")
    other = Chorus(suite_config(), tmp_path / "second")
    try:
        with pytest.raises(OSError, match="address in use"):
            Server(other, first.address)
    finally:
        other.close()
        first.server.stop(grace=1)
