"""The gRPC transport: RetryInfo decoding, error mapping, fork-safe channels.

grpcio-status and googleapis-common-protos are test-only dependencies here: they build
real google.rpc.Status bytes for the SDK's own dependency-free decoder to read.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from chorus.client import TransportError
from chorus.client import _transport as transport_module
from chorus.client._status import retry_delay_from_metadata, retry_delay_from_status
from chorus.client._transport import GrpcTransport, _transport_error


def _status(*details: Any, code: int = code_pb2.RESOURCE_EXHAUSTED) -> status_pb2.Status:
    packed = []
    for detail in details:
        message = any_pb2.Any()
        message.Pack(detail)
        packed.append(message)
    return status_pb2.Status(code=code, message="slow down", details=packed)


def _retry_info(seconds: int, nanos: int = 0) -> error_details_pb2.RetryInfo:
    return error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds, nanos=nanos))


def test_retry_info_is_read_from_a_real_google_rpc_status() -> None:
    status = _status(error_details_pb2.BadRequest(), _retry_info(3, 250_000_000))
    assert retry_delay_from_status(status.SerializeToString()) == 3.25


def test_retry_info_travels_in_trailing_metadata_as_grpcio_status_sends_it() -> None:
    status = rpc_status.to_status(_status(_retry_info(12)))
    metadata = [("other", "x"), *status.trailing_metadata]
    assert retry_delay_from_metadata(metadata) == 12.0


@pytest.mark.parametrize(
    "payload",
    [
        _status().SerializeToString(),  # no details
        _status(error_details_pb2.QuotaFailure()).SerializeToString(),  # other details only
        b"\xff\xff\xff garbage",
        b"",
    ],
)
def test_no_retry_info_means_no_delay(payload: bytes) -> None:
    assert retry_delay_from_status(payload) is None


def test_missing_metadata_means_no_delay() -> None:
    assert retry_delay_from_metadata(None) is None
    assert retry_delay_from_metadata([("grpc-status-details-bin", "not bytes")]) is None


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: Any) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailing


def test_rpc_errors_become_transport_errors_with_the_server_delay() -> None:
    status = rpc_status.to_status(_status(_retry_info(5), code=code_pb2.UNAVAILABLE))
    rpc_error = _FakeRpcError(grpc.StatusCode.UNAVAILABLE, "overloaded", status.trailing_metadata)
    error = _transport_error(rpc_error)
    assert (error.code, error.details, error.retry_delay, error.retryable) == (
        grpc.StatusCode.UNAVAILABLE, "overloaded", 5.0, True,
    )


def test_a_bare_rpc_error_maps_to_unknown() -> None:
    error = _transport_error(grpc.RpcError())
    assert (error.code, error.retry_delay, error.retryable) == (grpc.StatusCode.UNKNOWN, None, True)


def test_the_transport_raises_transport_error_for_a_failed_call(monkeypatch: pytest.MonkeyPatch) -> None:
    transport = GrpcTransport("127.0.0.1:1", "token")

    class Stub:
        def Report(self, request: Any, **kwargs: Any) -> Any:
            assert kwargs["metadata"] == (("authorization", "Bearer token"),)
            raise _FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "bad token", ())

    monkeypatch.setattr(transport, "_current_stub", Stub)
    with pytest.raises(TransportError) as raised:
        transport.send(None, 1.0)  # type: ignore[arg-type]
    assert raised.value.code is grpc.StatusCode.UNAUTHENTICATED and raised.value.retryable
    transport.close()


def test_the_channel_is_lazy() -> None:
    transport = GrpcTransport("127.0.0.1:1", "token")
    assert transport._channel is None
    stub = transport._current_stub()
    assert transport._current_stub() is stub and transport._channel is not None
    transport.close()
    assert transport._channel is None


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_its_own_channel_and_never_touches_the_parents() -> None:
    transport = GrpcTransport("127.0.0.1:1", "token")
    parent_stub = transport._current_stub()
    parent_channel = transport._channel
    with transport._lock:  # as if another parent thread were inside the transport at fork
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                child_stub = transport._current_stub()  # would deadlock on an inherited lock
                fresh = child_stub is not parent_stub and transport._channel is not parent_channel
                parked = parent_channel in transport_module._INHERITED_CHANNELS
                status = 0 if fresh and parked else 2
            finally:
                os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    assert transport._current_stub() is parent_stub
    transport.close()


def test_a_closed_transport_fails_retryably_so_the_batch_can_be_spooled() -> None:
    transport = GrpcTransport("127.0.0.1:1", "token")
    transport.close()
    with pytest.raises(TransportError) as raised:
        transport.send(None, 1.0)  # type: ignore[arg-type]
    assert raised.value.code is grpc.StatusCode.CANCELLED and raised.value.retryable
