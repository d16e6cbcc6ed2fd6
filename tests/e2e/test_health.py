"""The health service follows the store: NOT_SERVING while the database does not answer."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chorus.server.root import Chorus
from chorus.server.store import SQLITE_FILE, StoreUnavailable
from chorus.server.transport import grpc_server as app_module
from chorus.server.transport.grpc_server import Server
from chorus.v1 import admin_pb2, admin_pb2_grpc, ingest_pb2_grpc
from tests._locks import holding
from tests._policy import suite_config
from tests._roster import import_roster, report_request

from ._servers import ServerProcess, sqlite_rows
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


def test_sigterm_tells_watchers_not_serving_and_lets_a_call_in_flight_finish(tmp_path: Path) -> None:
    """docs/deployment.md: on SIGTERM a replica reports NOT_SERVING, stops taking calls, lets calls
    in flight finish (5 s), then exits. The call in flight is a Report waiting for a lock that
    another program holds; the lock is let go after the SIGTERM, and the Report is acknowledged
    and stored."""
    server = ServerProcess(tmp_path / "data")
    address = server.start()
    try:
        import_roster(address, server.admin_token)
        with grpc.insecure_channel(address) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            ingest_token = admin.CreateToken(admin_pb2.CreateTokenRequest(role=admin_pb2.ROLE_INGEST, name="drain"),
                                             metadata=(("authorization", f"Bearer {server.admin_token}"),),
                                             timeout=10).token
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            batch = report_request()
            with ThreadPoolExecutor(1) as pool:
                with holding("sqlite", str(tmp_path / "data" / SQLITE_FILE), "unused"):
                    in_flight = pool.submit(ingest_pb2_grpc.IngestServiceStub(channel).Report, batch,
                                            metadata=(("authorization", f"Bearer {ingest_token}"),), timeout=20)
                    time.sleep(0.5)  # the Report waits for the lock
                    assert not in_flight.done()
                    assert server.proc is not None
                    server.proc.send_signal(signal.SIGTERM)
                    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
                    time.sleep(0.5)
                    assert not in_flight.done()
                # The other program let go of the lock, within the 5 s grace.
                assert in_flight.result(timeout=10).accepted == 1
        assert server.proc.wait(30) == 0
    finally:
        server.kill()
    assert sqlite_rows(tmp_path / "data", "SELECT COUNT(*) FROM batches WHERE batch_id = ?",
                       (batch.batch_id,)) == [(1,)]
