"""Hostile-input limits and time bounds: message size, batch size, string lengths, timestamps,
deadlines, and clients that stall mid-request or stop reading a stream."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest
from google.rpc import error_details_pb2

from chorus.server.model.roles import Principal, Role
from chorus.server.transport.admission import Admission
from chorus.server.transport.gate import AuthInterceptor
from chorus.v1 import admin_pb2, admin_pb2_grpc, ingest_pb2, ingest_pb2_grpc

from .._status import detail
from .conftest import NOON, ROSTER, SecureServer, bearer

LIMITS = dict(max_message_bytes=64 * 1024, max_batch_contributions=50, max_string_length=64)
USER = ROSTER[0][0]


def report(server: SecureServer,
           request: ingest_pb2.ReportRequest) -> grpc.RpcError | ingest_pb2.ReportResponse:
    assert server.channel is not None
    try:
        response: ingest_pb2.ReportResponse = ingest_pb2_grpc.IngestServiceStub(server.channel).Report(
            request, metadata=server.metadata(Role.INGEST), timeout=30)
    except grpc.RpcError as exc:
        return exc
    return response


def valid_batch(batch_id: str = "batch-1", n: int = 1) -> ingest_pb2.ReportRequest:
    request = ingest_pb2.ReportRequest(batch_id=batch_id, source="tool", source_version="1")
    for _ in range(n):
        request.contributions.add(user=USER, metric="ai.tokens", value=10).event_time.FromDatetime(NOON)
    return request


def invalid_argument(server: SecureServer, request: ingest_pb2.ReportRequest) -> str:
    """Send a request that must be refused as a whole; the store must not change. Its message."""
    before = server.digest()
    outcome = report(server, request)
    assert isinstance(outcome, grpc.RpcError)
    assert outcome.code() == grpc.StatusCode.INVALID_ARGUMENT, outcome.details()
    assert server.digest() == before
    return outcome.details()


@pytest.mark.slow
def test_valid_batch_is_accepted(make_server: Callable[..., SecureServer]) -> None:
    """The control for the refusals below: the same shape within limits is applied."""
    server = make_server(limits=LIMITS)
    outcome = report(server, valid_batch(n=50))
    assert isinstance(outcome, ingest_pb2.ReportResponse)
    assert outcome.accepted == 50, outcome


@pytest.mark.slow
def test_oversized_message_is_resource_exhausted(make_server: Callable[..., SecureServer]) -> None:
    server = make_server(limits=LIMITS)
    request = valid_batch()
    request.source = "s" * (70 * 1024)
    before = server.digest()
    outcome = report(server, request)
    assert isinstance(outcome, grpc.RpcError)
    assert outcome.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert server.digest() == before
    assert server.healthy()


@pytest.mark.slow
def test_too_many_contributions(make_server: Callable[..., SecureServer]) -> None:
    server = make_server(limits=LIMITS)
    message = invalid_argument(server, valid_batch(n=51))
    assert "51" in message and "50" in message
    assert server.chorus.ingestor.stats.snapshot().totals()["invalid_batches"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("field", ["batch_id", "source", "source_version", "user", "metric"])
def test_string_lengths_name_the_field_and_limit_not_the_value(make_server: Callable[..., SecureServer],
                                                                 field: str) -> None:
    server = make_server(limits=LIMITS)
    request = valid_batch()
    hostile = "user-" + "Z" * 60 + "\u202e\x00"  # over the limit of 64, with a control character
    target = request.contributions[0] if field in ("user", "metric") else request
    setattr(target, field, hostile)
    message = invalid_argument(server, request)
    assert field in message and "64" in message
    assert hostile[:20] not in message


@pytest.mark.slow
def test_hostile_drop_counts_cannot_break_the_stats(secure_server: SecureServer) -> None:
    """`dropped` is a client-reported uint64: two maximal reports must not overflow the
    operational counters and take GetStats down for the operator."""
    assert secure_server.channel is not None
    for batch_id in ("drop-1", "drop-2"):
        request = valid_batch(batch_id)
        request.dropped = 2**64 - 1
        outcome = report(secure_server, request)
        assert not isinstance(outcome, grpc.RpcError) or outcome.code() == grpc.StatusCode.INVALID_ARGUMENT
    stats = admin_pb2_grpc.AdminServiceStub(secure_server.channel).GetStats(
        admin_pb2.GetStatsRequest(), metadata=secure_server.metadata(Role.ADMIN), timeout=10)
    assert stats.batches + stats.invalid_batches == 2


@pytest.mark.slow
@pytest.mark.parametrize(("seconds", "nanos"), [(-(2**62), 0), (2**62, 0), (253402300800, 0)])
def test_timestamps_out_of_range(make_server: Callable[..., SecureServer], seconds: int, nanos: int) -> None:
    server = make_server(limits=LIMITS)
    request = valid_batch()
    request.contributions[0].event_time.seconds = seconds
    request.contributions[0].event_time.nanos = nanos
    assert "event_time" in invalid_argument(server, request)


@pytest.mark.slow
def test_slow_uploader_holds_no_transaction(secure_server: SecureServer) -> None:
    """A client that opens Report and then stalls before its message is complete holds no store
    lock: gRPC hands the servicer only a fully received request."""
    assert secure_server.channel is not None
    release = threading.Event()

    def stalled() -> Iterator[bytes]:
        release.wait(30)
        yield valid_batch("stalled").SerializeToString()

    stalled_call = secure_server.channel.stream_unary("/chorus.v1.IngestService/Report").future(
        stalled(), metadata=secure_server.metadata(Role.INGEST), timeout=60)
    try:
        # Meanwhile the store takes writes: another client's batch, and a writer of our own.
        outcome = report(secure_server, valid_batch("meanwhile"))
        assert isinstance(outcome, ingest_pb2.ReportResponse) and outcome.accepted == 1
        writer = sqlite3.connect(secure_server.db_file, timeout=1, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("ROLLBACK")
        finally:
            writer.close()
    finally:
        release.set()
    assert ingest_pb2.ReportResponse.FromString(stalled_call.result(timeout=30)).accepted == 1


def _blocking_server(interceptor: AuthInterceptor,
                     handlers: dict[str, grpc.RpcMethodHandler]) -> tuple[grpc.Server, str]:
    """A one-worker gRPC server with the real interceptor in front of test handlers."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1), interceptors=[interceptor])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("chorus.v1.AuditService",
                                                                          handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


