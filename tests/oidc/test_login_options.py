"""`chorus login`'s options and their environment variables, checked before any request."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from chorus.server.cli import app


def test_chorus_login_reads_its_environment_variables(tmp_path: Path) -> None:
    env = {"CHORUS_OIDC_ISSUER": "http://login.example.com", "CHORUS_OIDC_CLIENT_ID": "c",
           "CHORUS_OIDC_AUDIENCE": "a", "CHORUS_TOKEN_FILE": str(tmp_path / "token")}
    result = CliRunner().invoke(app, ["login"], env=env)
    assert result.exit_code == 2
    assert "--oidc-issuer = 'http://login.example.com': must be an https:// URL" in " ".join(result.output.split())
