"""The CLI's security decisions: no plaintext beyond loopback, TLS files checked up front,
secrets written 0600 and never lost."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from chorus.server.cli import app
from chorus.server.cli._common import channel_credentials, is_loopback
from chorus.server.cli.serve import load_tls
from chorus.server.model.roles import Role
from tests._secrets import register

from .conftest import SecureServer, make_certs


def words(output: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(output.split())


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1:7355", True), ("localhost:1", True), ("[::1]:7355", True), ("127.8.9.10:1", True),
    ("0.0.0.0:7355", False), ("[::]:7355", False), ("10.0.0.1:7355", False),
    ("chorus.example.com:443", False),
])
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_client_uses_tls_beyond_loopback(tmp_path: Path) -> None:
    assert channel_credentials("127.0.0.1:7355", None, None, None) is None
    assert channel_credentials("chorus.example.com:443", None, None, None) is not None  # system CAs
    with pytest.raises(typer.Exit):
        channel_credentials("127.0.0.1:7355", None, tmp_path / "client.pem", None)


@pytest.mark.parametrize("args", [
    ["--listen", "0.0.0.0:0"],
    ["--listen", "0.0.0.0:0", "--tls-cert", "x.pem"],
    ["--listen", "127.0.0.1:0", "--client-ca", "ca.pem"],
    ["--listen", "127.0.0.1:0", "--log-level", "chatty"],
    ["--listen", "127.0.0.1:0", "--log-format", "xml"],
    ["--listen", "127.0.0.1:0", "--metrics-listen", "9464"],
], ids=["plaintext on all interfaces", "cert without key", "client CA without TLS", "bad log level",
        "bad log format", "metrics address without host"])
def test_serve_refuses_before_starting(tmp_path: Path, args: list[str]) -> None:
    result = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path / "data"), *args])
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "data").exists()  # refused before touching the data directory


def test_load_tls_rejects_mismatched_and_missing_files(tmp_path: Path) -> None:
    one, two = make_certs(tmp_path / "one"), make_certs(tmp_path / "two")
    with pytest.raises(typer.Exit):
        load_tls(one / "server.pem", two / "server.key", None)
    with pytest.raises(typer.Exit):
        load_tls(one / "server.pem", one / "missing.key", None)
    with pytest.raises(typer.Exit):
        load_tls(one / "server.key", one / "server.key", None)  # a key is not a certificate
    with pytest.raises(typer.Exit):
        load_tls(one / "server.pem", one / "server.key", one / "server.key")
    tls = load_tls(one / "server.pem", one / "server.key", one / "ca.pem")
    assert tls.client_ca == (one / "ca.pem").read_bytes()


def test_a_tls_key_readable_by_others_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """security.md: `chorus serve` warns when the key file is readable by others (it still starts)."""
    certs = make_certs(tmp_path / "certs")
    load_tls(certs / "server.pem", certs / "server.key", None)  # 0600 as written: no warning
    assert "readable by group or others" not in caplog.text
    (certs / "server.key").chmod(0o644)
    load_tls(certs / "server.pem", certs / "server.key", None)
    assert f"{certs / 'server.key'} is readable by group or others; chmod 600 it" in caplog.text


@pytest.mark.slow
def test_token_create_writes_0600_and_never_loses_the_secret(secure_server: SecureServer,
                                                             tmp_path: Path) -> None:
    admin_file = tmp_path / "admin.token"
    admin_file.write_text(secure_server.tokens[Role.ADMIN])
    common = ["--server", secure_server.address, "--token-file", str(admin_file)]
    out = tmp_path / "tool.token"
    result = CliRunner().invoke(app, ["token", "create", "--role", "ingest", "--name", "cli-tool",
                                      "--out", str(out), *common])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    secret = out.read_text().strip()
    register(secret)
    assert secret not in result.output
    assert secure_server.chorus.tokens.authenticate(secret) is not None

    # An existing file is refused before the server is asked: no token is created whose
    # secret could not be stored.
    again = CliRunner().invoke(app, ["token", "create", "--role", "ingest", "--name", "cli-tool-2",
                                     "--out", str(out), *common])
    assert again.exit_code == 2  # usage: the --out path
    assert "already exists" in words(again.output)
    assert "cli-tool-2" not in {t.name for t in secure_server.chorus.tokens.list()}
    assert out.read_text().strip() == secret

    # A refused request leaves no empty file behind.
    failed_out = tmp_path / "dup.token"
    dup = CliRunner().invoke(app, ["token", "create", "--role", "ingest", "--name", "cli-tool",
                                   "--out", str(failed_out), *common])
    assert dup.exit_code == 6
    assert "ALREADY_EXISTS" in words(dup.output)
    assert not failed_out.exists()


def test_empty_token_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    result = CliRunner().invoke(app, ["token", "list", "--token-file", str(empty)])
    assert result.exit_code == 3
    assert "is empty" in words(result.output)
