"""Usage from the real SDK over real gRPC into SQLite: exactly once, bounded, pseudonymous."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest

from chorus.client import Client
from chorus.v1 import ingest_pb2_grpc
from tests._usage import person_totals

from ._proxy import CuttingProxy
from ._servers import ServerProcess, sqlite_rows
from .conftest import Running, create_token, report_request

#: Every test here starts a server, a process or a browser (tests/conftest.py, the fast lane).
pytestmark = pytest.mark.slow


def stored_totals(data_dir, window: str | None = None) -> dict[tuple[str, str], int]:
    """Per-person totals by (user, metric), recomputing pseudonyms from the open window's key
    (today's unless told: read when asked, since a run may cross midnight)."""
    window = window or datetime.now(UTC).date().isoformat()
    users = [u for (u,) in sqlite_rows(data_dir, "SELECT user_id FROM roster")]
    return person_totals(lambda sql, params: sqlite_rows(data_dir, sql, tuple(params)), window, users)


def test_sdk_counts_arrive_aggregated_and_exact(running: Running, tmp_path) -> None:
    with Client(running.address, running.ingest_token, source="e2e") as client:
        for _ in range(1000):
            client.count("ai.requests", 1, user="user-team-red-0")
        client.count("ai.tokens", 1234, user="user-team-blue-1")
        assert client.flush(timeout=10)
        stats = client.stats()
    assert stats.rejected == {} and stats.dropped == 0
    totals = stored_totals(tmp_path / "data")
    assert totals == {("user-team-red-0", "ai.requests"): 1000, ("user-team-blue-1", "ai.tokens"): 1234}


def test_token_burner_is_stored_at_the_bound(running: Running, tmp_path) -> None:
    with Client(running.address, running.ingest_token, source="burner") as client:
        for _ in range(500):
            client.count("ai.tokens", 3_000_000, user="user-team-red-2")
        assert client.flush(timeout=10)
    assert stored_totals(tmp_path / "data")[("user-team-red-2", "ai.tokens")] == 200_000


def test_one_bad_contribution_does_not_spoil_the_batch(running: Running, tmp_path) -> None:
    with Client(running.address, running.ingest_token, source="e2e") as client:
        client.count("ai.requests", 5, user="user-team-red-0")
        client.count("ai.requests", 5, user="user-not-on-roster")
        client.count("ai.no_such_metric", 5, user="user-team-red-1")
        assert client.flush(timeout=10)
        stats = client.stats()
    assert stats.accepted == 1
    assert stats.rejected == {"UNKNOWN_USER": 1, "UNKNOWN_METRIC": 1}
    assert stored_totals(tmp_path / "data") == {("user-team-red-0", "ai.requests"): 5}


def test_no_usage_table_contains_a_raw_user_id(running: Running, tmp_path) -> None:
    with Client(running.address, running.ingest_token, source="e2e") as client:
        for user, _ in [("user-team-red-0", 0), ("user-team-blue-4", 0)]:
            client.count("ai.tokens", 10, user=user)
        assert client.flush(timeout=10)
    for table in ("usage", "batches", "windows", "window_keys"):
        dump = repr(sqlite_rows(tmp_path / "data", f"SELECT * FROM {table}"))
        assert "user-team" not in dump, table


def test_retry_after_a_dropped_connection_counts_exactly_once(running: Running, tmp_path) -> None:
    host, port = running.address.rsplit(":", 1)
    proxy = CuttingProxy((host, int(port)))
    data = tmp_path / "data"
    try:
        with Client(f"127.0.0.1:{proxy.port}", running.ingest_token, source="e2e", timeout=5) as client:
            proxy.arm(lambda: bool(sqlite_rows(data, "SELECT COUNT(*) FROM batches")[0][0]))
            client.count("ai.requests", 7, user="user-team-red-3")
            assert client.flush(timeout=30)
            stats = client.stats()
        assert proxy.cuts == 1
        assert stats.duplicates == 1 and stats.retries >= 1
        assert stored_totals(data) == {("user-team-red-3", "ai.requests"): 7}
    finally:
        proxy.close()


@pytest.mark.slow
def test_acknowledged_data_survives_sigkill(server_process: ServerProcess) -> None:
    token = create_token(server_process.address, server_process.admin_token, "ingest", "e2e-ingest")
    with Client(server_process.address, token, source="e2e") as client:
        client.count("ai.tokens", 4321, user="user-team-blue-2")
        assert client.flush(timeout=10)
        server_process.kill()  # SIGKILL right after the acknowledgement
        client.count("ai.tokens", 1, user="user-team-blue-2")  # pending while the server is down
    assert stored_totals(server_process.data_dir) == {("user-team-blue-2", "ai.tokens"): 4321}
    server_process.start()  # the restarted server opens the same store cleanly
    assert stored_totals(server_process.data_dir) == {("user-team-blue-2", "ai.tokens"): 4321}


@pytest.mark.slow
def test_sigterm_shuts_down_gracefully(server_process: ServerProcess) -> None:
    assert server_process.terminate() == 0


@pytest.mark.parametrize(("fields", "message"), [
    ({"batch_id": ""}, "batch_id is required"),
    ({"contributions": []}, "contributions is empty"),
    ({"source": "s" * 1000}, "source is 1000 characters; the limit is 256"),
])
def test_malformed_batch_is_invalid_argument_and_stores_nothing(running: Running, tmp_path, fields,
                                                                 message) -> None:
    before = sqlite_rows(tmp_path / "data", "SELECT COUNT(*) FROM batches")
    with grpc.insecure_channel(running.address) as channel, pytest.raises(grpc.RpcError) as err:
        ingest_pb2_grpc.IngestServiceStub(channel).Report(
            report_request(**fields), metadata=(("authorization", f"Bearer {running.ingest_token}"),), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    assert sqlite_rows(tmp_path / "data", "SELECT COUNT(*) FROM batches") == before


def test_health_and_reflection_answer_without_a_token(running: Running) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(running.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="chorus.v1.IngestService"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"chorus.v1.IngestService", "chorus.v1.AdminService"} <= services


def test_an_event_time_out_of_range_is_invalid_argument(running: Running, tmp_path) -> None:
    request = report_request()
    request.contributions[0].event_time.seconds = 253402300800  # year 10000
    with grpc.insecure_channel(running.address) as channel, pytest.raises(grpc.RpcError) as err:
        ingest_pb2_grpc.IngestServiceStub(channel).Report(
            request, metadata=(("authorization", f"Bearer {running.ingest_token}"),), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "contributions[0].event_time is outside the valid timestamp range" in err.value.details()
    assert sqlite_rows(tmp_path / "data", "SELECT COUNT(*) FROM batches") == [(0,)]
