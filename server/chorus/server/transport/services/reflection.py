"""Server reflection under both `grpc.reflection.v1` and `grpc.reflection.v1alpha`.

grpcurl and current gRPC clients ask v1 first; grpcio-reflection serves only v1alpha. The two
protocols are the same messages under two package names (identical field numbers), so one
servicer answers both: the v1 method is the v1alpha handler with the v1alpha (de)serializers.

Listing a service is not enough for `grpcurl describe` or `buf curl --list-methods`: they then
ask for the file that defines it. grpcio-reflection ships no v1 descriptor, so this module
derives `grpc/reflection/v1/reflection.proto` from the v1alpha one (the package renamed, every
type reference with it) and adds it to the default descriptor pool the servicer reads.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = reflection.SERVICE_NAME
V1_FILE = "grpc/reflection/v1/reflection.proto"

__all__ = ["V1", "V1ALPHA", "enable"]


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """The v1alpha file descriptor under the v1 package (what grpc/grpc-proto's v1 file is)."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", ".grpc.reflection.v1."
    proto.name, proto.package = V1_FILE, "grpc.reflection.v1"
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.ClearField("deprecated")
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name.removeprefix(old)
    for method in proto.service[0].method:
        method.input_type = new + method.input_type.removeprefix(old)
        method.output_type = new + method.output_type.removeprefix(old)
    return proto


def _register_v1() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE)
    except KeyError:
        pool.Add(_v1_file())


def enable(server: grpc.Server, service_names: Iterable[str]) -> None:
    """Answer reflection for `service_names` (and both reflection services) on `server`."""
    _register_v1()
    servicer = reflection.ReflectionServicer((*service_names, V1, V1ALPHA))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString),
    }),))
