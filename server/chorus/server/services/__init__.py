"""Thin gRPC servicers: decode the request, call domain code, map errors to status codes."""
