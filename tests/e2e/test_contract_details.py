"""Contract details over real gRPC (issue 23): reflection describes itself, an unknown method is
UNIMPLEMENTED, paging defaults, the epsilon grammar's zero, the release refused while the plan
is pending."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from .._status import error_info
from .conftest import Running

pytestmark = pytest.mark.slow

BUF = Path(__file__).resolve().parents[2] / ".ci" / "tools" / "node_modules" / ".bin" / "buf"


def test_reflection_describes_the_v1_reflection_service(running: Running) -> None:
    with grpc.insecure_channel(running.address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        for name in ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection",
                     "chorus.v1.IngestService", "grpc.health.v1.Health"):
            assert pool.FindServiceByName(name).methods
        method = pool.FindMethodByName("grpc.reflection.v1.ServerReflection.ServerReflectionInfo")
        assert method.input_type.full_name == "grpc.reflection.v1.ServerReflectionRequest"


def test_buf_curl_lists_every_method_through_reflection(running: Running) -> None:
    assert BUF.exists(), ".ci/run installs buf into .ci/tools"
    listed = subprocess.run([str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge",
                             "--list-methods", f"http://{running.address}"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert listed.returncode == 0, listed.stderr
    methods = set(listed.stdout.split())
    assert {"grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "chorus.v1.IngestService/Report",
            "chorus.v1.AdminService/GetStats"} <= methods


@pytest.mark.parametrize("path", ["/chorus.v1.NoSuchService/Call", "/chorus.v1.AuditService/NoSuchMethod",
                                  "/user-carol.Svc/Call"])
def test_an_unknown_service_or_method_is_unimplemented_and_its_path_not_logged(
        running: Running, path: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with grpc.insecure_channel(running.address) as channel:
        for token, role in ((running.ingest_token, "ingest"), (running.admin_token, "admin")):
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary(path)(b"", metadata=(("authorization", f"Bearer {token}"),), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, caught.value.details()
            info = error_info(caught.value)
            assert (info.reason, dict(info.metadata)) == ("UNIMPLEMENTED", {"role": role})  # the caller's own
        with pytest.raises(grpc.RpcError) as anonymous:
            channel.unary_unary(path)(b"", timeout=10)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert path.strip("/").split("/")[0] not in caplog.text