AUDITOR = Principal("auditor", Role.AUDITOR)


def _auditor(token: str) -> Principal | None:
    return AUDITOR if token == "chorus_auditor" else None


@pytest.mark.slow
def test_expired_deadline_never_starts_the_call() -> None:
    """End to end: a call that waited in the queue past its deadline never runs its handler
    (for a real servicer, a store transaction for a client that gave up)."""
    busy, release, ran = threading.Event(), threading.Event(), threading.Event()

    def occupy(request: bytes, context: grpc.ServicerContext) -> bytes:
        busy.set()
        release.wait(30)
        return b""

    def work(request: bytes, context: grpc.ServicerContext) -> bytes:
        ran.set()
        return b""

    server, address = _blocking_server(AuthInterceptor(Admission([_auditor])), {
        "GetBudget": grpc.unary_unary_rpc_method_handler(occupy),
        "ListPolicies": grpc.unary_unary_rpc_method_handler(work)})
    try:
        with grpc.insecure_channel(address) as channel:
            first = channel.unary_unary("/chorus.v1.AuditService/GetBudget").future(
                b"", metadata=bearer("chorus_auditor"), timeout=30)
            assert busy.wait(10)
            late = channel.unary_unary("/chorus.v1.AuditService/ListPolicies").future(
                b"", metadata=bearer("chorus_auditor"), timeout=0.2)
            with pytest.raises(grpc.RpcError) as err:
                late.result(timeout=10)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            release.set()
            first.result(timeout=10)
            # The queued call reaches the worker now, finds its deadline passed and stops there.
            channel.unary_unary("/chorus.v1.AuditService/GetBudget")(b"", metadata=bearer("chorus_auditor"),
                                                                      timeout=10)
            assert not ran.is_set()
    finally:
        release.set()
        server.stop(0)


class _Aborted(Exception):
    pass


class _ExpiredContext:
    """The slice of grpc.ServicerContext the gate uses, for a call whose deadline has passed."""

    code: grpc.StatusCode | None = None

    def time_remaining(self) -> float:
        return 0.0

    def abort_with_status(self, status: grpc.Status) -> None:
        self.code = status.code
        raise _Aborted


