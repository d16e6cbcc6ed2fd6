"""The gate every RPC passes: the one gRPC interceptor that asks admission (`admission.py`,
shared with OTLP/HTTP) for the caller's principal and whether its role may call the service.

Every RPC outside the open services passes it, in this order: the server-side time bound, the
client's deadline, the bearer token, the role, and only then the request bytes are parsed. So
an unauthenticated or unauthorised caller never reaches a protobuf parser or the store, and a
request whose deadline already passed never starts a transaction. It depends on the token
lookup only through the `Admission` it is given, and on `rpc_errors` (below the servicers) for
its refusals.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from chorus.server import store
from chorus.server.model.roles import OPEN_SERVICES, Principal
from chorus.server.store import StoreUnavailable
from chorus.server.transport.admission import Admission, Refused, bearer_token
from chorus.server.transport.handlers import behavior_of, same_kind
from chorus.server.transport.rpc_errors import STORE_RETRY_SECONDS, abort, retry_later, store_unavailable

_log = logging.getLogger(__name__)

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("chorus_principal")


def principal() -> Principal:
    """The authenticated caller of the current RPC (set by AuthInterceptor)."""
    return _current.get()


Behavior = Callable[..., Any]
Admit = Callable[[grpc.ServicerContext, bool], Principal]


class AuthInterceptor(grpc.ServerInterceptor):
    """Maps the bearer token to a role and the role to the services it may call.

    `intercept_service` runs on gRPC's single polling thread, so it only reads the metadata
    and wraps the handler; the token lookup (which may touch the store) and the checks run
    on the RPC's worker thread, before the request bytes are even parsed.
    """

    def __init__(self, admission: Admission, *, max_rpc_seconds: float | None = None) -> None:
        """`max_rpc_seconds` bounds every RPC server-side, whatever deadline the client set:
        a call queued longer is not started, and a response stream is cancelled at it."""
        self._admission = admission
        self._max_rpc_seconds = max_rpc_seconds

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        service = details.method.rpartition("/")[0].lstrip("/")
        if service in OPEN_SERVICES:
            return continuation(details)
        arrived = time.monotonic()
        bearer = bearer_token([value for key, value in details.invocation_metadata or ()
                               if key == "authorization"])

        def admit(context: grpc.ServicerContext, exists: bool = True) -> Principal:
            return self._admit(details.method, service, bearer, arrived, context, exists=exists)

        ends = None if self._max_rpc_seconds is None else arrived + self._max_rpc_seconds
        return _guard(continuation(details), details.method, admit, ends)

    def _admit(self, method: str, service: str, bearer: str | None, arrived: float,
               context: grpc.ServicerContext, *, exists: bool = True) -> Principal:
        """The caller, or an abort. `exists=False` (no such method): any valid token is enough,
        and the caller then learns UNIMPLEMENTED, as gRPC clients expect."""
        if self._max_rpc_seconds is not None and time.monotonic() - arrived >= self._max_rpc_seconds:
            retry_later(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"{method} waited in the queue past the server limit of "
                        f"{self._max_rpc_seconds:g} s; retry later", STORE_RETRY_SECONDS)
        if context.time_remaining() <= 0:
            abort(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                  f"{method}: the client deadline passed before the call started")
        ends = None if self._max_rpc_seconds is None else arrived + self._max_rpc_seconds
        try:
            # A store outage here is UNAVAILABLE; the caller chose the path: log it only if it exists.
            with _contained(method if exists else "an unknown method", context, ends):
                return self._admission.admit(bearer, service, method, missing=MISSING, exists=exists)
        except Refused as refused:  # passed through by _contained
            abort(context, grpc.StatusCode.UNAUTHENTICATED if refused.unauthenticated
                  else grpc.StatusCode.PERMISSION_DENIED, str(refused))


#: How to send a token over gRPC, for the refusal of a call without one.
MISSING = "send metadata 'authorization: Bearer <token>' exactly once"


def _store_deadline(context: grpc.ServicerContext, ends: float | None) -> float | None:
    """When the store must give up (time.monotonic): the earlier of the client's deadline and
    the server's bound `ends`, less the margin the refusal needs to reach the client in time
    (a fifth of the time left, at most store.REPLY_MARGIN_SECONDS)."""
    now = time.monotonic()
    remaining = context.time_remaining()
    limits = [t for t in (ends, None if remaining is None else now + remaining) if t is not None]
    if not limits:
        return None
    return min(limits) - min(store.REPLY_MARGIN_SECONDS, 0.2 * max(0.0, min(limits) - now))


@contextmanager
def _contained(method: str, context: grpc.ServicerContext, ends: float | None) -> Iterator[None]:
    """Store transactions inside end by the RPC's deadline (`_store_deadline`). An unexpected
    exception becomes INTERNAL with a fixed message: gRPC would otherwise send its text (which
    might hold a value from the request) to the caller as UNKNOWN."""
    try:
        with store.deadline(_store_deadline(context, ends)):
            yield
    except Refused:
        raise
    except StoreUnavailable as exc:
        # Transient: the SDK retries UNAVAILABLE with the same batch id, so nothing is lost.
        # The store's message says why; no traceback: a busy store refuses many calls at once.
        _log.warning("%s: store unavailable: %s", method, exc)
        store_unavailable(context)
    except Exception:
        if context.code() is not None:  # the servicer aborted: its status stands
            raise
        _log.exception("%s failed", method)
        abort(context, grpc.StatusCode.INTERNAL, f"{method} failed on the server; the server log has "
              "the details")


def _guard(handler: grpc.RpcMethodHandler | None, method: str, admit: Admit,
           ends: float | None) -> grpc.RpcMethodHandler:
    """A handler of the same kind that admits the caller, then parses and runs the original.

    The wrapped handler receives raw bytes (no deserializer), so parsing happens after
    admission and a malformed message is INVALID_ARGUMENT instead of gRPC's INTERNAL.
    An unknown method (or service) still requires a valid token: callers learn nothing without
    one; with one, of any role, it is UNIMPLEMENTED. Its path is never logged (a client chooses it).
    `ends` (time.monotonic) is when a response stream is cancelled.
    """
    if handler is None:
        def unknown(requests: Any, context: grpc.ServicerContext) -> Any:
            who = admit(context, False)
            # The caller's own role, for a client that must learn it without being denied
            # (the dashboard's sign-in): it holds the token, so it learns nothing new.
            abort(context, grpc.StatusCode.UNIMPLEMENTED, "method not found", metadata={"role": who.role.value})

        # Stream-stream never reads the request, so it answers any kind of client call.
        return grpc.stream_stream_rpc_method_handler(unknown)

    def parse(raw: bytes, context: grpc.ServicerContext) -> Any:
        if handler.request_deserializer is None:
            return raw
        try:
            return handler.request_deserializer(raw)
        except Exception:  # whatever the parser raises, the bytes were not a valid request
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "request is not a valid protobuf message "
                  "of the method's request type")

    def request_of(raw: Any, context: grpc.ServicerContext) -> Any:
        if handler.request_streaming:
            return (parse(r, context) for r in raw)
        return parse(raw, context)

    behavior = behavior_of(handler)
    if handler.response_streaming:

        def streaming(raw: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            who = admit(context, True)
            request = request_of(raw, context)
            timer = None
            if ends is not None:
                # A reader that stops reading blocks this thread in a send; cancelling the
                # call releases it. Streams page outside transactions, so no store lock is held.
                timer = threading.Timer(max(0.0, ends - time.monotonic()), context.cancel)
                timer.daemon = True
                timer.start()
            try:
                with _contained(method, context, ends):
                    yield from _stream_as(who, behavior, request, context)
            finally:
                if timer is not None:
                    timer.cancel()

        return same_kind(handler, streaming, request_deserializer=None)

    def unary(raw: Any, context: grpc.ServicerContext) -> Any:
        who = admit(context, True)
        request = request_of(raw, context)
        with _contained(method, context, ends):
            return contextvars.copy_context().run(_call_as, who, behavior, request, context)

    return same_kind(handler, unary, request_deserializer=None)


def _call_as(who: Principal, behavior: Behavior, *args: Any) -> Any:
    _current.set(who)
    return behavior(*args)


_END = object()


def _stream_as(who: Principal, behavior: Behavior, request: Any,
               context: grpc.ServicerContext) -> Iterator[Any]:
    """Iterate a streaming behavior with `principal()` set for its body, and only for it."""
    scope = contextvars.copy_context()
    scope.run(_current.set, who)
    responses = scope.run(behavior, request, context)
    while (item := scope.run(next, responses, _END)) is not _END:
        yield item
