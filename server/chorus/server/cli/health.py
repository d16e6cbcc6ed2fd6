"""`chorus health`: ask a server's standard gRPC health service, for container and script checks.

No token: `grpc.health.v1.Health` is served to every caller (docs/deployment.md, "Load balancer
and health checks"). The TLS rule is every client command's: plaintext only to a loopback
address. Exit 0 when the server answers SERVING, 9 (UNAVAILABLE) for any other answer or no
answer, so `HEALTHCHECK CMD ["chorus", "health"]` needs no shell.
"""

from __future__ import annotations

from typing import Annotated

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chorus.server.cli._common import (
    DEFAULT_SERVER,
    CaOpt,
    CertOpt,
    ExitCode,
    KeyOpt,
    ServerOpt,
    channel_credentials,
    console,
    fail,
    rpc_errors,
)


def health(
    server: ServerOpt = DEFAULT_SERVER,
    ca: CaOpt = None, client_cert: CertOpt = None, client_key: KeyOpt = None,
    service: Annotated[str, typer.Option("--service", help="A service to ask about, e.g. "
                                         "chorus.v1.IngestService; default: the whole server.")] = "",
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for the answer.")] = 5.0,
) -> None:
    """Check a server's gRPC health: print its status, exit 0 if SERVING, else 9 (container health checks)."""
    creds = channel_credentials(server, ca, client_cert, client_key)
    subject = f"{server}{' ' + service if service else ''}"
    with grpc.secure_channel(server, creds) if creds else grpc.insecure_channel(server) as channel, \
            rpc_errors(server):
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                             timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            raise fail(f"{subject}: SERVICE_UNKNOWN (the server has no such service)", ExitCode.UNAVAILABLE) from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise fail(f"{subject}: {status}", ExitCode.UNAVAILABLE)
    console.print(f"{subject}: {status}", highlight=False, soft_wrap=True)
