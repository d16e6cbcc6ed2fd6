"""chorus.v1 conventions over real gRPC: reflection v1 and v1alpha, AIP-158 paging, Timestamps,
and an ErrorInfo on errors raised before any servicer runs."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2

from chorus.server.model.roles import Role
from chorus.v1 import admin_pb2, admin_pb2_grpc

from .._status import detail, error_info
from .conftest import Running


@pytest.mark.slow
@pytest.mark.parametrize("service", ["grpc.reflection.v1.ServerReflection",
                                     "grpc.reflection.v1alpha.ServerReflection"])
def test_reflection_answers_v1_and_v1alpha(running: Running, service: str) -> None:
    with grpc.insecure_channel(running.address) as channel:
        call = channel.stream_stream(f"/{service}/ServerReflectionInfo",
                                     request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        (reply,) = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        names = {s.name for s in reply.list_services_response.service}
        assert {"chorus.v1.IngestService", "chorus.v1.ReleaseService", "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection"} <= names
        (files,) = list(call(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="chorus.v1.ReleaseService")]), timeout=10))
        assert files.file_descriptor_response.file_descriptor_proto


@pytest.mark.slow
def test_list_tokens_pages_with_page_size_and_token_and_times_are_timestamps(running: Running) -> None:
    metadata = (("authorization", f"Bearer {running.admin_token}"),)
    with grpc.insecure_channel(running.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        for i in range(3):
            stub.CreateToken(admin_pb2.CreateTokenRequest(role=admin_pb2.ROLE_INGEST, name=f"tool-{i}"),
                             metadata=metadata, timeout=10)
        stub.RevokeToken(admin_pb2.RevokeTokenRequest(name="tool-1"), metadata=metadata, timeout=10)
        seen, token = [], ""
        while True:
            page = stub.ListTokens(admin_pb2.ListTokensRequest(page_size=2, page_token=token),
                                   metadata=metadata, timeout=10)
            assert len(page.tokens) <= 2
            seen.extend(page.tokens)
            token = page.next_page_token
            if not token:
                break
        everything = stub.ListTokens(admin_pb2.ListTokensRequest(), metadata=metadata, timeout=10)
        assert [t.name for t in seen] == [t.name for t in everything.tokens] and len(seen) == 5
        assert not everything.next_page_token
        revoked = {t.name: t.HasField("revoke_time") for t in seen}
        assert revoked["tool-1"] and not revoked["tool-0"]
        assert all(t.create_time.seconds > 1_700_000_000 for t in seen)

        for bad, field in ((admin_pb2.ListTokensRequest(page_size=-1), "page_size"),
                           (admin_pb2.ListTokensRequest(page_token="not-a-token"), "page_token")):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListTokens(bad, metadata=metadata, timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            (violation,) = detail(caught.value, error_details_pb2.BadRequest).field_violations
            assert violation.field == field


@pytest.mark.slow
def test_a_page_token_continues_only_its_own_listing(running: Running) -> None:
    metadata = (("authorization", f"Bearer {running.admin_token}"),)
    with grpc.insecure_channel(running.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        token = stub.ListTokens(admin_pb2.ListTokensRequest(page_size=1), metadata=metadata,
                                timeout=10).next_page_token
        assert token
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListWindows(admin_pb2.AdminServiceListWindowsRequest(page_token=token + "x"),
                             metadata=metadata, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.slow
@pytest.mark.parametrize(("metadata", "code", "reason"), [
    ((), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
    ((("authorization", "Bearer nonsense"),), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
])
def test_errors_before_the_servicer_carry_error_info(running: Running, metadata: tuple[tuple[str, str], ...],
                                                     code: grpc.StatusCode, reason: str) -> None:
    with grpc.insecure_channel(running.address) as channel, pytest.raises(grpc.RpcError) as caught:
        admin_pb2_grpc.AdminServiceStub(channel).ListTokens(admin_pb2.ListTokensRequest(), metadata=metadata,
                                                            timeout=10)
    assert caught.value.code() == code and error_info(caught.value).reason == reason


@pytest.mark.slow
def test_permission_denied_carries_error_info(running: Running) -> None:
    with grpc.insecure_channel(running.address) as channel, pytest.raises(grpc.RpcError) as caught:
        admin_pb2_grpc.AdminServiceStub(channel).ListTokens(
            admin_pb2.ListTokensRequest(), metadata=(("authorization", f"Bearer {running.ingest_token}"),),
            timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value).reason == "PERMISSION_DENIED"


@pytest.mark.slow
def test_a_taken_token_name_is_already_exists_with_its_reason(running: Running) -> None:
    metadata = (("authorization", f"Bearer {running.admin_token}"),)
    with grpc.insecure_channel(running.address) as channel, pytest.raises(grpc.RpcError) as caught:
        admin_pb2_grpc.AdminServiceStub(channel).CreateToken(
            admin_pb2.CreateTokenRequest(role=admin_pb2.ROLE_INGEST, name="test-ingest"), metadata=metadata,
            timeout=10)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    info = error_info(caught.value)
    assert info.reason == "TOKEN_NAME_TAKEN" and info.metadata["field"] == "name"


@pytest.mark.slow
def test_page_size_zero_is_the_default_and_larger_sizes_are_capped(running: Running) -> None:
    """ListTokens pages with the same function as every List RPC (services._convert.page)."""
    clock = running.chorus.clock
    for i in range(1005):
        running.chorus.tokens.create(Role.INGEST, f"bulk-{i:04d}", clock.now(), "test")
    metadata = (("authorization", f"Bearer {running.admin_token}"),)
    with grpc.insecure_channel(running.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        for size in (0, 5000):
            first = stub.ListTokens(admin_pb2.ListTokensRequest(page_size=size), metadata=metadata, timeout=30)
            assert len(first.tokens) == 1000 and first.next_page_token
            rest = stub.ListTokens(admin_pb2.ListTokensRequest(page_size=size, page_token=first.next_page_token),
                                   metadata=metadata, timeout=30)
            assert len(rest.tokens) == 1005 + 2 - 1000 and not rest.next_page_token


def test_every_file_names_its_go_and_java_package() -> None:
    from chorus.v1 import audit_pb2, common_pb2, ingest_pb2, release_pb2
    for module in (admin_pb2, audit_pb2, common_pb2, ingest_pb2, release_pb2):
        options = module.DESCRIPTOR.GetOptions()
        assert options.go_package == "github.com/chorus-dev/chorus/gen/go/chorus/v1;chorusv1"
        assert options.java_package == "dev.chorus.v1" and options.java_multiple_files
