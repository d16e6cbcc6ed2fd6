"""Hostile OTLP input: a precise error, little CPU, nothing stored."""

from __future__ import annotations

import time

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2

from ._requests import export_grpc, now_ns, point, post, request, sum_metric
from .conftest import OtlpServer

#: Every test here starts a server, a process or a browser (tests/conftest.py, the fast lane).
pytestmark = pytest.mark.slow

RED0 = "user-team-red-0"
MIN = 60 * 10**9


def raw_export(server: OtlpServer, payload: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export")
        with pytest.raises(grpc.RpcError) as err:
            call(payload, metadata=(("authorization", f"Bearer {server.ingest_token}"),), timeout=30)
    return err.value


def test_malformed_protobuf_over_grpc_is_invalid_argument(otlp_server: OtlpServer) -> None:
    err = raw_export(otlp_server, b"\x0a\xff\xff\xff\xff\x0f")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf" in (err.details() or "")
    assert otlp_server.stored_nothing()


def test_a_hundred_thousand_points_are_refused_whole_and_fast(otlp_server: OtlpServer) -> None:
    t = now_ns() - MIN
    points = [point(1, t - MIN, t + i) for i in range(100_000)]  # small enough to fit 4 MiB
    req = request([sum_metric("tool.requests", points)], resource={"user.email": RED0})
    assert req.ByteSize() < otlp_server.chorus.config.limits.max_message_bytes
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        export_grpc(otlp_server.address, otlp_server.ingest_token, req)
    elapsed = time.monotonic() - started
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "100000 data points; the limit per request is 10000" in (err.value.details() or "")
    assert elapsed < 5, elapsed  # refused from a count, before any point is decoded
    assert otlp_server.stored_nothing()
    # The same over HTTP: 400 with the same words.
    code, _, raw = post(otlp_server.http_url, req.SerializeToString(), {
        "Content-Type": "application/x-protobuf", "Authorization": f"Bearer {otlp_server.ingest_token}"})
    assert code == 400 and b"the limit per request is 10000" in raw
    assert otlp_server.stored_nothing()


@pytest.mark.parametrize("where", ["point", "resource"])
def test_attribute_bombs_are_refused_whole(otlp_server: OtlpServer, where: str) -> None:
    t = now_ns() - MIN
    bomb = {f"k{i}": "v" * 50 for i in range(20_000)}
    good = point(1, t - MIN, t, user__email=RED0)
    if where == "point":
        req = request([sum_metric("tool.requests", [good, point(1, t - MIN, t, user__email=RED0, **bomb)])])
    else:
        req = request([sum_metric("tool.requests", [good])], resource=bomb)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        export_grpc(otlp_server.address, otlp_server.ingest_token, req)
    assert time.monotonic() - started < 5
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"a {'data point' if where == 'point' else 'resource'} has 20001 attributes; the limit is 128" \
        in (err.value.details() or "") or "20000 attributes" in (err.value.details() or "")
    assert otlp_server.stored_nothing()


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, encoded by hand (the library refuses to build what we send)."""
    def varint(n: int) -> bytes:
        out = b""
        while n > 0x7F:
            out += bytes([n & 0x7F | 0x80])
            n >>= 7
        return out + bytes([n])
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_deeply_nested_attribute_values_are_refused(otlp_server: OtlpServer) -> None:
    value = AnyValue(string_value="leaf").SerializeToString()
    for _ in range(150):  # deeper than protobuf's recursion limit; AnyValue.kvlist_value is field 6
        value = _field(6, _field(1, _field(1, b"k") + _field(2, value)))
    t = now_ns() - MIN
    data_point = point(1, t - MIN, t, user__email=RED0).SerializeToString() + _field(7, _field(1, b"n")
                                                                                       + _field(2, value))
    metric = metrics_pb2.Metric(name="tool.requests").SerializeToString() + _field(
        7, _field(1, data_point) + b"\x10\x01\x18\x01")  # Sum: the point, delta, monotonic
    scope = _field(2, metric)
    payload = _field(1, _field(2, scope))
    err = raw_export(otlp_server, payload)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert otlp_server.stored_nothing()
    nested = '{"stringValue": "leaf"}'
    for _ in range(150):
        nested = '{"kvlistValue": {"values": [{"key": "k", "value": ' + nested + "}]}}"
    nested = ('{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "tool.requests", "sum": {'
              '"aggregationTemporality": 1, "isMonotonic": true, "dataPoints": [{"asInt": "1", "attributes": ['
              '{"key": "n", "value": ' + nested + "}]}]}}]}]}]}")
    code, _, raw = post(otlp_server.http_url, nested.encode(), {
        "Content-Type": "application/json", "Authorization": f"Bearer {otlp_server.ingest_token}"})
    assert code == 400 and b"not a valid OTLP JSON" in raw
    assert otlp_server.stored_nothing()


def test_an_oversize_grpc_message_is_refused(otlp_server: OtlpServer) -> None:
    limit = otlp_server.chorus.config.limits.max_message_bytes
    err = raw_export(otlp_server, metrics_service_pb2.ExportMetricsServiceRequest().SerializeToString()
                     + b"\x0a" + b"\xff\xff\xff\x07" + b"\0" * (limit + 10))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert otlp_server.stored_nothing()


def test_an_empty_export_is_accepted_and_stores_nothing(otlp_server: OtlpServer) -> None:
    reply = export_grpc(otlp_server.address, otlp_server.ingest_token,
                        metrics_service_pb2.ExportMetricsServiceRequest())
    assert not reply.HasField("partial_success")
    assert otlp_server.stored_nothing()


def test_identity_values_that_are_not_printable_or_too_long_count_as_no_identity(otlp_server: OtlpServer) -> None:
    t = now_ns() - MIN
    reply = export_grpc(otlp_server.address, otlp_server.ingest_token, request([sum_metric("tool.requests", [
        point(1, t - MIN, t, user__email="a\nb"), point(1, t - MIN, t, user__email="u" * 5000)])]))
    assert reply.partial_success.rejected_data_points == 2
    assert "2 without an identity attribute" in reply.partial_success.error_message
    assert otlp_server.stored_nothing()
