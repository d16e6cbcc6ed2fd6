"""`chorus dashboard`'s single sign-on options are checked before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from chorus.server.cli import app


@pytest.mark.parametrize(("options", "message"), [
    (["--oidc-client-id", "d"], "--oidc-client-id, --oidc-client-secret-file and --oidc-audience need --oidc-issuer"),
    (["--oidc-issuer", "https://login.example.com"],
     "--oidc-issuer needs --oidc-client-id and --oidc-audience (the server's oidc.audience)"),
    (["--oidc-issuer", "http://login.example.com", "--oidc-client-id", "d", "--oidc-audience", "urn:chorus"],
     "--oidc-issuer = 'http://login.example.com': must be an https:// URL (http:// only on a loopback host)"),
])
def test_incomplete_or_unsafe_options_are_refused(options: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["dashboard", "--server", "127.0.0.1:1", *options])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_an_empty_secret_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "secret"
    empty.write_text("\n")
    result = CliRunner().invoke(app, ["dashboard", "--server", "127.0.0.1:1", "--oidc-issuer",
                                      "https://login.example.com", "--oidc-client-id", "d", "--oidc-audience", "a",
                                      "--oidc-client-secret-file", str(empty)])
    assert result.exit_code == 2
    assert f"--oidc-client-secret-file {empty} is empty" in " ".join(result.output.split())


def test_each_option_has_its_environment_variable(tmp_path: Path) -> None:
    empty = tmp_path / "secret"
    empty.write_text("")
    env = {"CHORUS_DASHBOARD_OIDC_ISSUER": "https://login.example.com", "CHORUS_DASHBOARD_OIDC_CLIENT_ID": "d",
           "CHORUS_DASHBOARD_OIDC_AUDIENCE": "a", "CHORUS_DASHBOARD_OIDC_CLIENT_SECRET_FILE": str(empty)}
    result = CliRunner().invoke(app, ["dashboard", "--server", "127.0.0.1:1"], env=env)
    assert f"--oidc-client-secret-file {empty} is empty" in " ".join(result.output.split())

