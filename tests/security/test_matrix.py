"""The role matrix: every RPC of every chorus.v1 service, called as every kind of caller.

RPCs are enumerated from the generated descriptors, so a new RPC is covered the moment it
is added to a .proto; a new *service* fails `test_every_service_has_an_expected_role` until
this file says which role may call it.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from chorus.server.model import roles
from chorus.server.model.roles import Role

from .conftest import SecureServer, bearer, call_raw, proto_methods, rpc_path

#: The specification, written independently of roles.SERVICE_ROLES: one role per job.
EXPECTED_ROLES: dict[str, frozenset[Role]] = {
    "chorus.v1.IngestService": frozenset({Role.INGEST}),
    "chorus.v1.ReleaseService": frozenset({Role.ANALYST}),
    "chorus.v1.AuditService": frozenset({Role.AUDITOR}),
    "chorus.v1.AdminService": frozenset({Role.ADMIN}),
    "opentelemetry.proto.collector.metrics.v1.MetricsService": frozenset({Role.INGEST}),  # OTLP usage in
    "opentelemetry.proto.collector.trace.v1.TraceService": frozenset({Role.INGEST}),  # accepted, dropped
    "opentelemetry.proto.collector.logs.v1.LogsService": frozenset({Role.INGEST}),
}
AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


METHODS = proto_methods()
# Callers that are nobody: no token, a value that is not a token, a well-formed unknown token.
ANONYMOUS = {"no token": None, "not a token": "not-a-token", "unknown token": "chorus_" + "A" * 43}


def call(server: SecureServer, method: descriptor.MethodDescriptor, payload: bytes,
         token: str | None) -> grpc.StatusCode:
    assert server.channel is not None
    return call_raw(server.channel, method, payload, bearer(token) if token is not None else None).code


def test_methods_are_enumerated() -> None:
    names = {m.full_name for m in METHODS}
    assert "chorus.v1.IngestService.Report" in names
    assert "chorus.v1.AuditService.StreamLedger" in names
    assert len(METHODS) >= 15


def test_every_service_has_an_expected_role() -> None:
    services = {m.containing_service.full_name for m in METHODS}
    assert services == set(EXPECTED_ROLES)
    assert roles.SERVICE_ROLES == EXPECTED_ROLES


@pytest.mark.slow
def test_every_service_is_served(shared_server: SecureServer) -> None:
    """Reflection (open, no token) lists every chorus.v1 service."""
    assert shared_server.channel is not None
    stub = reflection_pb2_grpc.ServerReflectionStub(shared_server.channel)
    replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             timeout=10))
    listed = {s.name for s in replies[0].list_services_response.service}
    assert set(EXPECTED_ROLES) <= listed


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS, ids=rpc_path)
@pytest.mark.parametrize("caller", list(ANONYMOUS))
def test_anonymous_callers_are_unauthenticated(shared_server: SecureServer,
                                               method: descriptor.MethodDescriptor, caller: str) -> None:
    empty = method.input_type._concrete_class().SerializeToString()
    assert call(shared_server, method, empty, ANONYMOUS[caller]) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS, ids=rpc_path)
@pytest.mark.parametrize("role", list(Role), ids=str)
def test_revoked_tokens_are_unauthenticated(shared_server: SecureServer, method: descriptor.MethodDescriptor,
                                            role: Role) -> None:
    empty = method.input_type._concrete_class().SerializeToString()
    assert call(shared_server, method, empty, shared_server.revoked[role]) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS, ids=rpc_path)
@pytest.mark.parametrize("role", list(Role), ids=str)
def test_role_matrix(shared_server: SecureServer, method: descriptor.MethodDescriptor, role: Role) -> None:
    """Allowed: any answer but an auth error (and the RPC exists); denied: PERMISSION_DENIED exactly.

    Garbage bytes reach the parser only once the caller is admitted, so an allowed caller
    gets INVALID_ARGUMENT for them and a denied caller PERMISSION_DENIED. Traces and logs are
    never parsed (dropped unread): an allowed caller's garbage is an empty success too.
    """
    empty = method.input_type._concrete_class().SerializeToString()
    garbage = b"\xff\xff\xff\xff"
    token = shared_server.tokens[role]
    if role in EXPECTED_ROLES[method.containing_service.full_name]:
        code = call(shared_server, method, empty, token)
        assert code not in AUTH_CODES | {grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNKNOWN,
                                         grpc.StatusCode.INTERNAL}, code
        unread = method.containing_service.full_name in (roles.TRACES_SERVICE, roles.LOGS_SERVICE)
        assert call(shared_server, method, garbage, token) == (
            grpc.StatusCode.OK if unread else grpc.StatusCode.INVALID_ARGUMENT)
    else:
        assert call(shared_server, method, empty, token) == grpc.StatusCode.PERMISSION_DENIED
        assert call(shared_server, method, garbage, token) == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.slow
@pytest.mark.parametrize("role", list(Role), ids=str)
def test_unknown_method_needs_a_token(shared_server: SecureServer, role: Role) -> None:
    """Without a token nobody learns which methods exist; with one, of any role, a missing method or
    service is UNIMPLEMENTED (what gRPC clients expect of a method the server does not have)."""
    assert shared_server.channel is not None
    for service in EXPECTED_ROLES:
        stub = shared_server.channel.unary_unary(f"/{service}/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as anonymous:
            stub(b"", timeout=10)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as known:
            stub(b"", metadata=shared_server.metadata(role), timeout=10)
        assert known.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as unknown:
        shared_server.channel.unary_unary("/chorus.v1.NoSuchService/Call")(
            b"", metadata=shared_server.metadata(role), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.slow
def test_health_is_open(shared_server: SecureServer) -> None:
    assert shared_server.healthy()


@pytest.mark.slow
@pytest.mark.parametrize("metadata", [
    (("authorization", "Basic dXNlcjpwYXNz"),),
    (("authorization", "Bearer"),),
    (("authorization", "Bearer    "),),
], ids=["basic scheme", "bearer without token", "bearer with blanks"])
def test_malformed_authorization_is_unauthenticated(shared_server: SecureServer,
                                                    metadata: tuple[tuple[str, str], ...]) -> None:
    assert shared_server.channel is not None
    with pytest.raises(grpc.RpcError) as err:
        shared_server.channel.unary_unary("/chorus.v1.AdminService/ListTokens")(b"", metadata=metadata,
                                                                                 timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.slow
def test_two_authorization_headers_are_refused(shared_server: SecureServer) -> None:
    """Ambiguous credentials are refused even when one of them is valid."""
    assert shared_server.channel is not None
    metadata = (*shared_server.metadata(Role.ADMIN), ("authorization", "Bearer chorus_other"))
    with pytest.raises(grpc.RpcError) as err:
        shared_server.channel.unary_unary("/chorus.v1.AdminService/ListTokens")(b"", metadata=metadata,
                                                                                 timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.slow
def test_scheme_is_case_insensitive(shared_server: SecureServer) -> None:
    assert shared_server.channel is not None
    metadata = (("authorization", f"bearer {shared_server.tokens[Role.ADMIN]}"),)
    list_tokens = shared_server.channel.unary_unary("/chorus.v1.AdminService/ListTokens")
    list_tokens(b"", metadata=metadata, timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize(("role", "path", "needed"), [
    (Role.INGEST, "/chorus.v1.AdminService/GetStats", "admin"),
    (Role.ADMIN, "/chorus.v1.ReleaseService/Release", "analyst"),
    (Role.ANALYST, "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export", "ingest")], ids=str)
def test_a_denial_names_the_token_its_role_and_the_role_needed(shared_server: SecureServer, role: Role,
                                                              path: str, needed: str) -> None:
    """security.md: PERMISSION_DENIED names the token's name and role and the role needed (never the secret)."""
    assert shared_server.channel is not None
    method = next(m for m in METHODS if rpc_path(m) == path)
    token = shared_server.tokens[role]
    answer = call_raw(shared_server.channel, method, b"", bearer(token))
    assert answer.code == grpc.StatusCode.PERMISSION_DENIED
    assert answer.details == f"token 'sec-{role.value}' has role {role.value}; {path} needs role {needed}"
    assert token not in answer.details


