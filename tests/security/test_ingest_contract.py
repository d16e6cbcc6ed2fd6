"""Report's contract for hostile or careless input: reused batch ids, missing or malformed
event times, control characters, oversize batches; each refusal structured (AIP-193) and free
of side effects."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.rpc import error_details_pb2

from chorus.server.model.roles import Role
from chorus.server.transport.services import ingest as ingest_service
from chorus.v1 import admin_pb2, admin_pb2_grpc, ingest_pb2, ingest_pb2_grpc

from .._status import detail, error_info
from .conftest import SecureServer, bearer
from .test_limits import LIMITS, USER, invalid_argument, report, valid_batch

#: Every test here starts a server, a process or a browser (tests/conftest.py, the fast lane).
pytestmark = pytest.mark.slow


def refusal(server: SecureServer, request: ingest_pb2.ReportRequest,
            metadata: tuple[tuple[str, str], ...] | None = None) -> grpc.RpcError:
    """Send a request that must be refused; the store must not change. The error."""
    before = server.digest()
    assert server.channel is not None
    try:
        ingest_pb2_grpc.IngestServiceStub(server.channel).Report(
            request, metadata=metadata or server.metadata(Role.INGEST), timeout=30)
    except grpc.RpcError as exc:
        assert server.digest() == before
        return exc
    raise AssertionError("the request was accepted")


def field_of(exc: grpc.RpcError) -> str:
    """The one BadRequest field violation of an INVALID_ARGUMENT, checked to carry an ErrorInfo."""
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(exc).reason == "INVALID_ARGUMENT"
    (violation,) = detail(exc, error_details_pb2.BadRequest).field_violations
    assert violation.description == exc.details()
    return violation.field


def test_a_reused_batch_id_with_other_contents_is_refused_never_acknowledged(
        secure_server: SecureServer) -> None:
    first = valid_batch("reused-id")
    assert report(secure_server, first).accepted == 1  # type: ignore[union-attr]
    resend = report(secure_server, valid_batch("reused-id"))  # identical: a retry
    assert isinstance(resend, ingest_pb2.ReportResponse) and resend.duplicate and resend.accepted == 0

    other = valid_batch("reused-id")
    other.contributions[0].value = 11
    exc = refusal(secure_server, other)
    assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "batch_id 'reused-id' was used before for a batch with other contents" in exc.details()
    assert error_info(exc).reason == "BATCH_ID_REUSED"

    # Another tool (token) with the same id: a duplicate only when the contents are identical.
    token = admin_pb2_grpc.AdminServiceStub(secure_server.channel).CreateToken(
        admin_pb2.CreateTokenRequest(role=admin_pb2.ROLE_INGEST, name="other-tool"),
        metadata=secure_server.metadata(Role.ADMIN), timeout=10).token
    assert refusal(secure_server, other, bearer(token)).code() == grpc.StatusCode.ALREADY_EXISTS
    assert report_as(secure_server, valid_batch("reused-id"), token).duplicate


def report_as(server: SecureServer, request: ingest_pb2.ReportRequest, token: str) -> ingest_pb2.ReportResponse:
    assert server.channel is not None
    reply: ingest_pb2.ReportResponse = ingest_pb2_grpc.IngestServiceStub(server.channel).Report(
        request, metadata=bearer(token), timeout=30)
    return reply


def test_a_missing_event_time_is_invalid_argument_naming_the_field(secure_server: SecureServer) -> None:
    request = valid_batch()
    request.contributions.add(user=USER, metric="ai.tokens", value=1)  # no event_time
    exc = refusal(secure_server, request)
    assert field_of(exc) == "contributions[1].event_time"
    assert "contributions[1].event_time is required" in exc.details()


@pytest.mark.parametrize("nanos", [-1, 1_000_000_000])
def test_out_of_range_nanos_say_so(secure_server: SecureServer, nanos: int) -> None:
    request = valid_batch()
    request.contributions[0].event_time.nanos = nanos
    exc = refusal(secure_server, request)
    assert field_of(exc) == "contributions[0].event_time.nanos"
    assert f"nanos is {nanos}; it must be in [0, 999999999]" in exc.details()


@pytest.mark.parametrize("field", ["batch_id", "user", "metric"])
def test_control_characters_are_refused_alike_in_user_metric_and_batch_id(
        make_server: Callable[..., SecureServer], field: str) -> None:
    server = make_server(limits=LIMITS)
    request = valid_batch()
    target = request.contributions[0] if field in ("user", "metric") else request
    setattr(target, field, getattr(target, field) + "\x00")
    message = invalid_argument(server, request)
    assert "contains control characters" in message
    assert field_of(refusal(server, request)) == ("batch_id" if field == "batch_id" else f"contributions[0].{field}")


def test_an_oversize_batch_is_refused_unconverted_and_charges_the_rate_limit_one(
        make_server: Callable[..., SecureServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused by its size alone: no contribution is converted, and the token's bucket (burst
    60) loses one unit, not 20,000, so a valid batch right after is admitted."""
    server = make_server(limits={**LIMITS, "ingest_rate_per_token": 0.001, "ingest_burst_per_token": 60})
    request = ingest_pb2.ReportRequest(batch_id="huge")
    request.contributions.extend(ingest_pb2.Contribution() for _ in range(20_000))  # 40 kB, under the cap

    def never(_: ingest_pb2.ReportRequest) -> None:
        raise AssertionError("an oversize batch was converted")

    with monkeypatch.context() as patch:
        patch.setattr(ingest_service, "_contributions", never)
        exc = refusal(server, request)
    assert field_of(exc) == "contributions"
    assert "batch has 20000 contributions; the limit is 50" in exc.details()
    reply = report(server, valid_batch("after-the-huge-one", n=50))
    assert isinstance(reply, ingest_pb2.ReportResponse) and reply.accepted == 50, reply

