"""Traces and logs from the AI tools' exporters are accepted for role ingest and dropped unread,
on both transports: an empty success, nothing stored, nothing logged (prompts included)."""

from __future__ import annotations

import logging

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from ._requests import attrs, post
from .conftest import OtlpServer

pytestmark = pytest.mark.slow
PROMPT = "secret-prompt-7f3a: refactor the payroll module"


def logs_request() -> logs_service_pb2.ExportLogsServiceRequest:
    record = logs_pb2.LogRecord(body=AnyValue(string_value=PROMPT),
                                attributes=attrs({"event.name": "user_prompt", "prompt": PROMPT}))
    return logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(
        scope_logs=[logs_pb2.ScopeLogs(log_records=[record])])])


def traces_request() -> trace_service_pb2.ExportTraceServiceRequest:
    span = trace_pb2.Span(trace_id=b"t" * 16, span_id=b"s" * 8, name="llm_call",
                          attributes=attrs({"gen_ai.prompt": PROMPT}))
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        scope_spans=[trace_pb2.ScopeSpans(spans=[span])])])


def grpc_export(server: OtlpServer, token: str, kind: str) -> object:
    with grpc.insecure_channel(server.address) as channel:
        metadata = (("authorization", f"Bearer {token}"),)
        if kind == "logs":
            return logs_service_pb2_grpc.LogsServiceStub(channel).Export(logs_request(), metadata=metadata, timeout=10)
        return trace_service_pb2_grpc.TraceServiceStub(channel).Export(traces_request(), metadata=metadata,
                                                                      timeout=10)


@pytest.mark.parametrize("kind", ["logs", "traces"])
def test_grpc_traces_and_logs_are_an_empty_success_and_leave_nothing(
        otlp_server: OtlpServer, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    reply = grpc_export(otlp_server, otlp_server.ingest_token, kind)
    assert reply.ByteSize() == 0  # no partial_success: nothing was rejected
    assert otlp_server.stored_nothing()
    assert PROMPT not in caplog.text
    assert not any(PROMPT.encode() in p.read_bytes() for p in otlp_server.data_dir.rglob("*") if p.is_file())


@pytest.mark.parametrize("kind", ["logs", "traces"])
def test_grpc_traces_and_logs_need_role_ingest(otlp_server: OtlpServer, kind: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        grpc_export(otlp_server, otlp_server.analyst_token, kind)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:
        grpc_export(otlp_server, "chorus_not-a-token", kind)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("content_type", ["application/x-protobuf", "application/json"])
@pytest.mark.parametrize("path", ["/v1/logs", "/v1/traces"])
def test_http_traces_and_logs_are_an_empty_success_and_leave_nothing(
        otlp_server: OtlpServer, path: str, content_type: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    message = logs_request() if path == "/v1/logs" else traces_request()
    body = message.SerializeToString() if "protobuf" in content_type else f'{{"p": "{PROMPT}"}}'.encode()
    url = otlp_server.http_url.replace("/v1/metrics", path)
    status, headers, answer = post(url, body, {"Authorization": f"Bearer {otlp_server.ingest_token}",
                                               "Content-Type": content_type})
    assert (status, headers["content-type"]) == (200, content_type)
    assert answer == (b"{}" if "json" in content_type else b"")
    assert otlp_server.stored_nothing()
    assert PROMPT not in caplog.text
    status, _, _ = post(url, body, {"Authorization": f"Bearer {otlp_server.analyst_token}",
                                    "Content-Type": content_type})
    assert status == 403