def test_the_role_table_of_security_md_lists_every_chorus_rpc_under_its_role() -> None:
    """docs/security.md's table names, per role, every RPC of the chorus.v1 services it may call
    (`IngestService.Report`, or `AdminService`: `ImportRoster`, ...)."""
    served: dict[str, set[str]] = {}
    for method in METHODS:
        if method.containing_service.full_name.startswith("chorus.v1."):
            served.setdefault(method.containing_service.name, set()).add(method.name)
    documented: dict[str, set[str]] = {}
    allowed: dict[str, set[Role]] = {}
    text = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    for role, cell in re.findall(r"^\| `(ingest|analyst|auditor|admin)` \| ([^|]+) \|", text, flags=re.MULTILINE):
        service = None
        for name in re.findall(r"`([\w.]+)`", cell):
            if name in served:  # `AdminService`: the RPCs follow
                service = name
            elif name.partition(".")[0] in served:  # `IngestService.Report`
                service, _, rpc = name.partition(".")
                documented.setdefault(service, set()).add(rpc)
            elif service is not None and "." not in name:
                documented.setdefault(service, set()).add(name)
            else:
                continue
            allowed.setdefault(service, set()).add(Role(role))
    assert documented == served
    assert {f"chorus.v1.{service}": frozenset(r) for service, r in allowed.items()} == {
        f"chorus.v1.{service}": roles.SERVICE_ROLES[f"chorus.v1.{service}"] for service in served}
