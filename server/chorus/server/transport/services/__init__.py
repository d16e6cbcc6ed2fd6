"""Thin gRPC servicers: decode the request, call one domain service, map its errors to status
codes (`chorus.server.transport.rpc_errors`). A servicer never opens a transaction."""
