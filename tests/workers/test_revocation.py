"""docs/security.md: a revoked token is refused at once by every worker of `chorus serve
--workers 2` (real processes on one SQLite file), not only by the worker that revoked it."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from chorus.server.model.roles import Role
from chorus.v1 import admin_pb2, admin_pb2_grpc, audit_pb2, audit_pb2_grpc
from tests._secrets import register

from .test_workers import Served, metadata, provision, serve, started  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def test_a_revocation_holds_at_once_on_every_worker(tmp_path: Path, started: list[Served]) -> None:  # noqa: F811
    tokens = provision(tmp_path / "data")
    served = serve(tmp_path, count=2)
    started.append(served)
    channels = [served.channel() for _ in range(12)]  # fresh connections land on both workers
    try:
        admin = admin_pb2_grpc.AdminServiceStub(channels[0])
        created = admin.CreateToken(admin_pb2.CreateTokenRequest(role=admin_pb2.ROLE_AUDITOR, name="soon-gone"),
                                    metadata=metadata(tokens, Role.ADMIN), timeout=10)
        register(created.token)
        auditor = (("authorization", f"Bearer {created.token}"),)
        for channel in channels:  # every worker has just accepted the token
            audit_pb2_grpc.AuditServiceStub(channel).ListPolicies(audit_pb2.ListPoliciesRequest(),
                                                                  metadata=auditor, timeout=10)
        admin.RevokeToken(admin_pb2.RevokeTokenRequest(name="soon-gone"), metadata=metadata(tokens, Role.ADMIN),
                          timeout=10)
        for channel in channels:  # at once: no second of grace on the other worker
            with pytest.raises(grpc.RpcError) as err:
                audit_pb2_grpc.AuditServiceStub(channel).ListPolicies(audit_pb2.ListPoliciesRequest(),
                                                                      metadata=auditor, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        for channel in channels:
            channel.close()
