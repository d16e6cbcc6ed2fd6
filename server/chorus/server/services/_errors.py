"""Domain errors -> gRPC status with rich details (google.rpc), in one place."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str,
          details: Iterable[object] = ()) -> NoReturn:
    """Abort the RPC with `message` and google.rpc detail messages."""
    packed = []
    for detail in details:
        any_msg = any_pb2.Any()
        any_msg.Pack(detail)  # type: ignore[arg-type]
        packed.append(any_msg)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable")  # abort_with_status raises


def invalid_argument(context: grpc.ServicerContext, message: str, field: str = "") -> NoReturn:
    violations = [error_details_pb2.BadRequest.FieldViolation(field=field, description=message)] if field else []
    abort(context, grpc.StatusCode.INVALID_ARGUMENT, message,
          [error_details_pb2.BadRequest(field_violations=violations)] if violations else [])


def retry_later(context: grpc.ServicerContext, code: grpc.StatusCode, message: str,
                delay_seconds: float) -> NoReturn:
    """RESOURCE_EXHAUSTED (rate limit) or UNAVAILABLE (overload) with a RetryInfo the SDK honours."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(delay_seconds * 1e9))
    abort(context, code, message, [error_details_pb2.RetryInfo(retry_delay=delay)])


#: RetryInfo delay sent when the store cannot serve (see store_unavailable).
STORE_RETRY_SECONDS = 1.0


def store_unavailable(context: grpc.ServicerContext) -> NoReturn:
    """UNAVAILABLE with RetryInfo for chorus.server.store.StoreUnavailable: a store that is busy,
    unreachable, out of space, read-only or failing I/O. An operator can fix each of these, so
    clients keep the request and retry it (the SDK with the same batch id); never INTERNAL,
    which reads as a bug. The store's own message (paths, SQL state) stays in the server log."""
    retry_later(context, grpc.StatusCode.UNAVAILABLE,
                "the store cannot serve now (busy, unreachable, out of space or read-only); retry later",
                STORE_RETRY_SECONDS)


def quota_failure(context: grpc.ServicerContext, message: str,
                  violations: Iterable[tuple[str, str]]) -> NoReturn:
    """RESOURCE_EXHAUSTED for privacy budget: (subject, description) per team-window."""
    detail = error_details_pb2.QuotaFailure(violations=[
        error_details_pb2.QuotaFailure.Violation(subject=s, description=d) for s, d in violations])
    abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, message, [detail])
