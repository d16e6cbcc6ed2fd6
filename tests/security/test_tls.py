"""TLS and mTLS end to end over real sockets, with certificates from `chorus certs dev`."""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from typer.testing import CliRunner

from chorus.server.cli import app
from chorus.server.cli.serve import load_tls
from chorus.server.model.roles import Role
from chorus.v1 import admin_pb2, admin_pb2_grpc

from .conftest import SecureServer, make_certs

Creds = Callable[..., grpc.ChannelCredentials]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated development CA with its own server and client certificates."""
    return make_certs(tmp_path_factory.mktemp("other"))


def credentials(ca: Path, client: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(ca / "ca.pem").read_bytes(),
        private_key=(client / "client.key").read_bytes() if client else None,
        certificate_chain=(client / "client.pem").read_bytes() if client else None)


def list_tokens(target: str, creds: grpc.ChannelCredentials | None, server: SecureServer,
                with_token: bool = True) -> grpc.StatusCode:
    channel = grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)
    try:
        admin_pb2_grpc.AdminServiceStub(channel).ListTokens(
            admin_pb2.ListTokensRequest(), metadata=server.metadata(Role.ADMIN) if with_token else None,
            timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    finally:
        channel.close()
    return grpc.StatusCode.OK


def test_certs_dev_files(certs: Path) -> None:
    for name in ("ca.key", "server.key", "client.key"):
        assert stat.S_IMODE((certs / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    server = x509.load_pem_x509_certificate((certs / "server.pem").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(names.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"),
                                                             ipaddress.ip_address("::1")}
    ca = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    x509.load_pem_x509_certificate((certs / "client.pem").read_bytes()).verify_directly_issued_by(ca)


def test_certs_dev_san_adds_names_to_the_server_certificate(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["certs", "dev", "--out", str(tmp_path / "c"), "--san", "chorus.internal",
                                      "--san", "10.1.2.3"])
    assert result.exit_code == 0, result.output
    server = x509.load_pem_x509_certificate((tmp_path / "c" / "server.pem").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "chorus.internal"]
    assert ipaddress.ip_address("10.1.2.3") in names.get_values_for_type(x509.IPAddress)


def test_certs_dev_refuses_to_replace(certs: Path) -> None:
    before = (certs / "ca.key").read_bytes()
    result = CliRunner().invoke(app, ["certs", "dev", "--out", str(certs)])
    assert result.exit_code == 2
    assert "--force" in " ".join(result.output.split())
    assert (certs / "ca.key").read_bytes() == before


@pytest.mark.slow
def test_mtls(make_server: Callable[..., SecureServer], certs: Path, other_certs: Path) -> None:
    server = make_server(tls=load_tls(certs / "server.pem", certs / "server.key", certs / "ca.pem"))
    port = server.address.rpartition(":")[2]
    assert list_tokens(server.address, credentials(certs, certs), server) == grpc.StatusCode.OK
    assert list_tokens(f"localhost:{port}", credentials(certs, certs), server) == grpc.StatusCode.OK
    # The certificate admits the connection; the bearer token still decides the role.
    assert list_tokens(server.address, credentials(certs, certs), server,
                       with_token=False) == grpc.StatusCode.UNAUTHENTICATED
    refused = {
        "no client certificate": credentials(certs),
        "client certificate from another CA": credentials(certs, other_certs),
        "server not trusted by the client": credentials(other_certs, certs),
    }
    for case, creds in refused.items():
        assert list_tokens(server.address, creds, server) == grpc.StatusCode.UNAVAILABLE, case
    assert list_tokens(server.address, None, server) == grpc.StatusCode.UNAVAILABLE, "plaintext"


@pytest.mark.slow
def test_server_only_tls(make_server: Callable[..., SecureServer], certs: Path, other_certs: Path) -> None:
    server = make_server(tls=load_tls(certs / "server.pem", certs / "server.key", None))
    assert list_tokens(server.address, credentials(certs), server) == grpc.StatusCode.OK
    assert list_tokens(server.address, credentials(other_certs), server) == grpc.StatusCode.UNAVAILABLE
    assert list_tokens(server.address, None, server) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.slow
def test_cli_over_mtls(make_server: Callable[..., SecureServer], certs: Path, tmp_path: Path) -> None:
    """The operator CLI end to end: --ca, --client-cert, --client-key, --token-file."""
    server = make_server(tls=load_tls(certs / "server.pem", certs / "server.key", certs / "ca.pem"))
    token_file = tmp_path / "admin.token"
    token_file.write_text(server.tokens[Role.ADMIN] + "\n")
    tls = ["--ca", str(certs / "ca.pem"), "--client-cert", str(certs / "client.pem"),
           "--client-key", str(certs / "client.key")]
    result = CliRunner().invoke(app, ["token", "list", "--server", server.address, "--token-file",
                                      str(token_file), *tls])
    assert result.exit_code == 0, result.output
    assert "sec-ingest" in result.output
    assert server.tokens[Role.ADMIN] not in result.output
    without_cert = CliRunner().invoke(app, ["token", "list", "--server", server.address, "--token-file",
                                            str(token_file), "--ca", str(certs / "ca.pem")])
    assert without_cert.exit_code == 9  # UNAVAILABLE: the handshake failed
    assert "cannot reach Chorus" in " ".join(without_cert.output.split())
