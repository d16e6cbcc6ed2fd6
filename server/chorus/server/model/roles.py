"""The four roles, the one table of which role may call which service, and the roles' wire
values (`chorus.v1.Role`): defined once here and imported by the token store, the gate, the
servicers, the CLI and the dashboard.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from chorus.v1 import admin_pb2


class Role(enum.StrEnum):
    INGEST = "ingest"
    ANALYST = "analyst"
    AUDITOR = "auditor"
    ADMIN = "admin"


#: Health and reflection stay open so load balancers and grpcurl-style tools work.
OPEN_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                           "grpc.reflection.v1.ServerReflection"})
#: Which roles may call the methods of each service; any other service is denied to everyone.
#: One role per job (least privilege): admin operates the server but cannot inject usage,
#: spend privacy budget or read the audit trail under its own name; an operator who needs
#: to do so creates a token of that role, and that creation is itself in the ledger.
TRACES_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
SERVICE_ROLES: dict[str, frozenset[Role]] = {
    "chorus.v1.IngestService": frozenset({Role.INGEST}),
    "chorus.v1.ReleaseService": frozenset({Role.ANALYST}),
    "chorus.v1.AuditService": frozenset({Role.AUDITOR}),
    "chorus.v1.AdminService": frozenset({Role.ADMIN}),
    # OTLP metrics (chorus.server.transport.services.otlp): usage from OpenTelemetry exporters.
    "opentelemetry.proto.collector.metrics.v1.MetricsService": frozenset({Role.INGEST}),
    # Traces and logs from the same exporters: accepted and discarded unread (services/otlp.py).
    TRACES_SERVICE: frozenset({Role.INGEST}),
    LOGS_SERVICE: frozenset({Role.INGEST}),
}


#: Each role's wire value (AdminService tokens); `role_from_proto` is its inverse.
ROLE_TO_PROTO: dict[Role, admin_pb2.Role] = {
    Role.INGEST: admin_pb2.ROLE_INGEST, Role.ANALYST: admin_pb2.ROLE_ANALYST,
    Role.AUDITOR: admin_pb2.ROLE_AUDITOR, Role.ADMIN: admin_pb2.ROLE_ADMIN}
_PROTO_TO_ROLE = {v: k for k, v in ROLE_TO_PROTO.items()}


def role_from_proto(value: admin_pb2.Role) -> Role | None:
    """The role of a wire value; None for ROLE_UNSPECIFIED or an unknown number."""
    return _PROTO_TO_ROLE.get(value)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name (never its secret) and role, or for a person signed in
    through OpenID Connect (`sso`) the configured name claim and the role their groups map to.
    `name` is what the ledger's `by` records."""

    name: str
    role: Role
    sso: bool = False

    @property
    def described(self) -> str:
        """The caller as an error message to the caller names them."""
        return f"{'user' if self.sso else 'token'} {self.name!r}"

    @property
    def logged(self) -> str:
        """The caller as the server log names them: a token by its name; never a person."""
        return "a signed-in user" if self.sso else f"token {self.name!r}"