def test_gate_checks_the_deadline_before_the_token_and_the_handler() -> None:
    """Unit check of the gate itself: an expired call neither authenticates (a possible store
    transaction) nor reaches the handler, and answers DEADLINE_EXCEEDED."""
    lookups: list[str] = []
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: lookups.append("handler"))

    def authenticate(token: str) -> Principal:
        lookups.append("authenticate")
        return AUDITOR

    details = type("Details", (), {"method": "/chorus.v1.AuditService/GetBudget",
                                   "invocation_metadata": bearer("chorus_auditor")})()
    guarded = AuthInterceptor(Admission([authenticate])).intercept_service(lambda _: handler, details)
    context = _ExpiredContext()
    with pytest.raises(_Aborted):
        guarded.unary_unary(b"", context)
    assert context.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert lookups == []


@pytest.mark.slow
def test_server_bound_applies_without_a_client_deadline() -> None:
    busy, release, ran = threading.Event(), threading.Event(), threading.Event()

    def occupy(request: bytes, context: grpc.ServicerContext) -> bytes:
        busy.set()
        release.wait(30)
        return b""

    def work(request: bytes, context: grpc.ServicerContext) -> bytes:
        ran.set()
        return b""

    server, address = _blocking_server(AuthInterceptor(Admission([_auditor]), max_rpc_seconds=0.2), {
        "GetBudget": grpc.unary_unary_rpc_method_handler(occupy),
        "ListPolicies": grpc.unary_unary_rpc_method_handler(work)})
    try:
        with grpc.insecure_channel(address) as channel:
            first = channel.unary_unary("/chorus.v1.AuditService/GetBudget").future(
                b"", metadata=bearer("chorus_auditor"))
            assert busy.wait(10)
            queued = channel.unary_unary("/chorus.v1.AuditService/ListPolicies").future(
                b"", metadata=bearer("chorus_auditor"))  # no client deadline at all
            time.sleep(0.3)  # longer than the server's bound, while the only worker is busy
            release.set()
            with pytest.raises(grpc.RpcError) as err:
                queued.result(timeout=10)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "server limit" in (err.value.details() or "")
            assert detail(err.value, error_details_pb2.RetryInfo).retry_delay.seconds == 1  # a retry can pass
            assert not ran.is_set()
            first.result(timeout=10)
    finally:
        release.set()
        server.stop(0)


@pytest.mark.slow
def test_stream_to_a_reader_that_stopped_is_cancelled_at_the_bound() -> None:
    """A reader that stops reading cannot pin a worker thread past the server's bound."""
    finished = threading.Event()

    def endless(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        try:
            while True:
                yield b"x" * 65536
        finally:
            finished.set()

    server, address = _blocking_server(AuthInterceptor(Admission([_auditor]), max_rpc_seconds=0.5), {
        "StreamLedger": grpc.unary_stream_rpc_method_handler(endless)})
    try:
        with grpc.insecure_channel(address) as channel:
            stream = channel.unary_stream("/chorus.v1.AuditService/StreamLedger")(
                b"", metadata=bearer("chorus_auditor"))
            next(stream)  # then stop reading: flow control soon blocks the server's sends
            assert finished.wait(10)
            with pytest.raises(grpc.RpcError) as err:
                for _ in stream:
                    pass
            assert err.value.code() == grpc.StatusCode.CANCELLED
    finally:
        server.stop(0)


@pytest.mark.slow
def test_roster_stream_is_authorised_before_it_is_read(secure_server: SecureServer) -> None:
    """A client-streaming call from a non-admin is refused before any chunk is parsed or applied."""
    assert secure_server.channel is not None

    def chunks() -> Iterator[admin_pb2.ImportRosterRequest]:
        for user, _ in ROSTER:
            yield admin_pb2.ImportRosterRequest(entries=[admin_pb2.RosterEntry(user=user, team="team-evil")])

    before = secure_server.digest()
    with pytest.raises(grpc.RpcError) as err:
        admin_pb2_grpc.AdminServiceStub(secure_server.channel).ImportRoster(
            chunks(), metadata=secure_server.metadata(Role.INGEST), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert secure_server.digest() == before
