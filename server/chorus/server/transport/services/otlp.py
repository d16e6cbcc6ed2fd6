"""OTLP/gRPC `MetricsService/Export` for role ingest, and `TraceService/Export` and
`LogsService/Export` accepted and discarded unread.

Traces and logs: the AI tools send them to the same endpoint as their metrics, with no setting
to turn them off (Gemini CLI), and an OpenTelemetry SDK's shutdown fails on the first refused
export, losing the metrics not yet flushed. Logs carry prompts and responses. So both are
answered with an empty success after admission (role ingest) and never deserialised, stored or
logged: the handler is given the raw bytes and drops them.

The auth interceptor has already admitted the token (role ingest, as for `Report`) before the
request was parsed. Order here: count the data points (over the limit: INVALID_ARGUMENT,
nothing counted), take them from the token's rate bucket (RESOURCE_EXHAUSTED with RetryInfo),
then count. Rejected points are reported in `partial_success`, as OTLP specifies.
"""

from __future__ import annotations

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from chorus.server.domain.otlp.export import OtlpIngestor
from chorus.server.domain.otlp.points import InvalidExport
from chorus.server.model.roles import LOGS_SERVICE, TRACES_SERVICE
from chorus.server.transport.gate import principal
from chorus.server.transport.ratelimit import RateLimited, RateLimiter
from chorus.server.transport.rpc_errors import invalid_argument, retry_later

SERVICE = metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name
#: Services whose exports are accepted and dropped unread (chorus.server.model.roles grants them to ingest).
DISCARDED = (TRACES_SERVICE, LOGS_SERVICE)
# The names the roles table spells out are the protos' (the imports also register them for reflection).
assert (trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name,
                     logs_service_pb2.DESCRIPTOR.services_by_name["LogsService"].full_name) == DISCARDED


def response(rejected: int, message: str) -> metrics_service_pb2.ExportMetricsServiceResponse:
    reply = metrics_service_pb2.ExportMetricsServiceResponse()
    if rejected:
        reply.partial_success.rejected_data_points = rejected
        reply.partial_success.error_message = message
    return reply


class MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, otlp: OtlpIngestor, limiter: RateLimiter) -> None:
        self._otlp = otlp
        self._limiter = limiter

    def Export(self, request: metrics_service_pb2.ExportMetricsServiceRequest,
               context: grpc.ServicerContext) -> metrics_service_pb2.ExportMetricsServiceResponse:
        try:
            points = self._otlp.check(request)
        except InvalidExport as exc:
            invalid_argument(context, str(exc), exc.field)
        try:
            self._limiter.take(principal().name, max(1, points))
        except RateLimited as exc:
            retry_later(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), exc.retry_after,
                        reason="RATE_LIMITED", metadata={"retry_after_seconds": f"{exc.retry_after:.3f}"})
        try:
            result = self._otlp.export(request)
        except InvalidExport as exc:
            invalid_argument(context, str(exc), exc.field)
        return response(result.rejected, result.error_message)


def _discard(request: bytes, context: grpc.ServicerContext) -> bytes:
    """An empty `Export*ServiceResponse` (zero bytes); the request's bytes are never parsed."""
    return b""


def add_to_server(servicer: MetricsServicer, server: grpc.Server) -> None:
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        name, {"Export": grpc.unary_unary_rpc_method_handler(_discard)}) for name in DISCARDED])
