"""OTLP/HTTP under the same TLS options as gRPC; the CLI's plaintext rule; the shared rate limit."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import MetricExportResult

from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.server.transport import otlp_http
from chorus.server.transport.grpc_server import Server, TlsConfig
from tests._certs import make_certs

from ._requests import export_grpc, now_ns, point, post, request, sum_metric
from .conftest import OtlpServer, otlp_config, provider, temporality

#: Every test here starts a server, a process or a browser (tests/conftest.py, the fast lane).
pytestmark = pytest.mark.slow

RED0 = "user-team-red-0"
MIN = 60 * 10**9


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(autouse=True)
def _exporter_uses_its_certificate_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests prefers these environment variables over the exporter's certificate_file."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


def tls_server(data_dir: Path, certs: Path, *, mtls: bool) -> tuple[Server, str]:
    chorus = Chorus(otlp_config(), data_dir)
    token, _ = chorus.tokens.create(Role.INGEST, "tls-ingest", chorus.clock.now(), "test")
    chorus.import_roster([(RED0, "team-red")], "test")
    tls = TlsConfig((certs / "server.pem").read_bytes(), (certs / "server.key").read_bytes(),
                    (certs / "ca.pem").read_bytes() if mtls else None)
    server = Server(chorus, "127.0.0.1:0", tls=tls, otlp_http_listen="127.0.0.1:0")
    server.start()
    return server, token


def export_over_https(server: Server, token: str, certs: Path, *, client_cert: bool,
                      timeout: float = 10) -> MetricExportResult:
    assert server.otlp_http is not None
    exporter = OTLPMetricExporter(
        endpoint=f"https://localhost:{server.otlp_http.port}/v1/metrics", timeout=timeout,
        headers={"Authorization": f"Bearer {token}"}, certificate_file=str(certs / "ca.pem"),
        client_certificate_file=str(certs / "client.pem") if client_cert else None,
        client_key_file=str(certs / "client.key") if client_cert else None,
        preferred_temporality=temporality(True))
    results = []
    real_export = exporter.export

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        results.append(real_export(*args, **kwargs))
        return results[-1]

    exporter.export = recording  # type: ignore[method-assign]
    meters = provider(exporter)
    meters.get_meter("tls").create_counter("tool.requests").add(2, {"user.email": RED0})
    meters.force_flush(20_000)
    meters.shutdown()
    return results[0]


def test_otlp_http_over_tls_with_the_server_certificates(tmp_path: Path, certs: Path) -> None:
    server, token = tls_server(tmp_path / "data", certs, mtls=False)
    try:
        assert export_over_https(server, token, certs, client_cert=False) is MetricExportResult.SUCCESS
        assert server.chorus.otlp.points()["counted"] == 1
    finally:
        server.stop(grace=1)


def test_otlp_http_with_mtls_needs_a_client_certificate(tmp_path: Path, certs: Path) -> None:
    server, token = tls_server(tmp_path / "data", certs, mtls=True)
    try:
        assert export_over_https(server, token, certs, client_cert=False, timeout=2) is MetricExportResult.FAILURE
        assert export_over_https(server, token, certs, client_cert=True) is MetricExportResult.SUCCESS
        assert server.chorus.otlp.points()["counted"] == 1
    finally:
        server.stop(grace=1)


def test_a_stalled_tls_handshake_is_cut_at_the_deadline(tmp_path: Path, certs: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp_http, "REQUEST_SECONDS", 2.0)
    server, token = tls_server(tmp_path / "data", certs, mtls=False)
    try:
        assert server.otlp_http is not None
        with socket.create_connection(("127.0.0.1", server.otlp_http.port), timeout=10) as stalled:
            stalled.sendall(b"\x16\x03\x01")  # the start of a ClientHello, never finished
            stalled.settimeout(6)
            started = time.monotonic()
            with contextlib.suppress(ConnectionError):
                assert stalled.recv(1024) == b""
            assert time.monotonic() - started < 5
        assert export_over_https(server, token, certs, client_cert=False) is MetricExportResult.SUCCESS
    finally:
        server.stop(grace=1)


def test_plaintext_otlp_http_on_a_public_address_is_refused(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir", str(tmp_path / "d"),
                             "--otlp-http-listen", "0.0.0.0:0"], capture_output=True, text=True, timeout=60,
                            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "refusing plaintext OTLP/HTTP on non-loopback address 0.0.0.0:0" in result.stdout + result.stderr


def test_grpc_and_http_share_the_tokens_rate_limit(otlp_server: OtlpServer) -> None:
    assert otlp_server.server.otlp_http is not None
    limiter = otlp_server.server.otlp_http.app.limiter
    limiter.rate, limiter.burst = 0.001, 2
    t = now_ns() - MIN
    two = request([sum_metric("tool.requests", [point(1, t - MIN, t, user__email=RED0),
                                                point(1, t - MIN, t, user__email="user-team-red-1")])])
    export_grpc(otlp_server.address, otlp_server.ingest_token, two)  # takes the whole burst
    with pytest.raises(grpc.RpcError) as err:
        export_grpc(otlp_server.address, otlp_server.ingest_token, two)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit" in (err.value.details() or "")
    code, head, _ = post(otlp_server.http_url, two.SerializeToString(), {
        "Content-Type": "application/x-protobuf", "Authorization": f"Bearer {otlp_server.ingest_token}"})
    assert code == 429 and int(head["retry-after"]) >= 1


def test_chorus_serve_prints_and_serves_the_otlp_http_listener(tmp_path: Path) -> None:
    import os
    import re
    import signal
    proc = subprocess.Popen([sys.executable, "-m", "chorus.server.cli", "serve", "--data-dir", str(tmp_path / "d"),
                             "--listen", "127.0.0.1:0", "--otlp-http-listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        assert proc.stdout is not None
        url = None
        for line in proc.stdout:
            if m := re.search(r"OTLP/HTTP on (http://127\.0\.0\.1:\d+/v1/metrics)", line):
                url = m[1]
            if "chorus serving on" in line:
                break
        assert url is not None
        code, _, _ = post(url, b"", {"Content-Type": "application/x-protobuf"})
        assert code == 401  # the listener answers, and wants a token
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
