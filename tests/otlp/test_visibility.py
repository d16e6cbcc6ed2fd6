"""Misconfiguration is visible: ignored and rejected OTLP points are counted in Prometheus by
outcome, reason and instrument name (names the configuration or the shipped presets know;
any other is "other"), and logged at most once a minute per outcome."""

from __future__ import annotations

import logging
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server

from ._requests import DELTA, export_grpc, now_ns, point, request, sum_metric
from .conftest import otlp_config

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
