"""How requests reach the domain: the gRPC server and its one gate (`gate`: deadline, bearer
token, role), the servicers (`services/`), the OTLP/HTTP listener (`otlp_http`, bodies decoded
by `otlp_decode`), rate limits, status mapping with AIP-193 details (`rpc_errors`), Prometheus
metrics, logs, the stop signals (`signals`) and the worker processes of `chorus serve
--workers N`.

Above the composition root (`chorus.server.root`): a transport may import the domain, the
store's errors and the vocabulary; nothing below imports a transport (tests/test_layers.py).
"""
