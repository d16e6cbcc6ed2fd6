"""OTLP/HTTP answers per the OTLP/HTTP specification, over raw HTTP/1.1."""

from __future__ import annotations

import gzip
import json
import socket
import urllib.parse

import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

from chorus.server.store import StoreUnavailable
from chorus.server.transport.ratelimit import RateLimiter

from ._requests import CUMULATIVE, now_ns, point, post, request, sum_metric
from .conftest import OtlpServer

#: Every test here starts a server, a process or a browser (tests/conftest.py, the fast lane).
pytestmark = pytest.mark.slow

RED0 = "user-team-red-0"
MIN = 60 * 10**9
PROTOBUF = "application/x-protobuf"


def body(value: int = 3, **attrs: str) -> bytes:
    t = now_ns() - MIN
    return request([sum_metric("tool.requests", [point(value, t - MIN, t, user__email=RED0, **attrs)])]
                   ).SerializeToString()


def headers(server: OtlpServer, content_type: str = PROTOBUF, **extra: str) -> dict[str, str]:
    return {"Content-Type": content_type, "Authorization": f"Bearer {server.ingest_token}", **extra}


def status_of(raw: bytes, content_type: str = PROTOBUF) -> status_pb2.Status:
    status = status_pb2.Status()
    if content_type == PROTOBUF:
        status.ParseFromString(raw)
    else:
        json_format.Parse(raw, status)
    return status


def test_protobuf_export_is_200_with_a_protobuf_response(otlp_server: OtlpServer) -> None:
    code, head, raw = post(otlp_server.http_url, body(), headers(otlp_server))
    assert code == 200 and head["content-type"] == PROTOBUF
    reply = ExportMetricsServiceResponse()
    reply.ParseFromString(raw)
    assert not reply.HasField("partial_success")
    assert otlp_server.totals() == {(RED0, "ai.requests"): 3}


def test_json_export_with_camel_case_and_string_int64(otlp_server: OtlpServer) -> None:
    t = now_ns() - MIN
    doc = {"resourceMetrics": [{"resource": {"attributes": [{"key": "service.name",
                                                             "value": {"stringValue": "js-tool"}}]},
                                "scopeMetrics": [{"scope": {"name": "x"}, "metrics": [{
                                    "name": "tool.requests",
                                    "sum": {"aggregationTemporality": 2, "isMonotonic": True, "dataPoints": [{
                                        "startTimeUnixNano": str(t - MIN), "timeUnixNano": str(t),
                                        "asDouble": 6.0,
                                        "attributes": [{"key": "user.email", "value": {"stringValue": RED0}}],
                                        "exemplars": [{"traceId": "5b8efff798038103d269b633813fc60c",
                                                       "spanId": "eee19b7ec3c1b174", "asInt": "1",
                                                       "timeUnixNano": str(t)}]},
                                        {"startTimeUnixNano": str(t - MIN), "timeUnixNano": str(t),
                                         "asInt": "2", "attributes": [
                                             {"key": "user.email", "value": {"stringValue": "user-nobody-9"}}]}],
                                    }}]}]}]}
    code, head, raw = post(otlp_server.http_url, json.dumps(doc).encode(),
                           headers(otlp_server, "application/json; charset=utf-8"))
    assert code == 200 and head["content-type"] == "application/json"
    reply = json.loads(raw)
    assert reply == {"partialSuccess": {"rejectedDataPoints": "1",
                                        "errorMessage": "1 data point(s) rejected: 1 with an identity not on the "
                                                        "roster"}}
    assert otlp_server.totals() == {(RED0, "ai.requests"): 6}


def test_gzip_and_chunked_bodies(otlp_server: OtlpServer) -> None:
    code, _, _ = post(otlp_server.http_url, gzip.compress(body(2)), headers(otlp_server, **{
        "Content-Encoding": "gzip", "Transfer-Encoding": "chunked"}))
    assert code == 200
    code, _, _ = post(otlp_server.http_url, body(5, k="v"), headers(otlp_server, **{"Transfer-Encoding": "chunked"}))
    assert code == 200
    assert otlp_server.totals() == {(RED0, "ai.requests"): 7}


@pytest.mark.parametrize(("payload", "content_type", "encoding", "expected", "words"), [
    (b"\xff\xff\xff\xff", PROTOBUF, None, 400, "not a valid protobuf"),
    (b'{"resourceMetrics": [', "application/json", None, 400, "not a valid OTLP JSON"),
    (b'{"resourceMetrics": {"x": 1}}', "application/json", None, 400, "not a valid OTLP JSON"),
    (b"not gzip at all", PROTOBUF, "gzip", 400, "not valid gzip"),
    (b"x", "text/plain", None, 415, "Content-Type 'text/plain' is not supported"),
    (b"x", PROTOBUF, "br", 415, "Content-Encoding 'br' is not supported"),
])
def test_bad_bodies_are_refused_and_store_nothing(otlp_server: OtlpServer, payload: bytes, content_type: str,
                                                  encoding: str | None, expected: int, words: str) -> None:
    extra = {"Content-Encoding": encoding} if encoding else {}
    code, _, raw = post(otlp_server.http_url, payload, headers(otlp_server, content_type, **extra))
    assert code == expected
    kind = "application/json" if "json" in content_type else PROTOBUF
    assert words in status_of(raw, kind).message
    assert otlp_server.stored_nothing()


