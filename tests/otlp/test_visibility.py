"""Misconfiguration is visible: ignored and rejected OTLP points are counted in Prometheus by
outcome, reason and instrument name (names the configuration or the shipped presets know;
any other is "other"), and logged at most once a minute per outcome."""

from __future__ import annotations

import logging
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server
from chorus.v1 import admin_pb2, admin_pb2_grpc

from ._requests import DELTA, export_grpc, now_ns, point, request, sum_metric
from .conftest import OtlpServer, otlp_config

pytestmark = pytest.mark.slow
MIN = 60 * 10**9


def test_ignored_and_rejected_points_reach_prometheus_and_the_log_once_a_minute(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    chorus = Chorus(otlp_config(), tmp_path / "data")
    token, _ = chorus.tokens.create(Role.INGEST, "visibility", chorus.clock.now(), "test")
    server = Server(chorus, "127.0.0.1:0", metrics_listen="127.0.0.1:0")
    server.start()
    caplog.set_level(logging.WARNING, logger="chorus.server.domain.otlp.export")
    try:
        t = now_ns() - 5 * MIN
        export = request([
            sum_metric("claude_code.token.usage", [point(5.0, t - MIN, t, type="input")], DELTA),  # no identity
            sum_metric("gemini_cli.token.usage", [point(7.0, t - MIN, t, type="input")], DELTA),  # preset, unmapped
            sum_metric("made.up.instrument", [point(1.0, t - MIN, t)], DELTA),
        ])
        for _ in range(3):
            reply = export_grpc(server.address, token, export)
        assert reply.partial_success.rejected_data_points == 1
        assert "without an identity attribute (user.email, enduser.id)" in reply.partial_success.error_message
        text = urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=10).read().decode()
    finally:
        server.stop(grace=1)
    samples = {(s.labels["outcome"], s.labels["reason"], s.labels["instrument"]): s.value
               for f in text_string_to_metric_families(text) if f.name == "chorus_otlp_data_points"
               for s in f.samples if s.name.endswith("_total")}
    assert samples == {
        ("rejected", "without an identity attribute (user.email, enduser.id)", "claude_code.token.usage"): 3,
        ("ignored_unmapped", "", "gemini_cli.token.usage"): 3,
        ("ignored_unmapped", "", "other"): 3}
    assert "made.up.instrument" not in text
    warnings = [r.getMessage() for r in caplog.records if r.name == "chorus.server.domain.otlp.export"]
    assert len(warnings) == 2  # one per outcome, not one per export
    assert any(w.startswith("OTLP: 1 data point(s) rejected without an identity attribute") for w in warnings)


def test_otlp_points_feed_the_same_contribution_counters_as_report(otlp_server: OtlpServer) -> None:
    """One stats class behind every entrance: what an export counts reaches GetStats'
    `contributions_accepted` and `chorus_ingest_contributions_accepted_total{entrance="otlp"}`,
    next to its data points by outcome; a retried export adds a duplicate, never a contribution."""
    t = now_ns() - 5 * MIN
    export = request([sum_metric("tool.requests", [point(2, t - MIN, t, user__email="user-team-red-0"),
                                                   point(3, t - MIN, t, user__email="user-team-red-1")], DELTA)])
    for _ in range(2):
        export_grpc(otlp_server.address, otlp_server.ingest_token, export)
    with grpc.insecure_channel(otlp_server.address) as channel:
        stats = admin_pb2_grpc.AdminServiceStub(channel).GetStats(
            admin_pb2.GetStatsRequest(), metadata=(("authorization", f"Bearer {otlp_server.admin_token}"),),
            timeout=10)
    assert (stats.contributions_accepted, stats.batches, dict(stats.otlp_points)) == (
        2, 0, {"counted": 2, "duplicate": 2})
    text = generate_latest(otlp_server.server.metrics.registry).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text)
               for s in f.samples}
    assert samples[("chorus_ingest_contributions_accepted_total", (("entrance", "otlp"),))] == 2
    assert samples[("chorus_ingest_contributions_accepted_total", (("entrance", "report"),))] == 0
    assert samples[("chorus_otlp_data_points_total",
                    (("instrument", "tool.requests"), ("outcome", "counted"), ("reason", "")))] == 2
