"""OTLP fixtures: a real server with an `[otlp]` mapping, its OTLP/HTTP listener, and the real
OpenTelemetry Python SDK exporting to it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from chorus.server.model import config
from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server
from tests._policy import OTLP_TOML, SUITE_TOML, otlp_config  # noqa: F401 (this folder's tests use them from here)
from tests._roster import ROSTER, import_roster
from tests._usage import person_totals
from tests.e2e._servers import sqlite_rows


def today() -> str:
    """The UTC day's window id, read when asked: a suite running across midnight changes window."""
    return datetime.now(UTC).date().isoformat()


class OtlpServer:
    """An in-process server with the OTLP mapping, gRPC and OTLP/HTTP, the roster and tokens."""

    def __init__(self, data_dir: Path, cfg: config.Config | None = None) -> None:
        self.data_dir = data_dir
        self.chorus = Chorus(cfg or otlp_config(), data_dir)
        now = self.chorus.clock.now()
        self.admin_token, _ = self.chorus.tokens.create(Role.ADMIN, "test-admin", now, "test")
        self.ingest_token, _ = self.chorus.tokens.create(Role.INGEST, "test-ingest", now, "test")
        self.analyst_token, _ = self.chorus.tokens.create(Role.ANALYST, "test-analyst", now, "test")
        self.server = Server(self.chorus, "127.0.0.1:0", otlp_http_listen="127.0.0.1:0")
        self.server.start()
        self.address = self.server.address
        assert self.server.otlp_http is not None
        self.http_url = f"http://{self.server.otlp_http.address}/v1/metrics"
        import_roster(self.address, self.admin_token)

    def stop(self) -> None:
        self.server.stop(grace=1)

    def totals(self, window: str | None = None) -> dict[tuple[str, str], int]:
        """Per-person totals by (user, metric) in an open window (recomputing pseudonyms)."""
        return person_totals(lambda sql, params: sqlite_rows(self.data_dir, sql, tuple(params)), window or today(),
                             [u for u, _ in ROSTER])

    def rows(self, sql: str) -> list[tuple]:
        return sqlite_rows(self.data_dir, sql)

    def rows_with(self, sql: str, params: tuple) -> list[tuple]:
        return sqlite_rows(self.data_dir, sql, params)

    def stored_nothing(self) -> bool:
        """No usage row and no OTLP state in any window."""
        return all(self.rows(f"SELECT COUNT(*) FROM {table}") == [(0,)]
                   for table in ("usage", "otlp_points", "otlp_series"))


@pytest.fixture
def otlp_server(tmp_path: Path) -> Iterator[OtlpServer]:
    server = OtlpServer(tmp_path / "data")
    yield server
    server.stop()


def provider(exporter: MetricExporter, **resource: str) -> MeterProvider:
    """A MeterProvider that exports only when flushed (tests call force_flush)."""
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    return MeterProvider(metric_readers=[reader],
                         resource=Resource.create({"service.name": "test-tool", **resource}))


def temporality(delta: bool) -> dict[type, AggregationTemporality]:
    kind = AggregationTemporality.DELTA if delta else AggregationTemporality.CUMULATIVE
    return {Counter: kind, Histogram: kind}
