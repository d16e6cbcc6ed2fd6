"""The real OpenTelemetry Python SDK exports to Chorus over OTLP/gRPC and OTLP/HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

from chorus.v1 import admin_pb2, admin_pb2_grpc, common_pb2, release_pb2, release_pb2_grpc

from .conftest import OTLP_TOML, OtlpServer, otlp_config, provider, temporality, today

#: Every test here starts a server, a process or a browser (tests/conftest.py, the fast lane).
pytestmark = pytest.mark.slow


def grpc_exporter(server: OtlpServer, *, delta: bool, gzip: bool = False) -> GrpcExporter:
    return GrpcExporter(endpoint=server.address, insecure=True, timeout=10,
                        headers={"authorization": f"Bearer {server.ingest_token}"},
                        compression=grpc.Compression.Gzip if gzip else None,
                        preferred_temporality=temporality(delta))


def http_exporter(server: OtlpServer, *, delta: bool, gzip: bool = False) -> HttpExporter:
    return HttpExporter(endpoint=server.http_url, timeout=10,
                        headers={"Authorization": f"Bearer {server.ingest_token}"},
                        compression=HttpCompression.Gzip if gzip else HttpCompression.NoCompression,
                        preferred_temporality=temporality(delta))


TRANSPORTS = {"grpc": grpc_exporter, "http": http_exporter}


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("delta", [True, False], ids=["delta", "cumulative"])
@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_sdk_usage_is_counted_exactly(otlp_server: OtlpServer, transport: str, delta: bool, gzip: bool) -> None:
    meters = provider(TRANSPORTS[transport](otlp_server, delta=delta, gzip=gzip))
    tokens = meters.get_meter("tool").create_counter("claude_code.token.usage")
    requests = meters.get_meter("tool").create_counter("tool.requests")
    for step in range(3):  # three exports: cumulative points repeat their running totals
        for user, n in (("user-team-red-0", 100), ("user-team-blue-1", 7)):
            for kind in ("input", "output", "cacheRead"):
                tokens.add(n, {"user.email": user, "type": kind, "model": "model-x", "session.id": f"s-{step}"})
            requests.add(1, {"user.email": user, "session.id": "session-1"})
        assert meters.force_flush(10_000)
    meters.shutdown()
    assert otlp_server.totals() == {  # cacheRead is filtered out by the mapping
        ("user-team-red-0", "ai.tokens"): 600, ("user-team-red-0", "ai.requests"): 3,
        ("user-team-blue-1", "ai.tokens"): 42, ("user-team-blue-1", "ai.requests"): 3}


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_histogram_sums_and_doubles_with_scale(otlp_server: OtlpServer, transport: str) -> None:
    meters = provider(TRANSPORTS[transport](otlp_server, delta=True))
    meter = meters.get_meter("genai")
    usage = meter.create_histogram("gen_ai.client.token.usage")
    cost = meter.create_counter("tool.cost")
    usage.record(120, {"enduser.id": "user-team-red-1", "gen_ai.token.type": "input"})
    usage.record(80, {"enduser.id": "user-team-red-1", "gen_ai.token.type": "output"})
    cost.add(0.25, {"enduser.id": "user-team-red-1"})  # a double, scaled by 1000
    cost.add(0.5, {"enduser.id": "user-team-red-1"})
    assert meters.force_flush(10_000)
    meters.shutdown()
    assert otlp_server.totals() == {("user-team-red-1", "ai.tokens"): 200,
                                    ("user-team-red-1", "ai.suggestions_accepted"): 750}


def test_released_sums_after_close_match_the_clamped_truth(tmp_path: Path) -> None:
    cfg_text = OTLP_TOML.replace('epsilon_per_window = "1"', 'epsilon_per_window = "100000"')
    assert cfg_text != OTLP_TOML
    import tomllib

    from chorus.server.model import config
    server = OtlpServer(tmp_path / "data", config.parse(tomllib.loads(cfg_text)))
    try:
        truth: dict[str, int] = {}
        meters = provider(grpc_exporter(server, delta=False))
        tokens = meters.get_meter("tool").create_counter("claude_code.token.usage")
        for user in [f"user-team-red-{i}" for i in range(6)]:
            value = 150_000 if user.endswith("0") else 1000 * (int(user[-1]) + 1)
            tokens.add(value, {"user.email": user, "type": "output"})
            tokens.add(value, {"user.email": user, "type": "input"})
            truth[user] = min(2 * value, 200_000)  # the suite bound of ai.tokens
        assert meters.force_flush(10_000)
        meters.shutdown()
        auth = (("authorization", f"Bearer {server.admin_token}"),)
        with grpc.insecure_channel(server.address) as channel:
            admin_pb2_grpc.AdminServiceStub(channel).CloseWindow(admin_pb2.CloseWindowRequest(window=today()),
                                                                 metadata=auth)
            reply = release_pb2_grpc.ReleaseServiceStub(channel).Release(release_pb2.ReleaseRequest(
                window=today(), teams=["team-red"], metrics=["ai.tokens"],
                statistics=[release_pb2.StatisticRequest(statistic=common_pb2.STATISTIC_SUM, epsilon="100000")]),
                metadata=(("authorization", f"Bearer {server.analyst_token}"),))
        estimate = reply.teams[0].estimates[0]
        assert abs(estimate.value - sum(truth.values())) <= max(estimate.ci95, 50)
        assert server.rows("SELECT COUNT(*) FROM otlp_series") == [(0,)]
    finally:
        server.stop()


def one_unmapped_point(tmp_path: Path) -> OtlpServer:
    """A server without [otlp] that was sent one Claude Code point (which it ignores)."""
    from tests._policy import suite_config
    server = OtlpServer(tmp_path / "data", suite_config())
    meters = provider(grpc_exporter(server, delta=True))
    meters.get_meter("tool").create_counter("claude_code.token.usage").add(
        5, {"user.email": "user-team-red-0", "type": "input"})
    assert meters.force_flush(10_000)
    meters.shutdown()
    return server


def test_config_without_otlp_ignores_every_point(tmp_path: Path) -> None:
    server = one_unmapped_point(tmp_path)
    try:
        assert server.totals() == {}
        assert server.chorus.otlp.points() == {"ignored_unmapped": 1}
    finally:
        server.stop()


def test_the_mapping_is_frozen_into_the_window_policy(otlp_server: OtlpServer) -> None:
    meters = provider(grpc_exporter(otlp_server, delta=True))
    meters.get_meter("tool").create_counter("tool.requests").add(1, {"user.email": "user-team-red-0"})
    assert meters.force_flush(10_000)
    meters.shutdown()
    (policy,), = otlp_server.rows(f"SELECT policy FROM windows WHERE id = '{today()}'")
    assert '"otlp":{"identity_attributes":["user.email","enduser.id"]' in policy
    assert otlp_config().policy.otlp is not None


@pytest.mark.slow
def test_chorus_stats_names_otlp_outcomes_in_words(tmp_path: Path) -> None:
    """The table says what happened to the points; json keeps the machine key (issue 23)."""
    server = one_unmapped_point(tmp_path)
    try:
        (tmp_path / "admin.token").write_text(server.admin_token)
        args = [sys.executable, "-m", "chorus.server.cli", "stats", "--server", server.address,
                "--token-file", str(tmp_path / "admin.token")]
        env = {**os.environ, "COLUMNS": "200"}
        table = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=True).stdout
        records = json.loads(subprocess.run([*args, "--format", "json"], capture_output=True, text=True, env=env,
                                            timeout=60, check=True).stdout)
    finally:
        server.stop()
    assert "OTLP data points ignored: no mapping names the instrument" in table
    assert "ignored_unmapped" not in table and "_" not in "".join(line for line in table.splitlines()
                                                                   if "OTLP" in line)
    assert {"counter": "otlp_points:ignored_unmapped", "value": 1} in records
