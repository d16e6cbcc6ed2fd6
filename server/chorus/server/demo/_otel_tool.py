"""Demo: an AI tool that knows nothing of Chorus reports through the real OpenTelemetry SDK.

It records the GenAI semantic conventions' `gen_ai.client.token.usage` histogram (with a
session id and a model name, as such tools do) and exports it over OTLP/gRPC to the same port
as the SDK tools, with an ingest token in the `authorization` header. The server counts the
histogram sums by the shipped `[otlp]` mapping and drops every other attribute at the door.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from rich.table import Table

from chorus.server.demo._world import OTEL_TOOL, Event

if TYPE_CHECKING:
    from chorus.server.demo import _Demo

INSTRUMENT = "gen_ai.client.token.usage"


def run(demo: _Demo, events: list[Event]) -> None:
    exporter = OTLPMetricExporter(endpoint=demo.server.address, insecure=True, timeout=30,
                                  headers={"authorization": f"Bearer {demo.token('ingest', OTEL_TOOL)}"},
                                  preferred_temporality={Histogram: AggregationTemporality.DELTA})
    meters = MeterProvider(metric_readers=[PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)],
                           resource=Resource.create({"service.name": OTEL_TOOL}))
    usage = meters.get_meter(OTEL_TOOL).create_histogram(INSTRUMENT, unit="{token}")
    for i, event in enumerate(events):
        usage.record(event.value, {"enduser.id": event.user, "gen_ai.token.type": "input",
                                   "gen_ai.request.model": "demo-model-large", "session.id": f"session-{i % 7}"})
    meters.force_flush(30_000)
    meters.shutdown()
    points = demo.chorus.otlp.points()
    table = Table("tool", "records", "OTLP data points counted", "rejected")
    table.add_row(OTEL_TOOL, str(len(events)), str(points.get("counted", 0)),
                  str(sum(n for k, n in points.items() if k.startswith("rejected"))))
    demo.console.print(table)
    demo.console.print(f"{OTEL_TOOL} uses only the OpenTelemetry SDK: its {INSTRUMENT} histogram went over "
                       "OTLP/gRPC to the same port, and the \\[otlp] mapping counted each series' sum into "
                       "ai.tokens. Its session ids and model name were dropped at the door.")
