"""Hand-built OTLP export requests and the two ways to send them (gRPC stub, raw HTTP)."""

from __future__ import annotations

import http.client
import time
from collections.abc import Sequence
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
Request = metrics_service_pb2.ExportMetricsServiceRequest


def now_ns() -> int:
    return time.time_ns()


def attrs(values: dict[str, Any]) -> list[KeyValue]:
    out = []
    for key, value in values.items():
        if isinstance(value, bool):
            any_value = AnyValue(bool_value=value)
        elif isinstance(value, int):
            any_value = AnyValue(int_value=value)
        elif isinstance(value, float):
            any_value = AnyValue(double_value=value)
        else:
            any_value = AnyValue(string_value=value)
        out.append(KeyValue(key=key, value=any_value))
    return out


def point(value: float, start: int, end: int, **attributes: Any) -> metrics_pb2.NumberDataPoint:
    p = metrics_pb2.NumberDataPoint(start_time_unix_nano=start, time_unix_nano=end,
                                    attributes=attrs({k.replace("__", "."): v for k, v in attributes.items()}))
    if isinstance(value, int):
        p.as_int = value
    else:
        p.as_double = value
    return p


def sum_metric(name: str, points: Sequence[metrics_pb2.NumberDataPoint], temporality: int = DELTA,
               monotonic: bool = True) -> metrics_pb2.Metric:
    return metrics_pb2.Metric(name=name, sum=metrics_pb2.Sum(
        data_points=points, aggregation_temporality=temporality, is_monotonic=monotonic))


def request(metrics: Sequence[metrics_pb2.Metric], resource: dict[str, Any] | None = None) -> Request:
    return Request(resource_metrics=[metrics_pb2.ResourceMetrics(
        resource=Resource(attributes=attrs(resource or {"service.name": "test-tool"})),
        scope_metrics=[metrics_pb2.ScopeMetrics(scope=InstrumentationScope(name="test"), metrics=metrics)])])


def export_grpc(address: str, token: str, req: Request) -> metrics_service_pb2.ExportMetricsServiceResponse:
    with grpc.insecure_channel(address) as channel:
        return metrics_service_pb2_grpc.MetricsServiceStub(channel).Export(
            req, metadata=(("authorization", f"Bearer {token}"),), timeout=30)


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP POST (no client library between the test and the listener)."""
    host_port, _, path = url.split("//", 1)[1].partition("/")
    host, port = host_port.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        chunked = headers.get("Transfer-Encoding") == "chunked"
        conn.putrequest("POST", "/" + path)
        for name, value in headers.items():
            conn.putheader(name, value)
        if not chunked:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        try:
            if chunked:
                for i in range(0, len(body), 65536):
                    part = body[i:i + 65536]
                    conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                conn.send(b"0\r\n\r\n")
            else:
                conn.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (413) and closed before reading it all: read the answer
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()
