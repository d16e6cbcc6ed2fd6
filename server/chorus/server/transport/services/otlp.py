"""OTLP/gRPC `opentelemetry.proto.collector.metrics.v1.MetricsService/Export` for role ingest.

The auth interceptor has already admitted the token (role ingest, as for `Report`) before the
request was parsed. Order here: count the data points (over the limit: INVALID_ARGUMENT,
nothing counted), take them from the token's rate bucket (RESOURCE_EXHAUSTED with RetryInfo),
then count. Rejected points are reported in `partial_success`, as OTLP specifies.
"""

from __future__ import annotations

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from chorus.server.domain.otlp.export import OtlpIngestor
from chorus.server.domain.otlp.points import InvalidExport
from chorus.server.transport.gate import principal
from chorus.server.transport.ratelimit import RateLimited, RateLimiter
from chorus.server.transport.rpc_errors import invalid_argument, retry_later

SERVICE = metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name


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


def add_to_server(servicer: MetricsServicer, server: grpc.Server) -> None:
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(servicer, server)
