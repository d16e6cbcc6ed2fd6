"""Read google.rpc.RetryInfo from a gRPC error's rich status, without grpcio-status.

The server attaches a serialized google.rpc.Status as trailing metadata
`grpc-status-details-bin`. protobuf does not ship google/rpc/*.proto (that is
googleapis-common-protos, which the SDK must not depend on), so the two messages we
need are declared here from descriptors. They live in a private descriptor pool so they
never clash with the real google.rpc types when a host application also loads those.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, duration_pb2, message_factory
from google.protobuf.message import DecodeError

__all__ = ["STATUS_DETAILS_KEY", "retry_delay_from_metadata", "retry_delay_from_status"]

STATUS_DETAILS_KEY = "grpc-status-details-bin"
_RETRY_INFO_TYPE = "google.rpc.RetryInfo"

_F = descriptor_pb2.FieldDescriptorProto


def _build_messages() -> tuple[Any, Any]:
    pool = descriptor_pool.DescriptorPool()
    for dependency in (any_pb2, duration_pb2):
        pool.AddSerializedFile(dependency.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="chorus/client/google_rpc_subset.proto",
        package="google.rpc",
        syntax="proto3",
        dependency=[any_pb2.DESCRIPTOR.name, duration_pb2.DESCRIPTOR.name],
    )
    status = file.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=_F.TYPE_INT32, label=_F.LABEL_OPTIONAL)
    status.field.add(name="message", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    status.field.add(
        name="details", number=3, type=_F.TYPE_MESSAGE, label=_F.LABEL_REPEATED,
        type_name=".google.protobuf.Any",
    )
    retry_info = file.message_type.add(name="RetryInfo")
    retry_info.field.add(
        name="retry_delay", number=1, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
        type_name=".google.protobuf.Duration",
    )
    pool.Add(file)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName(_RETRY_INFO_TYPE)),
    )


Status, RetryInfo = _build_messages()


def retry_delay_from_status(status_bytes: bytes) -> float | None:
    """The RetryInfo.retry_delay in seconds carried by a serialized google.rpc.Status, if any."""
    try:
        status = Status.FromString(status_bytes)
        for detail in status.details:
            # type_url is "<prefix>/<full message name>"; only the name is meaningful.
            if detail.type_url.rpartition("/")[2] == _RETRY_INFO_TYPE:
                delay = RetryInfo.FromString(detail.value).retry_delay
                return max(0.0, delay.seconds + delay.nanos / 1e9)
    except DecodeError:
        pass
    return None


def retry_delay_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> float | None:
    """The server's RetryInfo delay from a call's trailing metadata, if it sent one."""
    for key, value in metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return retry_delay_from_status(value)
    return None
