"""OpenTelemetry (OTLP) metrics in: the `[otlp]` mapping, decoding, and the per-point rules.

`mapping` is the configuration (frozen into each window's policy), `decode` turns OTLP/gRPC
and OTLP/HTTP bodies into `ExportMetricsServiceRequest` messages, `points` maps a request to
countable data points, `series` keeps exactly-once and cumulative state per window, and
`http` is the optional OTLP/HTTP listener. Counting itself goes through `chorus.server.ingest`.
"""
