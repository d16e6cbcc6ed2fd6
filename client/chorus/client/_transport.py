"""How a batch reaches the server: the Transport protocol and its gRPC implementation."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Protocol

import grpc

from chorus.client._status import retry_delay_from_metadata
from chorus.v1 import ingest_pb2, ingest_pb2_grpc

__all__ = ["FINAL_CODES", "RETRYABLE_CODES", "GrpcTransport", "Transport", "TransportError"]

#: Status codes that say the batch itself is bad: sending it again can never succeed.
#: Only these drop a batch (and delete its spool file). ALREADY_EXISTS says the server
#: holds the batch already and settles it like `duplicate=true`.
FINAL_CODES: frozenset[grpc.StatusCode] = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.ALREADY_EXISTS,
})

#: Status codes after which the same batch is kept and sent again later: every code
#: except OK and FINAL_CODES. Each is an answer the server may change (an outage, a full
#: disk, a revoked or misconfigured token, a server bug fixed by a deploy, a proxy in the
#: way), so dropping the batch would lose data the server would later have accepted.
#: Resending is safe because the server de-duplicates by batch_id; a batch kept this way is
#: bounded by max_pending, the spool's size and MAX_BATCH_AGE (see docs/sdk.md).
RETRYABLE_CODES: frozenset[grpc.StatusCode] = frozenset(grpc.StatusCode) - FINAL_CODES - {grpc.StatusCode.OK}

# While a channel waits to reconnect, gRPC fails calls at once without trying, so a
# reconnect backoff longer than ours would delay recovery after an outage (gRPC's
# default ceiling is 120 s; our retry backoff's is 60 s).
_CHANNEL_OPTIONS = (("grpc.max_reconnect_backoff_ms", 30_000),)

# Channels inherited from a parent process. The child must neither use nor close them
# (closing would act on gRPC state that belongs to the parent), and letting them be
# garbage-collected closes them, so they are parked here for the child's lifetime.
_INHERITED_CHANNELS: list[grpc.Channel] = []


class TransportError(Exception):
    """A failed send: the gRPC status code and the server's RetryInfo delay, if it sent one."""

    def __init__(self, code: grpc.StatusCode, details: str = "", retry_delay: float | None = None) -> None:
        super().__init__(f"{code.name}: {details}" if details else code.name)
        self.code = code
        self.details = details
        self.retry_delay = retry_delay

    @property
    def retryable(self) -> bool:
        """Whether the same batch should be sent again later."""
        return self.code in RETRYABLE_CODES


class Transport(Protocol):
    """Sends one ReportRequest. Implementations raise TransportError on failure."""

    def send(self, request: ingest_pb2.ReportRequest, timeout: float) -> ingest_pb2.ReportResponse:
        """Deliver the batch within `timeout` seconds and return the server's answer."""
        ...

    def close(self) -> None:
        """Release connections; later sends may fail."""
        ...


class GrpcTransport:
    """IngestService.Report over a lazily created gRPC channel, re-created after fork.

    A forked child never touches the parent's channel: the fork hook forgets it, and the
    child's first send opens a channel of its own.
    """

    def __init__(
        self,
        target: str,
        token: str,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._target = target
        self._credentials = credentials
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: ingest_pb2_grpc.IngestServiceStub | None = None
        self._closed = False
        _TRANSPORTS.add(self)

    def send(self, request: ingest_pb2.ReportRequest, timeout: float) -> ingest_pb2.ReportResponse:
        stub = self._current_stub()
        try:
            response: ingest_pb2.ReportResponse = stub.Report(
                request, timeout=timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            error = _transport_error(exc)
            if error.code == grpc.StatusCode.UNAVAILABLE and self._credentials is None:
                error = TransportError(error.code, f"{error.details}; {PLAINTEXT_HINT}", error.retry_delay)
            raise error from None
        except ValueError:
            # grpc raises ValueError for an RPC on a channel closed concurrently by close().
            raise TransportError(grpc.StatusCode.CANCELLED, "channel closed") from None
        return response

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._channel is not None:
                self._channel.close()
            self._channel = self._stub = None

    def _forget_parent_channel(self) -> None:
        """In a forked child. The lock is replaced: a parent thread may have held it at fork."""
        self._lock = threading.Lock()
        if self._channel is not None:
            _INHERITED_CHANNELS.append(self._channel)
        self._channel = self._stub = None

    def _current_stub(self) -> ingest_pb2_grpc.IngestServiceStub:
        with self._lock:
            if self._closed:
                raise TransportError(grpc.StatusCode.CANCELLED, "transport closed")
            if self._stub is None:
                if self._credentials is None:
                    self._channel = grpc.insecure_channel(self._target, _CHANNEL_OPTIONS)
                else:
                    self._channel = grpc.secure_channel(self._target, self._credentials, _CHANNEL_OPTIONS)
                self._stub = ingest_pb2_grpc.IngestServiceStub(self._channel)
            return self._stub


#: Added to UNAVAILABLE on a plaintext channel: a TLS server answers plaintext with nothing better.
PLAINTEXT_HINT = ("this client speaks plaintext (the endpoint is loopback, or secure=False): if the server "
                  "uses TLS, pass secure=True or root_certificates=")


def _transport_error(exc: grpc.RpcError) -> TransportError:
    # A failed unary call's RpcError is also a grpc.Call; be defensive for other sources.
    code_of = getattr(exc, "code", None)
    code = code_of() if callable(code_of) else None
    details_of = getattr(exc, "details", None)
    details = details_of() if callable(details_of) else ""
    trailing_of = getattr(exc, "trailing_metadata", None)
    trailing = trailing_of() if callable(trailing_of) else None
    return TransportError(
        code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN,
        details or "",
        retry_delay_from_metadata(trailing),
    )


_TRANSPORTS: weakref.WeakSet[GrpcTransport] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for transport in list(_TRANSPORTS):
        transport._forget_parent_channel()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