def test_oversize_bodies_are_413_before_and_after_gzip(otlp_server: OtlpServer) -> None:
    limit = otlp_server.chorus.config.limits.max_message_bytes
    code, _, raw = post(otlp_server.http_url, b"\0" * (limit + 1), headers(otlp_server))
    assert code == 413 and str(limit) in status_of(raw).message
    bomb = gzip.compress(b"\0" * (limit * 4))  # a few KiB that inflate past the limit
    code, _, raw = post(otlp_server.http_url, bomb, headers(otlp_server, **{"Content-Encoding": "gzip"}))
    assert code == 413 and "inflates to more than" in status_of(raw).message
    code, _, _ = post(otlp_server.http_url, b"\0" * (limit + 1), headers(otlp_server, **{
        "Transfer-Encoding": "chunked"}))
    assert code == 413


@pytest.mark.parametrize(("auth", "expected"), [(None, 401), ("Bearer chorus_" + "y" * 43, 401),
                                                 ("Basic abc", 401), ("analyst", 403)])
def test_auth_is_401_or_403(otlp_server: OtlpServer, auth: str | None, expected: int) -> None:
    head = {"Content-Type": PROTOBUF}
    if auth == "analyst":
        head["Authorization"] = f"Bearer {otlp_server.analyst_token}"
    elif auth:
        head["Authorization"] = auth
    code, answer_head, raw = post(otlp_server.http_url, body(), head)
    assert code == expected and answer_head["connection"] == "close"  # every refusal closes
    assert otlp_server.stored_nothing()
    assert "y" * 43 not in status_of(raw).message


def test_rate_limited_is_429_with_retry_after(otlp_server: OtlpServer) -> None:
    assert otlp_server.server.otlp_http is not None
    handler = otlp_server.server.otlp_http.app
    handler.limiter = RateLimiter(1.0, 1, otlp_server.chorus.clock)
    t = now_ns() - MIN
    two = request([sum_metric("tool.requests", [point(1, t - MIN, t, user__email=RED0),
                                                point(1, t - MIN, t, user__email="user-team-red-1")])])
    assert post(otlp_server.http_url, two.SerializeToString(), headers(otlp_server))[0] == 200
    code, head, raw = post(otlp_server.http_url, two.SerializeToString(), headers(otlp_server))
    assert code == 429 and int(head["retry-after"]) >= 1
    assert "rate limit" in status_of(raw).message


@pytest.mark.parametrize("failing", ["authenticate", "otlp_export"])
def test_store_outage_is_503_with_retry_after(otlp_server: OtlpServer, monkeypatch: pytest.MonkeyPatch,
                                              failing: str) -> None:
    real = otlp_server.chorus.db._transaction

    def flaky(fn, name, *, read_only):  # type: ignore[no-untyped-def]
        if name == failing:
            raise StoreUnavailable("database /secret/path is locked")
        return real(fn, name, read_only=read_only)

    monkeypatch.setattr(otlp_server.chorus.db, "_transaction", flaky)  # writes and reads alike
    code, head, raw = post(otlp_server.http_url, body(), headers(otlp_server))
    assert code == 503 and head["retry-after"] == "1"
    assert "/secret/path" not in status_of(raw).message
    monkeypatch.setattr(otlp_server.chorus.db, "_transaction", real)
    assert post(otlp_server.http_url, body(), headers(otlp_server))[0] == 200


def test_wrong_path_and_method(otlp_server: OtlpServer) -> None:
    url = otlp_server.http_url.replace("/v1/metrics", "/v1/profiles")
    import http.client
    host, port = otlp_server.http_url.split("//")[1].split("/")[0].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/v1/metrics")
    assert conn.getresponse().status == 405
    conn.close()
    assert post(url, body(), headers(otlp_server))[0] == 404


def test_cumulative_json_from_a_javascript_sdk_counts_doubles(otlp_server: OtlpServer) -> None:
    t = now_ns() - 10 * MIN
    for i, total in enumerate((1500.0, 2500.0)):
        req = request([sum_metric("claude_code.token.usage", [point(total, t - MIN, t + i * MIN, user__email=RED0,
                                                                    type="output")], CUMULATIVE)])
        code, _, _ = post(otlp_server.http_url, json_format.MessageToJson(req).encode(),
                          headers(otlp_server, "application/json"))
        assert code == 200
    assert otlp_server.totals() == {(RED0, "ai.tokens"): 2500}


def _raw(server: OtlpServer, request_bytes: bytes) -> tuple[int, bytes]:
    """Send bytes as they are on one connection; (status, body) of the answer."""
    host, port = urllib.parse.urlsplit(server.http_url).netloc.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request_bytes)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def test_a_post_without_length_or_chunks_is_411(otlp_server: OtlpServer) -> None:
    code, raw = _raw(otlp_server, (f"POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: {PROTOBUF}\r\n"
                                   f"Authorization: Bearer {otlp_server.ingest_token}\r\nConnection: close\r\n\r\n"
                                   ).encode())
    assert code == 411 and "send Content-Length or Transfer-Encoding: chunked" in status_of(raw).message
    assert otlp_server.stored_nothing()


def test_what_waitress_refuses_itself_is_a_status_too(otlp_server: OtlpServer) -> None:
    """A malformed request, refused by waitress before any of ours runs: a google.rpc.Status body
    as for every refusal, not waitress's text page."""
    code, raw = _raw(otlp_server, b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Length: many\r\n\r\n")
    assert code == 400
    assert status_of(raw).code == 3  # INVALID_ARGUMENT
    assert otlp_server.stored_nothing()
