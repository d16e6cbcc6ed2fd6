"""OpenTelemetry (OTLP) metrics as countable points: `points` maps an export to countable data
points (everything else is dropped at the door), `series` keeps the per-window exactly-once
keys and cumulative state, and `export` counts one export through `chorus.server.domain.ingest`.

The `[otlp]` configuration is the vocabulary's (`chorus.server.model.otlp_mapping`); the
OTLP/gRPC servicer and the OTLP/HTTP listener are transports (`chorus.server.transport`).
"""
