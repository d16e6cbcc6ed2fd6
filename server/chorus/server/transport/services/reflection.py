"""Server reflection under both `grpc.reflection.v1` and `grpc.reflection.v1alpha`.

grpcurl and current gRPC clients ask v1 first; grpcio-reflection serves only v1alpha. The two
protocols are the same messages under two package names (identical field numbers), so one
servicer answers both: the v1 method is the v1alpha handler with the v1alpha (de)serializers.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = reflection.SERVICE_NAME

__all__ = ["V1", "V1ALPHA", "enable"]


def enable(server: grpc.Server, service_names: Iterable[str]) -> None:
    """Answer reflection for `service_names` (and both reflection services) on `server`."""
    servicer = reflection.ReflectionServicer((*service_names, V1, V1ALPHA))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString),
    }),))
