"""Fixtures for the security suite: a real server on 127.0.0.1:0 with one token per role,
revoked tokens, a roster of recognisable user ids, a FakeClock, and a store digest."""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, settings
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

import chorus.v1
from chorus.server.model.clock import FakeClock
from chorus.server.model.roles import Role
from chorus.server.root import Chorus
from chorus.server.store import SQLITE_FILE
from chorus.server.transport.grpc_server import Server, TlsConfig
from tests._certs import make_certs  # noqa: F401 (this folder's tests use it from here)
from tests._policy import suite_config
from tests._secrets import register, user_id

from ._digest import store_digest

NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TEAMS = {"team-sec-a": 5, "team-sec-b": 5}
ROSTER = [(user_id(f"sec-{team}-{i}"), team) for team, size in TEAMS.items() for i in range(size)]
ROLES = tuple(Role)

# Fuzzing profiles: CI runs a fixed, derandomized sequence; locally each run explores anew.
_FUZZ = settings(deadline=None, print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])
settings.register_profile("chorus-security", _FUZZ)
settings.register_profile("chorus-security-ci", _FUZZ, derandomize=True, database=None)
FUZZ = settings.get_profile("chorus-security-ci" if os.environ.get("CI") else "chorus-security")


class SecureServer:
    """A started server plus everything a security test needs to call it."""

    def __init__(self, data_dir: Path, *, limits: dict[str, Any] | None = None,
                 tls: TlsConfig | None = None, max_workers: int = 16) -> None:
        cfg = suite_config()
        if limits:
            cfg = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, **limits))
        self.clock = FakeClock(NOON)
        self.chorus = Chorus(cfg, data_dir, clock=self.clock)
        self.db_file = data_dir / SQLITE_FILE
        self.chorus.import_roster(ROSTER, actor="test")
        now = self.clock.now()
        #: One active token per role, and one revoked token per role.
        self.tokens = {role: self.chorus.tokens.create(role, f"sec-{role.value}", now, "test")[0]
                       for role in ROLES}
        self.revoked = {}
        for role in ROLES:
            self.revoked[role] = self.chorus.tokens.create(role, f"sec-revoked-{role.value}", now, "test")[0]
            self.chorus.tokens.revoke(f"sec-revoked-{role.value}", now, "test")
        register(*self.tokens.values(), *self.revoked.values())
        self.server = Server(self.chorus, "127.0.0.1:0", tls=tls, max_workers=max_workers)
        self.server.start()
        # The closer's first pass opens the current window; run it here so the store is
        # quiet (no background write) by the time a test takes a digest.
        self.chorus.closer.tick()
        self.address = self.server.address
        self.channel = grpc.insecure_channel(self.address) if tls is None else None

    def metadata(self, role: Role) -> tuple[tuple[str, str], ...]:
        return bearer(self.tokens[role])

    def digest(self) -> dict[str, str]:
        return store_digest(self.db_file)

    def healthy(self) -> bool:
        assert self.channel is not None
        reply = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        self.server.stop(grace=1)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclasses.dataclass(frozen=True)
class Answer:
    code: grpc.StatusCode
    details: str
    #: Serialized response message(s), or the status details (google.rpc.Status) of an error.
    payloads: tuple[bytes, ...]


def proto_methods() -> list[descriptor.MethodDescriptor]:
    """Every RPC of every chorus.v1 service, from the generated descriptors, and OTLP's Export."""
    methods = list(metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"].methods)
    methods += trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].methods  # accepted, dropped
    methods += logs_service_pb2.DESCRIPTOR.services_by_name["LogsService"].methods
    for module in pkgutil.iter_modules(chorus.v1.__path__):
        if module.name.endswith("_pb2"):
            file = importlib.import_module(f"chorus.v1.{module.name}").DESCRIPTOR
            for service in file.services_by_name.values():
                methods.extend(service.methods)
    return sorted(methods, key=lambda m: m.full_name)


def rpc_path(method: descriptor.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def call_raw(channel: grpc.Channel, method: descriptor.MethodDescriptor, payload: bytes,
             metadata: tuple[tuple[str, str], ...] | None, timeout: float = 30) -> Answer:
    """Invoke any RPC with raw request bytes through a generic stub (identity serializers)."""
    kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    stub: Any = kind[(method.client_streaming, method.server_streaming)](rpc_path(method))
    request = iter([payload]) if method.client_streaming else payload
    try:
        reply = stub(request, metadata=metadata, timeout=timeout)
        replies = tuple(reply) if method.server_streaming else (reply,)
    except grpc.RpcError as exc:
        trailing = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
        status = trailing.get("grpc-status-details-bin", b"")
        return Answer(exc.code(), exc.details() or "", (status,) if status else ())  # type: ignore[attr-defined]
    return Answer(grpc.StatusCode.OK, "", replies)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., SecureServer]]:
    """Start servers with per-test limits (and TLS); all are stopped after the test."""
    started: list[SecureServer] = []

    def make(**kwargs: Any) -> SecureServer:
        server = SecureServer(tmp_path / f"data{len(started)}", **kwargs)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def secure_server(make_server: Callable[..., SecureServer]) -> SecureServer:
    return make_server()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServer]:
    """One server for a whole module (the matrix, the fuzz suites), with small hostile-input limits."""
    server = SecureServer(tmp_path_factory.mktemp("shared") / "data", limits=dict(
        max_message_bytes=64 * 1024, max_batch_contributions=50, max_string_length=64))
    yield server
    server.stop()
