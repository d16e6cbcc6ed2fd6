"""Rich error details (google.rpc, AIP-193) of a failed call, for assertions."""

from __future__ import annotations

from typing import TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

M = TypeVar("M", bound=Message)


def detail(exc: grpc.RpcError, kind: type[M]) -> M:
    """The one detail of type `kind` the error carries; fails when it carries none or several."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None, "the error carries no google.rpc.Status"
    found = [d for d in status.details if d.Is(kind.DESCRIPTOR)]
    assert len(found) == 1, f"expected one {kind.DESCRIPTOR.full_name}, got {len(found)}"
    out = kind()
    found[0].Unpack(out)
    return out


def error_info(exc: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo every error carries, checked to be the first detail, in domain chorus.dev."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None and status.details[0].Is(error_details_pb2.ErrorInfo.DESCRIPTOR)
    info = detail(exc, error_details_pb2.ErrorInfo)
    assert info.domain == "chorus.dev" and info.reason
    return info
