"""gRPC method handlers by call kind: what the gate and the RPC timer share to wrap a handler.

A handler is one of four kinds (request and response each unary or streaming); grpc keeps the
behaviour in a different attribute and builds each kind with a different factory. Interceptors
that wrap a behaviour ask here instead of spelling the four cases out each time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Behavior = Callable[..., Any]

_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _kind(handler: grpc.RpcMethodHandler) -> tuple[bool, bool]:
    return bool(handler.request_streaming), bool(handler.response_streaming)


def behavior_of(handler: grpc.RpcMethodHandler) -> Behavior:
    """The handler's own function for its call kind."""
    request_streaming, response_streaming = _kind(handler)
    if response_streaming:
        return handler.stream_stream if request_streaming else handler.unary_stream
    return handler.stream_unary if request_streaming else handler.unary_unary


def same_kind(handler: grpc.RpcMethodHandler, behavior: Behavior, *,
              request_deserializer: Callable[[bytes], Any] | None) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s call kind and response serializer running `behavior`."""
    return _FACTORIES[_kind(handler)](behavior, request_deserializer=request_deserializer,
                                      response_serializer=handler.response_serializer)
